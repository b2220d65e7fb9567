"""Nothing of the user's is lost: --force replaces only what tcurlora wrote, and every output problem
(not ours, not writable, locked by another run) is found before the first iteration."""

from __future__ import annotations

import json
import os
import shutil
import stat
import tempfile
from pathlib import Path

import pytest
from trust_testing import TINY, hippo_case, kinds, run, tiny_job, write_job

from tcurlora.filenames import ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE, CHECKPOINT_FILE, TRAINING_LOG_FILE
from tcurlora.fsutil import stale_siblings, sweep_stale
from tcurlora.output_lock import OutputLock, lock_path


def finetune_args(folder: Path, output: Path, *extra: str) -> list[str]:
    case = hippo_case(folder)
    return [
        "finetune",
        "--base-model",
        TINY,
        "--case",
        case["image"],
        case["label"],
        "--labels",
        "Anterior",
        "Posterior",
        "--iterations",
        "2",
        "--batch-size",
        "1",
        "--rank",
        "4",
        "--device",
        "cpu",
        "--events",
        "-o",
        str(output),
        *extra,
    ]


def assert_refused_before_work(
    code: int, events: list[dict], exit_code: int, kind: str, message: str
) -> None:
    assert code == exit_code, events
    assert kinds(events) == ["error"], "the problem must be found before the model is even loaded"
    assert events[0]["kind"] == kind and message in events[0]["message"], events[0]


@pytest.fixture
def unwritable_dir(tmp_path) -> Path:
    """A folder this process cannot create files in (chmod; /sys when running as root)."""
    folder = tmp_path / "readonly"
    folder.mkdir()
    folder.chmod(0o555)
    for candidate in (folder, Path("/sys")):
        try:
            fd, probe = tempfile.mkstemp(dir=candidate)
        except OSError:
            yield candidate
            break
        os.close(fd)
        os.unlink(probe)
    else:
        pytest.skip("no unwritable folder available")
    folder.chmod(0o755)


def test_force_never_deletes_a_folder_tcurlora_did_not_write(tmp_path, capsys, hippocampus_dir):
    folder = tmp_path / "d"
    folder.mkdir()
    (folder / "important.txt").write_text("x\n")
    code, events, _, _ = run(capsys, *finetune_args(hippocampus_dir, folder, "--force"))
    assert_refused_before_work(code, events, 3, "output_exists", "not an adapter written by tcurlora")
    assert (folder / "important.txt").read_text() == "x\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"], "no lock, checkpoint or temporary left"


@pytest.mark.slow
def test_force_replaces_a_clean_adapter_but_not_one_holding_user_files(
    tmp_path, capsys, hippocampus_dir, tiny_adapter
):
    with_notes = shutil.copytree(tiny_adapter, tmp_path / "with_notes")
    (with_notes / "notes.txt").write_text("mine")
    code, events, _, _ = run(capsys, *finetune_args(hippocampus_dir, with_notes, "--force"))
    assert_refused_before_work(code, events, 3, "output_exists", "also holds 'notes.txt'")
    assert (with_notes / "notes.txt").read_text() == "mine"

    clean = shutil.copytree(tiny_adapter, tmp_path / "clean")
    before = json.loads((clean / ADAPTER_CONFIG_FILE).read_text())
    code, events, _, _ = run(capsys, *finetune_args(hippocampus_dir, clean, "--force", "--seed", "7"))
    assert code == 0 and events[-1]["event"] == "done"
    after = json.loads((clean / ADAPTER_CONFIG_FILE).read_text())
    assert after["seed"] == 7 and before["seed"] == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clean", "with_notes"]


def test_an_existing_file_as_adapter_output_is_refused_before_training(tmp_path, capsys, hippocampus_dir):
    target = tmp_path / "adapter"
    target.write_text("user data")
    code, events, _, _ = run(capsys, *finetune_args(hippocampus_dir, target))
    assert_refused_before_work(
        code, events, 3, "output_exists", "exists and is a file, not an adapter folder"
    )
    code, events, _, _ = run(capsys, *finetune_args(hippocampus_dir, target, "--force"))
    assert_refused_before_work(
        code, events, 3, "output_exists", "exists and is a file, not an adapter folder"
    )
    assert target.read_text() == "user data"


