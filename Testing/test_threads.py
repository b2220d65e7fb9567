"""Torch CPU threads on a shared CPU: the pure choice (cores, load -> threads), an explicit count winning,
the `threads` job setting and flag, and the worker's OMP_WAIT_POLICY."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tcurlora.device import choose_threads, resolve_threads
from tcurlora.errors import ConfigError
from tcurlora.jobs.schema import FinetuneJob, SegmentJob

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "cores, load, threads",
    [
        (2, None, 2),
        (2, 0.0, 2),
        (2, 0.4, 2),
        (2, 0.6, 1),
        (2, 1.0, 1),
        (2, 1.4, 1),
        (2, 3.7, 1),
        (16, 0.0, 16),
        (16, 3.2, 13),
        (16, 15.9, 1),
        (16, 40.0, 1),
        (1, 0.0, 1),
        (4, -1.0, 4),
        (4, float("nan"), 4),
    ],
)
def test_threads_leave_the_cores_other_work_keeps_busy(cores, load, threads):
    assert choose_threads(cores, load) == threads


@pytest.fixture
def keep_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_an_explicit_count_wins_over_load_and_device(keep_threads, monkeypatch):
    monkeypatch.setattr("tcurlora.device.other_load", lambda: 50.0)
    assert resolve_threads(3, torch.device("cpu")) == (3, "as asked")
    assert torch.get_num_threads() == 3
    torch.set_num_threads(2)
    threads, why = resolve_threads("auto", torch.device("cpu"))  # the load says: other work takes them all
    assert threads == 1 == torch.get_num_threads() and "load 50.00" in why


def test_auto_on_cuda_leaves_torch_as_it_is(keep_threads, monkeypatch):
    monkeypatch.setattr("tcurlora.device.other_load", lambda: 50.0)
    torch.set_num_threads(2)
    assert resolve_threads("auto", torch.device("cuda")) == (2, "auto: left as torch's default on cuda")
    assert torch.get_num_threads() == 2


def test_auto_is_capped_by_torch_default_and_the_affinity(keep_threads, monkeypatch):
    monkeypatch.setattr("tcurlora.device.other_load", lambda: 0.0)
    monkeypatch.setattr("tcurlora.device.available_cores", lambda: 8)
    torch.set_num_threads(2)  # OMP_NUM_THREADS=2, say
    assert resolve_threads(None, torch.device("cpu"))[0] == 2


def test_threads_setting_in_jobs_and_flags(tmp_path):
    base = {"command": "finetune", "base_model": "b", "data": "d", "output": "o"}
    assert FinetuneJob.from_dict(base, tmp_path).threads == "auto"
    assert FinetuneJob.from_dict({**base, "threads": 2}, tmp_path).threads == 2
    for bad in (0, "two", 1.5, True):
        with pytest.raises(ConfigError, match="threads"):
            FinetuneJob.from_dict({**base, "threads": bad}, tmp_path)
    segment = {
        "command": "segment",
        "base_model": "b",
        "inputs": ["a.nii.gz"],
        "output_dir": "x",
        "threads": 1,
    }
    assert SegmentJob.from_dict(segment, tmp_path).threads == 1

    from tcurlora.cli import build_parser
    from tcurlora.commands.finetune import build_job

    job_file = tmp_path / "job.json"
    job_file.write_text(json.dumps({**base, "threads": 2}))
    args = build_parser().parse_args(["finetune", "--job", str(job_file), "--threads", "1"])
    assert build_job(args).threads == 1  # the flag may accompany --job: how to run it, not what
    args = build_parser().parse_args(
        ["finetune", "--base-model", "b", "--data", "d", "-o", "o", "--threads", "3"]
    )
    assert build_job(args).threads == 3
    with pytest.raises(SystemExit):
        build_parser().parse_args(["finetune", "--job", str(job_file), "--threads", "0"])


@pytest.mark.slow
def test_the_worker_waits_passively_unless_told_otherwise():
    probe = (
        "import runpy, sys, os; sys.argv = ['tcurlora', '--version']\n"
        "try:\n    runpy.run_module('tcurlora', run_name='__main__')\n"
        "except SystemExit:\n    print(os.environ['OMP_WAIT_POLICY'])"
    )
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO_ROOT)}
    for given, expected in ((None, "PASSIVE"), ("ACTIVE", "ACTIVE")):
        done = subprocess.run(
            [sys.executable, "-c", probe],
            env={**env, **({"OMP_WAIT_POLICY": given} if given else {})},
            capture_output=True,
            text=True,
            timeout=120,
            cwd=REPO_ROOT,
        )
        assert done.stdout.strip().splitlines()[-1] == expected, done.stderr
