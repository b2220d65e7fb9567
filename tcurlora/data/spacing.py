"""The working spacing of a fine-tune: the grid the network sees the target's cases on.

A base model is pretrained at one spacing (the built-in one at 1.5 mm), but a small structure loses
most of its voxels when a 1 mm scan is resampled to 1.5 mm (hippocampus: Dice 0.40 -> 0.71 for the
same decoder fine-tune), while a large one no longer fits in a patch at 1 mm (left atrium: 0.73 at
1.5 mm, 0.64 at 1 mm; docs/benchmarks.md). The default ("auto") follows the cases' own median
spacing on each RAS axis, coarsened until the labeled structure's largest extent (median over the
cases) fits in one patch, and kept between 2/3 of the base's finest spacing and the base's coarsest.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

# Finest working spacing "auto" picks, as a fraction of the base model's spacing.
FINEST_FRACTION = 2.0 / 3.0


def ras_spacing(path: str | Path) -> tuple[float, float, float]:
    """A volume's voxel spacing along the R, A and S axes (mm), read from its header only."""
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    spacing = reader.GetSpacing()[:3]
    direction = np.asarray(reader.GetDirection(), dtype=np.float64).reshape(len(reader.GetSpacing()), -1)[
        :3, :3
    ]
    out = [0.0, 0.0, 0.0]
    for index_axis in range(3):  # the world axis each index axis runs along most
        out[int(np.argmax(np.abs(direction[:, index_axis])))] = float(spacing[index_axis])
    return out[0], out[1], out[2]


def label_extent_mm(path: str | Path) -> float:
    """The largest side (mm) of the bounding box of a label volume's foreground (0 when it is empty)."""
    import SimpleITK as sitk

    from tcurlora.data.io import read_label

    label, _ = read_label(path)
    foreground = np.argwhere(sitk.GetArrayViewFromImage(label) > 0)
    if not len(foreground):
        return 0.0
    sides = (foreground.max(0) - foreground.min(0) + 1)[::-1] * np.asarray(label.GetSpacing()[:3])
    return float(sides.max())


def auto_spacing(
    native: Sequence[float], base: Sequence[float], extent_mm: float = 0.0, patch: Sequence[int] = (1, 1, 1)
) -> tuple[float, float, float]:
    """Per axis: the native spacing, at least extent_mm / the largest patch side (the structure fits in
    a patch), clamped to [FINEST_FRACTION * min(base), max(base)], to 0.01 mm."""
    low, high = FINEST_FRACTION * min(base), max(base)
    fit = float(extent_mm) / max(int(p) for p in patch)
    values = [round(min(max(float(v), fit, low), high), 2) for v in native]
    return values[0], values[1], values[2]


def resolve_working_spacing(
    requested: Sequence[float] | str | None,
    cases: Sequence,
    base: Sequence[float],
    patch: Sequence[int],
) -> tuple[float, float, float]:
    """The working spacing of a job: explicit mm values, "base" (the base model's), or None/"auto":
    the median RAS spacing of the cases' first images and the median foreground extent of their labels,
    combined as in `auto_spacing`."""
    if requested is None or requested == "auto":
        native = np.median(np.asarray([ras_spacing(c.images[0]) for c in cases]), axis=0)
        extents = [label_extent_mm(c.label) for c in cases if c.label is not None]
        extent = float(np.median(extents)) if extents else 0.0
        return auto_spacing([float(v) for v in native], base, extent, patch)
    values = base if requested == "base" else requested
    return float(values[0]), float(values[1]), float(values[2])