def test_unwritable_output_is_found_before_training(tmp_path, capsys, hippocampus_dir, unwritable_dir):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where a folder should be")
    for output in (blocker / "adapter", unwritable_dir / "adapter"):
        code, events, _, _ = run(capsys, *finetune_args(hippocampus_dir, output))
        assert_refused_before_work(code, events, 2, "output_not_writable", "cannot")
        assert str(output.parent) in events[0]["message"] or events[0]["path"].startswith(str(output.parent))
    assert blocker.read_text() == "a file where a folder should be"


@pytest.mark.slow
def test_segment_and_evaluate_check_their_outputs_before_work(
    tmp_path, capsys, hippocampus_dir, unwritable_dir
):
    image = hippo_case(hippocampus_dir)["image"]
    label = hippo_case(hippocampus_dir)["label"]
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    for output in (blocker / "seg.nii.gz", unwritable_dir / "seg.nii.gz"):
        code, events, _, _ = run(capsys, "segment", image, "--base-model", TINY, "-o", output, "--events")
        assert_refused_before_work(code, events, 2, "output_not_writable", "cannot")

    users = tmp_path / "user_seg.nii.gz"
    shutil.copy(label, users)
    code, events, _, _ = run(
        capsys, "segment", image, "--base-model", TINY, "-o", users, "--force", "--events"
    )
    assert_refused_before_work(code, events, 3, "output_exists", "not a segmentation written by tcurlora")
    assert users.read_bytes() == Path(label).read_bytes()
    ours = tmp_path / "ours.nii.gz"
    assert run(capsys, "segment", image, "--base-model", TINY, "-o", ours)[0] == 0
    first = ours.read_bytes()
    assert run(capsys, "segment", image, "--base-model", TINY, "-o", ours, "--force")[0] == 0
    assert ours.read_bytes() != b"" and len(first) > 0

    for output in (blocker / "r.json", unwritable_dir / "r.json"):
        code, _, out, err = run(capsys, "evaluate", label, label, "--json", output)
        assert code == 2 and "cannot" in err and out == "", "refused before evaluating"
    notes = tmp_path / "notes.md"
    notes.write_text("my notes")
    code, _, out, err = run(capsys, "evaluate", label, label, "--markdown", notes, "--force")
    assert code == 3 and "not a report written by tcurlora" in err and out == ""
    assert notes.read_text() == "my notes"
    report = tmp_path / "eval.json"
    assert run(capsys, "evaluate", label, label, "--json", report)[0] == 0
    assert run(capsys, "evaluate", label, label, "--json", report, "--force")[0] == 0


def test_a_second_run_on_the_same_output_is_refused_while_the_first_holds_it(
    tmp_path, capsys, hippocampus_dir
):
    output = tmp_path / "adapter"
    with OutputLock(output):
        code, events, _, _ = run(capsys, *finetune_args(hippocampus_dir, output))
        assert_refused_before_work(
            code, events, 3, "output_locked", "another tcurlora run is writing this output"
        )
        assert lock_path(output).is_file()
    assert not lock_path(output).exists(), "the lock file is removed on release"
    assert sorted(p.name for p in tmp_path.iterdir()) == [], "the refused run left nothing"


