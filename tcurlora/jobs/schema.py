"""The worker protocol's two schemas, defined once: job files in ("tcurlora.job/1"), events out
("tcurlora.events/1").

A job file is a JSON object with `"command"` ("finetune", "segment" or "suggest") and optional
`"schema": "tcurlora.job/1"`; every other key is a field of `FinetuneJob`, `SegmentJob` or `SuggestJob`, declared
once with its kind, bounds, default, help text and command-line flag (tcurlora.settings): the CLI
flags, the Slicer FineTune settings and the JSON Schema (`tcurlora schema job`) are derived from
these declarations. Relative paths are resolved against the job file's folder. Every problem
(unknown key, wrong type, missing key, bad value) is a `ConfigError` naming the job file and the key.
"""

from __future__ import annotations

import argparse
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tcurlora.data.cases import Case
from tcurlora.errors import ConfigError, InputError
from tcurlora.filenames import JOB_SCHEMA, case_id_from_path, segmentation_output_name
from tcurlora.jsonio import JSONProblem, loads_strict
from tcurlora.namepatterns import PatternError, check_pattern_list, compile_pattern
from tcurlora.settings import (
    SettingError,
    check_keys,
    expect,
    read_fields,
    resolve_path,
    setting,
)
from tcurlora.settings import dump_fields as _dump_fields

# "scratch" is the control group: the base's architecture, randomly initialised (seeded by the job's seed),
# every weight trained as by "full"; what a method reaches above it is what the pretrained base contributes.
METHODS = ("tcur", "lora", "decoder", "full", "head", "scratch")
# Index selection strategies of the tensor CUR adapter (docs/method.md, step 2).
SELECTIONS = ("topnorm", "leverage", "inverse", "uniform")
# How `tcurlora suggest` scores a volume's uncertainty (tcurlora.suggest).
SUGGEST_SCORES = ("entropy", "flips")
MAX_SEED = 2**63 - 1  # torch and numpy seed generators take signed 64-bit values
MAX_ALPHA = 1e4
# Bounds on what no one can mean (a typo, or a crafted job): 1,000,000 steps are days of GPU time.
MAX_ITERATIONS = 1_000_000
MAX_BATCH_SIZE = 1024
MAX_THREADS = 4096
MAX_PATCH_SIDE = 1024  # voxels; one 1024^3 float patch is already 4 GiB

_MISSING = object()


def conv_targets_on(method: str, asked: bool | None) -> bool:
    """Whether Conv3d kernels are adapted: as asked, else the default (on for tcur, measured best in docs/benchmarks.md)."""
    return asked if asked is not None else method == "tcur"


# ------------------------------------------------------------------------- value checks and parsers
def check_seed(key: str, seed: int) -> int:
    if seed > MAX_SEED:
        raise SettingError(key, f"must be at most 2^63 - 1 = {MAX_SEED}, got {seed}")
    return seed


def check_alpha(key: str, alpha: float) -> float:
    if not 0.0 < alpha <= MAX_ALPHA:
        raise SettingError(key, f"must be > 0 and <= {MAX_ALPHA:g} (the adapter's scale), got {alpha:g}")
    return alpha


def check_label_names(key: str, names: list[str]) -> list[str]:
    if not names:
        raise SettingError(key, "needs at least one class name")
    seen: set[str] = set()
    for index, name in enumerate(names):
        if not name.strip():
            raise SettingError(f"{key}[{index}]", "must not be empty")
        if name in seen:
            raise SettingError(f"{key}[{index}]", f"duplicate class name {name!r} (each class needs its own name)")
        seen.add(name)
    return names


# Voxel spacings (mm) a scan or a working grid can have: 10 um (micro-CT) to 10 cm. Outside, a header is
# wrong or a value is a typo, and resampling to it would ask for absurd grids.
MIN_SPACING_MM = 0.01
MAX_SPACING_MM = 100.0


def check_regexes(key: str, patterns: list[str]) -> list[str]:
    """Module-name regexes: valid, and matchable in linear time (an adapter config can come from anyone;
    tcurlora.namepatterns says what is refused)."""
    for index, pattern in enumerate(patterns):
        try:
            re.compile(pattern)
        except (re.error, RecursionError, OverflowError) as error:
            raise SettingError(f"{key}[{index}]", f"invalid regular expression {pattern!r}: {error}") from None
        try:
            compile_pattern(pattern)
        except PatternError as error:
            shown = pattern if len(pattern) <= 80 else pattern[:77] + "..."
            raise SettingError(f"{key}[{index}]", f"module-name pattern {shown!r} refused: {error}") from None
    try:
        check_pattern_list(patterns)
    except PatternError as error:
        raise SettingError(key, f"refused: {error}") from None
    return patterns


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def parse_patch_size(key: str, value: Any, base_dir: Path | None) -> list[int]:
    label = "a list of 3 positive integers"
    expect(key, value, (list,), label)
    if len(value) != 3 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value):
        raise SettingError(key, f"expected {label}, got {value!r}")
    if max(value) > MAX_PATCH_SIDE:
        raise SettingError(key, f"each side must be <= {MAX_PATCH_SIDE} voxels, got {value!r}")
    return list(value)


