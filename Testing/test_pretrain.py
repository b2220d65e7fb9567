"""The pretraining recipe: union of label sets, the per-source loss, patch sampling, and a tiny real run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from pretrain_testing import TINY_UNETR_ARCH
from safetensors import safe_open

from tcurlora.errors import ConfigError, OutputExistsError
from tcurlora.filenames import (
    MODEL_CARD_FILE,
    MODEL_SPEC_FILE,
    MODEL_WEIGHTS_FILE,
    PRETRAIN_RECIPE_FORMAT,
    TRAINING_LOG_FILE,
)
from tcurlora.pretraining.config import PretrainConfig, SourceConfig, learning_rate, model_spec, union_labels
from tcurlora.pretraining.data import SourceData, Volume
from tcurlora.pretraining.loss import union_loss
from tcurlora.pretraining.run import finish_from_checkpoint, run_pretrain
from tcurlora.pretraining.sampling import sample_batch
from tcurlora.synthetic import write_dataset

REPO = Path(__file__).resolve().parents[1]
RECIPES = sorted((REPO / "configs" / "pretrain").glob("*.json"))
# How many leading cases of each adaptation data set are not in our test splits (configs/bench: the last
# 24 left-atrium and the last 40 hippocampus cases are tested).
NON_TEST_CASES = {"left_atrium": 40 - 24, "hippocampus": 213 - 40}


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_shipped_recipes_parse_and_keep_adaptation_targets_out(path):
    config = PretrainConfig.from_file(path)
    supervised = {s.folder for s in config.sources if s.objective == "segment"}
    assert supervised == {"acdc", "brats2013"}  # never the labels of a structure we adapt to
    assert all(
        s.val_case_ids and s.licence and s.reference for s in config.sources if s.objective == "segment"
    )
    for source in config.sources:
        if source.objective == "tissue":  # images only, and never our own test splits (the last cases)
            assert source.folder in NON_TEST_CASES and source.num_cases <= NON_TEST_CASES[source.folder]
    if config.arch == "UNETR":
        assert config.arch_params["hidden_size"] % config.arch_params["num_heads"] == 0


def test_union_labels_number_each_source_after_the_previous(acdc_dir, brats_dir):
    config = PretrainConfig.from_file(REPO / "configs/pretrain/unetr-small-cpu.json")
    union = union_labels(config, acdc_dir.parent)
    assert union[0] == ("acdc", [1, 2, 3], ["RightVentricle", "Myocardium", "LeftVentricle"])
    assert union[1][0] == "brats2013" and union[1][1] == [4, 5, 6, 7]
    spec = model_spec(config, {c: n for _, cs, ns in union for c, n in zip(cs, ns)})
    assert spec.out_channels == 8 and spec.arch_params["img_size"] == [48, 48, 48]


def test_recipe_errors_name_the_file(tmp_path):
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"format": "other"}))
    with pytest.raises(ConfigError, match="unknown recipe format"):
        PretrainConfig.from_file(path)
    path.write_text(
        json.dumps({"format": PRETRAIN_RECIPE_FORMAT, "name": "x", "sources": [], "arch_params": {}})
    )
    with pytest.raises(ConfigError, match="at least one source") as info:
        PretrainConfig.from_file(path)
    assert str(path) in str(info.value)


def test_union_loss_dice_covers_only_the_source_classes():
    label = torch.zeros(1, 8, 8, 8, dtype=torch.long)
    label[:, 2:6, 2:6, 2:6] = 2
    perfect = torch.full((1, 8, 8, 8, 8), -20.0)
    perfect.scatter_(1, label[:, None], 20.0)
    assert union_loss(perfect, label, [1, 2, 3]).item() < 1e-3
    # class 1 is never present in this label: the loss still only counts the source's own classes,
    # and predicting another source's class (5) where the label says background is penalised by CE.
    wrong = perfect.clone()
    wrong[:, 5, 0, 0, 0], wrong[:, 0, 0, 0, 0] = 20.0, -20.0
    assert union_loss(wrong, label, [1, 2, 3]).item() > union_loss(perfect, label, [1, 2, 3]).item()
    # the Dice term over classes 4-7 of another source would be 0/0-ish: restricting it keeps it finite
    assert torch.isfinite(union_loss(torch.randn(1, 8, 8, 8, 8), label, [4, 5, 6, 7]))


def test_sample_batch_centres_foreground_and_keeps_image_label_aligned():
    image = torch.zeros(1, 40, 40, 40)
    label = torch.zeros(40, 40, 40, dtype=torch.uint8)
    label[30:34, 5:9, 20:24] = 3
    image[0][label > 0] = 1.0
    volume = Volume("v", 0, image.half(), label, torch.nonzero(label.flatten() > 0).flatten())
    source = SourceData(SourceConfig("s", "s"), [1, 2, 3], ["a", "b", "c"], [volume], [])
    rng = np.random.default_rng(0)
    images, labels = sample_batch(source, 16, (16, 16, 16), 1.0, rng)
    assert images.shape == (16, 1, 16, 16, 16) and labels.shape == (16, 16, 16, 16)
    assert all(int((lab == 3).sum()) == 64 for lab in labels)  # foreground-centred patches hold the whole box
    for img, lab in zip(images, labels):  # intensity scale/shift is global, so the mask stays exact
        assert torch.equal(img[0] > img[0].min() + 0.5 * (img[0].max() - img[0].min()), lab == 3)


def test_learning_rate_warms_up_then_decays():
    config = PretrainConfig(
        name="x", sources=[], arch_params={}, iterations=100, warmup=10, learning_rate=1e-3
    )
    rates = [learning_rate(config, s) for s in range(100)]
    assert rates[0] == pytest.approx(1e-4) and max(rates) == pytest.approx(1e-3)
    assert rates[-1] < 0.05e-3 and all(a >= b for a, b in zip(rates[10:], rates[11:]))


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("pretrain")
    write_dataset(root / "a", 3, seed=1, shape=(24, 28, 28))
    write_dataset(root / "b", 3, seed=2, shape=(24, 28, 28))
    dataset = json.loads((root / "b" / "dataset.json").read_text())
    dataset["labels"] = {"0": "background", "1": "tumour", "2": "edema"}
    (root / "b" / "dataset.json").write_text(json.dumps(dataset))
    config = PretrainConfig(
        name="tiny-union",
        sources=[
            SourceConfig("a", "a", val_case_ids=["synthetic_002"]),
            SourceConfig("b", "b", val_case_ids=["synthetic_002"]),
        ],
        arch_params=dict(TINY_UNETR_ARCH),
        spacing=(1.5, 1.5, 1.5),
        patch_size=(32, 32, 32),
        iterations=6,
        batch_size=1,
        warmup=2,
        checkpoint_every=4,
        threads=1,
    )
    card = run_pretrain(config, root, root / "model", device_name="cpu", log=lambda m: None)
    return {"root": root, "config": config, "card": card}


@pytest.mark.slow
def test_tiny_run_writes_a_loadable_fp16_model_with_card(tiny_run):
    from tcurlora.models.registry import load_base_model

    root, card = tiny_run["root"], tiny_run["card"]
    folder = root / "model"
    base = load_base_model(folder)
    assert base.spec.labels == {1: "organ", 2: "lesion", 3: "tumour", 4: "edema"}
    assert base.spec.out_channels == 5 and base.spec.spacing == (1.5, 1.5, 1.5)
    with safe_open(str(folder / MODEL_WEIGHTS_FILE), "pt") as handle:
        assert {handle.get_tensor(k).dtype for k in handle.keys()} == {torch.float16}
    assert card["iterations"] == 6 and card["complete"] is True and card["device"] == "cpu"
    assert set(card["metrics"]["val_dice"]) == {"organ", "lesion", "tumour", "edema"}
    assert card["training_data"][0]["val_volumes"] == ["synthetic_002_0000"]
    assert "synthetic_002_0000" not in card["training_data"][0]["train_volumes"]
    text = (folder / MODEL_CARD_FILE).read_text()
    assert base.fingerprint in text and "organ" in text
    log = [json.loads(line) for line in (folder / TRAINING_LOG_FILE).read_text().splitlines()]
    assert [r["source"] for r in log] == ["a", "b"] * 3  # round robin over the sources
    model_json = json.loads((folder / MODEL_SPEC_FILE).read_text())
    assert model_json["card"]["recipe"]["seed"] == 0


@pytest.mark.slow
def test_tiny_run_refuses_overwrite_and_checkpoint_can_be_finished(tiny_run):
    root, config = tiny_run["root"], tiny_run["config"]
    with pytest.raises(OutputExistsError):
        run_pretrain(config, root, root / "model", device_name="cpu", log=lambda m: None)
    checkpoint = root / "model.checkpoint"
    assert (checkpoint / MODEL_SPEC_FILE).is_file()  # written at iteration 4 of 6
    card = finish_from_checkpoint(config, root, checkpoint, root / "from_ckpt", log=lambda m: None)
    assert card["iterations"] == 4 and card["complete"] is False
