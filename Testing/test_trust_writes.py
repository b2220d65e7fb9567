"""A full disk, a planted link or a crafted JSON file never leaves a file that looks finished, never
writes through a link, and ends in a clear error (exit 2 for bad input, 3 for an output problem).

A full disk is simulated with RLIMIT_FSIZE in a child process (SIGXFSZ ignored): every write past
the limit fails with EFBIG, as writes to a full disk fail with ENOSPC, with no root or mount needed.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from trust_testing import TINY, hippo_case, run, tiny_job, write_job

from tcurlora.errors import DeviceOutOfMemoryError, InputError, OutputExistsError
from tcurlora.filenames import ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE, CHECKPOINT_FILE, checkpoint_dir
from tcurlora.output_lock import OutputLock, lock_path

ROOT = Path(__file__).resolve().parents[1]
FULL_DISK = """
import resource, runpy, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
limit = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
sys.argv = ["tcurlora", *sys.argv[2:]]
runpy.run_module("tcurlora", run_name="__main__")
"""


def run_on_full_disk(limit: int, *argv: object) -> tuple[int, list[dict], str]:
    """`python -m tcurlora ARGV` where no file may grow past `limit` bytes: (exit code, events, stderr)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", FULL_DISK, str(limit), *map(str, argv)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        cwd=ROOT,
    )
    events = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    return done.returncode, events, done.stderr


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(os, "fork") or sys.platform == "win32", reason="RLIMIT_FSIZE is POSIX")
def test_segment_on_a_full_disk_exits_3_and_leaves_no_file(tmp_path, hippocampus_dir):
    image = hippo_case(hippocampus_dir)["image"]
    out = tmp_path / "S"
    out.mkdir()
    code, events, err = run_on_full_disk(
        3000, "segment", image, "--base-model", TINY, "--device", "cpu", "-o", out / "la_seg.nii", "--events"
    )
    assert code == 3, err
    assert events[-1]["event"] == "error" and events[-1]["kind"] == "output_write_failed", events[-1]
    assert "not written completely" in events[-1]["message"] and "3000 of" in events[-1]["message"]
    assert events[-1]["path"] == str(out / "la_seg.nii")
    assert not any(e["event"] == "done" for e in events)
    assert names(out) == [], "no truncated file, no temporary"


@pytest.mark.skipif(sys.platform == "win32", reason="RLIMIT_FSIZE is POSIX")
def test_every_label_format_is_checked_after_writing(tmp_path):
    """ITK's NIfTI writer succeeds on a short write; the written file is read back before the rename."""
    script = """
import resource, signal, sys, numpy as np, SimpleITK as sitk
from pathlib import Path
from tcurlora.data.io import write_labelmap
from tcurlora.errors import OutputWriteError
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
folder = Path(sys.argv[1])
reference = sitk.Image(64, 64, 48, sitk.sitkFloat32)
labels = np.random.default_rng(0).integers(0, 3, (48, 64, 64)).astype(np.uint8)
resource.setrlimit(resource.RLIMIT_FSIZE, (5000, 5000))
for extension in (".nii", ".nii.gz", ".nrrd", ".seg.nrrd", ".mha"):
    try:
        write_labelmap(labels, reference, folder / ("seg" + extension))
        print(extension, "written")
    except OutputWriteError as error:
        print(extension, error.exit_code, error.kind)
"""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, env=env, timeout=60
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.split("\n")
    for extension in (".nii", ".nii.gz", ".nrrd", ".seg.nrrd", ".mha"):
        assert f"{extension} 3 output_write_failed" in lines, done.stdout
    assert names(tmp_path) == []


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="RLIMIT_FSIZE is POSIX")
def test_a_full_disk_while_writing_a_checkpoint_or_adapter_exits_3_and_leaves_no_temporary(
    tmp_path, hippocampus_dir
):
    output = tmp_path / "adapter"
    job = write_job(tmp_path / "job.json", tiny_job(hippocampus_dir, output, checkpoint_every=1))
    before = names(tmp_path)
    code, events, err = run_on_full_disk(20_000, "finetune", "--job", job)
    assert code == 3, err
    assert events[-1]["kind"] == "output_write_failed", events[-1]
    assert "cannot write" in events[-1]["message"] and "File too large" in events[-1]["message"]
    assert events[-1]["path"] in (str(output), str(checkpoint_dir(output)))
    assert "Traceback" not in err
    assert names(tmp_path) == before, "no adapter, checkpoint, temporary folder or lock left"


