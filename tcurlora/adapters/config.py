"""AdapterConfig: which method, which layers, which rank; validated, JSON round-trippable."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tcurlora.adapters.methods.registry import METHODS, method_info
from tcurlora.errors import ConfigError
from tcurlora.jobs.fields import SELECTIONS, check_regexes, parse_colors  # declared with the job
from tcurlora.namepatterns import full_match_any  # noqa: F401 - linear-time; configs come from anyone
from tcurlora.settings import SettingError, dump_fields, expect, read_fields, setting, settings_of

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
FULL_RESOLUTION_BLOCKS = {
    "UNETR": ["encoder1", "decoder2"],
    "SwinUNETR": ["encoder1", "decoder1"],
    "SegResNet": ["convInit", "down_layers.0", "up_samples.2", "up_layers.2"],
}


def default_train_modules(method: str, arch: str) -> list[str]:
    """What `train_modules` is when a job does not say: the full-resolution blocks for tcur, else none."""
    return list(FULL_RESOLUTION_BLOCKS.get(arch, [])) if method_info(method).full_resolution_blocks else []


def expand_train_modules(patterns: list[str]) -> list[str]:
    """`train_modules` with shorthands ("decoder") replaced by their regexes, duplicates dropped."""
    out: list[str] = []
    for pattern in patterns:
        for item in TRAIN_MODULE_SHORTHANDS.get(pattern, [pattern]):
            if item not in out:
                out.append(item)
    return out


def _parse_fused_splits(key: str, value: Any, base_dir: Any = None) -> dict[str, int]:
    """Fused layer name -> number of row blocks (positive integers)."""
    expect(key, value, (dict,), "an object of positive integers")
    for name, count in value.items():
        expect(f"{key}.{name}", count, (int,), "a positive integer")
        if count < 1:
            raise SettingError(f"{key}.{name}", f"must be >= 1, got {count}")
    return dict(value)


def _parse_colors(key: str, value: Any, base_dir: Any = None) -> list[list[float]]:
    """The job's [r, g, b] colors (0..1); tuples, as code may pass them, count as lists."""
    if isinstance(value, (list, tuple)):
        value = [list(c) if isinstance(c, tuple) else c for c in value]
    return parse_colors(key, value, base_dir)


_REGEXES = {"kind": "strings", "check": check_regexes}
_COLORS_SCHEMA = {
    "type": "array",
    "items": {"type": "array", "items": {"type": "number"}, "minItems": 3, "maxItems": 3},
}


@dataclass
class AdapterConfig:
    """How a base network is adapted.

    `target_modules`, `conv_target_modules` and `decoder_modules` are regexes full-matched against
    module names (`model.named_modules()`) in linear time (tcurlora.namepatterns). Linear targets of the same (slice) shape form one tCUR
    group; a fused Linear whose last name part is a key of `fused_splits` contributes that many
    row blocks as separate slices. Each Conv3d target is its own group (out x in x k^3).
    `alpha=None` means the method default: 1.0 for tcur, `rank` for lora (LoRA scale alpha/r = 1).
    Each field is declared once (tcurlora.settings) and checked by the settings' one validator.
    """

    method: str = setting("tcur", "choice", choices=METHODS, help="adaptation method")
    rank: int = setting(8, "integer", minimum=1, help="adapter rank")
    alpha: float | None = setting(None, "number", help="adapter scale (null: the method's default)")
    target_modules: list[str] = setting(DEFAULT_TARGETS, **_REGEXES, help="Linear layers adapted (regexes)")
    fused_splits: dict[str, int] = setting(
        {"qkv": 3},
        "custom",
        parse=_parse_fused_splits,
        schema={"type": "object"},
        help="fused Linear layers (last name part) -> number of row blocks",
    )
    conv_target_modules: list[str] = setting([], **_REGEXES, help="Conv3d layers adapted (regexes)")
    selection: str = setting("topnorm", "choice", choices=SELECTIONS, help="tCUR index selection")
    seed: int = setting(0, "integer", help="seed of the random index selections")
    head_module: str = setting("out.conv.conv", "string", help="the segmentation head's module name")
    num_classes: int | None = setting(None, "integer", minimum=1, help="output classes, background included")
    new_head: bool = setting(
        False, "boolean", help="a fresh head even when the class count matches the base's (other classes)"
    )
    label_names: list[str] | None = setting(None, "strings", help="class names of labels 1..N")
    label_colors: list[list[float]] | None = setting(
        None,
        "custom",
        parse=_parse_colors,
        schema=_COLORS_SCHEMA,
        help="one [r, g, b] color (0..1) per label",
    )
    base_model_id: str | None = setting(None, "text", help="the base model's name")
    base_fingerprint: str | None = setting(None, "text", help="the base model's weights fingerprint")
    decoder_modules: list[str] = setting(
        DEFAULT_DECODER_MODULES, **_REGEXES, help="what the decoder method trains (regexes)"
    )
    train_modules: list[str] = setting(
        [], **_REGEXES, help="extra modules trained in full by any method (like PEFT modules_to_save)"
    )

    def __post_init__(self) -> None:
        self.validate()

    @property
    def resolved_alpha(self) -> float:
        """alpha, or the method's default when it is None."""
        if self.alpha is not None:
            return float(self.alpha)
        return float(self.rank) if method_info(self.method).alpha_is_rank else 1.0

    def validate(self) -> None:
        """Check (and normalise) every field with the settings' validator, then the one rule across fields;
        ConfigError naming the first bad field."""
        try:
            values = read_fields(
                type(self), {f.name: getattr(self, f.name) for f, _ in settings_of(type(self))}
            )
        except SettingError as error:
            raise ConfigError(f"adapter config {error}") from None
        for name, value in values.items():
            object.__setattr__(self, name, value)
        if (
            self.label_names is not None
            and self.num_classes is not None
            and len(self.label_names) != self.num_classes - 1
        ):
            raise ConfigError(
                f"{len(self.label_names)} label_names for num_classes={self.num_classes} "
                f"(label_names name classes 1..N, so N = num_classes - 1)"
            )

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict; alpha is written resolved so the file says what was used."""
        data = dump_fields(self)
        if method_info(self.method).ranked:
            data["alpha"] = self.resolved_alpha
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, ignore_unknown: bool = False) -> AdapterConfig:
        """Build from `to_dict` output; unknown keys are an error unless `ignore_unknown`."""
        if not isinstance(data, dict):
            raise ConfigError(f"adapter config must be a JSON object, got {type(data).__name__}")
        known = {f.name for f, _ in settings_of(cls)}
        unknown = sorted(set(data) - known)
        if unknown and not ignore_unknown:
            raise ConfigError(f"unknown adapter config keys: {', '.join(unknown)}")
        return cls(**{k: v for k, v in data.items() if k in known})
