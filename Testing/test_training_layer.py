"""The training layer shared by fine-tuning and pretraining: one schedule, and pretraining's patches drawn by
MONAI transforms from one seeded Generator (the whole sampler state a checkpoint keeps)."""

from __future__ import annotations

import math
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from tcurlora.pretraining.config import (
    FINAL_RATE_FRACTION,
    PretrainConfig,
    SourceConfig,
    learning_rate_factor,
)
from tcurlora.pretraining.contrast import RandMRIContrastd, randomise_intensity
from tcurlora.pretraining.data import SourceData, Volume
from tcurlora.pretraining.sampling import patch_transforms, sample_batch
from tcurlora.training.schedule import WARMUP_FRACTION, finetuning_factor, warmup_cosine

PACKAGE = Path(__file__).resolve().parents[1] / "tcurlora"
PATCH = (8, 8, 8)


def test_fine_tuning_and_pretraining_follow_the_one_warm_up_cosine_schedule():
    total = 200
    warmup = max(1, int(total * WARMUP_FRACTION))
    tuned = [finetuning_factor(i, total) for i in range(total + 1)]
    assert tuned == [warmup_cosine(i, total, warmup) for i in range(total + 1)]
    assert tuned[:warmup] == [(i + 1) / warmup for i in range(warmup)]
    assert tuned[warmup] == 1.0 and tuned[total] == pytest.approx(0.0, abs=1e-12)
    assert all(a >= b for a, b in zip(tuned[warmup:], tuned[warmup + 1 :]))
    config = PretrainConfig(name="x", sources=[], arch_params={}, iterations=100, warmup=10)
    pretrained = [learning_rate_factor(config, i) for i in range(120)]
    assert pretrained == [warmup_cosine(i, 100, 10, FINAL_RATE_FRACTION) for i in range(120)]
    assert pretrained[0] == pytest.approx(0.1) and pretrained[10] == 1.0
    assert pretrained[55] == pytest.approx(0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert pretrained[100:] == [FINAL_RATE_FRACTION] * 20  # stays at the floor past the end


def test_no_other_module_computes_a_cosine_schedule():
    """The schedule is written once: no second warm-up/cosine in the package."""
    found = [
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if re.search(r"math\.cos\(math\.pi", path.read_text(encoding="utf-8"))
    ]
    assert found == ["training/schedule.py"]


def box_source(foreground: bool = True) -> SourceData:
    """A 24^3 volume whose image is 1 on a 2^3 labeled box (class 3) in one corner and 0 elsewhere."""
    label = torch.zeros(24, 24, 24, dtype=torch.uint8)
    if foreground:
        label[1:3, 2:4, 20:22] = 3
    image = (label > 0).to(torch.float16)[None]
    volume = Volume("v", 0, image, label, torch.nonzero(label.flatten() > 0).flatten())
    return SourceData(SourceConfig("s", "s"), [1, 2, 3], ["a", "b", "c"], [volume], [])


def test_patches_are_seeded_and_a_saved_generator_continues_them_exactly():
    source = box_source()
    rng = np.random.default_rng(7)
    straight = [sample_batch(source, 3, PATCH, 0.5, rng, True) for _ in range(4)]
    rng = np.random.default_rng(7)
    sample_batch(source, 3, PATCH, 0.5, rng, True)
    saved = rng.bit_generator.state  # what a checkpoint keeps
    patch_transforms.cache_clear()  # a new process builds its transforms afresh
    resumed_rng = np.random.default_rng(123)
    resumed_rng.bit_generator.state = saved
    resumed = [sample_batch(source, 3, PATCH, 0.5, resumed_rng, True) for _ in range(3)]
    for (image, label), (again_image, again_label) in zip(straight[1:], resumed):
        assert torch.equal(image, again_image) and torch.equal(label, again_label)
    assert not torch.equal(straight[1][0], straight[2][0])  # the comparison above can fail


def test_patch_placement_follows_the_foreground_fraction_and_flips_scale_and_shift():
    source = box_source()
    images, labels = sample_batch(source, 64, PATCH, 1.0, np.random.default_rng(0))
    assert images.shape == (64, 1, *PATCH) and images.dtype == torch.float32 and labels.dtype == torch.int64
    assert all(int((lab == 3).sum()) == 8 for lab in labels)  # centred on the box: all of it inside
    # Image and label stay aligned through the flips; scale in [0.9, 1.1] and shift in [-0.1, 0.1] are global.
    for image, label in zip(images, labels):
        shift, top = float(image[0][label == 0].mean()), float(image[0][label == 3].mean())
        assert torch.allclose(image[0][label == 0], torch.tensor(shift)) and -0.1 <= shift <= 0.1
        assert 0.9 <= top - shift <= 1.1
    # The box's corner voxel lands on both sides along every axis: each axis is flipped in some patches.
    corners = [torch.nonzero(lab == 3)[0] for lab in labels]
    assert all(len({int(c[axis]) for c in corners}) > 1 for axis in range(3))
    anywhere = sample_batch(source, 64, PATCH, 0.0, np.random.default_rng(0))[1]
    assert sum(int((lab > 0).any()) for lab in anywhere) < 16  # uniform placement rarely meets the corner box


def test_a_volume_without_labels_gives_uniform_patches_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # MONAI warns when it cannot balance foreground and background
        images, labels = sample_batch(box_source(foreground=False), 4, PATCH, 0.67, np.random.default_rng(1))
    assert images.shape == (4, 1, *PATCH) and not labels.any()


def test_the_contrast_transform_is_seeded_and_keeps_the_patch_statistics():
    image = torch.randn(1, 10, 10, 10, generator=torch.Generator().manual_seed(0)) + 2.0
    transform = RandMRIContrastd(keys="image")
    first = transform.set_random_state(seed=4)({"image": image})["image"]
    second = transform.set_random_state(seed=4)({"image": image})["image"]
    other = transform.set_random_state(seed=5)({"image": image})["image"]
    assert torch.equal(first, second) and not torch.equal(first, other)
    assert torch.equal(first, randomise_intensity(image, np.random.RandomState(4)))
    assert float(first.mean()) == pytest.approx(float(image.mean()), abs=1e-4)
    assert float(first.std()) == pytest.approx(float(image.std()), rel=1e-3)
