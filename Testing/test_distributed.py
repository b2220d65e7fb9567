"""`torchrun --nproc-per-node 2 -m tcurlora finetune` on the CPU (gloo), real processes: the same effective
batch gives the 1-process result, rank 0 alone reports and writes, and a killed rank ends the run with a
clear error and no adapter."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
from safetensors.numpy import load_file
from trust_testing import hippo_case

from tcurlora.filenames import ADAPTER_WEIGHTS_FILE, CHECKPOINT_FILE

REPO_ROOT = Path(__file__).resolve().parents[1]
TORCHRUN = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
ENV = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "-1"}


def job_file(path: Path, folder: Path, output: Path, **changes) -> Path:
    job = {
        "command": "finetune",
        "base_model": "preset:unetr-tiny",
        "cases": [hippo_case(folder, 1), hippo_case(folder, 3)],
        "label_names": ["anterior", "posterior"],
        "rank": 4,
        "iterations": 3,
        "batch_size": 2,
        "patch_size": [32, 32, 32],
        "seed": 3,
        "device": "cpu",
        "amp": False,
        "checkpoint_every": 0,
        "output": str(output),
        **changes,
    }
    path.write_text(json.dumps(job))
    return path


def start(*argv: str, nproc: int = 0) -> subprocess.Popen:
    assert TORCHRUN, "torchrun is part of torch"
    prefix = [TORCHRUN, "--standalone", f"--nproc-per-node={nproc}"] if nproc else [sys.executable]
    return subprocess.Popen(
        [*prefix, "-m", "tcurlora", *argv],
        env=ENV,
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def events(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


@pytest.mark.slow
def test_two_processes_match_one(hippocampus_dir: Path, tmp_path: Path) -> None:
    one = start("finetune", "--job", str(job_file(tmp_path / "one.json", hippocampus_dir, tmp_path / "one")))
    two = start(
        "finetune", "--job", str(job_file(tmp_path / "two.json", hippocampus_dir, tmp_path / "two")), nproc=2
    )
    out_one, err_one = one.communicate(timeout=300)
    out_two, err_two = two.communicate(timeout=300)
    assert one.returncode == 0, err_one
    assert two.returncode == 0, err_two
    # Rank 1 says nothing on success (it used to print an empty "done:"), and DDP gets gradients laid out
    # like their parameters (a 1x1x1 tCUR core's used to warn "Grad strides do not match bucket view").
    assert "done:" not in err_two and "tcurlora rank" not in err_two, err_two
    assert "Grad strides" not in err_two, err_two
    e1, e2 = events(out_one), events(out_two)
    kinds = [e["event"] for e in e2]
    assert kinds.count("started") == 1 and kinds.count("done") == 1 and kinds[-1] == "done", kinds
    assert len([e for e in e2 if e["event"] == "progress"]) == 3, "rank 1 must not report progress"
    losses = [[e["loss"] for e in ev if e["event"] == "progress"] for ev in (e1, e2)]
    assert np.allclose(losses[0], losses[1], rtol=1e-5), losses
    a, b = (
        load_file(str(tmp_path / "one" / ADAPTER_WEIGHTS_FILE)),
        load_file(str(tmp_path / "two" / ADAPTER_WEIGHTS_FILE)),
    )
    assert sorted(a) == sorted(b) and a
    # AdamW's first steps move a weight by about lr * sign(gradient): on near-zero gradients the rounding of
    # DDP's average (two half batches vs one batch) can move it by a fraction of that step. On this machine
    # (2026-12-06) that reached 8e-4 after 3 steps at lr 1e-2, also on the last commit whose CI passed; a
    # wrong gradient average moves whole tensors by whole steps and the losses above.
    for key in a:
        difference = np.abs(a[key] - b[key])
        assert difference.max() <= 1e-2 and difference.mean() <= 1e-3, (
            key,
            difference.max(),
            difference.mean(),
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one", "one.json", "two", "two.json"]


def kill_rank(run: subprocess.Popen, rank: int) -> None:
    """Kill the worker of `rank` among the processes torchrun (`run`) started."""
    workers = [
        p for p in psutil.Process(run.pid).children(recursive=True) if p.environ().get("RANK") == str(rank)
    ]
    assert workers, f"rank {rank} not found"
    workers[0].kill()


@pytest.mark.slow
def test_killed_rank_ends_the_run(hippocampus_dir: Path, tmp_path: Path) -> None:
    job = job_file(
        tmp_path / "job.json", hippocampus_dir, tmp_path / "adapter", iterations=100000, checkpoint_every=2
    )
    run = start("finetune", "--job", str(job), nproc=2)
    deadline = time.monotonic() + 180
    for line in run.stdout:
        if line.startswith("{") and json.loads(line)["event"] == "checkpoint":
            break
        assert time.monotonic() < deadline, "no checkpoint within 180 s"
    kill_rank(run, 1)
    out, err = run.communicate(timeout=120)
    assert run.returncode != 0
    final = events(out)[-1]
    assert final["event"] == "error" and final["kind"] in ("distributed", "cancelled"), final
    if final["kind"] == "distributed":
        assert "another process of the run failed or was killed" in final["message"], final
    assert not (tmp_path / "adapter").exists(), "no adapter may be written when a rank dies"
    assert (tmp_path / "adapter.checkpoint" / CHECKPOINT_FILE).is_file(), "the last checkpoint is kept"


def test_batch_must_split_over_processes(monkeypatch) -> None:
    from types import SimpleNamespace

    from tcurlora import distributed
    from tcurlora.errors import ConfigError
    from tcurlora.torchrun_env import launched

    assert not launched(), "plain pytest is not a torchrun worker"
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert launched()
    with pytest.raises(ConfigError, match="batch_size 3 does not split over 2 processes"):
        distributed.init(SimpleNamespace(device="cpu", batch_size=3))
    assert not distributed.active()


@pytest.mark.slow
def test_segment_splits_volumes_across_ranks(
    hippocampus_dir: Path, tiny_adapter: Path, tmp_path: Path
) -> None:
    import nibabel as nib

    images = [str(hippocampus_dir / "imagesTr" / f"hippocampus_{n:03d}.nii.gz") for n in (1, 3, 6)]
    common = [
        "segment",
        *images,
        "--base-model",
        "preset:unetr-tiny",
        "--adapter",
        str(tiny_adapter),
        "--device",
        "cpu",
        "--events",
    ]
    two = start(*common, "--output", str(tmp_path / "two"), nproc=2)
    one = start(*common, "--output", str(tmp_path / "one"))
    for process in (one, two):
        out, err = process.communicate(timeout=300)
        assert process.returncode == 0, err
    assert "done:" not in err and "tcurlora rank" not in err, err  # rank 1 is silent; rank 0 reports all
    done = [e for e in events(out) if e["event"] == "done"]
    names = [Path(p).name.replace(".nii.gz", "_seg.nii.gz") for p in images]
    assert len(done) == 1 and done[0]["outputs"]["segmentations"] == [
        str(tmp_path / "two" / n) for n in names
    ]
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(names)
    for name in names:
        a, b = (nib.load(str(tmp_path / folder / name)).get_fdata() for folder in ("one", "two"))
        assert (a == b).all(), name


def test_gradients_keep_their_parameters_layout() -> None:
    """A 1x1x1 tCUR core's gradient leaves rfft's backward with strides (2, 2, 2); DDP copies gradients
    into bucket views laid out like their parameters and warned at every run. `wrap` lays them out so."""
    import warnings

    import torch
    import torch.distributed as dist

    from tcurlora import distributed
    from tcurlora.adapters.tcur import TCURGroup

    class Core(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.group = TCURGroup(torch.randn(4, 3, 1), rank=1, alpha=1.0)

        def forward(self) -> torch.Tensor:
            return self.group.delta_slices().sum()

    core = Core()
    group = core.group
    core().backward()  # the gradient in one plain process
    expected, group.dU.grad = group.dU.grad.clone(), None
    group.clear_cache()
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        model = distributed.wrap(core, torch.device("cpu"))
        assert isinstance(model, torch.nn.parallel.DistributedDataParallel)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model().backward()
    finally:
        dist.destroy_process_group()
    assert group.dU.grad is not None and group.dU.grad.stride() == group.dU.stride() == (1, 1, 1)
    assert torch.equal(group.dU.grad, expected)
    assert not [w for w in caught if "strides" in str(w.message)], [str(w.message) for w in caught]


def test_other_ranks_report_only_errors(monkeypatch, capsys) -> None:
    """Under torchrun, ranks other than 0 print their errors (marked with torchrun's rank, also after the
    process group is gone) and nothing else: no progress, no `done`."""
    from tcurlora.distributed import rank_sink
    from tcurlora.errors import InputError
    from tcurlora.jobs.runner import run_cli

    assert rank_sink() is None, "without torchrun the usual sink reports"
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")

    def works(_job, sink, _token) -> dict:
        sink.log("info", "loading")
        sink.progress(1, 1, loss=0.5)
        return {"outputs": {}, "metrics": {}}

    def fails(_job, _sink, _token) -> dict:
        raise InputError("cannot read the image", "/data/a.nii.gz")

    assert run_cli(lambda: None, True, works, sink=rank_sink()) == 0
    assert capsys.readouterr() == ("", "")
    assert run_cli(lambda: None, True, fails, sink=rank_sink()) == 2
    out, err = capsys.readouterr()
    assert (
        out == "" and err == "tcurlora rank 1: error (input_error): /data/a.nii.gz: cannot read the image\n"
    ), err
