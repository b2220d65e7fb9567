"""Pretraining's volumes: each source's cases oriented, resampled, normalised and padded to at least a
patch by MONAI transforms (tcurlora.data.transforms, as fine-tuning's), labels shifted to the source's
global class indices, held in memory (and on disk through the volume cache, tcurlora.pretraining.cache)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch
from monai.transforms import SpatialPadd

from tcurlora.data.cases import Case, cases_from_decathlon
from tcurlora.data.transforms import inference_transforms, validation_transforms
from tcurlora.errors import ConfigError, InputError
from tcurlora.models.spec import ModelSpec
from tcurlora.pretraining.cache import cached_volume, volume_key
from tcurlora.pretraining.config import PretrainConfig, SourceConfig, union_labels
from tcurlora.pretraining.tissue import tissue_classes


@dataclass
class Volume:
    """A preprocessed single-channel volume (1, X, Y, Z) with its label in global class indices."""

    case_id: str
    source: int
    image: torch.Tensor
    label: torch.Tensor
    foreground: torch.Tensor  # flat indices of labeled voxels


@dataclass
class SourceData:
    """The loaded volumes of one source and its global class indices."""

    config: SourceConfig
    classes: list[int]
    names: list[str]
    train: list[Volume]
    val: list[Volume]
    train_ids: list[str] = field(default_factory=list)


def load_volume(
    case: Case,
    channel: int,
    source: int,
    offset: int,
    spec: ModelSpec,
    cache_dir: Path | None = None,
    objective: str = "segment",
) -> Volume:
    """One channel of a case as a Volume of source `source`, through the cache in `cache_dir` when given."""
    if channel >= len(case.images):
        raise InputError(f"case {case.id} has no channel {channel}", case.images[0])
    prepare = preprocess_tissue if objective == "tissue" else preprocess
    if cache_dir is None:
        image, label = prepare(case, channel, offset, spec)
    else:
        label_file = None if objective == "tissue" else case.label  # a tissue source never reads its labels
        key = volume_key(case.images[channel], label_file, channel, offset, spec)
        image, label = cached_volume(cache_dir, key, partial(prepare, case, channel, offset, spec))
    return Volume(
        case_id=f"{case.id}_{channel:04d}",
        source=source,
        image=image,
        label=label,
        foreground=torch.nonzero(label.flatten() > 0).flatten(),
    )


def preprocess(case: Case, channel: int, offset: int, spec: ModelSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """(image (1, X, Y, Z) float16, label (X, Y, Z) uint8 in global class indices), padded to the patch."""
    item = validation_transforms(spec)({"image": [str(case.images[channel])], "label": str(case.label)})
    label = torch.as_tensor(item["label"]).as_subclass(torch.Tensor)[0]
    label = torch.where(label > 0, label + offset, torch.zeros_like(label)).to(torch.uint8)
    image, label = pad_to_patch(torch.as_tensor(item["image"]).float(), label, spec.patch_size)
    return image.half(), label


def preprocess_tissue(
    case: Case, channel: int, offset: int, spec: ModelSpec
) -> tuple[torch.Tensor, torch.Tensor]:
    """(image, label) of a self-supervised source: the label is the image's own intensity classes (of the
    unpadded image), shifted to the source's global class indices; the case's label file is not read."""
    item = inference_transforms(spec)({"image": [str(case.images[channel])]})
    image = torch.as_tensor(item["image"]).float().as_subclass(torch.Tensor)
    classes = tissue_classes(image[0])
    label = torch.where(classes > 0, classes + offset, torch.zeros_like(classes)).to(torch.uint8)
    image, label = pad_to_patch(image, label, spec.patch_size)
    return image.half(), label


def pad_to_patch(
    image: torch.Tensor, label: torch.Tensor, size: tuple[int, ...]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-pad (C, X, Y, Z) `image` and (X, Y, Z) `label` symmetrically to at least `size` (MONAI
    SpatialPadd), so every patch lies inside the volume; plain tensors out."""
    padded = SpatialPadd(keys=["image", "label"], spatial_size=size, method="symmetric")(
        {"image": image, "label": label[None]}
    )
    return padded["image"].as_subclass(torch.Tensor), padded["label"].as_subclass(torch.Tensor)[0]


def load_sources(
    config: PretrainConfig,
    data_root: Path,
    spec: ModelSpec,
    log: Callable[[str], None] = print,
    *,
    val_only: bool = False,
    cache_dir: Path | None = None,
) -> list[SourceData]:
    """Preprocess every train (unless val_only) and held-out volume of every source into memory (through
    the volume cache in `cache_dir`, tcurlora.pretraining.cache, when given)."""
    sources = []
    for index, ((name, classes, names), source) in enumerate(
        zip(union_labels(config, data_root), config.sources)
    ):
        cases = cases_from_decathlon(data_root / source.folder)
        val_ids = set(source.val_case_ids)
        missing = val_ids - {c.id for c in cases}
        if missing:
            raise ConfigError(f"source {name}: held-out case ids not found: {sorted(missing)}")
        train_cases = [c for c in cases if c.id not in val_ids][: source.num_cases]
        val_cases = [c for c in cases if c.id in val_ids]
        offset = classes[0] - 1
        train_ids = [f"{c.id}_{ch:04d}" for c in train_cases for ch in source.channels]
        load = partial(
            load_volume,
            source=index,
            offset=offset,
            spec=spec,
            cache_dir=cache_dir,
            objective=source.objective,
        )
        train = [] if val_only else [load(c, ch) for c in train_cases for ch in source.channels]
        val = [load(c, ch) for c in val_cases for ch in source.channels]
        log(f"{name}: {len(train_ids)} training and {len(val)} held-out volumes, classes {classes}")
        sources.append(
            SourceData(config=source, classes=classes, names=names, train=train, val=val, train_ids=train_ids)
        )
    return sources
