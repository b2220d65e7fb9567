"""Semi-supervised fine-tuning (--unlabeled): the mean teacher's EMA, ramp-up and consistency term, the
unlabeled volumes a path stands for, a real tiny run recording them, and bad unlabeled paths refused
before the first step with the file named."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn
from trust_testing import kinds, run, tiny_job, write_job

from tcurlora.data.loader import unlabeled_files
from tcurlora.errors import InputError
from tcurlora.filenames import ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE, TRAINING_LOG_FILE
from tcurlora.mean_teacher import (
    EMATeacher,
    SemiSupervisedLoss,
    consistency_loss,
    consistency_weight,
    pseudo_label_loss,
    sigmoid_rampup,
    strong_view,
    unlabeled_view_and_loss,
)


def small_module() -> nn.Module:
    torch.manual_seed(0)
    module = nn.Sequential(nn.Conv3d(1, 3, 1), nn.Conv3d(3, 2, 1)).double()
    module[0].bias.requires_grad_(False)  # frozen: not part of the teacher
    return module


def test_one_ema_update_is_decay_times_teacher_plus_one_minus_decay_times_student():
    module = small_module()
    teacher = EMATeacher(module, decay=0.9)
    assert set(teacher.shadow) == {"0.weight", "1.weight", "1.bias"}
    before = {k: v.clone() for k, v in teacher.shadow.items()}
    with torch.no_grad():
        for p in module.parameters():
            p.add_(1.0)  # the student moves by exactly 1
    teacher.update()
    for name, p in module.named_parameters():
        if name in teacher.shadow:
            expected = 0.9 * before[name] + 0.1 * p.detach()
            assert torch.allclose(teacher.shadow[name], expected, rtol=0, atol=1e-14), name
            assert torch.allclose(teacher.shadow[name] - before[name], torch.full_like(p, 0.1), atol=1e-14)


def test_the_swapped_teacher_computes_with_the_ema_weights_and_gives_the_student_back():
    module = small_module()
    teacher = EMATeacher(module, decay=0.5)
    x = torch.randn(1, 1, 2, 2, 2, dtype=torch.float64)
    with torch.no_grad():
        for p in module.parameters():
            p.mul_(2.0)
    student_out = module(x).detach()
    student = {k: v.detach().clone() for k, v in module.named_parameters()}
    with torch.no_grad(), teacher.swapped() as swapped:
        assert torch.equal(swapped[1].weight, teacher.shadow["1.weight"])
        teacher_out = swapped(x)
    assert not torch.allclose(teacher_out, student_out)
    assert all(torch.equal(v, student[k]) for k, v in module.named_parameters())
    assert torch.equal(module(x), student_out)


def test_teacher_state_round_trips_and_refuses_other_parameters():
    module = small_module()
    teacher = EMATeacher(module, decay=0.99)
    state = {k: v + 3 for k, v in teacher.state_dict().items()}
    other = EMATeacher(module, decay=0.99)
    other.load_state_dict(state)
    assert all(torch.equal(other.shadow[k], state[k]) for k in state)
    with pytest.raises(KeyError):
        other.load_state_dict({"0.weight": state["0.weight"]})


def test_sigmoid_rampup_at_start_middle_and_end():
    assert sigmoid_rampup(0, 40) == pytest.approx(math.exp(-5))
    assert sigmoid_rampup(20, 40) == pytest.approx(math.exp(-1.25))
    assert sigmoid_rampup(40, 40) == 1.0
    assert sigmoid_rampup(100, 40) == 1.0
    # the weight ramps up over the first 40% of the iterations: 40 of 100
    assert consistency_weight(0, 100, 0.1) == pytest.approx(0.1 * math.exp(-5))
    assert consistency_weight(20, 100, 0.1) == pytest.approx(0.1 * math.exp(-1.25))
    assert consistency_weight(40, 100, 0.1) == pytest.approx(0.1)
    assert consistency_weight(99, 100, 0.1) == pytest.approx(0.1)


def test_consistency_is_zero_for_equal_student_and_teacher_and_positive_otherwise():
    module = small_module()
    teacher = EMATeacher(module, decay=0.99)
    x = torch.randn(2, 1, 3, 3, 3, dtype=torch.float64)
    with torch.no_grad(), teacher.swapped() as t:
        teacher_logits = t(x)
    student_logits = module(x)
    assert consistency_loss(student_logits, teacher_logits).item() == 0.0
    assert consistency_loss(student_logits, teacher_logits + torch.randn_like(teacher_logits)).item() > 0.0
    # two classes, logits (0, 0) vs (log 3, 0): probabilities (.5, .5) vs (.75, .25) -> MSE 0.0625
    a = torch.zeros(1, 2, 1, 1, 1)
    b = torch.zeros(1, 2, 1, 1, 1)
    b[:, 0] = math.log(3.0)
    assert consistency_loss(a, b).item() == pytest.approx(0.0625)


def test_the_semi_supervised_loss_adds_the_weighted_consistency_of_the_unlabeled_part():
    logits = torch.randn(3, 2, 2, 2, 2)
    label = torch.zeros(1, 1, 2, 2, 2, dtype=torch.long)
    supervised = lambda out, lab: out.float().pow(2).mean()  # noqa: E731
    teacher = logits[1:].clone()
    same = SemiSupervisedLoss(supervised, 1, teacher, weight=5.0)
    assert same(logits, label).item() == pytest.approx(supervised(logits[:1], label).item())
    other = SemiSupervisedLoss(supervised, 1, teacher + 1.0 * torch.arange(2).view(1, 2, 1, 1, 1), weight=5.0)
    expected = supervised(logits[:1], label) + 5.0 * consistency_loss(logits[1:], other.teacher_logits)
    assert other(logits, label).item() == pytest.approx(expected.item())
    assert other.last["consistency"] > 0


def test_pseudo_labels_take_the_teachers_confident_classes_each_weighted_equally():
    # 4 voxels, 2 classes: the teacher is sure of background at voxels 0-2 and of class 1 at voxel 3
    teacher = torch.tensor([[5.0, 5.0, 5.0, -5.0], [-5.0, -5.0, -5.0, 5.0]]).view(1, 2, 4, 1, 1)
    student = torch.tensor([[0.0, 2.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]]).view(1, 2, 4, 1, 1)
    ce = torch.nn.functional.cross_entropy(student, teacher.argmax(1), reduction="none").flatten()
    expected = (ce[:3].mean() + ce[3]) / 2  # class-balanced: the one foreground voxel counts as much as all
    assert pseudo_label_loss(student, teacher).item() == pytest.approx(expected.item())
    unsure = teacher.clone()
    unsure[0, :, 3] = 0.0  # the teacher is 50/50 at voxel 3: it is not pseudo-labeled
    assert pseudo_label_loss(student, unsure).item() == pytest.approx(ce[:3].mean().item())
    nothing = pseudo_label_loss(student.requires_grad_(), torch.zeros_like(teacher))
    assert nothing.item() == 0.0 and nothing.requires_grad
    with pytest.raises(ValueError, match="unknown unlabeled loss 'mse'"):
        unlabeled_view_and_loss("mse")
    assert unlabeled_view_and_loss("pseudo_label") == (strong_view, pseudo_label_loss)


def test_the_strong_view_keeps_geometry_varies_per_patch_and_repeats_with_its_seed():
    image = torch.linspace(-1, 1, 2 * 4**3).view(2, 1, 4, 4, 4)
    first = strong_view(image, torch.Generator().manual_seed(3))
    again = strong_view(image, torch.Generator().manual_seed(3))
    assert first.shape == image.shape and torch.equal(first, again)
    assert not torch.equal(first, strong_view(image, torch.Generator().manual_seed(4)))
    # the intensity changes are monotone in the voxel value (plus noise of at most 0.2): the order of the
    # voxels, i.e. the anatomy, stays where it was
    for n in range(2):
        ranked = first[n].flatten()[image[n].flatten().argsort()]
        assert (ranked[8:] - ranked[:-8] > -0.4).all()
    assert (first - image).abs().mean() > 0.01


def test_unlabeled_paths_stand_for_files_folders_and_decathlon_folders(tmp_path):
    for name in ("b.nii.gz", "a.nrrd", "notes.txt"):
        (tmp_path / "plain" / name).parent.mkdir(exist_ok=True)
        (tmp_path / "plain" / name).write_bytes(b"x")
    (tmp_path / "dec" / "imagesTr").mkdir(parents=True)
    (tmp_path / "dec" / "labelsTr").mkdir()
    (tmp_path / "dec" / "imagesTr" / "c.nii.gz").write_bytes(b"x")
    (tmp_path / "dec" / "labelsTr" / "c.nii.gz").write_bytes(b"x")
    single = tmp_path / "d.mha"
    single.write_bytes(b"x")
    found = unlabeled_files([tmp_path / "plain", tmp_path / "dec", single, single])
    assert found == [
        tmp_path / "plain" / "a.nrrd",
        tmp_path / "plain" / "b.nii.gz",
        tmp_path / "dec" / "imagesTr" / "c.nii.gz",
        single,
    ]
    with pytest.raises(InputError) as missing:
        unlabeled_files([tmp_path / "nowhere.nii.gz"])
    assert missing.value.path == tmp_path / "nowhere.nii.gz" or "nowhere.nii.gz" in str(missing.value)
    with pytest.raises(InputError):
        unlabeled_files([tmp_path / "plain" / "notes.txt"])


@pytest.mark.slow
def test_a_three_step_finetune_with_unlabeled_volumes_records_them(tmp_path, capsys, hippocampus_dir):
    images = hippocampus_dir / "imagesTr"
    output = tmp_path / "adapter"
    code, events, _, _ = run(
        capsys,
        "finetune",
        "--base-model",
        "preset:unetr-tiny",
        "--labels",
        "Anterior",
        "Posterior",
        "--case",
        images / "hippocampus_001.nii.gz",
        hippocampus_dir / "labelsTr" / "hippocampus_001.nii.gz",
        "--rank",
        "4",
        "--iterations",
        "3",
        "--batch-size",
        "1",
        "--device",
        "cpu",
        "--events",
        "--unlabeled",
        images / "hippocampus_003.nii.gz",
        images / "hippocampus_006.nii.gz",
        "--unlabeled-weight",
        "0.5",
        "-o",
        output,
    )
    assert code == 0, events[-1]
    assert [e["iteration"] for e in events if e["event"] == "progress"] == [1, 2, 3]
    config = json.loads((output / ADAPTER_CONFIG_FILE).read_text())
    semi = config["training"]["semi_supervised"]
    assert semi["unlabeled_volumes"] == 2 and semi["unlabeled_weight"] == 0.5 and semi["saved"] == "student"
    assert semi["ema_decay"] == 0.99 and config["metrics"]["unlabeled_volumes"] == 2
    log = [json.loads(line) for line in (output / TRAINING_LOG_FILE).read_text().splitlines()]
    assert log[0] == {"semi_supervised": semi}
    steps = [r for r in log if "loss" in r]
    assert [r["iteration"] for r in steps] == [1, 2, 3]
    assert all(r["consistency"] > 0 for r in steps)


@pytest.mark.slow
def test_keep_teacher_saves_the_teacher_not_the_student(tmp_path, capsys, hippocampus_dir):
    """With one step and decay 0.5 the teacher is halfway between the initial and the trained weights."""
    from safetensors.torch import load_file

    images = hippocampus_dir / "imagesTr"
    common = {"iterations": 1, "unlabeled": [str(images / "hippocampus_003.nii.gz")], "ema_decay": 0.5}
    student, teacher = tmp_path / "student", tmp_path / "teacher"
    for output, keep in ((student, False), (teacher, True)):
        job = write_job(
            tmp_path / f"{output.name}.json", tiny_job(hippocampus_dir, output, keep_teacher=keep, **common)
        )
        code, events, _, _ = run(capsys, "finetune", "--job", job)
        assert code == 0, events[-1]
    initial = tmp_path / "initial"
    job = write_job(
        tmp_path / "initial.json",
        tiny_job(
            hippocampus_dir,
            initial,
            iterations=1,
            learning_rate=1e-30,
            head_learning_rate=1e-30,
            modules_learning_rate=1e-30,
        ),
    )
    assert run(capsys, "finetune", "--job", job)[0] == 0
    s, t, i = (load_file(str(p / ADAPTER_WEIGHTS_FILE)) for p in (student, teacher, initial))
    assert (
        json.loads((teacher / ADAPTER_CONFIG_FILE).read_text())["training"]["semi_supervised"]["saved"]
        == "teacher"
    )
    moved = [k for k in s if not torch.allclose(s[k], i[k])]
    assert moved, "one step moves the student"
    for k in moved:
        assert torch.allclose(t[k], 0.5 * i[k] + 0.5 * s[k], atol=1e-6), k


@pytest.mark.parametrize("bad", ["missing", "garbage"])
def test_a_bad_unlabeled_path_fails_before_the_first_step_naming_the_file(
    tmp_path, capsys, hippocampus_dir, bad
):
    path = tmp_path / "scan_17.nii.gz"
    if bad == "garbage":
        path.write_bytes(b"not a volume at all")
    job = write_job(
        tmp_path / "job.json", tiny_job(hippocampus_dir, tmp_path / "adapter", unlabeled=[str(path)])
    )
    code, events, _, _ = run(capsys, "finetune", "--job", job)
    assert code == 2 and events[-1]["kind"] == "input_error", events[-1]
    assert "scan_17.nii.gz" in (events[-1]["path"] or "") + events[-1]["message"]
    assert "progress" not in kinds(events) and not (tmp_path / "adapter").exists()


def test_unlabeled_job_keys_are_checked(tmp_path, hippocampus_dir):
    from tcurlora.errors import ConfigError
    from tcurlora.jobs.schema import FinetuneJob

    job = tiny_job(hippocampus_dir, tmp_path / "a", unlabeled=["x.nii.gz"])
    parsed = FinetuneJob.from_dict(job, tmp_path)
    assert (
        parsed.unlabeled == [tmp_path / "x.nii.gz"]
        and parsed.unlabeled_weight == 0.1
        and parsed.ema_decay == 0.99
        and parsed.unlabeled_loss == "consistency"
    )
    assert FinetuneJob.from_dict({**job, "unlabeled_loss": "pseudo_label"}, tmp_path).unlabeled_loss == (
        "pseudo_label"
    )
    assert FinetuneJob.from_dict(parsed.to_dict(), tmp_path) == parsed
    for key, value in (
        ("unlabeled", "x.nii.gz"),
        ("unlabeled_weight", -1),
        ("ema_decay", 1.0),
        ("unlabeled_loss", "mse"),
    ):
        with pytest.raises(ConfigError, match=key):
            FinetuneJob.from_dict({**job, key: value}, tmp_path)