@pytest.mark.slow
def test_a_run_sweeps_its_own_stale_temporaries_only_and_modes_follow_the_umask(
    tmp_path, capsys, hippocampus_dir
):
    output = tmp_path / "adapter"
    stale = [
        tmp_path / ".adapter.k3j2h1g0.tmp",
        tmp_path / ".adapter.checkpoint.a1b2c3d4.tmp",
        tmp_path / ".adapter.checkpoint.old-4242",
    ]
    others = [
        tmp_path / ".adapter.b.k3j2h1g0.tmp",
        tmp_path / ".other.k3j2h1g0.tmp",
        tmp_path / "adapter.tmp",
    ]
    for folder in stale + others:
        folder.mkdir()
        (folder / ADAPTER_WEIGHTS_FILE).write_bytes(b"half")
    old_mask = os.umask(0o027)
    try:
        code, events, _, _ = run(capsys, *finetune_args(hippocampus_dir, output))
        segmentation = tmp_path / "seg" / "s.nii.gz"
        image = hippo_case(hippocampus_dir)["image"]
        assert (
            run(capsys, "segment", image, "--base-model", TINY, "--adapter", output, "-o", segmentation)[0]
            == 0
        )
    finally:
        os.umask(old_mask)
    assert stat.S_IMODE(segmentation.stat().st_mode) == 0o640
    assert stat.S_IMODE(segmentation.parent.stat().st_mode) == 0o750
    assert code == 0, events
    assert not any(p.exists() for p in stale)
    assert all((p / ADAPTER_WEIGHTS_FILE).read_bytes() == b"half" for p in others), "not ours to remove"
    assert stat.S_IMODE(output.stat().st_mode) == 0o750
    for name in (ADAPTER_WEIGHTS_FILE, ADAPTER_CONFIG_FILE, TRAINING_LOG_FILE):
        assert stat.S_IMODE((output / name).stat().st_mode) == 0o640, name
    assert not lock_path(output).exists() and not (tmp_path / "adapter.checkpoint").exists()
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == [
        "adapter",
        "adapter.tmp",
        "seg",
    ]


def test_an_interrupted_folder_swap_is_restored_not_deleted(tmp_path):
    final = tmp_path / "adapter.checkpoint"
    old = tmp_path / ".adapter.checkpoint.old-999"
    old.mkdir()
    (old / CHECKPOINT_FILE).write_text("{}")
    half = tmp_path / ".adapter.checkpoint.abcdefgh.tmp"
    half.mkdir()
    assert stale_siblings(final) == [half, old]
    sweep_stale(final)
    assert (final / CHECKPOINT_FILE).read_text() == "{}" and not half.exists() and not old.exists()


def test_job_file_output_checks_reach_the_worker_protocol(tmp_path, capsys, hippocampus_dir):
    folder = tmp_path / "d"
    folder.mkdir()
    (folder / "keep.txt").write_text("k")
    job = write_job(tmp_path / "job.json", tiny_job(hippocampus_dir, folder, force=True))
    code, events, _, _ = run(capsys, "finetune", "--job", job)
    assert_refused_before_work(code, events, 3, "output_exists", "not an adapter written by tcurlora")
    assert events[0]["path"] == str(folder) and (folder / "keep.txt").read_text() == "k"


def test_a_model_folder_is_replaced_only_when_tcurlora_wrote_it(tmp_path):
    from tcurlora.errors import OutputExistsError
    from tcurlora.models.registry import load_base_model, save_model_folder

    base = load_base_model(TINY)
    users = tmp_path / "users"
    users.mkdir()
    (users / "thesis.tex").write_text("years of work")
    with pytest.raises(OutputExistsError, match="not a model folder written by tcurlora"):
        save_model_folder(users, base.model, base.spec, force=True)
    assert (users / "thesis.tex").read_text() == "years of work"
    ours = save_model_folder(tmp_path / "ours", base.model, base.spec)
    (ours / "notes.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match="also holds 'notes.txt'"):
        save_model_folder(ours, base.model, base.spec, force=True)
    (ours / "notes.txt").unlink()
    assert save_model_folder(ours, base.model, base.spec, force=True) == ours
    assert load_base_model(ours).fingerprint == base.fingerprint


def test_an_adapter_left_aside_by_a_killed_swap_is_restored_before_the_output_check(
    tmp_path, capsys, hippocampus_dir, tiny_adapter
):
    aside = shutil.copytree(tiny_adapter, tmp_path / ".adapter.old-999")
    shutil.copytree(tiny_adapter, tmp_path / ".adapter.x1y2z3w4.tmp")  # the new one, half-renamed
    code, events, _, _ = run(capsys, *finetune_args(hippocampus_dir, tmp_path / "adapter"))
    assert_refused_before_work(code, events, 3, "output_exists", "adapter folder exists")
    assert not aside.exists() and (tmp_path / "adapter" / ADAPTER_WEIGHTS_FILE).is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]