def spacing_problem(values: Any) -> str | None:
    """Why `values` is not a spacing tcurlora works at (3 numbers within MIN..MAX_SPACING_MM), or None."""
    if not isinstance(values, (list, tuple)) or len(values) != 3 or not all(_is_number(v) and v > 0 for v in values):
        return f"expected a list of 3 positive numbers (mm), got {values!r}"
    if not all(MIN_SPACING_MM <= v <= MAX_SPACING_MM for v in values):
        return f"spacing {list(values)} mm is outside {MIN_SPACING_MM:g}..{MAX_SPACING_MM:g} mm"
    return None


def parse_spacing(key: str, value: Any, base_dir: Path | None) -> list[float] | str:
    expect(key, value, (list, str), 'a list of 3 positive numbers (mm), "auto" or "base"')
    if isinstance(value, str) and value not in ("auto", "base"):
        raise SettingError(key, f'expected a list of 3 positive numbers (mm), "auto" or "base", got {value!r}')
    if isinstance(value, list):
        problem = spacing_problem(value)
        if problem:
            raise SettingError(key, problem)
        return [float(v) for v in value]
    return value


def parse_colors(key: str, value: Any, base_dir: Path | None) -> list[list[float]]:
    expect(key, value, (list,), "a list of [r, g, b] values in 0..1")
    out = []
    for index, color in enumerate(value):
        if not (isinstance(color, list) and len(color) == 3 and all(_is_number(c) and 0.0 <= c <= 1.0 for c in color)):
            raise SettingError(f"{key}[{index}]", f"expected [r, g, b] with values in 0..1, got {color!r}")
        out.append([float(c) for c in color])
    return out


def parse_channels(key: str, value: Any, base_dir: Path | None) -> list[Path]:
    """One path or a non-empty list of channel paths -> list of resolved paths."""
    if isinstance(value, list):
        if not value:
            raise SettingError(key, "needs at least one image path")
        return [resolve_path(f"{key}[{i}]", item, base_dir) for i, item in enumerate(value)]
    return [resolve_path(key, value, base_dir)]


def channels_out(paths: list[Path]) -> str | list[str]:
    return str(paths[0]) if len(paths) == 1 else [str(p) for p in paths]


def _parse_label_map(key: str, mapping: Any) -> dict[int, int]:
    """{"file label value": class index} of one case (unlisted values become background)."""
    expect(key, mapping, (dict,), "an object of label value -> class index")
    out: dict[int, int] = {}
    for source, target in mapping.items():
        where = f"{key}[{source}]"
        if not isinstance(source, str) or not re.fullmatch(r"\d+", source.strip()):
            raise SettingError(where, f"label values must be whole numbers >= 0 (as JSON keys: \"1\"), got {source!r}")
        if isinstance(target, bool) or not isinstance(target, int) or target < 0:
            raise SettingError(where, f"class index must be a whole number >= 0, got {type(target).__name__} {target!r}")
        out[int(source)] = target
    return out


CASE_KEYS = ("id", "image", "label", "label_map")


def parse_cases(key: str, items: Any, base_dir: Path | None) -> list[Case]:
    expect(key, items, (list,), "a list of {id, image, label} objects")
    if not items:
        raise SettingError(key, "needs at least one case")
    cases, seen = [], set()
    for index, item in enumerate(items):
        where = f"{key}[{index}]"
        if not isinstance(item, dict):
            raise SettingError(where, f"expected an object with id, image and label, got {type(item).__name__}")
        extra = sorted(set(item) - set(CASE_KEYS))
        if extra:
            raise SettingError(f"{where}.{extra[0]}", f"unknown key (allowed keys: {', '.join(CASE_KEYS)})")
        for name in ("image", "label"):
            if name not in item:
                raise SettingError(f"{where}.{name}", "missing (required)")
        images = parse_channels(f"{where}.image", item["image"], base_dir)
        label = resolve_path(f"{where}.label", item["label"], base_dir)
        case_id = expect(f"{where}.id", item.get("id", case_id_from_path(images[0])), (str,), "a string")
        if case_id in seen:
            raise SettingError(f"{where}.id", f"duplicate case id {case_id!r}")
        seen.add(case_id)
        mapping = item.get("label_map")
        label_map = None if mapping is None else _parse_label_map(f"{where}.label_map", mapping)
        cases.append(Case(id=case_id, images=images, label=label, label_map=label_map))
    return cases


def dump_cases(cases: list[Case]) -> list[dict[str, Any]]:
    out = []
    for c in cases:
        item: dict[str, Any] = {"id": c.id, "image": channels_out(c.images), "label": str(c.label)}
        if c.label_map is not None:
            item["label_map"] = {str(k): v for k, v in c.label_map.items()}
        out.append(item)
    return out


