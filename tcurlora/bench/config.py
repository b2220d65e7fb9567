"""Benchmark configuration files ("tcurlora.bench/1"): what to adapt, on which data, with which methods.

A config names a base model, a Decathlon folder, the numbers of labeled cases `k`, the seeds, a fixed
test split and a list of method entries. A method entry whose `rank`, `selection` or `conv_targets`
is a list expands to every combination. An optional `cost` section measures step time and peak memory
on synthetic batches (no data needed) at a given architecture and image size.
"""

from __future__ import annotations

import itertools
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tcurlora.adapters.methods.registry import METHODS, method_info
from tcurlora.errors import ConfigError, InputError
from tcurlora.filenames import BENCH_SCHEMA
from tcurlora.jobs.fields import (
    LARGEST_COMPONENT,
    SELECTIONS,
    UNLABELED_LOSSES,
    parse_patch_size,
    parse_spacing,
)
from tcurlora.jsonio import JSONProblem, loads_strict
from tcurlora.settings import SettingError, expect, read_object, setting

BUILTIN = "builtin"


@dataclass(frozen=True)
class MethodSpec:
    """One adaptation setting of a benchmark; `label` names it in tables and plots."""

    method: str
    rank: int = 8
    selection: str = "topnorm"
    conv_targets: bool = False
    learning_rate: float | None = None
    alpha: float | None = None
    head_learning_rate: float | None = None
    train_modules: tuple[str, ...] = ()
    # Semi-supervised (finetune --unlabeled): "test" = the test split's images, without their labels (the
    # scans a user wants segmented are the unlabeled ones at hand: TCUR Fine-Tune's scene volumes).
    unlabeled: str | None = None
    unlabeled_weight: float | None = None  # the mean teacher's consistency weight (None: finetune's default)
    unlabeled_loss: str | None = None  # consistency / pseudo_label (None: finetune's default)
    modules_learning_rate: float | None = None  # the train_modules' rate (None: finetune's default)

    @property
    def label(self) -> str:
        """E.g. `tcur-r8-topnorm+conv`, `lora-r8`, `full`; `+decoder2,encoder1` names train_modules,
        `-lr0.002` / `-hlr0.05` / `-mlr0.003` are added when the entry sets the adapter's / the head's / the
        train_modules' rate."""
        info = method_info(self.method)
        if info.index_selection:
            text = f"{self.method}-r{self.rank}-{self.selection}" + ("+conv" if self.conv_targets else "")
        elif info.ranked:
            text = f"{self.method}-r{self.rank}"
        else:
            text = self.method
        if self.train_modules:
            text += "+" + ",".join(self.train_modules)
        if self.learning_rate is not None:
            text += f"-lr{self.learning_rate:g}"
        if self.head_learning_rate is not None:
            text += f"-hlr{self.head_learning_rate:g}"
        if self.modules_learning_rate is not None:
            text += f"-mlr{self.modules_learning_rate:g}"
        if self.unlabeled:
            text += f"+unlabeled-{self.unlabeled}"
        if self.unlabeled_weight is not None:
            text += f"-uw{self.unlabeled_weight:g}"
        if self.unlabeled_loss is not None:
            text += f"-{self.unlabeled_loss}"
        return text

    def to_dict(self) -> dict[str, Any]:
        data = {"label": self.label, **asdict(self)}
        data["train_modules"] = list(self.train_modules)
        return data


def _int_list(minimum: int):
    def parse(key: str, value: Any, base_dir: Path | None) -> list[int]:
        expect(key, value, (list,), "a list of integers")
        if not value or not all(
            isinstance(v, int) and not isinstance(v, bool) and v >= minimum for v in value
        ):
            raise SettingError(key, f"expected a non-empty list of integers >= {minimum}, got {value!r}")
        return list(value)

    return parse


def _names(key: str, values: list[str]) -> list[str]:
    if not all(values):
        raise SettingError(key, f"expected a list of non-empty strings, got {values!r}")
    return values


def _methods(key: str, value: Any, base_dir: Path | None) -> list[MethodSpec]:
    return expand_methods(value, key)


def _cost(key: str, value: Any, base_dir: Path | None) -> CostConfig:
    values = read_object(CostConfig, value, "cost", key)
    if not values["methods"]:
        raise SettingError(f"{key}.methods", "expected a non-empty list of method entries")
    return CostConfig(**values)


@dataclass
class CostConfig:
    """Synthetic-batch cost measurement: architecture `base_model` rebuilt at `img_size`^3."""

    base_model: str = setting("preset:unetr-base", "string", help="the architecture measured")
    img_size: int = setting(64, "integer", minimum=16, help="image edge in voxels")
    batch_size: int = setting(1, "integer", minimum=1, help="images per step")
    num_classes: int = setting(3, "integer", minimum=2, help="classes of the head")
    warmup: int = setting(2, "integer", minimum=1, help="steps not measured")
    steps: int = setting(5, "integer", minimum=1, help="steps measured")
    device: str = setting("auto", "device", help="auto, cpu, cuda or cuda:N")
    amp: bool = setting(True, "boolean", help="mixed precision on CUDA")
    methods: list[MethodSpec] = setting([], "custom", parse=_methods, help="the method entries measured")


