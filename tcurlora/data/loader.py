"""Endless seeded training batches and preprocessed validation volumes, cached in memory."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from monai.data import CacheDataset

from tcurlora.data.cases import Case
from tcurlora.data.transforms import training_transforms, user_errors, validation_transforms
from tcurlora.errors import InputError
from tcurlora.models.spec import ModelSpec


def case_record(case: Case) -> dict[str, Any]:
    """The dictionary the transforms read: image path(s), label path, label map, id."""
    if case.label is None:
        raise InputError(f"case {case.id!r} has no label; training and validation need one", case.images[0])
    return {
        "id": case.id,
        "image": [str(path) for path in case.images],
        "label": str(case.label),
        "label_map": case.label_map or {},
    }


def training_batches(
    cases: Sequence[Case],
    spec: ModelSpec,
    *,
    patch_size: Sequence[int],
    num_classes: int,
    batch_size: int,
    seed: int,
    augment: bool = True,
) -> Iterator[dict[str, torch.Tensor]]:
    """Yield {"image": (B, C, *patch) float32, "label": (B, 1, *patch) int64} forever.

    Each case is loaded and preprocessed once (CacheDataset, no workers, no per-sample copy of
    the cached volume: patches are cloned right after cropping); every batch draws
    `batch_size` cases at random and one foreground-weighted, augmented patch from each.
    The same seed gives the same sequence of batches. Bad inputs raise here, before the first batch.
    """
    if not cases:
        raise InputError("no training cases")
    if batch_size < 1:
        raise InputError(f"batch_size must be at least 1, got {batch_size}")
    transform = training_transforms(spec, patch_size=patch_size, num_classes=num_classes, augment=augment)
    transform.set_random_state(seed=seed)
    with user_errors():
        dataset = CacheDataset(
            [case_record(case) for case in cases],
            transform=transform,
            num_workers=0,
            progress=False,
            copy_cache=False,
        )
    return _endless(dataset, batch_size, np.random.default_rng(seed))


def _endless(
    dataset: CacheDataset, batch_size: int, rng: np.random.Generator
) -> Iterator[dict[str, torch.Tensor]]:
    while True:
        indices = rng.integers(0, len(dataset), size=batch_size)
        with user_errors():
            samples = [_first(dataset[int(index)]) for index in indices]
        yield {
            "image": torch.stack(
                [torch.as_tensor(s["image"]).as_subclass(torch.Tensor) for s in samples]
            ).float(),
            "label": torch.stack(
                [torch.as_tensor(s["label"]).as_subclass(torch.Tensor) for s in samples]
            ).long(),
        }


def _first(sample: dict | list) -> dict:
    return sample[0] if isinstance(sample, list) else sample


def validation_volumes(cases: Sequence[Case], spec: ModelSpec) -> list[dict[str, Any]]:
    """Preprocessed full volumes: [{"id", "image": (C, X, Y, Z) MetaTensor, "label": (1, X, Y, Z) int64}]."""
    transform = validation_transforms(spec)
    volumes = []
    for case in cases:
        data = transform(case_record(case))
        volumes.append({"id": case.id, "image": data["image"], "label": data["label"]})
    return volumes