def parse_inputs(key: str, items: Any, base_dir: Path | None) -> list[list[Path]]:
    expect(key, items, (list,), "a list of image paths (each a path or a list of channel paths)")
    if not items:
        raise SettingError(key, "needs at least one input volume")
    return [parse_channels(f"{key}[{i}]", item, base_dir) for i, item in enumerate(items)]


def parse_paths(key: str, items: Any, base_dir: Path | None) -> list[Path]:
    expect(key, items, (list,), "a list of output file paths")
    return [resolve_path(f"{key}[{i}]", p, base_dir) for i, p in enumerate(items)]


def parse_unlabeled(key: str, items: Any, base_dir: Path | None) -> list[Path]:
    expect(key, items, (list,), "a list of image files or folders")
    return [resolve_path(f"{key}[{i}]", p, base_dir) for i, p in enumerate(items)]


# ----------------------------------------------------------------------------- command-line values
def _triple(text: str, cast: type, what: str, kind: str) -> list:
    """ "v" -> [v, v, v]; "a,b,c" or "axbxc" -> [a, b, c], each cast and positive; else an argparse error."""
    parts = [p for p in text.lower().replace("x", ",").split(",") if p.strip()]
    try:
        values = [cast(p) for p in parts]
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"{what} must be {kind}s, got {text!r}") from error
    if len(values) == 1:
        values *= 3
    if len(values) != 3 or min(values) <= 0:
        raise argparse.ArgumentTypeError(f"{what} needs 1 or 3 positive {kind}s, got {text!r}")
    return values


def parse_threads(key: str, value: Any, base_dir: Path | None) -> int | str:
    expect(key, value, (int, str), 'a positive integer or "auto"')
    if value != "auto" and not (isinstance(value, int) and value >= 1):
        raise SettingError(key, f'expected a positive integer or "auto", got {value!r}')
    if isinstance(value, int) and value > MAX_THREADS:
        raise SettingError(key, f"must be <= {MAX_THREADS}, got {value}")
    return value


def threads_arg(text: str) -> int | str:
    """ "auto" or a positive integer."""
    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f'expected a positive integer or "auto", got {text!r}')
    return value


def patch_size_arg(text: str) -> list[int]:
    """ "96" -> [96, 96, 96]; "96,96,64" or "96x96x64" -> [96, 96, 64]."""
    return _triple(text, int, "patch size", "integer")


def spacing_arg(text: str) -> list[float] | str:
    """ "1" -> [1.0, 1.0, 1.0]; "1,1,1.5" or "1x1x1.5" -> [1.0, 1.0, 1.5]; "auto" and "base" as they are."""
    return text if text in ("auto", "base") else _triple(text, float, "spacing", "number")


def _split_channels(text: str) -> str | list[str]:
    parts = [p for p in text.split(",") if p]
    return parts[0] if len(parts) == 1 else parts


def cases_from_flags(pairs: list[list[str]]) -> list[dict[str, Any]]:
    """--case IMAGE LABEL pairs -> job cases (IMAGE may list channel files separated by commas)."""
    return [
        {"id": case_id_from_path(image.split(",")[0]), "image": _split_channels(image), "label": label}
        for image, label in pairs
    ]


def names_from_flags(items: list[str]) -> list[str]:
    """--labels A B or --labels A,B -> [A, B]."""
    return [name for item in items for name in item.split(",") if name]


# ------------------------------------------------------------------------------ shared JSON Schemas
_PATH = {"type": "string", "minLength": 1, "pattern": r"\S"}
CHANNELS_SCHEMA = {"anyOf": [_PATH, {"type": "array", "items": _PATH, "minItems": 1}]}
CASE_SCHEMA = {
    "type": "object",
    "description": "one labeled case: image (one path, or one path per channel), label, optional id and label_map",
    "properties": {
        "id": {"type": "string"},
        "image": CHANNELS_SCHEMA,
        "label": _PATH,
        "label_map": {
            "anyOf": [
                {
                    "type": "object",
                    "patternProperties": {r"^\s*\d+\s*$": {"type": "integer", "minimum": 0}},
                    "additionalProperties": False,
                },
                {"type": "null"},
            ]
        },
    },
    "required": ["image", "label"],
    "additionalProperties": False,
}
_RATE = {"kind": "number", "minimum": 0.0, "exclusive_minimum": True}
_DEVICE_HELP = "auto, cpu, cuda or cuda:N"
_THREADS = {
    "kind": "custom", "parse": parse_threads, "flag": "--threads", "cli": {"type": threads_arg, "metavar": "N"},
    "schema": {"anyOf": [{"const": "auto"}, {"type": "integer", "minimum": 1, "maximum": MAX_THREADS}]},
    "help": "torch CPU threads, or 'auto' (default): on the CPU the cores not kept busy by other work "
    "(1-minute load average), at least 1; CUDA runs keep torch's default",
}  # fmt: skip
_BASE_HELP = "built-in base model name, model folder or MONAI bundle folder"


