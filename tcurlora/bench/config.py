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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tcurlora.errors import ConfigError, InputError

BENCH_SCHEMA = "tcurlora.bench/1"
METHODS = ("tcur", "lora", "decoder", "full", "head")
SELECTIONS = ("topnorm", "leverage", "inverse", "uniform")
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

    @property
    def label(self) -> str:
        """E.g. `tcur-r8-topnorm+conv`, `lora-r8`, `full`; `+decoder2,encoder1` names train_modules,
        `-lr0.002` / `-hlr0.05` are added when the entry sets the adapter's / the head's rate."""
        if self.method == "tcur":
            text = f"tcur-r{self.rank}-{self.selection}" + ("+conv" if self.conv_targets else "")
        elif self.method == "lora":
            text = f"lora-r{self.rank}"
        else:
            text = self.method
        if self.train_modules:
            text += "+" + ",".join(self.train_modules)
        if self.learning_rate is not None:
            text += f"-lr{self.learning_rate:g}"
        if self.head_learning_rate is not None:
            text += f"-hlr{self.head_learning_rate:g}"
        return text

    def to_dict(self) -> dict[str, Any]:
        data = {"label": self.label, **asdict(self)}
        data["train_modules"] = list(self.train_modules)
        return data


@dataclass
class CostConfig:
    """Synthetic-batch cost measurement: architecture `base_model` rebuilt at `img_size`^3."""

    base_model: str = "preset:unetr-base"
    img_size: int = 64
    batch_size: int = 1
    num_classes: int = 3
    warmup: int = 2
    steps: int = 5
    device: str = "auto"
    amp: bool = True
    methods: list[MethodSpec] = field(default_factory=list)


@dataclass
class BenchConfig:
    """A whole benchmark; paths are absolute once loaded."""

    name: str
    base_model: str = BUILTIN
    fallback_base_model: str | None = "preset:unetr-tiny"
    data: Path | None = None
    description: str = ""
    label_names: list[str] | None = None
    k: list[int] = field(default_factory=lambda: [5])
    seeds: list[int] = field(default_factory=lambda: [0])
    test_cases: int = 10
    test_case_ids: list[str] | None = None
    held_out_cases: int = 0  # the last N cases of dataset.json are never used (see plan.fixed_split)
    iterations: int = 100
    batch_size: int = 2
    patch_size: list[int] | None = None
    spacing: list[float] | str | None = None  # the fine-tunes' working spacing: mm, "auto" (None) or "base"
    device: str = "auto"
    amp: bool = True
    overlap: float = 0.25
    latency_cases: int = 2
    warmup_steps: int = 3
    isolate: bool = True
    threads: int | None = None
    methods: list[MethodSpec] = field(default_factory=list)
    cost: CostConfig | None = None
    source: Path | None = None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["data"] = str(self.data) if self.data else None
        data["source"] = str(self.source) if self.source else None
        data["methods"] = [m.to_dict() for m in self.methods]
        if self.cost is not None:
            data["cost"]["methods"] = [m.to_dict() for m in self.cost.methods]
        return data


class _Keys:
    """Typed access to a JSON object, raising ConfigError that names the file and the key."""

    def __init__(self, data: Any, where: str, source: Path | None, allowed: set[str]):
        self.where, self.source = where, source
        if not isinstance(data, dict):
            self.fail("", f"expected a JSON object, got {type(data).__name__}")
        unknown = sorted(set(data) - allowed)
        if unknown:
            self.fail(unknown[0], f"unknown key (allowed: {', '.join(sorted(allowed))})")
        self.data = data

    def fail(self, key: str, problem: str):
        name = f"{self.where}.{key}" if self.where and key else (key or self.where)
        raise ConfigError(f"key {name!r}: {problem}" if name else problem, self.source)

    def get(self, key: str, kinds: tuple[type, ...], label: str, default: Any) -> Any:
        value = self.data.get(key, default)
        if value is None and default is None:
            return None
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            self.fail(key, f"expected {label}, got {value!r}")
        return value

    def positive_int(self, key: str, default: Any, minimum: int = 1) -> int:
        value = self.get(key, (int,), "an integer", default)
        if value is not None and value < minimum:
            self.fail(key, f"must be >= {minimum}, got {value}")
        return value

    def int_list(self, key: str, default: Any, minimum: int = 0) -> list[int]:
        values = self.get(key, (list,), "a list of integers", default)
        if values is None:
            return None
        if not values or not all(
            isinstance(v, int) and not isinstance(v, bool) and v >= minimum for v in values
        ):
            self.fail(key, f"expected a non-empty list of integers >= {minimum}, got {values!r}")
        return list(values)

    def str_list(self, key: str) -> list[str] | None:
        values = self.get(key, (list,), "a list of strings", None)
        if values is not None and not all(isinstance(v, str) and v for v in values):
            self.fail(key, f"expected a list of non-empty strings, got {values!r}")
        return values


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list) else [value]


