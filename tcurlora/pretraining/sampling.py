"""Pretraining's patches: MONAI dictionary transforms, as fine-tuning's (tcurlora.data.transforms), reseeded
for every patch from the run's one numpy Generator.

A patch is centred on a labeled voxel with probability `foreground_fraction` (RandCropByPosNegLabeld), else
cut at a uniformly random place (RandSpatialCropd), flipped on each axis with probability 0.5, scaled and
shifted in intensity, and (with `intensity_randomisation`) shown under a random MRI contrast. The
transforms are seeded (MONAI's set_random_state) from the Generator just before each patch, so the
Generator's state is the whole sampler state: a checkpoint holds it alone, and a resumed run draws exactly
the patches an uninterrupted one draws. Metadata is not tracked (plain tensors: a patch needs no geometry, and
MetaTensor bookkeeping would cost more than the crop).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache, partial

import numpy as np
import torch
from monai.data import get_track_meta, set_track_meta
from monai.transforms import (
    CastToTyped,
    Compose,
    MapTransform,
    OneOf,
    RandCropByPosNegLabeld,
    RandFlipd,
    RandScaleIntensityd,
    RandShiftIntensityd,
    RandSpatialCropd,
)

from tcurlora import distributed  # torchrun: no-ops without it
from tcurlora.pretraining.config import PretrainConfig
from tcurlora.pretraining.contrast import RandMRIContrastd
from tcurlora.pretraining.data import SourceData, Volume
from tcurlora.pretraining.loss import union_loss
from tcurlora.training.loop import Batch

MAX_SEED = 2**32  # MONAI's seeds are uint32
KEYS = ("image", "label")


@dataclass
class PatchTransforms:
    """The transforms of one kind of patch."""

    transforms: Compose

    def __call__(self, volume: Volume, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(image (1, *patch) float32, label (*patch) int64) of one patch of `volume`, drawn with the
        transforms seeded from `rng`."""
        self.transforms.set_random_state(seed=int(rng.integers(MAX_SEED)))
        data = {
            "image": volume.image,
            "label": volume.label[None],
            "fg": volume.foreground,
            "bg": volume.foreground,
        }
        with untracked_meta():
            out = self.transforms(data)
        out = out[0] if isinstance(out, list) else out
        return torch.as_tensor(out["image"]), torch.as_tensor(out["label"])[0].long()


@contextmanager
def untracked_meta() -> Iterator[None]:
    """MONAI transforms on plain tensors (no MetaTensor metadata) inside, as before outside."""
    previous = get_track_meta()
    set_track_meta(False)
    try:
        yield
    finally:
        set_track_meta(previous)


@lru_cache(maxsize=32)
def patch_transforms(
    patch: tuple[int, int, int], foreground_fraction: float, randomise_contrast: bool, has_foreground: bool
) -> PatchTransforms:
    """The transforms of one patch of a (1, X, Y, Z) float16 "image" and uint8 "label" at least `patch`
    large; "fg" (and "bg", the same indices: the centred crop never draws a background centre) are the flat
    indices of the labeled voxels, given so that MONAI does not search the whole volume at every patch. The
    patch is cast to float32 right after the crop (only the patch, not the volume)."""
    keys = list(KEYS)
    anywhere = RandSpatialCropd(keys=keys, roi_size=patch, random_size=False)
    centred = RandCropByPosNegLabeld(
        keys=keys,
        label_key="label",
        spatial_size=patch,
        pos=1.0,
        neg=0.0,
        num_samples=1,
        fg_indices_key="fg",
        bg_indices_key="bg",
    )
    crop: MapTransform | OneOf = anywhere
    if has_foreground and foreground_fraction >= 1.0:
        crop = centred
    elif has_foreground and foreground_fraction > 0.0:
        crop = OneOf([centred, anywhere], weights=[foreground_fraction, 1.0 - foreground_fraction])
    steps = [
        crop,
        CastToTyped(keys="image", dtype=torch.float32),
        *[RandFlipd(keys=keys, prob=0.5, spatial_axis=axis) for axis in range(3)],
        RandScaleIntensityd(keys="image", factors=0.1, prob=1.0),
        RandShiftIntensityd(keys="image", offsets=0.1, prob=1.0),
    ]
    if randomise_contrast:
        steps.append(RandMRIContrastd(keys="image"))
    return PatchTransforms(Compose(steps))


def sample_batch(
    source: SourceData,
    batch_size: int,
    patch: tuple[int, int, int],
    fg_fraction: float,
    rng: np.random.Generator,
    randomise_contrast: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`batch_size` random patches of one source's training volumes (each volume drawn from `rng`):
    images (B, 1, *patch), labels (B, *patch)."""
    images, labels = [], []
    for _ in range(batch_size):
        volume = source.train[int(rng.integers(len(source.train)))]
        draw = patch_transforms(
            tuple(int(p) for p in patch),
            float(fg_fraction),
            bool(randomise_contrast),
            len(volume.foreground) > 0,
        )
        image, label = draw(volume, rng)
        images.append(image)
        labels.append(label)
    return torch.stack(images), torch.stack(labels)


def pretrain_batches(
    config: PretrainConfig,
    sources: list[SourceData],
    rng: np.random.Generator,
    device: torch.device,
    first: int,
) -> Iterator[Batch]:
    """The batches of iterations `first`, `first` + 1, ...: the sources in turn, `batch_size` patches each
    (torchrun: this rank's patches of the global batch), with the union loss of the batch's source."""
    for iteration in itertools.count(first):
        source = sources[iteration % len(sources)]
        image, label = sample_batch(
            source,
            config.batch_size,
            config.patch_size,
            config.foreground_fraction,
            rng,
            config.intensity_randomisation,
        )
        mine = distributed.local_part({"image": image, "label": label})  # torchrun: this rank's patches
        loss_fn = partial(union_loss, classes=source.classes, pool=distributed.pooled_sum)
        yield Batch(
            mine["image"].to(device), mine["label"].to(device), loss_fn, {"source": source.config.name}
        )