# ------------------------------------------------------------------------------------------- jobs
# One labeled training case of a job is the data layer's Case (id, images, label, label_map).
JobCase = Case


def _fail(error: SettingError, source: Path | None):
    raise ConfigError(str(error), source) from None


def _check_header(data: dict, command: str) -> None:
    value = data.get("command", _MISSING)
    if value is _MISSING:
        raise SettingError("command", "missing (required)")
    expect("command", value, (str,), "a string")
    if value != command:
        raise SettingError("command", f"expected {command!r}, got {value!r}")
    schema = expect("schema", data.get("schema", JOB_SCHEMA), (str,), "a string")
    if schema != JOB_SCHEMA:
        raise SettingError("schema", f"unsupported job schema {schema!r}; this version reads {JOB_SCHEMA!r}")


def _job_keys(cls: Any) -> set[str]:
    return {f for f in cls.__dataclass_fields__ if f != "job_file"} | {"command", "schema"}


def _read_job_values(cls, data: dict[str, Any], base_dir: str | Path, command: str) -> dict[str, Any]:
    """The declared fields of a `command` job read from `data` (keys, header, types, exactly-one pairs)."""
    check_keys(data, _job_keys(cls))
    _check_header(data, command)
    values = read_fields(cls, data, Path(base_dir).resolve())
    _exactly_one(cls, values)
    return values


def _exactly_one(cls: Any, values: dict[str, Any]) -> None:
    for first, second, problem in cls.ONE_OF:
        if (values[first] is None) == (values[second] is None):
            raise SettingError(first if values[first] is None else second, problem)


