"""--resume continues only the same job, ends where an uninterrupted run ends, and reads checkpoints
safely: damage or a pickle is a user error (exit 2) naming the file, never an internal one."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from trust_testing import hippo_case, kinds, run, tiny_job, write_job

from tcurlora.errors import CancelledError
from tcurlora.filenames import (
    ADAPTER_CONFIG_FILE,
    ADAPTER_WEIGHTS_FILE,
    BEST_WEIGHTS_FILE,
    CHECKPOINT_FILE,
    OPTIMIZER_FILE,
    TEACHER_WEIGHTS_FILE,
    TRAINING_LOG_FILE,
    checkpoint_dir,
)
from tcurlora.finetuning import run_finetune
from tcurlora.jobs.cancel import CancelToken
from tcurlora.jobs.events import RecordingSink
from tcurlora.jobs.schema import FinetuneJob

SEED = 2**63 - 1  # the largest seed the schema takes must also train


class StopAtFirstCheckpoint(RecordingSink):
    """Cancels the run right after its first checkpoint, as a user pressing Stop would."""

    def __init__(self, token: CancelToken):
        super().__init__()
        self.token = token

    def checkpoint(self, iteration: int, path: str) -> None:
        super().checkpoint(iteration, path)
        self.token.cancel()


def base_job(folder: Path, output: Path, **changes) -> dict:
    return tiny_job(folder, output, iterations=4, checkpoint_every=2, seed=SEED, **changes)


def interrupted(job: dict, where: Path) -> Path:
    """Run `job` until its first checkpoint (iteration 2) and stop; the checkpoint folder."""
    token = CancelToken()
    with pytest.raises(CancelledError):
        run_finetune(FinetuneJob.from_dict(job, where), StopAtFirstCheckpoint(token), token)
    checkpoint = checkpoint_dir(job["output"])
    assert json.loads((checkpoint / CHECKPOINT_FILE).read_text())["iteration"] == 2
    assert not Path(job["output"]).exists()
    return checkpoint


def losses(adapter: Path) -> list[float]:
    lines = (adapter / TRAINING_LOG_FILE).read_text().splitlines()
    return [json.loads(line)["loss"] for line in lines if "loss" in json.loads(line)]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, hippocampus_dir) -> tuple[dict, Path]:
    """A job stopped at its first checkpoint (tests copy the checkpoint before using it)."""
    work = tmp_path_factory.mktemp("resume")
    job = base_job(hippocampus_dir, work / "adapter")
    return job, interrupted(job, work)


def resume_copy(job: dict, checkpoint: Path, tmp_path: Path, name: str, **changes) -> tuple[Path, Path]:
    """A copy of the checkpoint under a new output, and the job file that resumes it (with `changes`)."""
    output = tmp_path / name
    shutil.copytree(checkpoint, tmp_path / f"{name}.checkpoint")
    return write_job(tmp_path / f"{name}.json", {**job, "output": str(output), **changes}), output


def straight_and_resumed(job: dict, saved, tmp_path, capsys):
    """The same job run uninterrupted, and resumed from the checkpoint `saved`: both output folders and
    the resumed run's events."""
    straight = tmp_path / "straight"
    code, events, _, _ = run(
        capsys, "finetune", "--job", write_job(tmp_path / "s.json", {**job, "output": str(straight)})
    )
    assert code == 0, events[-1]
    job_file, resumed = resume_copy(job, saved, tmp_path, "resumed")
    code, events, _, _ = run(capsys, "finetune", "--job", job_file, "--resume")
    assert code == 0, events[-1]
    return straight, resumed, events


@pytest.mark.slow
def test_a_resumed_run_ends_exactly_where_an_uninterrupted_one_does(
    tmp_path, capsys, hippocampus_dir, checkpoint
):
    job, saved = checkpoint
    straight = tmp_path / "straight"
    assert (
        run(capsys, "finetune", "--job", write_job(tmp_path / "s.json", {**job, "output": str(straight)}))[0]
        == 0
    )
    job_file, resumed = resume_copy(job, saved, tmp_path, "resumed")
    code, events, _, _ = run(capsys, "finetune", "--job", job_file, "--resume")
    assert code == 0, events[-1]
    assert [e["iteration"] for e in events if e["event"] == "progress"] == [3, 4]
    assert losses(resumed) == losses(straight)
    a, b = load_file(str(straight / ADAPTER_WEIGHTS_FILE)), load_file(str(resumed / ADAPTER_WEIGHTS_FILE))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    record = json.loads((resumed / ADAPTER_CONFIG_FILE).read_text())
    assert record["seed"] == SEED and record["training"]["seed"] == SEED


