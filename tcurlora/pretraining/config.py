"""The pretraining recipe (a seeded JSON file, configs/pretrain/*.json), the union of its sources' labels,
the network it trains and its learning-rate schedule."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tcurlora.data.cases import dataset_label_names
from tcurlora.errors import ConfigError
from tcurlora.filenames import PRETRAIN_RECIPE_FORMAT
from tcurlora.jobs.fields import MAX_BATCH_SIZE, MAX_ITERATIONS, MAX_THREADS
from tcurlora.jsonio import read_json_object
from tcurlora.models.spec import IntensitySpec, ModelSpec
from tcurlora.pretraining.tissue import tissue_class_names
from tcurlora.settings import (
    SettingError,
    dump_fields,
    expect,
    positive_triple,
    read_object,
    setting,
    triple_schema,
)
from tcurlora.training.schedule import warmup_cosine

PRETRAIN_ARCHS = ("UNETR", "SwinUNETR", "SegResNet")
# The 1x1x1 output convolution of each architecture (replaced by a fresh head when adapting).
HEAD_MODULES = {"UNETR": "out.conv.conv", "SwinUNETR": "out.conv.conv", "SegResNet": "conv_final.2.conv"}
PRECISIONS = ("fp32", "bf16", "auto")
# "segment": learn the source's expert labels. "tissue": self-supervised, for unlabeled scans of the domains a
# base will be adapted to: the labels are the image's own intensity classes (tcurlora.pretraining.tissue), which the
# network must recover from a patch shown under a random contrast (intensity_randomisation), i.e. from anatomy
# and context. The source's label files are never read.
OBJECTIVES = ("segment", "tissue")


def _channels(key: str, value: Any, base_dir: Path | None) -> list[int]:
    ok = (
        isinstance(value, list)
        and value
        and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value)
    )
    if not ok:
        raise SettingError(
            key, f"expected a non-empty list of channel indices >= 0, got {type(value).__name__} {value!r}"
        )
    return list(value)


def _sources(key: str, value: Any, base_dir: Path | None) -> list[SourceConfig]:
    expect(key, value, (list,), "a list of source objects")
    if not value:
        raise SettingError(key, "a pretrain recipe needs at least one source")
    sources = []
    for index, item in enumerate(value):
        sources.append(SourceConfig(**read_object(SourceConfig, item, "a source", f"{key}[{index}]")))
    return sources


@dataclass
class SourceConfig:
    """One pretraining dataset: a Decathlon folder, which channels to use, and the held-out cases."""

    name: str = setting(kind="string", help="the source's name (prefixes its class names in the union)")
    folder: str = setting(kind="string", help="its Decathlon folder, relative to --data-root")
    channels: list[int] = setting([0], "custom", parse=_channels, help="the image channels used")
    num_cases: int | None = setting(None, "integer", minimum=1, help="use only the first N cases")
    val_case_ids: list[str] = setting([], "strings", help="case ids held out for the evaluation")
    licence: str = setting("", "text", help="the data licence")
    reference: str = setting("", "text", help="where the data comes from")
    objective: str = setting(
        "segment",
        "choice",
        choices=OBJECTIVES,
        help="segment: its expert labels; tissue: self-supervised (no label is read)",
    )


@dataclass
class PretrainConfig:
    """A pretraining recipe; `arch_params` are the MONAI `arch` network's arguments (in/out channels are set
    from the sources and labels; UNETR also gets img_size = patch_size). `precision` "bf16" autocasts the
    forward pass to bfloat16 (CPUs with AVX512-BF16/AMX and CUDA); "auto" does so where it is supported.
    `eval_every` > 0 measures the held-out Dice every that many iterations into the training log."""

    name: str = setting(kind="string", help="the base model's name")
    sources: list[SourceConfig] = setting(kind="custom", parse=_sources, help="the labeled datasets")
    arch_params: dict[str, Any] = setting(kind="object", help="arguments of the MONAI network")
    arch: str = setting("UNETR", "choice", choices=PRETRAIN_ARCHS, help="the MONAI network")
    spacing: tuple[float, float, float] = setting(
        (1.5, 1.5, 1.5), "custom", parse=positive_triple(float), schema=triple_schema("number"), help="mm"
    )
    patch_size: tuple[int, int, int] = setting(
        (48, 48, 48), "custom", parse=positive_triple(int), schema=triple_schema("integer"), help="voxels"
    )
    iterations: int = setting(1800, "integer", minimum=1, maximum=MAX_ITERATIONS, help="training steps")
    batch_size: int = setting(2, "integer", minimum=1, maximum=MAX_BATCH_SIZE, help="patches per step")
    learning_rate: float = setting(
        3e-4, "number", minimum=0.0, exclusive_minimum=True, help="AdamW peak rate"
    )
    weight_decay: float = setting(1e-5, "number", minimum=0.0, help="AdamW weight decay")
    warmup: int = setting(50, "integer", minimum=0, help="linear warm-up steps before the cosine decay")
    foreground_fraction: float = setting(
        0.67, "number", minimum=0.0, maximum=1.0, help="share of patches centred on a labeled voxel"
    )
    seed: int = setting(0, "integer", minimum=0, help="random seed")
    threads: int = setting(2, "integer", minimum=1, maximum=MAX_THREADS, help="torch CPU threads")
    checkpoint_every: int = setting(
        200, "integer", minimum=1, maximum=MAX_ITERATIONS, help="steps between checkpoints"
    )
    description: str = setting("", "text", help="what the recipe is for")
    precision: str = setting("fp32", "choice", choices=PRECISIONS, help="fp32, bf16 or auto")
    eval_every: int = setting(0, "integer", minimum=0, help="steps between held-out evaluations (0: none)")
    grad_clip: float | None = setting(
        None,
        "number",
        minimum=0.0,
        exclusive_minimum=True,
        help="clip the gradient norm to this (null: none)",
    )
    intensity_randomisation: bool = setting(
        False, "boolean", help="show each patch under a random MRI contrast (tcurlora.pretraining.contrast)"
    )

    @classmethod
    def from_file(cls, path: str | Path) -> PretrainConfig:
        """Read and check a recipe JSON file: ConfigError naming the file and the key."""
        data = read_json_object(path, "pretrain recipe")
        if data.get("format") != PRETRAIN_RECIPE_FORMAT:
            raise ConfigError(
                f"unknown recipe format {data.get('format')!r}, expected {PRETRAIN_RECIPE_FORMAT!r}", path
            )
        try:
            return cls(**read_object(cls, data, "a pretrain recipe", extra=("format",)))
        except SettingError as error:
            raise ConfigError(str(error), path) from None

    def to_dict(self) -> dict[str, Any]:
        return {"format": PRETRAIN_RECIPE_FORMAT, **dump_fields(self)}

    @classmethod
    def from_record(cls, recipe: dict[str, Any]) -> PretrainConfig:
        """The recipe a model card records (`to_dict()`), as a config."""
        values = {k: v for k, v in recipe.items() if k != "format"}
        values["sources"] = [
            SourceConfig(**x) if isinstance(x, dict) else x for x in values.get("sources", [])
        ]
        return cls(**values)


def union_labels(config: PretrainConfig, data_root: Path) -> list[tuple[str, list[int], list[str]]]:
    """(source name, global class indices, class names) per source, classes numbered 1.. in order."""
    result, offset = [], 0
    for source in config.sources:
        if source.objective == "tissue":
            names = tissue_class_names(source.name)
        else:
            names = dataset_label_names(data_root / source.folder)
        result.append((source.name, list(range(offset + 1, offset + 1 + len(names))), names))
        offset += len(names)
    return result


def model_spec(config: PretrainConfig, labels: dict[int, str]) -> ModelSpec:
    """The ModelSpec of the network the recipe trains."""
    params = dict(config.arch_params)
    params["in_channels"] = 1
    params["out_channels"] = len(labels) + 1
    if config.arch == "UNETR":
        params["img_size"] = list(config.patch_size)
    return ModelSpec(
        name=config.name,
        arch=config.arch,
        arch_params=params,
        spacing=config.spacing,
        patch_size=config.patch_size,
        intensity=IntensitySpec(kind="zscore"),
        labels=labels,
        head_module=HEAD_MODULES[config.arch],
        description=config.description,
    )


# Pretraining decays to this share of the peak rate, not to zero: the last steps still learn.
FINAL_RATE_FRACTION = 0.02


def learning_rate_factor(config: PretrainConfig, step: int) -> float:
    """The schedule as a factor of the peak: linear warm-up, then cosine decay to 2%."""
    return warmup_cosine(step, config.iterations, config.warmup, FINAL_RATE_FRACTION)


def learning_rate(config: PretrainConfig, step: int) -> float:
    """The learning rate of (0-based) `step`: linear warm-up then cosine decay to 2% of the peak."""
    return config.learning_rate * learning_rate_factor(config, step)
