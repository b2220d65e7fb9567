"""AdapterConfig: which method, which layers, which rank; validated, JSON round-trippable."""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from tcurlora.errors import ConfigError
from tcurlora.jobs.schema import METHODS, SELECTIONS  # declared once, with the job settings

# Transformer projections adapted by default: MONAI UNETR/ViT and MONAI SwinUNETR module names.
UNETR_TARGETS = r"vit\.blocks\.\d+\.(attn\.(qkv|out_proj)|mlp\.linear[12])"
SWIN_TARGETS = r"swinViT\.layers\d+\.\d+\.blocks\.\d+\.(attn\.(qkv|proj)|mlp\.linear[12])"
DEFAULT_TARGETS = [UNETR_TARGETS, SWIN_TARGETS]
# "decoder": every top-level child except the transformer encoder (UNETR `vit`, SwinUNETR `swinViT`).
DEFAULT_DECODER_MODULES = [r"(?!(vit|swinViT)$)[^.]+"]
# "Conv3d targets": every convolution of the UNETR / SwinUNETR encoder and decoder blocks.
CONV_TARGETS = [r".*(encoder|decoder)\d+\..*conv\d?\.conv"]
# Shorthands accepted in `train_modules`. "decoder" is the rule of the tCURLoRA authors' public code
# (every module whose name contains "decoder" trains): UNETR decoder2-5, SwinUNETR decoder1-5.
TRAIN_MODULE_SHORTHANDS = {"decoder": [r"decoder\d+"]}
# The blocks that work at the input's full resolution (the encoder's first conv block and the last
# decoder block). A small target structure needs them: fine-tune's default for tcur trains them in full
# (about 33k parameters, 0.4%, in the built-in base; docs/benchmarks.md).
FULL_RESOLUTION_BLOCKS = {"UNETR": ["encoder1", "decoder2"], "SwinUNETR": ["encoder1", "decoder1"]}


def default_train_modules(method: str, arch: str) -> list[str]:
    """What `train_modules` is when a job does not say: the full-resolution blocks for tcur, else none."""
    return list(FULL_RESOLUTION_BLOCKS.get(arch, [])) if method == "tcur" else []


def expand_train_modules(patterns: list[str]) -> list[str]:
    """`train_modules` with shorthands ("decoder") replaced by their regexes, duplicates dropped."""
    out: list[str] = []
    for pattern in patterns:
        for item in TRAIN_MODULE_SHORTHANDS.get(pattern, [pattern]):
            if item not in out:
                out.append(item)
    return out


