"""Pretraining for transfer: random MRI contrasts, self-supervised tissue sources, a SegResNet base."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tcurlora.filenames import PRETRAIN_RECIPE_FORMAT
from tcurlora.pretraining.config import PretrainConfig, model_spec, union_labels
from tcurlora.pretraining.contrast import bias_field, random_contrast_curve, randomise_intensity
from tcurlora.pretraining.data import load_sources
from tcurlora.pretraining.run import run_pretrain
from tcurlora.pretraining.tissue import tissue_class_names, tissue_classes
from tcurlora.synthetic import write_dataset


def test_random_contrast_keeps_range_and_is_seeded():
    image = torch.linspace(-2.0, 3.0, 1000).reshape(1, 10, 10, 10)
    first = random_contrast_curve(image, np.random.default_rng(3))
    again = random_contrast_curve(image, np.random.default_rng(3))
    assert torch.equal(first, again)
    assert first.min() >= -2.0 - 1e-5 and first.max() <= 3.0 + 1e-5
    assert not torch.allclose(first, image)  # the grey levels did change
    curves = {
        tuple(random_contrast_curve(image, np.random.default_rng(s)).flatten()[::97].tolist())
        for s in range(6)
    }
    assert len(curves) == 6


def test_bias_field_is_smooth_positive_and_one_at_zero_strength():
    field = bias_field((8, 9, 10), np.random.default_rng(0))
    assert field.shape == (8, 9, 10) and bool((field > 0).all())
    assert float(field.max() / field.min()) < np.exp(0.3 * 9 * 2)  # 9 terms of |c| <= 0.3, |t| <= 1
    assert float((field[1:] / field[:-1]).max()) < 1.5  # smooth: neighbours differ little
    assert torch.allclose(bias_field((4, 4, 4), np.random.default_rng(1), strength=0.0), torch.ones(4, 4, 4))


def test_randomise_intensity_keeps_patch_statistics_and_shape():
    rng = np.random.default_rng(0)
    image = torch.randn(1, 12, 12, 12) * 2 + 1
    out = randomise_intensity(image, rng)
    assert out.shape == image.shape
    assert float(out.mean()) == pytest.approx(float(image.mean()), abs=1e-4)
    assert float(out.std()) == pytest.approx(float(image.std()), rel=1e-4)


def test_tissue_classes_are_quartiles_of_the_smoothed_image():
    image = torch.zeros(16, 16, 16)
    for k in range(4):  # four slabs of constant grey level, darkest first
        image[4 * k : 4 * k + 4] = float(k)
    classes = tissue_classes(image)
    assert classes.dtype == torch.int64 and classes.shape == image.shape
    for k in range(4):  # slab interiors (away from the smoothing at the slab borders) get their own class
        assert bool((classes[4 * k + 1 : 4 * k + 3] == k).all())
    assert tissue_class_names("la") == [
        "la intensity class 1",
        "la intensity class 2",
        "la intensity class 3",
    ]
    with pytest.raises(ValueError, match="3D"):
        tissue_classes(torch.zeros(1, 4, 4, 4))


def _tiny_recipe(root: Path) -> PretrainConfig:
    """A labeled source and an unlabeled ("tissue") one whose label files are garbage: never read."""
    write_dataset(root / "seg", 3, seed=1, shape=(20, 24, 24))
    write_dataset(root / "unl", 2, seed=2, shape=(20, 24, 24))
    for label in (root / "unl" / "labelsTr").iterdir():
        label.write_bytes(b"not a volume")
    recipe = {
        "format": PRETRAIN_RECIPE_FORMAT,
        "name": "t",
        "arch": "SegResNet",
        "arch_params": {
            "spatial_dims": 3,
            "init_filters": 8,
            "blocks_down": [1, 1, 1, 1],
            "blocks_up": [1, 1, 1],
        },
        "sources": [
            {"name": "seg", "folder": "seg", "val_case_ids": ["synthetic_002"]},
            {"name": "unl", "folder": "unl", "objective": "tissue"},
        ],
        "spacing": [1.5, 1.5, 1.5],
        "patch_size": [16, 16, 16],
        "iterations": 3,
        "batch_size": 1,
        "warmup": 1,
        "threads": 1,
        "checkpoint_every": 10,
        "intensity_randomisation": True,
    }
    path = root / "recipe.json"
    path.write_text(json.dumps(recipe))
    return PretrainConfig.from_file(path)


def test_tissue_source_labels_are_its_own_intensity_classes(tmp_path):
    config = _tiny_recipe(tmp_path)
    union = union_labels(config, tmp_path)
    assert union[1] == ("unl", [3, 4, 5], tissue_class_names("unl"))  # after the 2 classes of "seg"
    labels = {c: n for _, cs, ns in union for c, n in zip(cs, ns)}
    spec = model_spec(config, labels)
    assert spec.head_module == "conv_final.2.conv" and spec.out_channels == 6
    sources = load_sources(config, tmp_path, spec, log=lambda m: None)
    volume = sources[1].train[0]
    own = tissue_classes(volume.image[0].float())
    inside = volume.label > 0
    assert torch.equal(volume.label[inside].long(), own[inside] + 2)  # global indices 3..5
    assert set(volume.label.unique().tolist()) <= {0, 3, 4, 5}


def test_segresnet_base_pretrains_and_adapts_with_tcur(tmp_path):
    from tcurlora.adapters.config import AdapterConfig, default_train_modules, expand_train_modules
    from tcurlora.adapters.model import apply_adapter
    from tcurlora.adapters.targets import configure_targets
    from tcurlora.models.registry import load_base_model

    config = _tiny_recipe(tmp_path)
    card = run_pretrain(config, tmp_path, tmp_path / "base", device_name="cpu", log=lambda m: None)
    assert card["iterations"] == 3 and card["recipe"]["intensity_randomisation"] is True
    base = load_base_model(tmp_path / "base")
    assert type(base.model).__name__ == "SegResNet" and base.spec.labels[5] == "unl intensity class 3"
    adapter = AdapterConfig(
        method="tcur",
        rank=2,
        num_classes=2,
        label_names=["x"],
        new_head=True,
        head_module=base.spec.head_module,
    )
    configure_targets(adapter, base.model, None)
    adapter.train_modules = expand_train_modules(default_train_modules("tcur", "SegResNet"))
    adapted = apply_adapter(base.model, adapter)
    trained = {n for n, p in adapted.named_parameters() if p.requires_grad}
    assert any(n.startswith("convInit") or ".convInit" in n for n in trained)  # full-resolution block in full
    assert any("up_layers.2" in n for n in trained) and any("conv_final.2.conv" in n for n in trained)
    assert not any("down_layers.3" in n and "weight" == n.rsplit(".", 1)[-1] for n in trained)
    out = adapted(torch.randn(1, 1, 16, 16, 16))
    assert out.shape == (1, 2, 16, 16, 16)