@pytest.mark.slow
def test_a_resumed_run_with_validation_keeps_the_best_adapter_of_an_uninterrupted_one(
    tmp_path, capsys, hippocampus_dir
):
    """The checkpoint holds the data sampler's state (no batches drawn again) and the best validated
    adapter, so a resumed run keeps the adapter an uninterrupted one keeps."""
    cases = [hippo_case(hippocampus_dir, 1), hippo_case(hippocampus_dir, 3)]
    job = base_job(hippocampus_dir, tmp_path / "adapter", cases=cases, val_case_ids=["hippocampus_003"])
    saved = interrupted(job, tmp_path)
    meta = json.loads((saved / CHECKPOINT_FILE).read_text())
    assert meta["sampler"]["sampler"]["bit_generator"] == "PCG64" and len(meta["sampler"]["transforms"]) > 5
    assert (saved / BEST_WEIGHTS_FILE).is_file()
    state = torch.load(str(saved / OPTIMIZER_FILE), weights_only=True)
    assert {"optimizer", "scaler", "torch_rng"} <= set(state) and state["torch_rng"].dtype == torch.uint8
    straight, resumed, events = straight_and_resumed(job, saved, tmp_path, capsys)
    a, b = load_file(str(straight / ADAPTER_WEIGHTS_FILE)), load_file(str(resumed / ADAPTER_WEIGHTS_FILE))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    first, second = (
        json.loads((p / ADAPTER_CONFIG_FILE).read_text())["metrics"] for p in (straight, resumed)
    )
    assert first["best_iteration"] <= 2, "the best adapter comes from before the interruption (seeded run)"
    assert first["best_iteration"] == second["best_iteration"] and first["val_dice"] == second["val_dice"]
    assert losses(resumed) == losses(straight)


@pytest.mark.slow
@pytest.mark.parametrize("unlabeled_loss", ["consistency", "pseudo_label"])
def test_a_resumed_semi_supervised_run_ends_exactly_where_an_uninterrupted_one_does(
    tmp_path, capsys, hippocampus_dir, unlabeled_loss
):
    """With --unlabeled the checkpoint also holds the mean teacher (its EMA tensors) and the unlabeled
    sampler, so the resumed run's teacher targets, losses and (teacher) adapter are the uninterrupted one's;
    the pseudo-labels' random perturbations come from the same restored RNG."""
    images = hippocampus_dir / "imagesTr"
    unlabeled = [str(images / "hippocampus_003.nii.gz"), str(images / "hippocampus_006.nii.gz")]
    job = base_job(
        hippocampus_dir,
        tmp_path / "adapter",
        unlabeled=unlabeled,
        unlabeled_weight=1.0,
        ema_decay=0.9,
        keep_teacher=True,
        unlabeled_loss=unlabeled_loss,
    )
    saved = interrupted(job, tmp_path)
    assert (saved / TEACHER_WEIGHTS_FILE).is_file()
    meta = json.loads((saved / CHECKPOINT_FILE).read_text())
    assert len(meta["consistency"]) == 2 and meta["unlabeled_sampler"]["sampler"]["bit_generator"] == "PCG64"
    straight, resumed, events = straight_and_resumed(job, saved, tmp_path, capsys)
    assert [e["iteration"] for e in events if e["event"] == "progress"] == [3, 4]
    assert losses(resumed) == losses(straight)
    logs = [(p / TRAINING_LOG_FILE).read_text() for p in (straight, resumed)]
    assert logs[0] == logs[1] and '"consistency"' in logs[0]
    a, b = load_file(str(straight / ADAPTER_WEIGHTS_FILE)), load_file(str(resumed / ADAPTER_WEIGHTS_FILE))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    record = json.loads((resumed / ADAPTER_CONFIG_FILE).read_text())["training"]["semi_supervised"]
    assert record["unlabeled_volumes"] == 2 and record["saved"] == "teacher"
    assert record["unlabeled_loss"] == unlabeled_loss


