"""What a base model is: its architecture, its preprocessing and its labels, as one JSON-able record."""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any

from tcurlora.errors import ConfigError
from tcurlora.jsonio import is_finite_number
from tcurlora.settings import (
    SettingError,
    dump_fields,
    expect,
    positive_triple,
    read_object,
    setting,
    triple_schema,
)

# Voxel spacings (mm) a scan, a working grid or a spec can have (checked alike where a scan is read, where a
# job asks for a working spacing and here): 10 um (micro-CT) to 10 cm. Outside, a header is
# wrong or a value is a typo, and resampling to it would ask for absurd grids.
MIN_SPACING_MM = 0.01
MAX_SPACING_MM = 100.0


def spacing_problem(values: Any) -> str | None:
    """Why `values` is not a spacing tcurlora works at (3 numbers within MIN..MAX_SPACING_MM), or None."""
    if (
        not isinstance(values, (list, tuple))
        or len(values) != 3
        or not all(is_finite_number(v) and v > 0 for v in values)
    ):
        return f"expected a list of 3 positive numbers (mm), got {values!r}"
    if not all(MIN_SPACING_MM <= v <= MAX_SPACING_MM for v in values):
        return f"spacing {list(values)} mm is outside {MIN_SPACING_MM:g}..{MAX_SPACING_MM:g} mm"
    return None


INTENSITY_KINDS = ("zscore", "percentile", "range")
OUTPUTS = ("softmax", "sigmoid")


def _intensity(key: str, value: Any, base_dir: Any) -> IntensitySpec:
    return IntensitySpec(**read_object(IntensitySpec, value, "intensity", key))


def _labels(key: str, value: Any, base_dir: Any) -> dict[int, str]:
    expect(key, value, (dict,), "an object of label value -> name")
    out = {}
    for label, name in value.items():
        if not re.fullmatch(r"\d+", str(label).strip()):
            raise SettingError(f"{key}[{label}]", f"label values must be whole numbers, got {label!r}")
        out[int(label)] = expect(f"{key}[{label}]", name, (str,), "a class name")
    return out


@dataclass
class IntensitySpec:
    """How voxel intensities are normalised before the network sees them.

    kind "zscore": (x - mean) / std over the nonzero voxels of each channel (MRI default).
    kind "percentile": clip to [lower, upper] percentiles of each channel, then scale to [0, 1].
    kind "range": clip to [a_min, a_max] and scale to [0, 1] (CT-like fixed windows).
    """

    kind: str = setting("zscore", "choice", choices=INTENSITY_KINDS, help="the normalisation")
    lower: float = setting(0.5, "number", minimum=0.0, maximum=100.0, help="percentile kind: lower clip")
    upper: float = setting(99.5, "number", minimum=0.0, maximum=100.0, help="percentile kind: upper clip")
    a_min: float = setting(0.0, "number", help="range kind: the window's low end")
    a_max: float = setting(1.0, "number", help="range kind: the window's high end")


@dataclass
class ModelSpec:
    """A base model: `arch` and `arch_params` build the network; the rest says how to feed it."""

    name: str = setting(kind="string", help="the model's name")
    arch: str = setting("UNETR", "string", help="the MONAI network class")
    arch_params: dict[str, Any] = setting({}, "object", help="the network's arguments")
    spacing: tuple[float, float, float] = setting(
        (1.0, 1.0, 1.0), "custom", parse=positive_triple(float), schema=triple_schema("number"), help="mm"
    )
    patch_size: tuple[int, int, int] = setting(
        (32, 32, 32), "custom", parse=positive_triple(int), schema=triple_schema("integer"), help="voxels"
    )
    intensity: IntensitySpec = setting(
        kind="custom", factory=IntensitySpec, parse=_intensity, help="intensity normalisation"
    )
    # Label value -> name, background (0) excluded.
    labels: dict[int, str] = setting({}, "custom", parse=_labels, help="label value -> class name")
    # Full module path of the final 1x1x1 conv that maps features to classes.
    head_module: str = setting("out.conv.conv", "string", help="the head's module name")
    description: str = setting("", "text", help="what the model is")
    # How the outputs are read: "softmax" (one class per voxel, channel 0 background) or "sigmoid"
    # (independent, possibly overlapping regions, one per channel: MONAI's BraTS bundles). Adapters
    # always train a fresh softmax head on a sigmoid base; segment decodes softmax outputs only.
    output: str = setting("softmax", "choice", choices=OUTPUTS, help="how the outputs are read")

    @property
    def in_channels(self) -> int:
        return int(self.arch_params.get("in_channels", 1))

    @property
    def out_channels(self) -> int:
        return int(self.arch_params.get("out_channels", len(self.labels) + 1))

    def at_spacing(self, spacing: Any | None) -> ModelSpec:
        """This spec with another working spacing in mm (a fine-tune's `spacing`); itself when None."""
        if spacing is None:
            return self
        problem = spacing_problem(list(spacing) if isinstance(spacing, (list, tuple)) else spacing)
        if problem:  # an adapter's recorded spacing, too: bounded like a job's
            raise ConfigError(f"working spacing: {problem}")
        return replace(self, spacing=tuple(float(s) for s in spacing))

    def to_dict(self) -> dict[str, Any]:
        return dump_fields(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: Any = None) -> ModelSpec:
        """Validate a spec record (ConfigError naming `source`, the file it came from, and the key)."""
        try:
            return cls(**read_object(cls, data, "a model spec"))
        except SettingError as error:
            raise ConfigError(f"invalid model spec: {error}", source) from None
