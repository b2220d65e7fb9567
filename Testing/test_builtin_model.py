"""The committed built-in base model: found by name, intact, documented, and it segments its training sources.

Nothing here depends on the values of the weights: the fingerprint and the held-out Dice are read from the
model's own folder (MODEL_CARD.md, model.json's card), so retrained weights with a regenerated card pass.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from safetensors import safe_open

from tcurlora.models.registry import builtin_models_dir, list_builtin_models, load_base_model

NAME = "segresnet-mri"
FOLDER = builtin_models_dir() / NAME
MAX_WEIGHTS_BYTES = 12 * 1024 * 1024  # the repository keeps at most 12 MB of weights in the tree
# Held-out pretraining-source case (never trained on; in the recipe's val_case_ids).
HELD_OUT_CASE = "acdc_patient100_frame01"
# The Dice measured here (original grid) and the card's (1.5 mm grid) differ by resampling only.
CARD_TOLERANCE = 0.1
# Below this mean Dice on the held-out case (as the card records it) the base does not segment ACDC yet
# (a stand-in or an early checkpoint): only the agreement with the card is checked then.
SEGMENTS = 0.1


def card_record() -> dict:
    return json.loads((FOLDER / "model.json").read_text())


def card_fingerprint() -> str:
    match = re.search(r"fingerprint of the fp32 weights: `([0-9a-f]{64})`", (FOLDER / "MODEL_CARD.md").read_text())
    assert match, "MODEL_CARD.md states the weights' SHA-256 fingerprint"
    return match.group(1)


@pytest.fixture(scope="module")
def base():
    assert NAME in list_builtin_models()
    return load_base_model(NAME)


def test_it_is_the_only_builtin_model():
    assert list_builtin_models() == [NAME]


def test_builtin_model_folder_is_small_fp16_and_documented():
    weights = FOLDER / "model.safetensors"
    assert weights.stat().st_size <= MAX_WEIGHTS_BYTES
    with safe_open(str(weights), "pt") as handle:
        assert {handle.get_tensor(k).dtype for k in handle.keys()} == {torch.float16}
    record = card_record()
    card, spec = record["card"], record["spec"]
    assert record["id"] == NAME and spec["arch"] == "SegResNet" and card["architecture"]["arch"] == "SegResNet"
    assert spec["arch_params"]["init_filters"] == 8 and spec["arch_params"]["out_channels"] == 14
    assert card["preprocessing"]["spacing_mm"] == [1.5, 1.5, 1.5]
    assert card["preprocessing"]["patch_size"] == [64, 64, 64]
    assert {s["name"] for s in card["training_data"]} == {"acdc", "brats2013", "left_atrium", "hippocampus"}
    assert all(s["licence"] and s["reference"] for s in card["training_data"])
    objectives = {s["name"]: s.get("objective", "segment") for s in card["recipe"]["sources"]}
    assert objectives == {"acdc": "segment", "brats2013": "segment", "left_atrium": "tissue",
                          "hippocampus": "tissue"}
    # Held-out Dice for every supervised class (the self-supervised intensity classes are not evaluated).
    supervised = {name for s in card["training_data"] if objectives[s["name"]] == "segment"
                  for name in s["classes"].values()}
    assert set(card["metrics"]["val_dice"]) == supervised
    assert card["device"] and card["iterations"] > 0 and card["recipe"]["seed"] == 0
    text = (FOLDER / "MODEL_CARD.md").read_text()
    assert "CC BY-NC-SA" in text and "Bernard" in text and "SegResNet" in text
    assert (FOLDER / "training_log.jsonl").read_text().strip()


def test_builtin_model_loads_by_name_with_its_fingerprint(base):
    assert base.fingerprint == card_fingerprint()
    assert base.model_id == NAME and type(base.model).__name__ == "SegResNet"
    assert sum(p.numel() for p in base.model.parameters()) == pytest.approx(1.2e6, rel=0.1)
    assert base.spec.labels[3] == "LeftVentricle" and base.spec.labels[5] == "edema"
    assert base.spec.labels[8] == "left_atrium intensity class 1" and len(base.spec.labels) == 13
    assert base.spec.patch_size == (64, 64, 64) and tuple(base.spec.spacing) == (1.5, 1.5, 1.5)
    assert base.spec.head_module == "conv_final.2.conv"
    head = dict(base.model.named_modules())[base.spec.head_module]
    assert head.out_channels == 14


def test_builtin_model_segments_a_held_out_acdc_case(base, acdc_dir):
    """Agrees with the card's held-out Dice; when the card says it segments, beats a chance prediction."""
    from tcurlora.infer import predict_volume

    card = card_record()["card"]
    acdc = next(s for s in card["recipe"]["sources"] if s["name"] == "acdc")
    assert HELD_OUT_CASE in acdc["val_case_ids"], "the case must be held out of pretraining"
    card_dice = float(np.mean(list(card["metrics"]["val_dice_per_volume"][f"{HELD_OUT_CASE}_0000"].values())))

    image = acdc_dir / "imagesTr" / f"{HELD_OUT_CASE}.nii.gz"
    reference = sitk.GetArrayFromImage(sitk.ReadImage(str(acdc_dir / "labelsTr" / f"{HELD_OUT_CASE}.nii.gz")))
    prediction, grid = predict_volume(base.model, [image], base.spec, device="cpu", overlap=0.25)
    assert prediction.shape == reference.shape
    chance = np.random.default_rng(0).permutation(prediction.ravel()).reshape(prediction.shape)

    def mean_dice(labels: np.ndarray) -> float:
        scores = []
        for label in (1, 2, 3):
            p, r = labels == label, reference == label
            scores.append(2 * (p & r).sum() / max(1, p.sum() + r.sum()))
        return float(np.mean(scores))

    dice = mean_dice(prediction)
    assert abs(dice - card_dice) <= CARD_TOLERANCE, (dice, card_dice)
    if card_dice >= SEGMENTS:
        assert dice > 5 * mean_dice(chance), (dice, mean_dice(chance))
        brain = np.isin(prediction, [4, 5, 6, 7])
        assert brain.mean() < 0.01, "a cardiac scan is not labelled as brain tumour"


def test_info_shows_the_builtin_model(capsys):
    from tcurlora.cli import main

    assert main(["info", NAME, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["target"] == NAME and data["total"] > 1_000_000