@dataclass
class FinetuneJob:
    """Everything `tcurlora finetune` needs. Exactly one of `cases` / `data` is given."""

    base_model: str = setting(kind="reference", help=_BASE_HELP, flag="--base-model", slicer=True)
    output: Path = setting(kind="path", help="adapter folder to write", flag="--output", aliases=("-o",))
    cases: list[JobCase] | None = setting(
        None, "custom", parse=parse_cases, dump=dump_cases,
        schema={"type": "array", "items": {"$ref": "#/$defs/case"}, "minItems": 1},
        help="the labeled training cases (or give 'data')", flag="--case", aliases=("--cases",),
        cli={"nargs": 2, "action": "append", "metavar": ("IMAGE", "LABEL"),
             "help": "one labeled case (repeat the flag); IMAGE may list channel files separated by commas"},
        from_cli=cases_from_flags,
    )  # fmt: skip
    data: Path | None = setting(
        None, "path", help="training cases from a Decathlon folder (dataset.json), instead of 'cases'", flag="--data"
    )
    num_cases: int | None = setting(
        None, "integer", minimum=1, help="use only the first N cases of 'data'", flag="--num-cases"
    )
    case_ids: list[str] | None = setting(None, "strings", help="use only these case ids of 'data'")
    label_names: list[str] | None = setting(
        None, "strings", check=check_label_names, help="class names for label values 1..N", flag="--labels",
        dest="labels", cli={"metavar": "NAME"}, from_cli=names_from_flags,
    )  # fmt: skip
    label_colors: list[list[float]] | None = setting(
        None, "custom", parse=parse_colors,
        schema={"type": "array", "items": {"type": "array", "items": {"type": "number", "minimum": 0, "maximum": 1},
                                           "minItems": 3, "maxItems": 3}},
        help="one [r, g, b] color (0..1) per label name",
    )  # fmt: skip
    method: str = setting("tcur", "choice", choices=METHODS, help="adaptation method", flag="--method", slicer=True)
    rank: int = setting(8, "integer", minimum=1, help="adapter rank", flag="--rank", slicer=True)
    alpha: float | None = setting(
        None, "number", check=check_alpha, schema={"exclusiveMinimum": 0, "maximum": MAX_ALPHA},
        help="adapter scale (default: the method's)", flag="--alpha",
    )  # fmt: skip
    selection: str = setting(
        "topnorm", "choice", choices=SELECTIONS, help="tCUR index selection", flag="--selection"
    )
    conv_targets: bool | None = setting(
        None, "boolean", flag="--conv-targets",
        help="adapt the encoder/decoder Conv3d kernels too (tcur, lora; the default for tcur)",
        negation=("--no-conv-targets", False, "adapt only the transformer's linear layers (tCURLoRA as in the paper)"),
    )  # fmt: skip
    iterations: int = setting(
        500, "integer", minimum=1, maximum=MAX_ITERATIONS, help="training steps (at most 1,000,000)",
        flag="--iterations", slicer=True,
    )  # fmt: skip
    batch_size: int = setting(
        2, "integer", minimum=1, maximum=MAX_BATCH_SIZE, help="patches per step", flag="--batch-size", slicer=True
    )
    learning_rate: float | None = setting(
        None, **_RATE, help="learning rate of the adapter (default: the method's)", flag="--lr", dest="lr",
        slicer=True,
    )  # fmt: skip
    head_learning_rate: float | None = setting(
        None, **_RATE, help="learning rate of a new segmentation head (default 5e-3)", flag="--head-lr",
        dest="head_lr", slicer=True,
    )  # fmt: skip
    modules_learning_rate: float | None = setting(
        None, **_RATE, help="learning rate of the train_modules (default 1e-3)", flag="--modules-lr",
        dest="modules_lr",
    )  # fmt: skip
    train_modules: list[str] | None = setting(
        None, "strings", check=check_regexes, flag="--train-modules", cli={"metavar": "REGEX"}, slicer=True,
        help="extra modules trained in full (full-matched module names; 'decoder' = every decoderN block, "
        "the tCURLoRA authors' setting), saved in the adapter (default for tcur: the full-resolution blocks, "
        "UNETR encoder1 + decoder2; for other methods none)",
        negation=("--no-train-modules", [], "no extra trained modules (tCURLoRA alone, as in the paper)"),
    )  # fmt: skip
    spacing: list[float] | str | None = setting(
        None, "custom", parse=parse_spacing, flag="--spacing", cli={"type": spacing_arg}, slicer=True,
        schema={"anyOf": [{"enum": ["auto", "base"]},
                          {"type": "array", "items": {"type": "number", "exclusiveMinimum": 0},
                           "minItems": 3, "maxItems": 3}]},
        help="working spacing in mm (e.g. 1 or 1,1,1.5), 'base' (the base model's) or 'auto' (default: the "
        "cases' median spacing, coarsened until the labeled structure fits in a patch, within 2/3..1 x the "
        "base's); saved in the adapter, used by segment",
    )  # fmt: skip
    patch_size: list[int] | None = setting(
        None, "custom", parse=parse_patch_size, flag="--patch-size", cli={"type": patch_size_arg}, slicer=True,
        schema={"type": "array", "items": {"type": "integer", "minimum": 1, "maximum": MAX_PATCH_SIDE},
                "minItems": 3, "maxItems": 3},
        help="e.g. 96 or 96,96,64 (default: the base model's)",
    )  # fmt: skip
    seed: int = setting(
        0, "integer", minimum=0, check=check_seed, schema={"maximum": MAX_SEED}, help="random seed", flag="--seed",
        slicer=True,
    )  # fmt: skip
    val_fraction: float = setting(
        0.0, "number", minimum=0.0, maximum=1.0, exclusive_maximum=True, flag="--val-fraction", slicer=True,
        help="fraction of cases held out for validation",
    )  # fmt: skip
    val_case_ids: list[str] | None = setting(
        None, "strings", help="case ids held out for validation (instead of val_fraction)"
    )
    early_stopping: int = setting(
        4, "integer", minimum=0, maximum=MAX_ITERATIONS, flag="--early-stopping", cli={"metavar": "N"},
        help="with a validation split: stop after N validations without a better Dice and keep the best "
        "adapter (default 4; 0 = train all iterations, still keeping the best)",
    )  # fmt: skip
    grad_clip: float | None = setting(
        None, "number", minimum=0.0, exclusive_minimum=True, flag="--grad-clip", cli={"metavar": "NORM"},
        help="clip the gradient norm to NORM before each step (default: no clipping)",
    )  # fmt: skip
    unlabeled: list[Path] | None = setting(
        None, "custom", parse=parse_unlabeled, schema={"type": "array", "items": _PATH},
        flag="--unlabeled", cli={"nargs": "+", "metavar": "PATH"},
        help="unlabeled volumes for semi-supervised (mean teacher) training: image files, or folders of "
        "them (a Decathlon folder: its imagesTr)",
    )  # fmt: skip
    unlabeled_weight: float = setting(
        0.1, "number", minimum=0.0, flag="--unlabeled-weight", cli={"metavar": "W"},
        help="weight of the mean-teacher consistency loss on the unlabeled volumes (ramped up over the "
        "first 40 percent of the iterations)",
    )  # fmt: skip
    ema_decay: float = setting(
        0.99, "number", minimum=0.0, maximum=1.0, exclusive_maximum=True, flag="--ema-decay",
        help="with unlabeled volumes: decay of the teacher's exponential moving average of the trained weights",
    )  # fmt: skip
    keep_teacher: bool = setting(
        False, "boolean", flag="--keep-teacher",
        help="with unlabeled volumes: validate and save the teacher (the moving average) instead of the student",
    )  # fmt: skip
    checkpoint_every: int = setting(
        50, "integer", minimum=0, maximum=MAX_ITERATIONS, help="iterations between checkpoints (default 50; 0 = none)",
        flag="--checkpoint-every", slicer=True,
    )  # fmt: skip
    device: str = setting(
        "auto", "device", help=_DEVICE_HELP, flag="--device", override=True, slicer=True
    )
    amp: bool = setting(True, "boolean", help="no mixed precision on CUDA", flag="--no-amp", slicer=True)
    threads: int | str = setting("auto", override=True, **_THREADS)
    force: bool = setting(False, "boolean", help="replace an existing adapter folder", flag="--force", override=True)
    resume: bool = setting(
        False, "boolean", help="continue from the last checkpoint", flag="--resume", override=True
    )
    job_file: Path | None = field(default=None, compare=False, repr=False)

    command = "finetune"
    ONE_OF = (("cases", "data", "give exactly one of 'cases' (a list) or 'data' (a folder)"),)
    DATA_ONLY = ("num_cases", "case_ids")  # only with 'data'
    # (key, other, other's value, problem): when `key` is given, `other` must keep that value.
    REPLACES = (("val_case_ids", "val_fraction", 0.0, "give either 'val_fraction' or 'val_case_ids', not both"),)

    @classmethod
    def from_dict(
        cls, data: dict[str, Any], base_dir: str | Path, source: str | Path | None = None
    ) -> FinetuneJob:
        """Validate a job dict; relative paths are resolved against `base_dir`."""
        source = Path(source) if source else None
        try:
            values = _read_job_values(cls, data, base_dir, "finetune")
            for key in cls.DATA_ONLY if values["cases"] is not None else ():
                if values[key] is not None:
                    raise SettingError(key, "only applies with 'data' (a Decathlon folder), not with 'cases'")
            names, colors = values["label_names"], values["label_colors"]
            if names is not None and colors is not None and len(colors) != len(names):
                raise SettingError("label_colors", f"has {len(colors)} colors for {len(names)} label_names")
            for key, other, other_value, problem in cls.REPLACES:
                if values[key] is not None and values[other] != other_value:
                    raise SettingError(key, problem)
        except SettingError as error:
            _fail(error, source)
        return cls(**values, job_file=source)

    @property
    def uses_conv_targets(self) -> bool:
        """Conv3d kernels adapted too (see conv_targets_on)."""
        return conv_targets_on(self.method, self.conv_targets)

    @classmethod
    def from_file(cls, path: str | Path) -> FinetuneJob:
        path = Path(path)
        return cls.from_dict(_read_json(path), path.parent, path)

    def to_dict(self) -> dict[str, Any]:
        """The job as JSON-able dict, absolute paths; `from_dict(to_dict())` gives the same job."""
        return {"schema": JOB_SCHEMA, "command": self.command, **_dump_fields(self)}