@dataclass
class BenchConfig:
    """A whole benchmark; paths are absolute once loaded."""

    name: str = setting(kind="string", help="the benchmark's name")
    base_model: str = setting(BUILTIN, "string", help="the base model adapted")
    fallback_base_model: str | None = setting(
        "preset:unetr-tiny",
        "string",
        nullable=True,
        help="used when the base model is unavailable (null: none)",
    )
    data: Path | None = setting(None, "string", help="the Decathlon folder (needed by quality runs)")
    description: str = setting("", "text", help="what the benchmark measures")
    label_names: list[str] | None = setting(None, "strings", check=_names, help="class names")
    k: list[int] = setting([5], "custom", parse=_int_list(1), help="numbers of labeled training cases")
    seeds: list[int] = setting([0], "custom", parse=_int_list(0), help="seeds of each setting")
    test_cases: int = setting(10, "integer", minimum=1, help="the last N cases are the test split")
    test_case_ids: list[str] | None = setting(None, "strings", check=_names, help="the test split, by id")
    held_out_cases: int = setting(  # the last N cases of dataset.json are never used (see plan.fixed_split)
        0, "integer", minimum=0, help="cases of dataset.json never used"
    )
    iterations: int = setting(100, "integer", minimum=1, help="training steps per run")
    batch_size: int = setting(2, "integer", minimum=1, help="patches per step")
    patch_size: list[int] | None = setting(None, "custom", parse=parse_patch_size, help="voxels")
    spacing: list[float] | str | None = (
        setting(  # the fine-tunes' working spacing: mm, "auto" (None) or "base"
            None, "custom", parse=parse_spacing, help="the fine-tunes' working spacing"
        )
    )
    device: str = setting("auto", "device", help="auto, cpu, cuda or cuda:N")
    amp: bool = setting(True, "boolean", help="mixed precision on CUDA")
    overlap: float = setting(
        0.25, "number", minimum=0.0, maximum=1.0, exclusive_maximum=True, help="sliding-window overlap"
    )
    tta: bool = setting(True, "boolean", help="mirror test-time augmentation, as segment's tta")
    largest_component: bool | str = setting("auto", **LARGEST_COMPONENT)
    latency_cases: int = setting(2, "integer", minimum=0, help="cases timed for the inference latency")
    warmup_steps: int = setting(3, "integer", minimum=1, help="training steps not timed")
    isolate: bool = setting(True, "boolean", help="one worker process per run")
    keep_adapters: bool = setting(False, "boolean", help="keep each run's adapter in runs/RUN/adapter")
    threads: int | None = setting(None, "integer", minimum=1, help="torch CPU threads (default: torch's)")
    methods: list[MethodSpec] = setting([], "custom", parse=_methods, help="the method entries compared")
    cost: CostConfig | None = setting(None, "custom", parse=_cost, help="the synthetic cost measurement")
    source: Path | None = None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["data"] = str(self.data) if self.data else None
        data["source"] = str(self.source) if self.source else None
        data["methods"] = [m.to_dict() for m in self.methods]
        if self.cost is not None:
            data["cost"]["methods"] = [m.to_dict() for m in self.cost.methods]
        return data


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list) else [value]


UNLABELED_CHOICES = (None, "test")