def expand_methods(entries: Any, where: str, source: Path | None) -> list[MethodSpec]:
    """Method entries -> MethodSpecs; list-valued rank/selection/conv_targets expand to all combinations."""
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"key {where!r}: expected a non-empty list of method entries", source)
    allowed = {"method", "rank", "selection", "conv_targets", "learning_rate", "alpha", "head_learning_rate",
               "train_modules"}
    specs: list[MethodSpec] = []
    for index, entry in enumerate(entries):
        keys = _Keys(entry, f"{where}[{index}]", source, allowed)
        method = keys.get("method", (str,), "a method name", "")
        if method not in METHODS:
            keys.fail("method", f"must be one of {', '.join(METHODS)}; got {method!r}")
        ranks = _as_list(entry.get("rank", 8))
        selections = _as_list(entry.get("selection", "topnorm"))
        convs = _as_list(entry.get("conv_targets", False))
        if not all(isinstance(r, int) and not isinstance(r, bool) and r >= 1 for r in ranks) or not ranks:
            keys.fail("rank", f"expected a positive integer or a list of them, got {entry.get('rank')!r}")
        if not selections or any(s not in SELECTIONS for s in selections):
            keys.fail(
                "selection",
                f"expected one or a list of {', '.join(SELECTIONS)}; got {entry.get('selection')!r}",
            )
        if not convs or not all(isinstance(c, bool) for c in convs):
            keys.fail(
                "conv_targets", f"expected true/false or a list of them, got {entry.get('conv_targets')!r}"
            )
        lr = keys.get("learning_rate", (int, float), "a positive number or null", None)
        if lr is not None and lr <= 0:
            keys.fail("learning_rate", f"must be > 0, got {lr}")
        alpha = keys.get("alpha", (int, float), "a number or null", None)
        head_lr = keys.get("head_learning_rate", (int, float), "a positive number or null", None)
        if head_lr is not None and head_lr <= 0:
            keys.fail("head_learning_rate", f"must be > 0, got {head_lr}")
        modules = tuple(keys.str_list("train_modules") or ())
        if method != "tcur":  # selection and conv targets only mean something for tCURLoRA
            selections, convs = selections[:1], [False]
        if method not in ("tcur", "lora"):
            ranks = ranks[:1]
        for rank, selection, conv in itertools.product(ranks, selections, convs):
            spec = MethodSpec(
                method,
                rank,
                selection,
                conv,
                None if lr is None else float(lr),
                None if alpha is None else float(alpha),
                None if head_lr is None else float(head_lr),
                modules,
            )
            if spec.label in {s.label for s in specs}:
                keys.fail("method", f"the setting {spec.label!r} appears twice")
            specs.append(spec)
    return specs


def _cost(data: Any, source: Path | None) -> CostConfig:
    allowed = {
        "base_model",
        "img_size",
        "batch_size",
        "num_classes",
        "warmup",
        "steps",
        "device",
        "amp",
        "methods",
    }
    keys = _Keys(data, "cost", source, allowed)
    return CostConfig(
        base_model=keys.get("base_model", (str,), "a base model reference", "preset:unetr-base"),
        img_size=keys.positive_int("img_size", 64, minimum=16),
        batch_size=keys.positive_int("batch_size", 1),
        num_classes=keys.positive_int("num_classes", 3, minimum=2),
        warmup=keys.positive_int("warmup", 2, minimum=1),
        steps=keys.positive_int("steps", 5),
        device=keys.get("device", (str,), "auto, cpu or cuda", "auto"),
        amp=keys.get("amp", (bool,), "true or false", True),
        methods=expand_methods(data.get("methods"), "cost.methods", source),
    )


