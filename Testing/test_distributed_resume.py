"""A fine-tuning checkpoint resumes with another number of processes: stopped under 2 gloo processes
(torchrun) and resumed under 1, and stopped under 1 and resumed under 2; both finish with a valid adapter
that follows the uninterrupted 1-process run up to floating-point rounding (DDP averages gradients)."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file
from test_distributed import events, job_file, start

from tcurlora.filenames import ADAPTER_WEIGHTS_FILE, CHECKPOINT_FILE, TRAINING_LOG_FILE

pytestmark = pytest.mark.slow

ITERATIONS, EVERY = 6, 2


def logged_losses(adapter: Path) -> list[float]:
    records = [json.loads(line) for line in (adapter / TRAINING_LOG_FILE).read_text().splitlines()]
    return [r["loss"] for r in records if "loss" in r]


@pytest.fixture(scope="module")
def straight(hippocampus_dir: Path, tmp_path_factory) -> Path:
    """The uninterrupted 1-process run of the job (its adapter folder)."""
    work = tmp_path_factory.mktemp("straight")
    run = start(
        "finetune",
        "--job",
        str(
            job_file(
                work / "job.json",
                hippocampus_dir,
                work / "adapter",
                iterations=ITERATIONS,
                checkpoint_every=EVERY,
            )
        ),
    )
    out, err = run.communicate(timeout=900)  # a loaded machine starves DDP
    assert run.returncode == 0, err
    return work / "adapter"


def interrupted(job: Path, output: Path, nproc: int) -> int:
    """Run `job` with `nproc` processes (0: plain python), SIGTERM it after its first checkpoint; the
    iteration the kept checkpoint is at."""
    run = start("finetune", "--job", str(job), nproc=nproc)
    deadline = time.monotonic() + 240
    for line in run.stdout:
        if line.startswith("{") and json.loads(line)["event"] == "checkpoint":
            run.send_signal(signal.SIGTERM)  # torchrun forwards it to every process
            break
        assert time.monotonic() < deadline, "no checkpoint within 240 s"
    out, err = run.communicate(timeout=300)
    assert run.returncode != 0, "the run was to be stopped before its end"
    assert not output.exists(), "a stopped run writes no adapter"
    meta = json.loads((output.parent / f"{output.name}.checkpoint" / CHECKPOINT_FILE).read_text())
    assert 0 < meta["iteration"] < ITERATIONS and meta["iteration"] % EVERY == 0, meta["iteration"]
    return int(meta["iteration"])


@pytest.mark.parametrize(("before", "after"), [(2, 0), (0, 2)], ids=["2-then-1", "1-then-2"])
def test_resume_with_another_number_of_processes(
    hippocampus_dir: Path, tmp_path: Path, straight: Path, before: int, after: int
) -> None:
    output = tmp_path / "adapter"
    job = job_file(
        tmp_path / "job.json", hippocampus_dir, output, iterations=ITERATIONS, checkpoint_every=EVERY
    )
    stopped_at = interrupted(job, output, before)
    resume = job_file(
        tmp_path / "resume.json",
        hippocampus_dir,
        output,
        iterations=ITERATIONS,
        checkpoint_every=EVERY,
        resume=True,
    )
    run = start("finetune", "--job", str(resume), nproc=after)
    out, err = run.communicate(timeout=900)  # a loaded machine starves DDP
    assert run.returncode == 0, err
    record = events(out)
    assert any(e["event"] == "log" and f"at iteration {stopped_at}" in e["message"] for e in record), record
    progress = [e["iteration"] for e in record if e["event"] == "progress"]
    assert progress == list(range(stopped_at + 1, ITERATIONS + 1)), (
        "rank 0 alone reports, from the checkpoint on"
    )
    assert [e["event"] for e in record].count("done") == 1
    assert not (tmp_path / "adapter.checkpoint").exists(), "a finished run removes its checkpoint"
    from tcurlora.adapters.io import load_adapter, read_adapter_config
    from tcurlora.models.registry import load_base_model

    assert read_adapter_config(output)["metrics"]["iterations"] == ITERATIONS
    load_adapter(
        output, load_base_model("preset:unetr-tiny").model
    )  # checks the digest and every tensor fits
    assert np.allclose(logged_losses(output), logged_losses(straight), rtol=1e-4, atol=1e-6)
    a, b = load_file(str(output / ADAPTER_WEIGHTS_FILE)), load_file(str(straight / ADAPTER_WEIGHTS_FILE))
    assert sorted(a) == sorted(b) and a
    # AdamW magnifies the rounding of DDP's gradient average on near-zero gradients: an uninterrupted
    # 2-process run of this job differs from the 1-process one by up to 2.4e-4 after 6 steps (measured then),
    # 1.9e-3 to 4.7e-3 (one learning-rate step is 1e-2) on this machine on 2026-12-06, also on the last commit whose CI passed; a wrong resume (another
    # batch stream, other weights) already fails the loss check above and moves whole tensors
    for key in a:
        difference = np.abs(a[key] - b[key])
        assert difference.max() <= 1e-2 and difference.mean() <= 1e-3, (
            key,
            difference.max(),
            difference.mean(),
        )
