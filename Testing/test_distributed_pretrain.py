"""`torchrun --nproc-per-node 2 -m tcurlora pretrain` on the CPU (gloo), real processes on real hippocampus
volumes: 2 processes follow the 1-process run (same effective batch and seed: the global batch is split
over the ranks and the batch-wide Dice pooled), rank 0 alone logs and writes the checkpoint and the model
folder, a checkpoint resumes with the other number of processes (2 -> 1, 1 -> 2), and a killed rank ends
the run with a clear error and no model folder."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from pretrain_testing import TINY_UNETR_ARCH
from safetensors.numpy import load_file
from test_distributed import kill_rank, start

from tcurlora.filenames import (
    MODEL_CARD_FILE,
    MODEL_SPEC_FILE,
    MODEL_WEIGHTS_FILE,
    PRETRAIN_RECIPE_FORMAT,
    PRETRAIN_STATE_FILE,
    TRAINING_LOG_FILE,
)

ITERATIONS, STOP = 4, 3
MODEL_FILES = [MODEL_CARD_FILE, MODEL_SPEC_FILE, MODEL_WEIGHTS_FILE, TRAINING_LOG_FILE]


def write_recipe(path: Path) -> Path:
    """A tiny UNETR on 3 hippocampus training volumes (2 held out), batch 2, 1 thread per process."""
    recipe = {
        "format": PRETRAIN_RECIPE_FORMAT,
        "name": "tiny-ddp",
        "arch": "UNETR",
        "sources": [
            {
                "name": "hippo",
                "folder": "hippocampus",
                "num_cases": 3,
                "val_case_ids": ["hippocampus_001", "hippocampus_003"],
            }
        ],
        "arch_params": dict(TINY_UNETR_ARCH),
        "patch_size": [32, 32, 32],
        "iterations": ITERATIONS,
        "batch_size": 2,
        "warmup": 2,
        "threads": 1,
        "checkpoint_every": 2,
        "eval_every": 2,
        "precision": "fp32",
        "seed": 0,
    }
    path.write_text(json.dumps(recipe))
    return path


def pretrain(work: Path, data: Path, output: str, *extra: str, nproc: int = 0) -> subprocess.Popen:
    """`tcurlora pretrain` of the recipe in `work` on the Decathlon folders in `data` into work/output (nproc
    0: plain python)."""
    return start(
        "pretrain",
        "--config",
        str(work / "recipe.json"),
        "--data-root",
        str(data),
        "--cache-dir",
        str(work / "cache"),
        "--device",
        "cpu",
        "--output",
        str(work / output),
        *extra,
        nproc=nproc,
    )


def finished(process: subprocess.Popen) -> str:
    """The stdout of a run that must succeed."""
    out, err = process.communicate(timeout=600)  # a loaded machine starves DDP
    assert process.returncode == 0, err
    return out


def log_records(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / TRAINING_LOG_FILE).read_text().splitlines()]


def weights(folder: Path) -> np.ndarray:
    tensors = load_file(str(folder / MODEL_WEIGHTS_FILE))
    return np.concatenate([tensors[k].astype(np.float64).ravel() for k in sorted(tensors)])


@pytest.fixture(scope="module")
def runs(hippocampus_dir: Path, tmp_path_factory) -> dict:
    """The uninterrupted 1-process run; the run stopped after iteration 3 under 1 and under 2 processes;
    each stopped run resumed under the other number of processes."""
    work = tmp_path_factory.mktemp("ddp_pretrain")
    write_recipe(work / "recipe.json")
    data = hippocampus_dir.parent
    first = {
        "one": pretrain(work, data, "one"),
        "stopped1": pretrain(work, data, "stopped1", "--stop-after", str(STOP)),
        "stopped2": pretrain(work, data, "stopped2", "--stop-after", str(STOP), nproc=2),
    }
    outputs = {name: finished(process) for name, process in first.items()}
    second = {
        "resumed1": pretrain(work, data, "resumed1", "--resume", str(work / "stopped2.checkpoint")),
        "resumed2": pretrain(work, data, "resumed2", "--resume", str(work / "stopped1.checkpoint"), nproc=2),
    }
    outputs.update({name: finished(process) for name, process in second.items()})
    return {"work": work, "stdout": outputs}


@pytest.mark.slow
def test_two_processes_follow_one_and_rank0_alone_writes(runs: dict) -> None:
    from tcurlora.models.registry import load_base_model

    work, stdout = runs["work"], runs["stdout"]
    one, two = work / "stopped1", work / "stopped2"
    assert sorted(p.name for p in two.iterdir()) == MODEL_FILES
    base = load_base_model(two)  # a valid model folder (spec, weights, fingerprint)
    card = json.loads((two / MODEL_SPEC_FILE).read_text())["card"]
    assert card["iterations"] == STOP and card["complete"] is False
    assert card["device"] == "2 processes (rank 0 on cpu)"
    assert base.spec.labels == {1: "Anterior", 2: "Posterior"}
    # rank 0 alone logs: each line once (rank 1's log is silent)
    for line in ("pretraining tiny-ddp on 2 processes", "held-out Dice:", f"checkpoint {STOP} ->"):
        assert stdout["stopped2"].count(line) == 1, (line, stdout["stopped2"])
    # the held-out volumes are split over the ranks (rank 1 scores hippocampus_003); the card holds both
    assert sorted(card["metrics"]["val_dice_per_volume"]) == ["hippocampus_001_0000", "hippocampus_003_0000"]
    # the same patches, the same loss of the effective batch: losses equal to the log's 5 decimals (measured);
    # a 2-process run whose Dice is not pooled over the ranks' gradients drifts to 8e-4 by iteration 4
    a, b = log_records(one), log_records(two)
    assert [r["iteration"] for r in b] == list(range(1, STOP + 1))
    assert np.allclose([r["loss"] for r in a], [r["loss"] for r in b], rtol=1e-5, atol=0), (a, b)
    assert b[1]["val_dice"] == pytest.approx(a[1]["val_dice"], abs=0.01)
    # fp32 weights of the checkpoints at iteration 3: DDP's gradient average rounds differently and AdamW
    # magnifies that on near-zero gradients: max 3.7e-4, mean 2.0e-6 (measured); an unscaled Dice
    # gradient gives a mean of 4.8e-5 already at iteration 2
    x, y = weights(work / "stopped1.checkpoint"), weights(work / "stopped2.checkpoint")
    assert np.abs(x - y).max() < 1e-3 and np.abs(x - y).mean() < 1e-5, (
        np.abs(x - y).max(),
        np.abs(x - y).mean(),
    )
    assert not [p.name for p in work.iterdir() if p.name.startswith(".")], "no temporary folder is left"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "stopped", "processes"),
    [("resumed1", "stopped2", "1"), ("resumed2", "stopped1", "2")],
    ids=["2-then-1", "1-then-2"],
)
def test_resume_with_another_number_of_processes(runs: dict, name: str, stopped: str, processes: str) -> None:
    from tcurlora.models.registry import load_base_model

    work, stdout = runs["work"], runs["stdout"]
    assert f"resuming from {work / f'{stopped}.checkpoint'} at iteration {STOP}" in stdout[name]
    assert stdout[name].count("held-out Dice:") == 1
    resumed, straight = work / name, work / "one"
    load_base_model(resumed)
    card = json.loads((resumed / MODEL_SPEC_FILE).read_text())["card"]
    assert card["iterations"] == ITERATIONS and card["complete"] is True
    assert card["device"] == ("cpu" if processes == "1" else "2 processes (rank 0 on cpu)")
    assert [r["iteration"] for r in log_records(resumed)] == list(range(1, ITERATIONS + 1))
    assert np.allclose(
        [r["loss"] for r in log_records(resumed)],
        [r["loss"] for r in log_records(straight)],
        rtol=1e-5,
        atol=0,
    )
    # fp16 weights of the finished models: one fp16 step (9.8e-4 in [1, 2)) apart at most, mean 4.7e-6
    # (measured, both directions); the model of iteration 3 is 6.9e-5 away from that of iteration 4
    x, y = weights(resumed), weights(straight)
    assert np.allclose(x, y, rtol=1e-3, atol=1e-3) and np.abs(x - y).mean() < 2e-5, np.abs(x - y).mean()


@pytest.mark.slow
def test_killed_rank_ends_the_run_without_model_folder(hippocampus_dir: Path, tmp_path: Path) -> None:
    write_recipe(tmp_path / "recipe.json")
    run = pretrain(tmp_path, hippocampus_dir.parent, "model", "--iterations", "100000", nproc=2)
    deadline = time.monotonic() + 180
    for line in run.stdout:
        if "checkpoint 2 ->" in line:
            break
        assert time.monotonic() < deadline, "no checkpoint within 180 s"
    kill_rank(run, 1)
    out, err = run.communicate(timeout=120)
    assert run.returncode != 0
    # rank 0 notices the closed connection, or torchrun's SIGTERM reaches it first: either way it says so
    assert "tcurlora pretrain: error: process 0 of 2 " in err, err
    assert (
        "another process of the run failed or was killed" in err
        or "torchrun stops every process when one of them fails" in err
    ), err
    assert "no model folder was written, the last checkpoint is kept" in err, err
    assert not (tmp_path / "model").exists(), "no model folder may be written when a rank dies"
    state = json.loads((tmp_path / "model.checkpoint" / PRETRAIN_STATE_FILE).read_text())
    assert state["iteration"] >= 2 and state["iteration"] % 2 == 0, state["iteration"]
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".model.")], (
        "no temporary model folder"
    )


def test_finish_checkpoint_is_refused_under_torchrun(monkeypatch, tmp_path: Path, capsys) -> None:
    from tcurlora.cli import main

    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    code = main(
        [
            "pretrain",
            "--config",
            str(write_recipe(tmp_path / "recipe.json")),
            "--output",
            str(tmp_path / "model"),
            "--finish-checkpoint",
            str(tmp_path / "ckpt"),
        ]
    )
    assert code != 0
    assert "--finish-checkpoint trains nothing: run it without torchrun" in capsys.readouterr().err
    assert not (tmp_path / "model").exists()
