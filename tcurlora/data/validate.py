"""Check a labeled case before training: geometry, label values, voxel values."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from tcurlora.data.cases import Case
from tcurlora.data.io import check_output_free, count_nonfinite, read_image, read_label, split_channels
from tcurlora.errors import InputError

__all__ = ["check_output_free", "geometry_difference", "remap_labels", "validate_case"]

RELATIVE_TOLERANCE = 1e-4


def _close(a: tuple[float, ...], b: tuple[float, ...], scale: float) -> bool:
    a_arr, b_arr = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a_arr.shape != b_arr.shape:
        return False
    return bool(np.all(np.abs(a_arr - b_arr) <= RELATIVE_TOLERANCE * max(scale, 1.0)))


def geometry_difference(first: sitk.Image, second: sitk.Image) -> str | None:
    """A short description of how two grids differ (size/spacing/origin/direction), or None."""
    if first.GetSize()[:3] != second.GetSize()[:3]:
        return f"size {first.GetSize()[:3]} vs {second.GetSize()[:3]}"
    spacing_scale = float(np.max(np.abs(first.GetSpacing()[:3])))
    if not _close(first.GetSpacing()[:3], second.GetSpacing()[:3], spacing_scale):
        return f"spacing {first.GetSpacing()[:3]} vs {second.GetSpacing()[:3]}"
    extent = spacing_scale * float(max(first.GetSize()[:3]))
    origin_scale = max(float(np.max(np.abs(first.GetOrigin()[:3]))), extent)
    if not _close(first.GetOrigin()[:3], second.GetOrigin()[:3], origin_scale):
        return f"origin {first.GetOrigin()[:3]} vs {second.GetOrigin()[:3]}"
    if not _close(first.GetDirection(), second.GetDirection(), 1.0):
        return f"direction {first.GetDirection()} vs {second.GetDirection()}"
    return None


def remap_labels(array: np.ndarray, label_map: Mapping[int, int] | None) -> np.ndarray:
    """Map source label values to class indices; values not in the map become background (0)."""
    if label_map is None:
        return array
    out = np.zeros(array.shape, dtype=np.int64)
    for source, target in label_map.items():
        out[array == source] = target
    return out


def _check_whole_numbers(array: np.ndarray, path: Path) -> None:
    if not np.all(np.isfinite(array)):
        raise InputError("label has NaN or infinite values", path)
    if not np.array_equal(array, np.round(array)):
        bad = array[array != np.round(array)].flat[0]
        raise InputError(f"label has non-integer values (e.g. {bad:g}); a labelmap needs whole numbers", path)


def _check_label_values(array: np.ndarray, num_classes: int, path: Path) -> None:
    highest = num_classes - 1
    values = np.unique(array).astype(np.int64)
    out_of_range = [int(v) for v in values if v < 0 or v > highest]
    if out_of_range:
        raise InputError(
            f"label values {out_of_range} out of range 0..{highest} (background + {highest} classes requested)",
            path,
        )
    if not np.any(values > 0):
        raise InputError(f"label is empty: all background, none of classes 1..{highest}", path)


def validate_case(case: Case, num_classes: int) -> list[str]:
    """Raise InputError naming the file and the problem; return warnings (strings) otherwise.

    Checks: files readable; channels share one grid; no NaN/inf voxels; label on the image grid
    (size, spacing, origin, direction within 1e-4 relative); label values whole numbers in
    0..num_classes-1 (num_classes counts the background, as everywhere in tcurlora; after
    `case.label_map`); at least one voxel of a requested class.
    """
    warnings: list[str] = []
    channels: list[tuple[Path, sitk.Image]] = []
    for path in case.images:
        channels.extend((path, channel) for channel in split_channels(read_image(path)))
    first_path, first = channels[0]
    for path, channel in channels[1:]:
        difference = geometry_difference(first, channel)
        if difference:
            raise InputError(f"channels have different geometry than {first_path.name}: {difference}", path)
    for path in case.images:
        count = count_nonfinite(path)
        if count:
            raise InputError(f"image has {count} NaN or infinite voxels", path)
    for path, channel in channels:
        values = sitk.GetArrayViewFromImage(channel)
        if float(values.max()) == float(values.min()):
            warnings.append(f"{path}: image is constant ({float(values.min()):g})")
    if case.label is None:
        return warnings
    label, _ = read_label(case.label)
    difference = geometry_difference(first, label)
    if difference:
        raise InputError(f"label geometry differs from image {first_path.name}: {difference}", case.label)
    array = sitk.GetArrayFromImage(label)
    _check_whole_numbers(array, case.label)
    if case.label_map is not None:
        array = remap_labels(array.astype(np.int64), case.label_map)
    _check_label_values(array, num_classes, case.label)
    return warnings
