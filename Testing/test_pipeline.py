"""End to end on real hippocampus MRI: finetune -> segment -> evaluate through the CLI and the worker."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from tcurlora.cli import main
from tcurlora.filenames import ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE, CHECKPOINT_FILE, JOB_SCHEMA

REPO_ROOT = Path(__file__).resolve().parents[1]


def write_job(path: Path, **job) -> Path:
    path.write_text(json.dumps({"schema": JOB_SCHEMA, **job}))
    return path


def hippocampus_cases(folder: Path, ids: list[int]) -> list[dict]:
    return [
        {
            "id": f"hippocampus_{i:03d}",
            "image": str(folder / f"imagesTr/hippocampus_{i:03d}.nii.gz"),
            "label": str(folder / f"labelsTr/hippocampus_{i:03d}.nii.gz"),
        }
        for i in ids
    ]


def read_events(text: str) -> list[dict]:
    from tcurlora.jobs.event_schema import parse_event_line

    events = [parse_event_line(line) for line in text.splitlines() if line.strip()]
    return [e for e in events if e is not None]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, hippocampus_dir) -> dict:
    """One short real fine-tuning run shared by the tests below (3 hippocampus cases, tCURLoRA)."""
    folder = hippocampus_dir
    work = tmp_path_factory.mktemp("pipeline")
    job = write_job(
        work / "job.json",
        command="finetune",
        base_model="preset:unetr-tiny",
        cases=hippocampus_cases(folder, [1, 3, 6]),
        label_names=["Anterior", "Posterior"],
        method="tcur",
        rank=4,
        iterations=30,
        batch_size=2,
        seed=0,
        checkpoint_every=10,
        output=str(work / "adapter"),
    )
    result = subprocess.run(
        [sys.executable, "-m", "tcurlora", "finetune", "--job", str(job)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO_ROOT,
    )
    return {"folder": folder, "work": work, "result": result, "events": read_events(result.stdout)}


@pytest.mark.slow
def test_finetune_lowers_loss_and_writes_loadable_adapter(trained):
    result, events = trained["result"], trained["events"]
    assert result.returncode == 0, result.stderr[-2000:]
    kinds = [e["event"] for e in events]
    assert kinds[0] == "started" and kinds[-1] == "done"
    assert kinds.count("progress") == 30 and kinds.count("checkpoint") == 2
    losses = [e["loss"] for e in events if e["event"] == "progress"]
    assert np.mean(losses[-5:]) < np.mean(losses[:5])
    adapter = Path(events[-1]["outputs"]["adapter"])
    config = json.loads((adapter / ADAPTER_CONFIG_FILE).read_text())
    assert config["label_names"] == ["Anterior", "Posterior"] and config["method"] == "tcur"
    assert not (adapter.parent / "adapter.checkpoint").exists()

    from tcurlora.adapters.io import load_adapter
    from tcurlora.models.registry import load_base_model

    base = load_base_model("preset:unetr-tiny")
    adapted = load_adapter(adapter, base.model)
    assert adapted.parameter_counts().trainable > 0


@pytest.mark.slow
def test_segment_held_out_case_keeps_geometry_and_evaluate_matches(trained):
    folder, work = trained["folder"], trained["work"]
    assert trained["result"].returncode == 0
    image = folder / "imagesTr/hippocampus_007.nii.gz"
    reference = folder / "labelsTr/hippocampus_007.nii.gz"
    output = work / "seg" / "hippocampus_007_seg.nii.gz"
    segment = [
        "segment",
        str(image),
        "--base-model",
        "preset:unetr-tiny",
        "--adapter",
        str(work / "adapter"),
        "--output",
        str(output),
    ]
    assert main([*segment, "--events"]) == 0
    source, written = sitk.ReadImage(str(image)), sitk.ReadImage(str(output))
    assert written.GetSize() == source.GetSize()
    assert written.GetSpacing() == source.GetSpacing()
    assert written.GetOrigin() == source.GetOrigin()
    assert written.GetDirection() == source.GetDirection()
    values = set(np.unique(sitk.GetArrayFromImage(written)).tolist())
    assert values <= {0, 1, 2}

    # evaluate vs an independent Dice computed here
    report = work / "eval.json"
    assert main(["evaluate", str(output), str(reference), "--json", str(report)]) == 0
    data = json.loads(report.read_text())
    pred, ref = sitk.GetArrayFromImage(written), sitk.GetArrayFromImage(sitk.ReadImage(str(reference)))
    (case,) = data["cases"]
    for label in (1, 2):
        p, r = pred == label, ref == label
        expected = 2 * (p & r).sum() / (p.sum() + r.sum()) if (p.sum() + r.sum()) else 1.0
        assert abs(case["classes"][data["classes"][str(label)]]["dice"] - expected) < 1e-9, (label, expected)

    # no overwrite without --force, and the file is untouched
    before = output.read_bytes()
    assert main(segment) == 3
    assert output.read_bytes() == before


@pytest.mark.slow
def test_sigterm_keeps_checkpoint_and_resume_finishes(tmp_path, hippocampus_dir):
    output = tmp_path / "adapter"
    job = write_job(
        tmp_path / "job.json",
        command="finetune",
        base_model="preset:unetr-tiny",
        cases=hippocampus_cases(hippocampus_dir, [1, 3]),
        label_names=["Anterior", "Posterior"],
        method="tcur",
        rank=4,
        iterations=40,
        batch_size=1,
        checkpoint_every=2,
        output=str(output),
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "tcurlora", "finetune", "--job", str(job)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    lines = []
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line)
        if '"checkpoint"' in line:
            process.send_signal(signal.SIGTERM)
            break
    out, err = process.communicate(timeout=120)
    events = read_events("".join(lines) + out)
    assert process.returncode == 130, err[-2000:]
    assert events[-1]["event"] == "error" and events[-1]["kind"] == "cancelled"
    assert not output.exists(), "a cancelled run must not leave an adapter"
    checkpoint = json.loads((tmp_path / "adapter.checkpoint" / CHECKPOINT_FILE).read_text())
    stopped_at = checkpoint["iteration"]
    assert stopped_at >= 2

    resumed = subprocess.run(
        [sys.executable, "-m", "tcurlora", "finetune", "--job", str(job), "--resume"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO_ROOT,
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    progress = [e for e in read_events(resumed.stdout) if e["event"] == "progress"]
    assert progress[0]["iteration"] == stopped_at + 1 and progress[-1]["iteration"] == 40
    assert (output / ADAPTER_WEIGHTS_FILE).is_file()


def _bad_label_copy(folder: Path, tmp_path: Path, value: float, dtype=np.uint8) -> Path:
    """A real hippocampus label with one voxel set to `value` (same geometry)."""
    label = sitk.ReadImage(str(folder / "labelsTr/hippocampus_001.nii.gz"))
    array = sitk.GetArrayFromImage(label).astype(dtype)
    array[array.shape[0] // 2, array.shape[1] // 2, array.shape[2] // 2] = value
    bad = sitk.GetImageFromArray(array)
    bad.CopyInformation(label)
    path = tmp_path / f"bad_label_{value}.nii.gz"
    sitk.WriteImage(bad, str(path))
    return path


@pytest.mark.parametrize(
    ("label_value", "dtype", "problem"),
    [(7, np.uint8, "out of range"), (1.5, np.float32, "non-integer")],
)
def test_finetune_bad_label_fails_before_training_and_writes_nothing(
    tmp_path, hippocampus_dir, capsys, label_value, dtype, problem
):
    bad = _bad_label_copy(hippocampus_dir, tmp_path, label_value, dtype)
    output = tmp_path / "adapter"
    code = main(
        [
            "finetune",
            "--base-model",
            "preset:unetr-tiny",
            "--case",
            str(hippocampus_dir / "imagesTr/hippocampus_001.nii.gz"),
            str(bad),
            "--labels",
            "Anterior",
            "Posterior",
            "--iterations",
            "5",
            "-o",
            str(output),
            "--events",
        ]
    )
    events = read_events(capsys.readouterr().out)
    assert code == 2
    assert events[-1]["event"] == "error" and events[-1]["kind"] == "input_error"
    assert events[-1]["path"] == str(bad) and problem in events[-1]["message"].lower()
    assert not any(e["event"] == "progress" for e in events)
    assert sorted(p.name for p in tmp_path.iterdir()) == [bad.name]


def test_finetune_refuses_existing_output_and_keeps_it(tmp_path, hippocampus_dir, capsys):
    output = tmp_path / "adapter"
    output.mkdir()
    (output / "keep.txt").write_text("user data")
    code = main(
        [
            "finetune",
            "--base-model",
            "preset:unetr-tiny",
            "--data",
            str(hippocampus_dir),
            "--num-cases",
            "2",
            "--iterations",
            "5",
            "-o",
            str(output),
            "--events",
        ]
    )
    events = read_events(capsys.readouterr().out)
    assert code == 3 and events[-1]["kind"] == "output_exists" and events[-1]["path"] == str(output)
    assert [p.name for p in output.iterdir()] == ["keep.txt"]


def _segment_error(volume: Path, output: Path, capsys) -> tuple[int, dict]:
    """Run `tcurlora segment` on `volume`; its exit code and last event."""
    code = main(["segment", str(volume), "--base-model", "preset:unetr-tiny", "-o", str(output), "--events"])
    return code, read_events(capsys.readouterr().out)[-1]


def test_segment_missing_and_corrupt_inputs_name_the_file(tmp_path, capsys):
    code, error = _segment_error(tmp_path / "nope.nii.gz", tmp_path / "out.nii.gz", capsys)
    assert code == 2 and error["event"] == "error" and error["path"].endswith("nope.nii.gz")
    corrupt = tmp_path / "corrupt.nii.gz"
    corrupt.write_bytes(b"\x1f\x8b\x08\x00 definitely not a volume")
    code, error = _segment_error(corrupt, tmp_path / "out.nii.gz", capsys)
    assert code == 2 and error["path"].endswith("corrupt.nii.gz")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corrupt.nii.gz"]


@pytest.mark.slow
def test_eta_counts_only_this_run_and_shrinks(trained):
    """ETA = time per iteration of this run x iterations left: non-increasing within noise, 0 at the end."""
    progress = [e for e in trained["events"] if e["event"] == "progress"]
    etas = [e["eta_s"] for e in progress]
    assert etas[-1] == 0.0
    # just after the checkpoint at iteration 20 the estimate must not collapse towards zero
    per_iteration_before = etas[8] / (30 - 9)
    per_iteration_after = etas[20] / (30 - 21)
    assert per_iteration_after > 0.5 * per_iteration_before