@dataclass
class AdapterConfig:
    """How a base network is adapted.

    `target_modules`, `conv_target_modules` and `decoder_modules` are regexes full-matched against
    module names (`model.named_modules()`). Linear targets of the same (slice) shape form one tCUR
    group; a fused Linear whose last name part is a key of `fused_splits` contributes that many
    row blocks as separate slices. Each Conv3d target is its own group (out x in x k^3).
    `alpha=None` means the method default: 1.0 for tcur, `rank` for lora (LoRA scale alpha/r = 1).
    """

    method: str = "tcur"
    rank: int = 8
    alpha: float | None = None
    target_modules: list[str] = field(default_factory=lambda: list(DEFAULT_TARGETS))
    fused_splits: dict[str, int] = field(default_factory=lambda: {"qkv": 3})
    conv_target_modules: list[str] = field(default_factory=list)
    selection: str = "topnorm"
    seed: int = 0
    head_module: str = "out.conv.conv"
    num_classes: int | None = None
    # A fresh head even when the class count matches the base's (other classes with the same count).
    new_head: bool = False
    label_names: list[str] | None = None
    label_colors: list[list[float]] | None = None
    base_model_id: str | None = None
    base_fingerprint: str | None = None
    decoder_modules: list[str] = field(default_factory=lambda: list(DEFAULT_DECODER_MODULES))
    # Extra modules trained in full by any method (like PEFT's modules_to_save), saved in the adapter.
    train_modules: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.validate()

    @property
    def resolved_alpha(self) -> float:
        """alpha, or the method's default when it is None."""
        if self.alpha is not None:
            return float(self.alpha)
        return float(self.rank) if self.method == "lora" else 1.0

    def validate(self) -> None:
        """Raise ConfigError naming the first bad field."""
        if self.method not in METHODS:
            raise ConfigError(f"unknown adapter method {self.method!r}; valid: {', '.join(METHODS)}")
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            raise ConfigError(f"rank must be a positive integer, got {self.rank!r}")
        if self.alpha is not None and (
            isinstance(self.alpha, bool)
            or not isinstance(self.alpha, int | float)
            or not math.isfinite(self.alpha)
        ):
            raise ConfigError(f"alpha must be a finite number or null, got {self.alpha!r}")
        if self.selection not in SELECTIONS:
            raise ConfigError(f"unknown selection {self.selection!r}; valid: {', '.join(SELECTIONS)}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ConfigError(f"seed must be an integer, got {self.seed!r}")
        for name in ("target_modules", "conv_target_modules", "decoder_modules", "train_modules"):
            _check_regexes(name, getattr(self, name))
        if not isinstance(self.fused_splits, dict) or not all(
            isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) and v >= 1
            for k, v in self.fused_splits.items()
        ):
            raise ConfigError(f"fused_splits must map names to positive integers, got {self.fused_splits!r}")
        if not isinstance(self.head_module, str) or not self.head_module:
            raise ConfigError(f"head_module must be a module name, got {self.head_module!r}")
        if self.num_classes is not None and (
            isinstance(self.num_classes, bool)
            or not isinstance(self.num_classes, int)
            or self.num_classes < 1
        ):
            raise ConfigError(f"num_classes must be a positive integer or null, got {self.num_classes!r}")
        if not isinstance(self.new_head, bool):
            raise ConfigError(f"new_head must be true or false, got {self.new_head!r}")
        if self.label_names is not None:
            if not isinstance(self.label_names, list) or not all(
                isinstance(n, str) for n in self.label_names
            ):
                raise ConfigError(f"label_names must be a list of strings, got {self.label_names!r}")
            if self.num_classes is not None and len(self.label_names) != self.num_classes - 1:
                raise ConfigError(
                    f"{len(self.label_names)} label_names for num_classes={self.num_classes} "
                    f"(label_names name classes 1..N, so N = num_classes - 1)"
                )
        if self.label_colors is not None and not (
            isinstance(self.label_colors, list)
            and all(isinstance(c, list | tuple) and len(c) == 3 for c in self.label_colors)
        ):
            raise ConfigError(f"label_colors must be a list of [r, g, b], got {self.label_colors!r}")
        for name in ("base_model_id", "base_fingerprint"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise ConfigError(f"{name} must be a string or null, got {value!r}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict; alpha is written resolved so the file says what was used."""
        data = asdict(self)
        if self.method in ("tcur", "lora"):
            data["alpha"] = self.resolved_alpha
        if data["label_colors"] is not None:
            data["label_colors"] = [list(c) for c in data["label_colors"]]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, ignore_unknown: bool = False) -> AdapterConfig:
        """Build from `to_dict` output; unknown keys are an error unless `ignore_unknown`."""
        if not isinstance(data, dict):
            raise ConfigError(f"adapter config must be a JSON object, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown and not ignore_unknown:
            raise ConfigError(f"unknown adapter config keys: {', '.join(unknown)}")
        values = {k: v for k, v in data.items() if k in known}
        if isinstance(values.get("label_colors"), list):
            values["label_colors"] = [
                list(c) if isinstance(c, list | tuple) else c for c in values["label_colors"]
            ]
        try:
            return cls(**values)
        except TypeError as error:
            raise ConfigError(f"invalid adapter config: {error}") from error


def _check_regexes(name: str, patterns: Any) -> None:
    if not isinstance(patterns, list) or not all(isinstance(p, str) for p in patterns):
        raise ConfigError(f"{name} must be a list of regular expressions, got {patterns!r}")
    for pattern in patterns:
        try:
            re.compile(pattern)
        except re.error as error:
            raise ConfigError(f"{name}: invalid regular expression {pattern!r}: {error}") from error


def full_match_any(patterns: list[str], name: str) -> bool:
    """True when `name` full-matches one of `patterns`."""
    return any(re.fullmatch(p, name) for p in patterns)