@pytest.mark.slow
@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"learning_rate": 0.05}, "learning_rate: None in the checkpoint, 0.05 now"),
        ({"seed": 1}, f"seed: {SEED} in the checkpoint, 1 now"),
        ({"selection": "leverage"}, "selection: 'topnorm' in the checkpoint, 'leverage' now"),
        ("other cases", "cases:"),
    ],
    ids=["lr", "seed", "selection", "cases"],
)
def test_resume_refuses_a_checkpoint_of_another_job(
    tmp_path, capsys, hippocampus_dir, checkpoint, change, named
):
    job, saved = checkpoint
    if change == "other cases":
        change = {"cases": [hippo_case(hippocampus_dir, 1), hippo_case(hippocampus_dir, 3)]}
    job_file, output = resume_copy(job, saved, tmp_path, "other", **change)
    before = (tmp_path / "other.checkpoint" / CHECKPOINT_FILE).read_bytes()
    code, events, _, _ = run(capsys, "finetune", "--job", job_file, "--resume")
    assert code == 2 and events[-1]["kind"] == "input_error", events[-1]
    assert "cannot resume: the checkpoint was made for another job" in events[-1]["message"]
    assert named in events[-1]["message"]
    assert "progress" not in kinds(events) and not output.exists()
    assert (tmp_path / "other.checkpoint" / CHECKPOINT_FILE).read_bytes() == before, "checkpoint kept"


@pytest.mark.slow
def test_resume_may_change_the_iteration_count(tmp_path, capsys, checkpoint):
    job, saved = checkpoint
    job_file, output = resume_copy(job, saved, tmp_path, "longer", iterations=5)
    code, events, _, _ = run(capsys, "finetune", "--job", job_file, "--resume")
    assert code == 0 and [e["iteration"] for e in events if e["event"] == "progress"] == [3, 4, 5]
    job_file, output = resume_copy(job, saved, tmp_path, "shorter", iterations=1)
    code, events, _, _ = run(capsys, "finetune", "--job", job_file, "--resume")
    assert code == 2 and "beyond iterations=1" in events[-1]["message"]


class Payload:
    def __init__(self, mark: Path):
        self.mark = str(mark)

    def __reduce__(self):
        return (os.makedirs, (self.mark,))


@pytest.mark.slow
def test_a_damaged_or_pickled_checkpoint_is_a_user_error(tmp_path, capsys, checkpoint):
    job, saved = checkpoint
    mark = tmp_path / "pwned"
    damage = {
        "json": (CHECKPOINT_FILE, b"{not json", "unreadable checkpoint"),
        "fields": (CHECKPOINT_FILE, b'{"job": {}}', "corrupt checkpoint"),
        "weights": (ADAPTER_WEIGHTS_FILE, b"\x00" * 7, "corrupt checkpoint weights"),
        "pickle": (OPTIMIZER_FILE, None, "holds pickled objects other than tensors"),
        "optimizer": (OPTIMIZER_FILE, b"PK\x03\x04 truncated", "corrupt optimizer state"),
    }
    for name, (file, content, message) in damage.items():
        job_file, output = resume_copy(job, saved, tmp_path, name)
        target = tmp_path / f"{name}.checkpoint" / file
        if content is None:
            torch.save({"optimizer": {"state": {}, "param_groups": []}, "x": Payload(mark)}, str(target))
        else:
            target.write_bytes(content)
        code, events, _, err = run(capsys, "finetune", "--job", job_file, "--resume")
        assert code == 2, (name, events[-1])
        assert events[-1]["kind"] == "input_error" and message in events[-1]["message"], (name, events[-1])
        assert events[-1]["path"] == str(target), name
        assert "weights_only=False" not in events[-1]["message"] and "Traceback" not in err
        assert "progress" not in kinds(events) and not output.exists()
    assert not mark.exists(), "the pickle payload ran"


@pytest.mark.slow
def test_a_checkpoint_keeps_the_files_and_record_older_versions_wrote(checkpoint):
    """The on-disk format is pinned: checkpoints written before the training layer was shared still resume."""
    _, folder = checkpoint
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [ADAPTER_WEIGHTS_FILE, CHECKPOINT_FILE, OPTIMIZER_FILE]
    )
    record = json.loads((folder / CHECKPOINT_FILE).read_text())
    assert list(record) == [
        "iteration",
        "losses",
        "val_history",
        "elapsed_s",
        "job",
        "sampler",
        "consistency",
        "unlabeled_sampler",
    ]
    assert record["iteration"] == 2 and len(record["losses"]) == 2 and record["unlabeled_sampler"] is None
    assert set(record["job"]) == {"base_fingerprint", "label_names", "settings", "iterations"}
    state = torch.load(str(folder / OPTIMIZER_FILE), map_location="cpu", weights_only=True)
    assert set(state) == {"optimizer", "scaler", "torch_rng"}