@dataclass
class SegmentJob:
    """Everything `tcurlora segment` needs. Exactly one of `outputs` / `output_dir` is given."""

    base_model: str = setting(kind="reference", help=_BASE_HELP, flag="--base-model")
    inputs: list[list[Path]] = setting(
        kind="custom", parse=parse_inputs,
        schema={"type": "array", "items": {"$ref": "#/$defs/channels"}, "minItems": 1},
        help="the volumes to segment, each one path or a list of channel paths",
    )  # fmt: skip
    adapter: str | None = setting(
        None, "reference", help="adapter folder (default: the base model alone)", flag="--adapter"
    )
    outputs: list[Path] | None = setting(
        None, "custom", parse=parse_paths, schema={"type": "array", "items": _PATH},
        help="one output file per input (or give output_dir)",
    )  # fmt: skip
    output_dir: Path | None = setting(
        None, "path", help="folder for the outputs, named INPUT_seg + extension (or give outputs)"
    )
    overlap: float = setting(
        0.5, "number", minimum=0.0, maximum=1.0, exclusive_maximum=True, flag="--overlap",
        help="sliding-window overlap in [0, 1)",
    )  # fmt: skip
    largest_component: bool = setting(
        False, "boolean", flag="--largest-component",
        help="keep only the largest connected component of each class",
    )  # fmt: skip
    device: str = setting("auto", "device", help=_DEVICE_HELP, flag="--device")
    threads: int | str = setting("auto", **_THREADS)
    force: bool = setting(False, "boolean", help="overwrite existing outputs", flag="--force")
    job_file: Path | None = field(default=None, compare=False, repr=False)

    command = "segment"
    ONE_OF = (("outputs", "output_dir", "give exactly one of 'outputs' (a list of files) or 'output_dir' (a folder)"),)

    @classmethod
    def from_dict(
        cls, data: dict[str, Any], base_dir: str | Path, source: str | Path | None = None
    ) -> SegmentJob:
        """Validate a job dict; relative paths are resolved against `base_dir`."""
        source = Path(source) if source else None
        try:
            values = _read_job_values(cls, data, base_dir, "segment")
            outputs, inputs = values["outputs"], values["inputs"]
            if outputs is not None and len(outputs) != len(inputs):
                raise SettingError("outputs", f"has {len(outputs)} paths for {len(inputs)} inputs")
            job = cls(**values, job_file=source)
            paths = job.output_paths()
            duplicates = sorted({str(p) for p in paths if paths.count(p) > 1})
            if duplicates:
                raise SettingError(
                    "outputs" if outputs is not None else "output_dir",
                    f"two inputs would write the same file {duplicates[0]}",
                )
        except SettingError as error:
            _fail(error, source)
        return job

    @classmethod
    def from_file(cls, path: str | Path) -> SegmentJob:
        path = Path(path)
        return cls.from_dict(_read_json(path), path.parent, path)

    def output_paths(self) -> list[Path]:
        """One output file per input: `outputs`, or `output_dir / segmentation_output_name(channels)`.

        `tcurlora segment` writes exactly these paths (segmentation.plan_outputs calls this method).
        """
        if self.outputs is not None:
            return list(self.outputs)
        assert self.output_dir is not None
        return [self.output_dir / segmentation_output_name(channels) for channels in self.inputs]

    def to_dict(self) -> dict[str, Any]:
        """The job as JSON-able dict, absolute paths; `from_dict(to_dict())` gives the same job."""
        data = {"schema": JOB_SCHEMA, "command": self.command, **_dump_fields(self)}
        data["inputs"] = [channels_out(c) for c in self.inputs]
        return data


