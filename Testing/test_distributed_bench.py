"""`torchrun --nproc-per-node 2 -m tcurlora bench` on the CPU (gloo), real processes and real hippocampus
cases: the quality runs are split across the processes (each executed once, by one of them), rank 0 alone
writes the report, and its quality numbers equal a 1-process benchmark's."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from test_distributed import ENV, REPO_ROOT, TORCHRUN

from tcurlora.filenames import BENCH_MARKDOWN_FILE, BENCH_REPORT_FILE, BENCH_SCHEMA

pytestmark = pytest.mark.slow

METHODS = [{"method": "tcur", "rank": 2}, {"method": "head"}, {"method": "full"}]
RUN_IDS = ["k2-s0-tcur-r2-topnorm", "k2-s0-head", "k2-s0-full"]


def bench_config(path: Path, data: Path, isolate: bool) -> Path:
    path.write_text(
        json.dumps(
            {
                "schema": BENCH_SCHEMA,
                "name": "ranks",
                "data": str(data),
                "base_model": "preset:unetr-tiny",
                "k": [2],
                "seeds": [0],
                "test_cases": 1,
                "iterations": 2,
                "batch_size": 1,
                "device": "cpu",
                "latency_cases": 0,
                "warmup_steps": 1,
                "isolate": isolate,
                "threads": 1,
                "methods": METHODS,
            }
        )
    )
    return path


def start(config: Path, output: Path, nproc: int = 0) -> subprocess.Popen:
    prefix = [TORCHRUN, "--standalone", f"--nproc-per-node={nproc}"] if nproc else [sys.executable]
    return subprocess.Popen(
        [*prefix, "-m", "tcurlora", "bench", str(config), "--output", str(output)],
        env=ENV,
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def quality_numbers(run: dict) -> dict:
    """What a run measured that does not depend on timing or on the process that ran it."""
    keys = (
        "run_id",
        "status",
        "method",
        "k",
        "seed",
        "train_cases",
        "parameters",
        "adapter_bytes",
        "losses",
        "test",
    )
    return {key: run[key] for key in keys}


@pytest.fixture(scope="module")
def one_process(hippocampus_dir: Path, tmp_path_factory) -> dict:
    """The 1-process report of the benchmark (in-process runs: the numbers are the same isolated)."""
    work = tmp_path_factory.mktemp("one")
    one = start(bench_config(work / "bench.json", hippocampus_dir, isolate=False), work / "out")
    out, err = one.communicate(timeout=600)
    assert one.returncode == 0, err
    return json.loads((work / "out" / BENCH_REPORT_FILE).read_text())


@pytest.mark.parametrize("isolate", [False, True], ids=["in-process", "isolated"])
def test_two_processes_split_the_runs_and_report_like_one(
    hippocampus_dir: Path, tmp_path: Path, isolate: bool, one_process: dict
) -> None:
    two = start(bench_config(tmp_path / "bench.json", hippocampus_dir, isolate), tmp_path / "two", nproc=2)
    out_two, err_two = two.communicate(timeout=600)
    assert two.returncode == 0, err_two
    # each run executed once: one progress line per run, from the rank that owns it (runs r, r+2, ...)
    owners = [m.group(1) for m in re.finditer(r"^(rank \d: \[\d/3\] [^:\s]+):", out_two, re.MULTILINE)]
    assert sorted(owners) == sorted(
        [f"rank 0: [1/3] {RUN_IDS[0]}", f"rank 1: [2/3] {RUN_IDS[1]}", f"rank 0: [3/3] {RUN_IDS[2]}"]
    ), out_two
    assert "2 processes: rank 0 executes 2 of the 3 quality runs" in out_two
    assert out_two.count("wrote ") == 1, "rank 0 alone writes the report"
    report = json.loads((tmp_path / "two" / BENCH_REPORT_FILE).read_text())
    runs = report["quality"]["runs"]
    assert [r["run_id"] for r in runs] == RUN_IDS and [r["rank"] for r in runs] == [0, 1, 0]
    assert [r["peak_memory"]["isolated"] for r in runs] == [isolate] * 3
    assert report["processes"] == 2 and "processes" not in one_process
    assert report["command"].startswith("torchrun --nproc-per-node=2 -m tcurlora bench ")
    assert "- processes: 2 (torchrun" in (tmp_path / "two" / BENCH_MARKDOWN_FILE).read_text()
    assert all(r["status"] == "ok" for r in runs), runs
    assert [quality_numbers(r) for r in runs] == [quality_numbers(r) for r in one_process["quality"]["runs"]]
    for key in ("base_model", "label_names", "test_case_ids", "pool_size", "settings"):
        assert report["quality"][key] == one_process["quality"][key], key
    assert sorted(p.name for p in (tmp_path / "two" / "runs").iterdir()) == sorted(RUN_IDS)