def config_from_dict(data: Any, base_dir: Path, source: Path | None = None) -> BenchConfig:
    """Validate a config dict; relative paths are resolved against `base_dir`."""
    allowed = {
        "schema", "name", "description", "base_model", "fallback_base_model", "data", "label_names", "k",
        "seeds", "test_cases", "test_case_ids", "held_out_cases", "iterations", "batch_size", "patch_size", "spacing", "device", "amp",
        "overlap", "latency_cases", "warmup_steps", "isolate", "threads", "methods", "cost",
    }  # fmt: skip
    keys = _Keys(data, "", source, allowed)
    if data.get("schema", BENCH_SCHEMA) != BENCH_SCHEMA:
        keys.fail("schema", f"expected {BENCH_SCHEMA!r}, got {data.get('schema')!r}")
    name = keys.get("name", (str,), "a name", "")
    if not name.strip():
        keys.fail("name", "missing (required)")
    data_dir = keys.get("data", (str,), "a Decathlon folder path", None)
    patch = keys.int_list("patch_size", None, minimum=1)
    if patch is not None and len(patch) != 3:
        keys.fail("patch_size", f"expected 3 integers, got {patch!r}")
    spacing = keys.get("spacing", (list, str), 'a list of 3 numbers (mm), "auto" or "base"', None)
    if isinstance(spacing, str) and spacing not in ("auto", "base"):
        keys.fail("spacing", f'expected a list of 3 numbers (mm), "auto" or "base", got {spacing!r}')
    if isinstance(spacing, list) and (
        len(spacing) != 3 or not all(isinstance(v, int | float) and not isinstance(v, bool) and v > 0 for v in spacing)
    ):
        keys.fail("spacing", f"expected 3 positive numbers (mm), got {spacing!r}")
    overlap = keys.get("overlap", (int, float), "a number in [0, 1)", 0.25)
    if not 0 <= overlap < 1:
        keys.fail("overlap", f"must be in [0, 1), got {overlap}")
    methods = expand_methods(data["methods"], "methods", source) if data.get("methods") is not None else []
    cost = _cost(data["cost"], source) if data.get("cost") is not None else None
    if not methods and cost is None:
        keys.fail("methods", "give `methods` (quality runs), `cost` (synthetic cost runs) or both")
    if methods and data_dir is None:
        keys.fail("data", "quality runs need a Decathlon folder")
    resolved = None
    if data_dir is not None:
        resolved = Path(data_dir).expanduser()
        resolved = resolved if resolved.is_absolute() else (base_dir / resolved).resolve()
        if not resolved.exists() and os.environ.get("TCURLORA_DATA"):  # the data sets live elsewhere here
            resolved = Path(os.environ["TCURLORA_DATA"]).expanduser() / resolved.name
    return BenchConfig(
        name=name,
        description=keys.get("description", (str,), "a string", ""),
        base_model=keys.get("base_model", (str,), "a base model reference", BUILTIN),
        fallback_base_model=keys.get(
            "fallback_base_model", (str,), "a base model reference or null", "preset:unetr-tiny"
        ),
        data=resolved,
        label_names=keys.str_list("label_names"),
        k=keys.int_list("k", [5], minimum=1),
        seeds=keys.int_list("seeds", [0], minimum=0),
        test_cases=keys.positive_int("test_cases", 10),
        test_case_ids=keys.str_list("test_case_ids"),
        held_out_cases=keys.positive_int("held_out_cases", 0, minimum=0),
        iterations=keys.positive_int("iterations", 100),
        batch_size=keys.positive_int("batch_size", 2),
        patch_size=patch,
        spacing=spacing,
        device=keys.get("device", (str,), "auto, cpu or cuda", "auto"),
        amp=keys.get("amp", (bool,), "true or false", True),
        overlap=float(overlap),
        latency_cases=keys.positive_int("latency_cases", 2, minimum=0),
        warmup_steps=keys.positive_int("warmup_steps", 3, minimum=1),
        isolate=keys.get("isolate", (bool,), "true or false", True),
        threads=keys.positive_int("threads", None),
        methods=methods,
        cost=cost,
        source=source,
    )


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
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise ConfigError(
            f"not valid JSON: {error.msg} at line {error.lineno} column {error.colno}", path
        ) from error
    return config_from_dict(data, path.parent.resolve(), path.resolve())