def test_a_link_planted_at_the_lock_path_is_refused_and_its_target_kept(tmp_path, capsys, hippocampus_dir):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    victim.chmod(0o600)
    output = tmp_path / "adapter"
    lock_path(output).symlink_to(victim)
    job = write_job(tmp_path / "job.json", tiny_job(hippocampus_dir, output))
    code, events, _, _ = run(capsys, "finetune", "--job", job)
    assert code == 3 and events[-1]["kind"] == "output_exists" and "lock path" in events[-1]["message"]
    assert victim.read_text() == "precious\n" and stat.S_IMODE(victim.stat().st_mode) == 0o600
    assert lock_path(output).is_symlink() and not output.exists()

    lock_path(output).unlink()
    os.link(victim, lock_path(output))  # a hard link: O_NOFOLLOW does not see it
    with pytest.raises(OutputExistsError, match="lock path"):
        OutputLock(output).acquire()
    assert victim.read_text() == "precious\n" and stat.S_IMODE(victim.stat().st_mode) == 0o600
    lock_path(output).unlink()
    os.mkfifo(lock_path(output))
    with pytest.raises(OutputExistsError, match="lock path"):
        OutputLock(output).acquire()


def test_a_failed_run_removes_the_folders_its_lock_created(tmp_path, capsys, hippocampus_dir):
    output = tmp_path / "a" / "b" / "adapter"
    job = write_job(tmp_path / "job.json", tiny_job(hippocampus_dir, output, resume=True))
    code, events, _, _ = run(capsys, "finetune", "--job", job)
    assert code == 2 and "nothing to resume" in events[-1]["message"]
    assert names(tmp_path) == ["job.json"], "no output folder is left by a failed run"
    (tmp_path / "kept").mkdir()
    with OutputLock(tmp_path / "kept" / "new" / "adapter"):
        assert (tmp_path / "kept" / "new").is_dir()
    assert names(tmp_path / "kept") == [], "only the folders the lock created are removed"


def test_a_stale_probe_is_removed_and_a_probe_leaves_nothing(tmp_path, capsys, hippocampus_dir):
    from tcurlora.outputs import check_segmentation_output

    stale = tmp_path / ".tcurlora-probe-abc123"
    stale.write_text("")
    old = time.time() - 3600
    os.utime(stale, (old, old))
    fresh = tmp_path / ".tcurlora-probe-xyz789"  # another run's, probing now
    fresh.write_text("")
    check_segmentation_output(tmp_path / "seg.nii.gz", force=True)
    assert names(tmp_path) == [".tcurlora-probe-xyz789"]


def test_a_folder_segmented_into_itself_does_not_segment_its_own_segmentations(tmp_path, hippocampus_dir):
    from tcurlora.cli import build_parser
    from tcurlora.commands import segment as segment_cmd
    from tcurlora.data.io import write_labelmap

    folder = tmp_path / "cases"
    folder.mkdir()
    image = shutil.copy(hippo_case(hippocampus_dir)["image"], folder / "c1.nii.gz")
    shutil.copy(hippo_case(hippocampus_dir)["label"], folder / "c1_label.nii.gz")  # the user's, unmarked
    reference = sitk.ReadImage(str(image))
    write_labelmap(
        np.zeros(sitk.GetArrayViewFromImage(reference).shape, np.uint8), reference, folder / "c1_seg.nii.gz"
    )
    args = build_parser().parse_args(
        ["segment", str(folder), "--base-model", TINY, "-o", str(folder), "--force"]
    )
    job = segment_cmd.build_job(args)
    assert [p[0].name for p in job.inputs] == ["c1.nii.gz", "c1_label.nii.gz"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('"iterations": 2, "iterations": 3', "duplicate key 'iterations'"),
        ('"seed": ' + "7" * 5000, "5000 digits"),
        ('"nested": ' + "[" * 100_000 + "]" * 100_000, "nests deeper than 64 levels"),
        ('"grad_clip": NaN', "NaN is not a number"),
        ('"grad_clip": 1e999', "too large"),
        ('"iterations": 1000000000000', "'iterations': must be <= 1000000"),
        ('"batch_size": 100000', "'batch_size': must be <= 1024"),
    ],
)
def test_crafted_job_files_are_refused_with_exit_2(tmp_path, capsys, hippocampus_dir, text, message):
    job = tiny_job(hippocampus_dir, tmp_path / "adapter")
    del job["iterations"], job["batch_size"]
    path = tmp_path / "job.json"
    path.write_text(json.dumps(job)[:-1] + ", " + text + "}")
    started = time.monotonic()
    code, events, _, err = run(capsys, "finetune", "--job", path)
    assert code == 2 and message in events[-1]["message"], events
    assert events[-1]["path"] == str(path) and "Traceback" not in err
    assert time.monotonic() - started < 10
    assert names(tmp_path) == ["job.json"]


