"""MONAI dictionary transforms built from a ModelSpec: load with exact geometry, resample, normalise, augment.

Volumes are loaded with SimpleITK into MetaTensors (C, X, Y, Z) whose affine maps voxel indices
to RAS world coordinates (MONAI's convention, as its ITKReader does), so Orientationd/Spacingd and
the inverse resampling in tcurlora.infer all agree on where every voxel is.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch
from monai.data import MetaTensor
from monai.transforms import (
    Compose,
    EnsureTyped,
    FgBgToIndicesd,
    MapTransform,
    NormalizeIntensityd,
    Orientationd,
    RandAffined,
    RandCropByPosNegLabeld,
    RandFlipd,
    RandGaussianNoised,
    RandScaleIntensityd,
    RandShiftIntensityd,
    RandSpatialCropd,
    ScaleIntensityRanged,
    ScaleIntensityRangePercentilesd,
    Spacingd,
    SpatialPadd,
)

from tcurlora.data.geometry import geometry_difference
from tcurlora.data.io import read_channels, read_label
from tcurlora.data.validate import remap_labels
from tcurlora.errors import ConfigError, InputError, TCURLoRAError
from tcurlora.models.spec import ModelSpec

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
# The spatial axes fine-tuning mirrors (left-right only, so anterior/posterior label names stay true);
# segmenting averages over exactly these flips, since the network has seen no others.
TRAINING_FLIP_AXES: tuple[int, ...] = (0,)


@contextmanager
def user_errors() -> Iterator[None]:
    """Re-raise a TCURLoRAError that MONAI wrapped in "RuntimeError: applying transform ..."."""
    try:
        yield
    except RuntimeError as error:
        cause: BaseException | None = error
        while cause is not None and not isinstance(cause, TCURLoRAError):
            cause = cause.__cause__ or cause.__context__
        if cause is None:
            raise
        raise cause.with_traceback(cause.__traceback__) from None


class Pipeline(Compose):
    """A Compose whose user errors (InputError, ...) come out as themselves, not wrapped by MONAI."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with user_errors():
            return super().__call__(*args, **kwargs)


def ras_affine(image: sitk.Image) -> np.ndarray:
    """4x4 affine from (x, y, z) voxel index to RAS millimetres for a 3D SimpleITK image."""
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    affine = np.eye(4)
    affine[:3, :3] = direction @ np.diag(np.asarray(image.GetSpacing(), dtype=np.float64))
    affine[:3, 3] = np.asarray(image.GetOrigin(), dtype=np.float64)
    return _LPS_TO_RAS @ affine


def to_metatensor(channels: Sequence[sitk.Image], path: str | Path, dtype: np.dtype) -> MetaTensor:
    """Stack 3D SimpleITK channels into a channel-first (C, X, Y, Z) MetaTensor with a RAS affine."""
    arrays = [np.transpose(sitk.GetArrayViewFromImage(channel), (2, 1, 0)) for channel in channels]
    data = np.stack(arrays).astype(dtype)
    affine = ras_affine(channels[0])
    meta = {
        "filename_or_obj": str(path),
        "original_affine": affine.copy(),
        "spatial_shape": np.asarray(channels[0].GetSize()),
        "original_channel_dim": 0,
        "space": "RAS",
    }
    return MetaTensor(
        torch.from_numpy(np.ascontiguousarray(data)), affine=torch.from_numpy(affine), meta=meta
    )


class LoadCased(MapTransform):
    """Load "image" (a path, or a list of per-channel paths) and "label" with their geometry.

    A "label_map" entry ({source value: class}) in the data remaps the label; channels with
    different grids, or a channel count other than `in_channels` (when given), are InputErrors.
    """

    def __init__(self, keys: Sequence[str] = ("image", "label"), in_channels: int | None = None):
        super().__init__(keys, allow_missing_keys=True)
        self.in_channels = in_channels

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        out = dict(data)
        if "image" in self.keys and "image" in out:
            paths = out["image"]
            paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
            channels = read_channels(paths)
            for channel in channels[1:]:
                difference = geometry_difference(channels[0], channel)
                if difference:
                    raise InputError(f"channels have different geometry: {difference}", paths[-1])
            if self.in_channels is not None and len(channels) != self.in_channels:
                raise InputError(
                    f"{len(channels)} image channel(s) given; the model needs {self.in_channels}", paths[0]
                )
            out["image"] = to_metatensor(channels, paths[0], np.float32)
        if "label" in self.keys and out.get("label") is not None:
            label, _ = read_label(out["label"])
            array = sitk.GetArrayFromImage(label)
            array = remap_labels(array.astype(np.int64), out.get("label_map") or None)
            mapped = sitk.GetImageFromArray(array.astype(np.int16))
            mapped.CopyInformation(label)
            out["label"] = to_metatensor([mapped], out["label"], np.float32)
        return out


class ClonePatchd(MapTransform):
    """Copy cropped patches so later in-place steps can never touch the cached full volume."""

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        out = {key: value for key, value in data.items() if key not in ("label_fg", "label_bg")}
        for key in self.key_iterator(out):
            out[key] = out[key].clone()
        return out


class CastLabeld(MapTransform):
    """Round and cast the label to int64 (after resampling/augmentation it is float)."""

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        out = dict(data)
        for key in self.key_iterator(out):
            out[key] = torch.round(torch.as_tensor(out[key])).to(torch.int64)
        return out


