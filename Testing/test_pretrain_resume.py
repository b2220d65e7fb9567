"""Pretraining resumes exactly (the same weights as an uninterrupted run), refuses another recipe, and
caches preprocessed volumes on disk keyed by the source files and the preprocessing."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from pretrain_testing import TINY_UNETR_ARCH
from safetensors.torch import load_file, save_file

from tcurlora.data.cases import cases_from_decathlon
from tcurlora.errors import InputError
from tcurlora.filenames import (
    MODEL_SPEC_FILE,
    MODEL_WEIGHTS_FILE,
    OPTIMIZER_FILE,
    PRETRAIN_STATE_FILE,
    PRETRAIN_STATE_FORMAT,
    TRAINING_LOG_FILE,
)
from tcurlora.pretraining.cache import key_digest, volume_key
from tcurlora.pretraining.config import PretrainConfig, SourceConfig, model_spec
from tcurlora.pretraining.data import load_volume, preprocess
from tcurlora.pretraining.run import finish_from_checkpoint, run_pretrain
from tcurlora.synthetic import write_dataset

ARCH = TINY_UNETR_ARCH


def quiet(_message: str) -> None:
    pass


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("resume_data")
    write_dataset(root / "a", 3, seed=1, shape=(24, 28, 28))
    write_dataset(root / "b", 2, seed=2, shape=(24, 28, 28))
    return root


def recipe(**changes) -> PretrainConfig:
    values = dict(
        name="tiny-resume",
        sources=[
            SourceConfig("a", "a", val_case_ids=["synthetic_002"]),
            SourceConfig("b", "b", val_case_ids=[]),
        ],
        arch_params=ARCH,
        spacing=(1.5, 1.5, 1.5),
        patch_size=(32, 32, 32),
        iterations=6,
        batch_size=1,
        warmup=2,
        checkpoint_every=4,
        threads=1,
        foreground_fraction=0.5,
    )
    values.update(changes)
    return PretrainConfig(**values)


def losses(folder: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (folder / TRAINING_LOG_FILE).read_text().splitlines()]


def assert_same_tensors(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, different[:5]


def assert_same_optimizer(a: Path, b: Path) -> None:
    first, second = (torch.load(str(p / OPTIMIZER_FILE), weights_only=True) for p in (a, b))
    assert first["optimizer"]["param_groups"] == second["optimizer"]["param_groups"]
    assert first["optimizer"]["state"].keys() == second["optimizer"]["state"].keys()
    for key, value in first["optimizer"]["state"].items():
        for name in ("step", "exp_avg", "exp_avg_sq"):
            assert torch.equal(value[name], second["optimizer"]["state"][key][name]), (key, name)
    assert torch.equal(first["torch_rng"], second["torch_rng"])


@pytest.fixture(scope="module")
def runs(tmp_path_factory, data) -> dict[str, Path]:
    """An uninterrupted run, the same run stopped after iteration 3, and that one resumed to the end."""
    work = tmp_path_factory.mktemp("resume_runs")
    run_pretrain(recipe(), data, work / "straight", device_name="cpu", log=quiet)
    card = run_pretrain(recipe(), data, work / "stopped", device_name="cpu", log=quiet, stop_after=3)
    assert card["iterations"] == 3 and card["complete"] is False
    state = json.loads((work / "stopped.checkpoint" / PRETRAIN_STATE_FILE).read_text())
    assert state["iteration"] == 3 and state["sampler"]["bit_generator"] == "PCG64"
    shutil.copytree(work / "stopped.checkpoint", work / "saved.checkpoint")  # a pristine copy for other tests
    card = run_pretrain(
        recipe(),
        data,
        work / "resumed",
        device_name="cpu",
        log=quiet,
        resume_from=work / "stopped.checkpoint",
    )
    assert card["iterations"] == 6 and card["complete"] is True
    return {"work": work, "checkpoint": work / "saved.checkpoint"}


@pytest.mark.slow
def test_a_resumed_pretraining_ends_with_the_weights_of_an_uninterrupted_one(runs):
    work = runs["work"]
    assert losses(work / "resumed") == losses(work / "straight") and len(losses(work / "straight")) == 6
    assert_same_tensors(
        load_file(str(work / "straight" / MODEL_WEIGHTS_FILE)),
        load_file(str(work / "resumed" / MODEL_WEIGHTS_FILE)),
    )
    # The fp32 checkpoints at iteration 4 (after the resume at 3): weights, optimizer moments and RNG agree.
    for name in ("straight", "resumed"):
        assert json.loads((work / f"{name}.checkpoint" / PRETRAIN_STATE_FILE).read_text())["iteration"] == 4
    straight, resumed = work / "straight.checkpoint", work / "resumed.checkpoint"
    weights = load_file(str(straight / MODEL_WEIGHTS_FILE))
    assert {v.dtype for v in weights.values()} == {torch.float32}
    assert_same_tensors(weights, load_file(str(resumed / MODEL_WEIGHTS_FILE)))
    assert_same_optimizer(straight, resumed)
    card = json.loads((work / "resumed" / MODEL_SPEC_FILE).read_text())["card"]
    assert "Resumed at iteration 3" in card["notes"][0]


@pytest.mark.slow
def test_the_stopped_run_differs_from_the_finished_one(runs):
    """The comparison above can fail: three iterations fewer give other weights."""
    work = runs["work"]
    stopped = load_file(str(work / "stopped" / MODEL_WEIGHTS_FILE))
    straight = load_file(str(work / "straight" / MODEL_WEIGHTS_FILE))
    assert any(not torch.equal(stopped[k], straight[k]) for k in stopped)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"learning_rate": 1e-3}, "learning_rate: 0.0003 in the checkpoint, 0.001 now"),
        ({"seed": 1}, "seed: 0 in the checkpoint, 1 now"),
        ({"patch_size": (24, 24, 24)}, "patch_size: [32, 32, 32] in the checkpoint, [24, 24, 24] now"),
    ],
    ids=["lr", "seed", "patch"],
)
def test_resume_refuses_a_checkpoint_of_another_recipe(runs, data, tmp_path, change, named):
    with pytest.raises(InputError, match="cannot resume: the checkpoint was made for another recipe") as info:
        run_pretrain(
            recipe(**change),
            data,
            tmp_path / "other",
            device_name="cpu",
            log=quiet,
            resume_from=runs["checkpoint"],
        )
    assert named in str(info.value) and str(runs["checkpoint"]) in str(info.value)
    assert not (tmp_path / "other").exists()


@pytest.mark.slow
def test_resume_refuses_other_data_and_warm_starts_from_weights_only(runs, data, tmp_path):
    shutil.copytree(data, tmp_path / "data")
    listing = tmp_path / "data" / "a" / "dataset.json"
    dataset = json.loads(listing.read_text())
    dataset["training"], dataset["numTraining"] = dataset["training"][1:], 2  # one training case fewer
    listing.write_text(json.dumps(dataset))
    with pytest.raises(InputError, match=r"training volumes of a differ \(2 in the checkpoint, 1 now\)"):
        run_pretrain(
            recipe(),
            tmp_path / "data",
            tmp_path / "fewer",
            device_name="cpu",
            log=quiet,
            resume_from=runs["checkpoint"],
        )
    # A folder without training state (a model, or a checkpoint of an older tcurlora) is a warm start.
    legacy = tmp_path / "legacy.checkpoint"
    shutil.copytree(runs["checkpoint"], legacy)
    (legacy / PRETRAIN_STATE_FILE).unlink()
    messages: list[str] = []
    card = run_pretrain(
        recipe(), data, tmp_path / "legacy", device_name="cpu", log=messages.append, resume_from=legacy
    )
    assert (
        card["iterations"] == 6
        and "Continued at iteration 3 from the weights of legacy.checkpoint" in card["notes"][0]
    )
    assert any("optimizer and patch sampler restart" in m for m in messages)
    assert losses(tmp_path / "legacy")[:3] == losses(runs["work"] / "straight")[:3]


@pytest.mark.slow
def test_finish_from_a_resumable_checkpoint(runs, data, tmp_path):
    card = finish_from_checkpoint(recipe(), data, runs["checkpoint"], tmp_path / "finished", log=quiet)
    assert card["iterations"] == 3 and card["complete"] is False
    assert len(losses(tmp_path / "finished")) == 3


def test_cached_volumes_equal_fresh_ones_and_a_changed_file_is_preprocessed_again(data, tmp_path):
    folder = tmp_path / "c"
    shutil.copytree(data / "a", folder)
    case = cases_from_decathlon(folder)[0]
    spec = model_spec(recipe(), {1: "organ", 2: "lesion"})
    cache = tmp_path / "cache"
    fresh_image, fresh_label = preprocess(case, 0, 2, spec)
    first = load_volume(case, 0, 0, 2, spec, cache)
    entries = list(cache.iterdir())
    assert (
        len(entries) == 1
        and entries[0].name == f"{key_digest(volume_key(case.images[0], case.label, 0, 2, spec))}.safetensors"
    )
    assert torch.equal(first.image, fresh_image) and torch.equal(first.label, fresh_label)
    assert (
        first.image.dtype == torch.float16
        and first.label.dtype == torch.uint8
        and int(first.label.max()) == 4
    )
    # A second load reads the entry: an entry holding other voxels under the same key is what comes back.
    stored = load_file(str(entries[0]))
    text = json.dumps(volume_key(case.images[0], case.label, 0, 2, spec), sort_keys=True)
    save_file(
        {"image": torch.zeros_like(stored["image"]), "label": stored["label"]},
        str(entries[0]),
        metadata={"key": text},
    )
    assert not load_volume(case, 0, 0, 2, spec, cache).image.any()
    # A damaged entry is computed again and replaced.
    entries[0].write_bytes(b"\x00" * 16)
    assert torch.equal(load_volume(case, 0, 0, 2, spec, cache).image, fresh_image)
    # A changed label file (new content, new mtime) has another key: preprocessed again, not the old entry.
    label = sitk.ReadImage(str(case.label))
    array = sitk.GetArrayFromImage(label)
    array[array == 2] = 1
    changed = sitk.GetImageFromArray(array)
    changed.CopyInformation(label)
    before = case.label.stat().st_mtime_ns
    sitk.WriteImage(changed, str(case.label))
    os.utime(case.label, ns=(before + 10**9, before + 10**9))
    again = load_volume(case, 0, 0, 2, spec, cache)
    assert len(list(cache.iterdir())) == 2
    assert int((fresh_label == 4).sum()) > 0 and int((again.label == 4).sum()) == 0
    assert np.array_equal(again.label.numpy(), preprocess(case, 0, 2, spec)[1].numpy())
    # Another preprocessing (spacing) is another entry too.
    load_volume(case, 0, 0, 2, model_spec(recipe(spacing=(2.0, 2.0, 2.0)), {1: "organ", 2: "lesion"}), cache)
    assert len(list(cache.iterdir())) == 3


@pytest.mark.slow
def test_a_pretraining_checkpoint_keeps_the_files_and_record_older_versions_wrote(runs):
    """The on-disk format is pinned: checkpoints written before the training layer was shared still resume."""
    folder = runs["checkpoint"]
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [MODEL_SPEC_FILE, MODEL_WEIGHTS_FILE, OPTIMIZER_FILE, TRAINING_LOG_FILE, PRETRAIN_STATE_FILE]
    )
    state = json.loads((folder / PRETRAIN_STATE_FILE).read_text())
    assert list(state) == ["format", "iteration", "sampler", "recipe", "train_volumes"]
    assert state["format"] == PRETRAIN_STATE_FORMAT and state["train_volumes"] == {
        "a": ["synthetic_000_0000", "synthetic_001_0000"],
        "b": ["synthetic_000_0000", "synthetic_001_0000"],
    }
    assert set(torch.load(str(folder / OPTIMIZER_FILE), weights_only=True)) == {
        "optimizer",
        "scaler",
        "torch_rng",
    }