def test_duplicate_keys_in_an_adapter_config_are_refused(tmp_path, tiny_adapter):
    from tcurlora.adapters.io import read_adapter_config

    adapter = shutil.copytree(tiny_adapter, tmp_path / "adapter")
    config = adapter / ADAPTER_CONFIG_FILE
    text = config.read_text()
    config.write_text(text.replace('"label_names":', '"label_names": ["Z", "Y"], "label_names":', 1))
    with pytest.raises(InputError, match="duplicate key 'label_names'"):
        read_adapter_config(adapter)


def test_a_checkpoint_at_a_negative_iteration_is_refused(tmp_path, capsys, hippocampus_dir):
    from tcurlora.training.checkpoint import read_checkpoint

    folder = tmp_path / "adapter.checkpoint"
    folder.mkdir()
    (folder / CHECKPOINT_FILE).write_text(json.dumps({"iteration": -5, "losses": [], "val_history": []}))
    with pytest.raises(InputError, match=r"iteration -5 < 0"):
        read_checkpoint(folder)
    job = write_job(tmp_path / "job.json", tiny_job(hippocampus_dir, tmp_path / "adapter", resume=True))
    code, events, _, err = run(capsys, "finetune", "--job", job)
    assert code == 2 and "iteration -5 < 0" in events[-1]["message"] and "Traceback" not in err


def test_a_symlink_loop_as_input_is_refused_with_exit_2(tmp_path, capsys, hippocampus_dir):
    (tmp_path / "loop.nii.gz").symlink_to("loop.nii.gz")
    label = hippo_case(hippocampus_dir)["label"]
    job = write_job(
        tmp_path / "job.json",
        tiny_job(hippocampus_dir, tmp_path / "adapter", cases=[{"image": "loop.nii.gz", "label": label}]),
    )
    code, events, _, err = run(capsys, "finetune", "--job", job)
    assert code == 2 and "leads back to itself" in events[-1]["message"] and "Traceback" not in err
    segment = write_job(
        tmp_path / "seg.json",
        {"command": "segment", "base_model": TINY, "inputs": ["loop.nii.gz"], "output_dir": "out"},
    )
    code, events, _, _ = run(capsys, "segment", "--job", segment)
    assert (
        code == 2
        and "'inputs[0]'" in events[-1]["message"]
        and "leads back to itself" in events[-1]["message"]
    )
    code, events, _, _ = run(
        capsys,
        "segment",
        tmp_path / "loop.nii.gz",
        "--base-model",
        TINY,
        "-o",
        tmp_path / "s.nii.gz",
        "--events",
    )
    assert code == 2 and "symbolic link to nothing" in events[-1]["message"]


def test_segment_out_of_memory_advice_names_what_segment_can_change(tmp_path, hippocampus_dir):
    import torch

    from tcurlora.infer import segment_file
    from tcurlora.models.registry import load_base_model

    class Exhausted(torch.nn.Module):
        """Stands for a network too large for the memory left: the allocator's own error."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise RuntimeError(
                "[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory"
            )

    spec = load_base_model(TINY).spec
    image = hippo_case(hippocampus_dir)["image"]
    with pytest.raises(DeviceOutOfMemoryError) as caught:
        segment_file(Exhausted(), image, tmp_path / "s.nii.gz", spec, device="cpu")
    message = str(caught.value)
    assert "patch_size" not in message and "batch_size" not in message
    assert "segmenting this volume on cpu" in message and caught.value.path == image
    assert names(tmp_path) == []


def test_a_folder_or_fifo_in_place_of_the_adapter_weights_is_named(tmp_path, tiny_adapter):
    from tcurlora.adapters.io import read_adapter_weights

    adapter = shutil.copytree(tiny_adapter, tmp_path / "adapter")
    weights = adapter / ADAPTER_WEIGHTS_FILE
    weights.unlink()
    weights.mkdir()
    with pytest.raises(InputError, match="not a regular file"):
        read_adapter_weights(adapter)
    weights.rmdir()
    os.mkfifo(weights)
    with pytest.raises(InputError, match="not a regular file"):
        read_adapter_weights(adapter)
    weights.unlink()
    with pytest.raises(InputError, match="is missing"):
        read_adapter_weights(adapter)