@dataclass
class SuggestJob:
    """Everything `tcurlora suggest` needs: which volumes to rank by the model's uncertainty, and how."""

    base_model: str = setting(kind="reference", help=_BASE_HELP, flag="--base-model")
    inputs: list[list[Path]] = setting(
        kind="custom", parse=parse_inputs,
        schema={"type": "array", "items": {"$ref": "#/$defs/channels"}, "minItems": 1},
        help="the volumes to rank, each one path or a list of channel paths",
    )  # fmt: skip
    adapter: str | None = setting(
        None, "reference", help="adapter folder (default: the base model alone)", flag="--adapter"
    )
    score: str = setting(
        "entropy", "choice", choices=SUGGEST_SCORES, flag="--score",
        help="entropy: mean predictive entropy inside the predicted foreground (one pass); flips: share of "
        "the predicted foreground whose label changes under mirroring along each axis (four passes)",
    )  # fmt: skip
    top: int | None = setting(None, "integer", minimum=1, help="report only the K most uncertain volumes",
                              flag="--top", cli={"metavar": "K"})
    overlap: float = setting(
        0.5, "number", minimum=0.0, maximum=1.0, exclusive_maximum=True, flag="--overlap",
        help="sliding-window overlap in [0, 1)",
    )  # fmt: skip
    device: str = setting("auto", "device", help=_DEVICE_HELP, flag="--device")
    threads: int | str = setting("auto", **_THREADS)
    job_file: Path | None = field(default=None, compare=False, repr=False)

    command = "suggest"
    ONE_OF = ()

    @classmethod
    def from_dict(
        cls, data: dict[str, Any], base_dir: str | Path, source: str | Path | None = None
    ) -> SuggestJob:
        """Validate a job dict; relative paths are resolved against `base_dir`."""
        source = Path(source) if source else None
        try:
            values = _read_job_values(cls, data, base_dir, "suggest")
        except SettingError as error:
            _fail(error, source)
        return cls(**values, job_file=source)

    @classmethod
    def from_file(cls, path: str | Path) -> SuggestJob:
        path = Path(path)
        return cls.from_dict(_read_json(path), path.parent, path)

    def to_dict(self) -> dict[str, Any]:
        """The job as JSON-able dict, absolute paths; `from_dict(to_dict())` gives the same job."""
        data = {"schema": JOB_SCHEMA, "command": self.command, **_dump_fields(self)}
        data["inputs"] = [channels_out(c) for c in self.inputs]
        return data


JOB_CLASSES: dict[str, type[FinetuneJob] | type[SegmentJob] | type[SuggestJob]] = {
    "finetune": FinetuneJob,
    "segment": SegmentJob,
    "suggest": SuggestJob,
}


def _read_json(path: Path) -> Any:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(
            f"not UTF-8 text (byte {error.start}: {error.reason}); save the job file as UTF-8 JSON", path
        ) from error
    except FileNotFoundError as error:
        raise InputError("job file not found", path) from error
    except OSError as error:
        raise InputError(f"cannot read job file: {error.strerror or error}", path) from error
    try:
        return loads_strict(text)
    except json.JSONDecodeError as error:
        raise ConfigError(
            f"not valid JSON: {error.msg} at line {error.lineno} column {error.colno}", path
        ) from error
    except JSONProblem as error:
        raise ConfigError(f"refused job file: {error}", path) from error


def load_job(path: str | Path) -> FinetuneJob | SegmentJob | SuggestJob:
    """Read a job file and return the job of its "command"."""
    path = Path(path)
    data = _read_json(path)
    if not isinstance(data, dict):
        raise ConfigError(f"a job must be a JSON object, not {type(data).__name__}", path)
    command = data.get("command", _MISSING)
    if command is _MISSING:
        raise ConfigError('key \'command\': missing (required; "finetune", "segment" or "suggest")', path)
    if command not in JOB_CLASSES:
        raise ConfigError(f"key 'command': must be one of {', '.join(JOB_CLASSES)}; got {command!r}", path)
    return JOB_CLASSES[command].from_dict(data, path.parent, path)