def normalisation(spec: ModelSpec) -> MapTransform:
    """The intensity normalisation named by spec.intensity.kind, applied to "image" per channel."""
    intensity = spec.intensity
    if intensity.kind == "zscore":
        return NormalizeIntensityd(keys="image", nonzero=True, channel_wise=True)
    if intensity.kind == "percentile":
        return ScaleIntensityRangePercentilesd(
            keys="image",
            lower=intensity.lower,
            upper=intensity.upper,
            b_min=0.0,
            b_max=1.0,
            clip=True,
            channel_wise=True,
        )
    if intensity.kind == "range":
        return ScaleIntensityRanged(
            keys="image", a_min=intensity.a_min, a_max=intensity.a_max, b_min=0.0, b_max=1.0, clip=True
        )
    raise ConfigError(f"unknown intensity normalisation {intensity.kind!r}; use zscore, percentile or range")


def preprocessing(spec: ModelSpec, *, with_label: bool) -> list[MapTransform]:
    """Deterministic steps: load, normalise, orient to RAS, resample to spec.spacing."""
    keys = ["image", "label"] if with_label else ["image"]
    modes = ["bilinear", "nearest"] if with_label else ["bilinear"]
    return [
        LoadCased(keys, in_channels=spec.in_channels if "in_channels" in spec.arch_params else None),
        normalisation(spec),
        Orientationd(keys=keys, axcodes="RAS", labels=None),
        Spacingd(keys=keys, pixdim=tuple(float(s) for s in spec.spacing), mode=modes, dtype=np.float32),
        EnsureTyped(keys="image", dtype=torch.float32, track_meta=True),
    ]


def augmentation(flip_axes: Sequence[int] = TRAINING_FLIP_AXES) -> list[MapTransform]:
    """Standard seeded augmentation: flips, small rotation/scaling, intensity scale/shift, noise."""
    keys = ["image", "label"]
    steps: list[MapTransform] = [RandFlipd(keys=keys, prob=0.5, spatial_axis=axis) for axis in flip_axes]
    steps += [
        RandAffined(
            keys=keys,
            prob=0.3,
            rotate_range=(0.26, 0.26, 0.26),
            scale_range=(0.1, 0.1, 0.1),
            mode=("bilinear", "nearest"),
            padding_mode="zeros",
        ),
        *intensity_augmentation(),
        RandGaussianNoised(keys="image", prob=0.15, mean=0.0, std=0.05),
    ]
    return steps


def training_transforms(
    spec: ModelSpec,
    *,
    patch_size: Sequence[int],
    num_classes: int,
    augment: bool = True,
    flip_axes: Sequence[int] = TRAINING_FLIP_AXES,
) -> Pipeline:
    """Preprocess, pad to at least `patch_size`, crop foreground-weighted patches (pos 2 : neg 1), augment.

    Output per sample: "image" (C, *patch) float32, "label" (1, *patch) int64 in 0..num_classes-1.
    Flips default to the first (left-right) axis only, so anterior/posterior label names stay true.
    """
    if num_classes < 2:
        raise ConfigError(f"num_classes must be at least 2 (background + one class), got {num_classes}")
    patch = tuple(int(s) for s in patch_size)
    steps = preprocessing(spec, with_label=True)
    steps += [
        SpatialPadd(keys=["image", "label"], spatial_size=patch),
        FgBgToIndicesd(keys="label", fg_postfix="_fg", bg_postfix="_bg"),
        RandCropByPosNegLabeld(
            keys=["image", "label"],
            label_key="label",
            spatial_size=patch,
            pos=2.0,
            neg=1.0,
            num_samples=1,
            fg_indices_key="label_fg",
            bg_indices_key="label_bg",
        ),
        ClonePatchd(keys=["image", "label"]),
    ]
    if augment:
        steps += augmentation(flip_axes)
    steps.append(CastLabeld(keys="label"))
    return Pipeline(steps)


def intensity_augmentation() -> list[MapTransform]:
    """The intensity parts of `augmentation` (scale, shift), for images without a label."""
    return [
        RandScaleIntensityd(keys="image", factors=0.1, prob=0.5),
        RandShiftIntensityd(keys="image", offsets=0.1, prob=0.5),
    ]


def unlabeled_transforms(spec: ModelSpec, *, patch_size: Sequence[int], augment: bool = True) -> Pipeline:
    """Preprocess an unlabeled "image" as training does, pad to at least `patch_size`, crop one patch at a
    uniformly random place, and apply the intensity augmentation. Output: "image" (C, *patch) float32."""
    patch = tuple(int(s) for s in patch_size)
    steps = preprocessing(spec, with_label=False)
    steps += [
        SpatialPadd(keys="image", spatial_size=patch),
        RandSpatialCropd(keys="image", roi_size=patch, random_size=False),
        ClonePatchd(keys="image"),
    ]
    if augment:
        steps += intensity_augmentation()
    return Pipeline(steps)


def inference_transforms(spec: ModelSpec) -> Pipeline:
    """Load "image" and bring it to the network's grid and intensities (no padding, no label)."""
    return Pipeline(preprocessing(spec, with_label=False))


def validation_transforms(spec: ModelSpec) -> Pipeline:
    """Preprocessed full image and label (label as int64), for Dice during training."""
    return Pipeline([*preprocessing(spec, with_label=True), CastLabeld(keys="label")])
