"""Whether two voxel grids are the same: the one comparison used for channels, image/label pairs
(validate.py, transforms.py) and prediction/reference pairs (evaluate.py).

Tolerance (RELATIVE_TOLERANCE = 1e-4, relative to the grid's own scale): sizes must be equal;
spacings may differ by 1e-4 x the largest spacing (at least 1e-4 mm); origins by 1e-4 x the larger
of the largest |origin| coordinate and the grid's extent; direction cosines by 1e-4. This absorbs
the float32 rounding of NIfTI headers, never a real voxel shift.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

RELATIVE_TOLERANCE = 1e-4


@dataclass(frozen=True)
class Grid:
    """Size (x, y, z), spacing, origin and direction (row-major) of a volume."""

    size: tuple[int, ...]
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]

    @classmethod
    def of(cls, image: Any) -> Grid:
        """The grid of a SimpleITK image (its first three axes)."""
        return cls(
            tuple(image.GetSize()[:3]),
            tuple(image.GetSpacing()[:3]),
            tuple(image.GetOrigin()[:3]),
            tuple(image.GetDirection()),
        )


def _close(a: tuple[float, ...], b: tuple[float, ...], scale: float) -> bool:
    a_arr, b_arr = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a_arr.shape != b_arr.shape:
        return False
    return bool(np.all(np.abs(a_arr - b_arr) <= RELATIVE_TOLERANCE * max(scale, 1.0)))


def _shown(values: tuple) -> tuple:
    return tuple(round(float(v), 4) if isinstance(v, float) else v for v in values)


def geometry_difference(first: Any, second: Any, names: tuple[str, str] | None = None) -> str | None:
    """How two grids (Grid or SimpleITK images) differ (size/spacing/origin/direction), or None.

    With `names`, each value is labelled: "size (35, 51, 35) in the image vs (36, 51, 35) in the label".
    """
    a = first if isinstance(first, Grid) else Grid.of(first)
    b = second if isinstance(second, Grid) else Grid.of(second)

    def differ(what: str, x: tuple, y: tuple) -> str:
        x, y = _shown(x), _shown(y)
        if names is None:
            return f"{what} {x} vs {y}"
        return f"{what} {x} in the {names[0]} vs {y} in the {names[1]}"

    if a.size != b.size:
        return differ("size", a.size, b.size)
    spacing_scale = float(np.max(np.abs(a.spacing)))
    if not _close(a.spacing, b.spacing, spacing_scale):
        return differ("spacing", a.spacing, b.spacing)
    extent = spacing_scale * float(max(a.size))
    origin_scale = max(float(np.max(np.abs(a.origin))), extent)
    if not _close(a.origin, b.origin, origin_scale):
        return differ("origin", a.origin, b.origin)
    if not _close(a.direction, b.direction, 1.0):
        return differ("direction", a.direction, b.direction)
    return None
