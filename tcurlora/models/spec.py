"""What a base model is: its architecture, its preprocessing and its labels, as one JSON-able record."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

from tcurlora.errors import ConfigError


@dataclass
class IntensitySpec:
    """How voxel intensities are normalised before the network sees them.

    kind "zscore": (x - mean) / std over the nonzero voxels of each channel (MRI default).
    kind "percentile": clip to [lower, upper] percentiles of each channel, then scale to [0, 1].
    kind "range": clip to [a_min, a_max] and scale to [0, 1] (CT-like fixed windows).
    """

    kind: str = "zscore"
    lower: float = 0.5
    upper: float = 99.5
    a_min: float = 0.0
    a_max: float = 1.0


@dataclass
class ModelSpec:
    """A base model: `arch` and `arch_params` build the network; the rest says how to feed it."""

    name: str
    arch: str = "UNETR"
    arch_params: dict[str, Any] = field(default_factory=dict)
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    patch_size: tuple[int, int, int] = (32, 32, 32)
    intensity: IntensitySpec = field(default_factory=IntensitySpec)
    # Label value -> name, background (0) excluded.
    labels: dict[int, str] = field(default_factory=dict)
    # Full module path of the final 1x1x1 conv that maps features to classes.
    head_module: str = "out.conv.conv"
    description: str = ""
    # How the outputs are read: "softmax" (one class per voxel, channel 0 background) or "sigmoid"
    # (independent, possibly overlapping regions, one per channel: MONAI's BraTS bundles). Adapters
    # always train a fresh softmax head on a sigmoid base; segment decodes softmax outputs only.
    output: str = "softmax"

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
        values = tuple(float(s) for s in spacing)
        if len(values) != 3 or min(values) <= 0:
            raise ConfigError(f"spacing must be 3 positive numbers in mm, got {list(spacing)!r}")
        return replace(self, spacing=values)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["labels"] = {str(k): v for k, v in self.labels.items()}
        data["spacing"] = list(self.spacing)
        data["patch_size"] = list(self.patch_size)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelSpec:
        try:
            values = dict(data)
            values["intensity"] = IntensitySpec(**values.get("intensity", {}))
            values["labels"] = {int(k): str(v) for k, v in values.get("labels", {}).items()}
            values["spacing"] = tuple(float(s) for s in values.get("spacing", (1.0, 1.0, 1.0)))
            values["patch_size"] = tuple(int(s) for s in values.get("patch_size", (32, 32, 32)))
            return cls(**values)
        except (TypeError, ValueError) as error:
            raise ConfigError(f"invalid model spec: {error}") from error