def expand_methods(entries: Any, where: str) -> list[MethodSpec]:
    """Method entries -> MethodSpecs; list-valued rank/selection/conv_targets expand to all combinations."""
    if not isinstance(entries, list) or not entries:
        raise SettingError(where, "expected a non-empty list of method entries")
    allowed = {
        "method",
        "rank",
        "selection",
        "conv_targets",
        "learning_rate",
        "alpha",
        "head_learning_rate",
        "modules_learning_rate",
        "train_modules",
        "unlabeled",
        "unlabeled_weight",
        "unlabeled_loss",
    }
    specs: list[MethodSpec] = []
    for index, entry in enumerate(entries):
        at = f"{where}[{index}]"
        if not isinstance(entry, dict):
            raise SettingError(at, f"expected a JSON object, got {type(entry).__name__}")
        unknown = sorted(set(entry) - allowed)
        if unknown:
            raise SettingError(f"{at}.{unknown[0]}", f"unknown key (allowed: {', '.join(sorted(allowed))})")
        method = entry.get("method", "")
        if method not in METHODS:
            raise SettingError(f"{at}.method", f"must be one of {', '.join(METHODS)}; got {method!r}")
        ranks = _as_list(entry.get("rank", 8))
        selections = _as_list(entry.get("selection", "topnorm"))
        convs = _as_list(entry.get("conv_targets", False))
        if not all(isinstance(r, int) and not isinstance(r, bool) and r >= 1 for r in ranks) or not ranks:
            raise SettingError(
                f"{at}.rank", f"expected a positive integer or a list of them, got {entry.get('rank')!r}"
            )
        if not selections or any(s not in SELECTIONS for s in selections):
            raise SettingError(
                f"{at}.selection",
                f"expected one or a list of {', '.join(SELECTIONS)}; got {entry.get('selection')!r}",
            )
        if not convs or not all(isinstance(c, bool) for c in convs):
            raise SettingError(
                f"{at}.conv_targets",
                f"expected true/false or a list of them, got {entry.get('conv_targets')!r}",
            )
        rates = {}
        for key in ("learning_rate", "alpha", "head_learning_rate", "modules_learning_rate"):
            value = entry.get(key)
            if value is not None:
                expect(f"{at}.{key}", value, (int, float), "a positive number or null")
                if value <= 0:
                    raise SettingError(f"{at}.{key}", f"must be > 0, got {value}")
            rates[key] = None if value is None else float(value)
        modules = entry.get("train_modules") or []
        expect(f"{at}.train_modules", modules, (list,), "a list of strings")
        if not all(isinstance(m, str) and m for m in modules):
            raise SettingError(
                f"{at}.train_modules", f"expected a list of non-empty strings, got {modules!r}"
            )
        unlabeled = entry.get("unlabeled")
        if unlabeled not in UNLABELED_CHOICES:
            raise SettingError(f"{at}.unlabeled", f"expected one of {UNLABELED_CHOICES}, got {unlabeled!r}")
        unlabeled_weight = entry.get("unlabeled_weight")
        if unlabeled_weight is not None:
            expect(f"{at}.unlabeled_weight", unlabeled_weight, (int, float), "a number >= 0 or null")
            if not unlabeled or unlabeled_weight < 0:
                raise SettingError(f"{at}.unlabeled_weight", "needs 'unlabeled' and a value >= 0")
            unlabeled_weight = float(unlabeled_weight)
        unlabeled_loss = entry.get("unlabeled_loss")
        if unlabeled_loss is not None and (not unlabeled or unlabeled_loss not in UNLABELED_LOSSES):
            raise SettingError(
                f"{at}.unlabeled_loss", f"needs 'unlabeled' and one of {', '.join(UNLABELED_LOSSES)}"
            )
        if not method_info(
            method
        ).index_selection:  # selection and conv targets only mean something for tCURLoRA
            selections, convs = selections[:1], [False]
        if not method_info(method).ranked:
            ranks = ranks[:1]
        for rank, selection, conv in itertools.product(ranks, selections, convs):
            spec = MethodSpec(
                method,
                rank,
                selection,
                conv,
                rates["learning_rate"],
                rates["alpha"],
                rates["head_learning_rate"],
                tuple(modules),
                unlabeled,
                unlabeled_weight,
                unlabeled_loss,
                rates["modules_learning_rate"],
            )
            if spec.label in {s.label for s in specs}:
                raise SettingError(f"{at}.method", f"the setting {spec.label!r} appears twice")
            specs.append(spec)
    return specs


def config_from_dict(data: Any, base_dir: Path, source: Path | None = None) -> BenchConfig:
    """Validate a config dict; relative paths are resolved against `base_dir`."""
    try:
        values = read_object(BenchConfig, data, "a benchmark config", extra=("schema",))
        if data.get("schema", BENCH_SCHEMA) != BENCH_SCHEMA:
            raise SettingError("schema", f"expected {BENCH_SCHEMA!r}, got {data.get('schema')!r}")
        if not values["methods"] and values["cost"] is None:
            raise SettingError(
                "methods", "give `methods` (quality runs), `cost` (synthetic cost runs) or both"
            )
        if values["methods"] and values["data"] is None:
            raise SettingError("data", "quality runs need a Decathlon folder")
    except SettingError as error:
        raise ConfigError(str(error), source) from None
    if values["data"] is not None:
        resolved = Path(values["data"]).expanduser()
        resolved = resolved if resolved.is_absolute() else (base_dir / resolved).resolve()
        if not resolved.exists() and os.environ.get("TCURLORA_DATA"):  # the data sets live elsewhere here
            resolved = Path(os.environ["TCURLORA_DATA"]).expanduser() / resolved.name
        values["data"] = resolved
    return BenchConfig(**values, source=source)


def load_config(path: str | Path) -> BenchConfig:
    """Read and validate a benchmark config file (ConfigError / InputError naming it)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as error:
        raise InputError("benchmark config not found", path) from error
    except OSError as error:
        raise InputError(f"cannot read benchmark config: {error}", path) from error
    try:
        data = loads_strict(text)
    except json.JSONDecodeError as error:
        raise ConfigError(
            f"not valid JSON: {error.msg} at line {error.lineno} column {error.colno}", path
        ) from error
    except JSONProblem as error:
        raise ConfigError(f"refused benchmark config: {error}", path) from error
    return config_from_dict(data, path.parent.resolve(), path.resolve())
