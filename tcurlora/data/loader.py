"""Endless seeded training batches and preprocessed validation volumes, cached in memory."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import CacheDataset

from tcurlora.data.cases import Case
from tcurlora.data.transforms import (
    training_transforms,
    unlabeled_transforms,
    user_errors,
    validation_transforms,
)
from tcurlora.errors import InputError
from tcurlora.filenames import is_image_file
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
    return BatchStream(dataset, transform, batch_size, np.random.default_rng(seed))


def unlabeled_files(paths: Sequence[str | Path]) -> list[Path]:
    """The image files `paths` stand for: a file itself; a folder its image files (a Decathlon folder, one
    with dataset.json or imagesTr/: those of imagesTr), sorted. InputError naming a path that does not
    exist, is not an image file, or is a folder without images."""
    files: list[Path] = []
    for given in paths:
        path = Path(given)
        if path.is_dir():
            folder = path / "imagesTr" if (path / "imagesTr").is_dir() else path
            found = sorted(
                p for p in folder.iterdir() if p.is_file() and is_image_file(p) and not p.name.startswith(".")
            )
            if not found:
                raise InputError("unlabeled folder holds no image files", folder)
            files += found
        elif path.is_file():
            if not is_image_file(path):
                raise InputError("unlabeled volume is not an image file (.nii.gz, .nrrd, .mha, ...)", path)
            files.append(path)
        else:
            raise InputError("unlabeled volume not found", path)
    unique = list(dict.fromkeys(files))
    return unique


def unlabeled_batches(
    files: Sequence[Path], spec: ModelSpec, *, patch_size: Sequence[int], batch_size: int, seed: int
) -> BatchStream:
    """Endless {"image": (B, C, *patch)} batches of random patches of unlabeled volumes (`unlabeled_transforms`),
    each volume loaded and preprocessed once; an unreadable volume raises InputError naming it, here."""
    if not files:
        raise InputError("no unlabeled volumes")
    transform = unlabeled_transforms(spec, patch_size=patch_size)
    transform.set_random_state(seed=seed)
    with user_errors():
        dataset = CacheDataset(
            [{"image": [str(f)]} for f in files],
            transform=transform,
            num_workers=0,
            progress=False,
            copy_cache=False,
        )
    return BatchStream(dataset, transform, batch_size, np.random.default_rng(seed))


class BatchStream(Iterator[dict[str, torch.Tensor]]):
    """Endless batches of one CacheDataset; `state()` / `restore()` capture the case sampler and every
    random transform's state (JSON), so a resumed run continues with the batches it would have drawn."""

    def __init__(self, dataset: CacheDataset, transform: Any, batch_size: int, rng: np.random.Generator):
        self.dataset, self.transform, self.batch_size, self.rng = dataset, transform, batch_size, rng

    def __next__(self) -> dict[str, torch.Tensor]:
        indices = self.rng.integers(0, len(self.dataset), size=self.batch_size)
        with user_errors():
            samples = [_first(self.dataset[int(index)]) for index in indices]
        batch = {"image": _stack(samples, "image").float()}
        if "label" in samples[0]:  # unlabeled streams (unlabeled_batches) have images only
            batch["label"] = _stack(samples, "label").long()
        return batch

    def state(self) -> dict[str, Any]:
        """JSON-serialisable: the sampler Generator's state and each transform RandomState's state."""
        return {
            "sampler": self.rng.bit_generator.state,
            "transforms": [random_state_to_json(r) for r in random_states(self.transform)],
        }

    def restore(self, state: dict[str, Any]) -> None:
        """Continue from `state()`; ValueError when it belongs to other transforms."""
        states = random_states(self.transform)
        if len(state["transforms"]) != len(states):
            raise ValueError(f"{len(state['transforms'])} transform random states, {len(states)} expected")
        self.rng.bit_generator.state = state["sampler"]
        for random, saved in zip(states, state["transforms"]):
            random.set_state(random_state_from_json(saved))


def _stack(samples: list[dict], key: str) -> torch.Tensor:
    return torch.stack([torch.as_tensor(s[key]).as_subclass(torch.Tensor) for s in samples])


def random_states(transform: Any) -> list[np.random.RandomState]:
    """Every distinct RandomState the MONAI transform (and the transforms inside it) draws from, in a
    fixed order (attribute order of the objects, depth first)."""
    from monai.transforms import Randomizable

    found: list[np.random.RandomState] = []
    seen: set[int] = set()

    def visit(value: Any) -> None:
        if id(value) in seen:
            return
        seen.add(id(value))
        if isinstance(value, (list, tuple)):
            for item in value:
                visit(item)
        elif isinstance(value, dict):
            for item in value.values():
                visit(item)
        elif isinstance(value, np.random.RandomState):
            found.append(value)
        elif isinstance(value, Randomizable) or hasattr(value, "transforms"):
            if isinstance(value, Randomizable):
                visit(value.R)
            for item in vars(value).values():
                visit(item)
        elif hasattr(value, "__dict__") and type(value).__module__.startswith("monai."):
            for item in vars(value).values():
                visit(item)

    visit(transform)
    return found


def random_state_to_json(random: np.random.RandomState) -> list[Any]:
    name, keys, position, has_gauss, cached = random.get_state()
    return [name, keys.tolist(), int(position), int(has_gauss), float(cached)]


def random_state_from_json(saved: list[Any]) -> tuple:
    name, keys, position, has_gauss, cached = saved
    return (name, np.asarray(keys, dtype=np.uint32), int(position), int(has_gauss), float(cached))


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
