"""Check a labeled case before training: geometry, label values, voxel values."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from tcurlora.data.cases import Case
from tcurlora.data.geometry import geometry_difference
from tcurlora.data.io import check_output_free, read_label, split_channels
from tcurlora.data.values import check_image_values, check_not_constant
from tcurlora.errors import ConfigError, InputError

__all__ = ["check_output_free", "remap_labels", "validate_case", "validation_count"]


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


def validate_case(case: Case, num_classes: int) -> None:
    """Raise InputError naming the file and the problem (a constant image too: a warning went unseen).

    Checks: files readable; voxels real, finite and within float32, spacing sane (data.values); channels
    share one grid; no channel constant (nothing to learn); label on the image grid
    (size, spacing, origin, direction within 1e-4 relative); label values whole numbers in
    0..num_classes-1 (num_classes counts the background, as everywhere in tcurlora; after
    `case.label_map`); at least one voxel of a requested class.
    """
    channels: list[tuple[Path, sitk.Image]] = []
    for path in case.images:  # real, finite, float32-sized voxels on a sane grid (InputError otherwise)
        channels.extend((path, channel) for channel in split_channels(check_image_values(path)))
    first_path, first = channels[0]
    for path, channel in channels[1:]:
        difference = geometry_difference(first, channel, (f"first channel {first_path.name}", "channel"))
        if difference:
            raise InputError(f"channels have different geometry than {first_path.name}: {difference}", path)
    for path, channel in channels:
        check_not_constant(path, channel)
    if case.label is None:
        return
    check_label_map(case, num_classes)
    label, _ = read_label(case.label)
    difference = geometry_difference(first, label, ("image", "label"))
    if difference:
        raise InputError(f"label geometry differs from image {first_path.name}: {difference}", case.label)
    array = sitk.GetArrayFromImage(label)
    _check_whole_numbers(array, case.label)
    if case.label_map is not None:
        array = remap_labels(array.astype(np.int64), case.label_map)
        if not np.any(array > 0):
            raise InputError(
                f"case {case.id!r}: after its label_map {case.label_map} the label is all background "
                "(no voxel has a mapped value)",
                case.label,
            )
    _check_label_values(array, num_classes, case.label)


def check_label_map(case: Case, num_classes: int) -> None:
    """InputError blaming the case's label_map (not the label file) when it maps outside 0..N."""
    if case.label_map is None:
        return
    highest = num_classes - 1
    bad = sorted({t for t in case.label_map.values() if not 0 <= t <= highest})
    if bad:
        raise InputError(
            f"case {case.id!r}: label_map {case.label_map} maps to class {bad[0]}, but the classes are "
            f"0..{highest} (background + {highest} named); fix the label_map in the job"
        )


def validation_count(cases: int, val_fraction: float, source: Path | None = None) -> int:
    """Cases held out for `val_fraction`; ConfigError when a positive fraction holds out none."""
    count = int(round(cases * val_fraction))
    if val_fraction > 0 and count == 0:
        raise ConfigError(
            f"key 'val_fraction': {val_fraction:g} of {cases} case(s) holds out no case for validation "
            f"(a fraction above {0.5 / cases:.3g} is needed, and one case must stay for training); "
            "give more cases, val_case_ids, or 0 for no validation",
            source,
        )
    return count