# ----------------------------------------------------------------------------------------- events
# Per event kind: required keys -> allowed JSON types. Every event also has "event" and "time".
# JSON types: "string", "integer" (no booleans), "number" (integers too), "boolean", "object",
# "array", "null". Non-finite numbers are not JSON: sinks write them as null.
EVENT_SCHEMA: dict[str, dict[str, tuple[str, ...]]] = {
    "started": {
        "command": ("string",),
        "device": ("string",),
        "total": ("integer",),
        "parameters": ("object", "null"),
    },
    "progress": {
        "iteration": ("integer",),
        "total": ("integer",),
        "loss": ("number", "null"),
        "val_dice": ("object", "null"),
        "eta_s": ("number", "null"),
        "lr": ("number", "null"),
        "message": ("string", "null"),
    },
    "checkpoint": {"iteration": ("integer",), "path": ("string",)},
    "log": {"level": ("string",), "message": ("string",)},
    "done": {"outputs": ("object",), "metrics": ("object",)},
    "error": {
        "kind": ("string",),
        "message": ("string",),
        "path": ("string", "null"),
        "exit_code": ("integer",),
    },
}
# Keys an event may omit (the contract gives "parameters" only for finetune).
EVENT_OPTIONAL: dict[str, frozenset[str]] = {"started": frozenset({"parameters"})}
PARAMETERS_KEYS = {
    "total": ("integer",),
    "trainable": ("integer",),
    "trainable_percent": ("number",),
    "head": ("integer",),
}
LOG_LEVELS = ("info", "warning")
COMMANDS = ("finetune", "segment", "suggest")


def json_type_ok(value: Any, kind: str) -> bool:
    """Whether `value` is of the JSON type named `kind`."""
    if kind == "null":
        return value is None
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if kind == "string":
        return isinstance(value, str)
    if kind == "object":
        return isinstance(value, dict)
    if kind == "array":
        return isinstance(value, list)
    raise ValueError(f"unknown JSON type {kind!r}")


def _check_fields(obj: dict, spec: dict[str, tuple[str, ...]], optional: frozenset[str], where: str) -> None:
    for key, kinds in spec.items():
        if key not in obj:
            if key in optional:
                continue
            raise ValueError(f"{where}: missing key {key!r}")
        if not any(json_type_ok(obj[key], k) for k in kinds):
            raise ValueError(f"{where}: key {key!r} must be {' or '.join(kinds)}, got {obj[key]!r}")


def validate_event(obj: dict) -> None:
    """Raise ValueError with the reason when `obj` is not a valid "tcurlora.events/1" event."""
    if not isinstance(obj, dict):
        raise ValueError(f"an event must be a JSON object, got {type(obj).__name__}")
    kind = obj.get("event")
    if kind not in EVENT_SCHEMA:
        raise ValueError(f"unknown event kind {kind!r}; expected one of {', '.join(EVENT_SCHEMA)}")
    where = f"{kind} event"
    if "time" not in obj or not json_type_ok(obj["time"], "number"):
        raise ValueError(f"{where}: key 'time' must be a number (unix seconds), got {obj.get('time')!r}")
    spec = EVENT_SCHEMA[kind]
    unknown = sorted(set(obj) - set(spec) - {"event", "time"})
    if unknown:
        raise ValueError(f"{where}: unknown key {unknown[0]!r}")
    _check_fields(obj, spec, EVENT_OPTIONAL.get(kind, frozenset()), where)
    if kind == "started":
        if obj["command"] not in COMMANDS:
            raise ValueError(f"{where}: command must be one of {', '.join(COMMANDS)}, got {obj['command']!r}")
        if obj.get("parameters") is not None:
            _check_fields(obj["parameters"], PARAMETERS_KEYS, frozenset(), f"{where} parameters")
    elif kind == "progress":
        if obj["iteration"] < 0 or obj["total"] < 0 or obj["iteration"] > obj["total"]:
            raise ValueError(f"{where}: need 0 <= iteration <= total, got {obj['iteration']}/{obj['total']}")
        for name, score in (obj["val_dice"] or {}).items():
            if not (json_type_ok(score, "number") or score is None):
                raise ValueError(f"{where}: val_dice[{name!r}] must be a number or null, got {score!r}")
    elif kind == "log" and obj["level"] not in LOG_LEVELS:
        raise ValueError(f"{where}: level must be one of {', '.join(LOG_LEVELS)}, got {obj['level']!r}")


def parse_event_line(line: str) -> dict | None:
    """The event on one stdout line; None for lines that are not JSON objects (stray library output).

    A line that is a JSON object but not a valid event raises ValueError: the worker and its reader
    disagree, which is a bug to surface, not to skip.
    """
    text = line.strip()
    if not text.startswith("{"):
        return None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError:
        return None
    validate_event(obj)
    return obj
