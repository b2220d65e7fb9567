"""The voxel spacings tcurlora works at, checked alike where a scan is read (tcurlora.data.values), where a
job or a bench config asks for a working spacing (tcurlora.jobs.fields) and where a model spec states
its own (tcurlora.models.spec): kept in the data layer, needing only tcurlora.jsonio, so every layer above can use it."""

from __future__ import annotations

from typing import Any

from tcurlora.jsonio import is_finite_number

# Voxel spacings (mm) a scan or a working grid can have: 10 um (micro-CT) to 10 cm. Outside, a header is
# wrong or a value is a typo, and resampling to it would ask for absurd grids.
MIN_SPACING_MM = 0.01
MAX_SPACING_MM = 100.0


def spacing_problem(values: Any) -> str | None:
    """Why `values` is not a spacing tcurlora works at (3 numbers within MIN..MAX_SPACING_MM), or None."""
    if not isinstance(values, (list, tuple)) or len(values) != 3 or not all(is_finite_number(v) and v > 0 for v in values):
        return f"expected a list of 3 positive numbers (mm), got {values!r}"
    if not all(MIN_SPACING_MM <= v <= MAX_SPACING_MM for v in values):
        return f"spacing {list(values)} mm is outside {MIN_SPACING_MM:g}..{MAX_SPACING_MM:g} mm"
    return None
