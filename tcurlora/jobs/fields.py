"""The choices, bounds and value parsers of job fields (tcurlora.jobs.schema declares the fields with them).

Kept apart from the job classes and light (no torch; data cases and the model spec only) because the layers
below the jobs check values the same way: an adapter config (tcurlora.adapters.config), a bench config
(tcurlora.bench.config) and the pretraining recipe use these bounds and parsers too.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from tcurlora.data.cases import Case
from tcurlora.filenames import case_id_from_path
from tcurlora.jsonio import is_finite_number
from tcurlora.models.spec import spacing_problem
from tcurlora.namepatterns import PatternError, check_pattern_list, compile_pattern
from tcurlora.settings import SettingError, expect, resolve_path

UNLABELED_LOSSES = ("consistency", "pseudo_label")  # finetune --unlabeled-loss (see mean_teacher.py)

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
            raise SettingError(
                f"{key}[{index}]", f"duplicate class name {name!r} (each class needs its own name)"
            )
        seen.add(name)
    return names


def check_regexes(key: str, patterns: list[str]) -> list[str]:
    """Module-name regexes: valid, and matchable in linear time (an adapter config can come from anyone;
    tcurlora.namepatterns says what is refused)."""
    for index, pattern in enumerate(patterns):
        try:
            re.compile(pattern)
        except (re.error, RecursionError, OverflowError) as error:
            raise SettingError(
                f"{key}[{index}]", f"invalid regular expression {pattern!r}: {error}"
            ) from None
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


def parse_patch_size(key: str, value: Any, base_dir: Path | None) -> list[int]:
    label = "a list of 3 positive integers"
    expect(key, value, (list,), label)
    if len(value) != 3 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value):
        raise SettingError(key, f"expected {label}, got {value!r}")
    if max(value) > MAX_PATCH_SIDE:
        raise SettingError(key, f"each side must be <= {MAX_PATCH_SIDE} voxels, got {value!r}")
    return list(value)


def parse_spacing(key: str, value: Any, base_dir: Path | None) -> list[float] | str:
    expect(key, value, (list, str), 'a list of 3 positive numbers (mm), "auto" or "base"')
    if isinstance(value, str) and value not in ("auto", "base"):
        raise SettingError(
            key, f'expected a list of 3 positive numbers (mm), "auto" or "base", got {value!r}'
        )
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
        if not (
            isinstance(color, list)
            and len(color) == 3
            and all(is_finite_number(c) and 0.0 <= c <= 1.0 for c in color)
        ):
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
            raise SettingError(
                where, f'label values must be whole numbers >= 0 (as JSON keys: "1"), got {source!r}'
            )
        if isinstance(target, bool) or not isinstance(target, int) or target < 0:
            raise SettingError(
                where, f"class index must be a whole number >= 0, got {type(target).__name__} {target!r}"
            )
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
            raise SettingError(
                where, f"expected an object with id, image and label, got {type(item).__name__}"
            )
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


def parse_threads(key: str, value: Any, base_dir: Path | None) -> int | str:
    expect(key, value, (int, str), 'a positive integer or "auto"')
    if value != "auto" and not (isinstance(value, int) and value >= 1):
        raise SettingError(key, f'expected a positive integer or "auto", got {value!r}')
    if isinstance(value, int) and value > MAX_THREADS:
        raise SettingError(key, f"must be <= {MAX_THREADS}, got {value}")
    return value


def parse_largest_component(key: str, value: Any, base_dir: Path | None) -> bool | str:
    """true (every class), false (none) or "auto" (the classes the adapter recorded as one piece)."""
    if value != "auto" and not isinstance(value, bool):
        raise SettingError(key, f'expected true, false or "auto", got {type(value).__name__} {value!r}')
    return value


# segment's largest_component, declared alike wherever predictions are cleaned (segment, bench)
LARGEST_COMPONENT = {
    "kind": "custom",
    "parse": parse_largest_component,
    "schema": {"enum": ["auto", True, False]},
    "help": "keep only the largest connected component of each class: true (every class), false (none) or "
    '"auto": the classes that were one connected piece in every training label of the adapter',
}


# ------------------------------------------------------------------------------ shared JSON Schemas
PATH_SCHEMA = {"type": "string", "minLength": 1, "pattern": r"\S"}
CHANNELS_SCHEMA = {"anyOf": [PATH_SCHEMA, {"type": "array", "items": PATH_SCHEMA, "minItems": 1}]}
CASE_SCHEMA = {
    "type": "object",
    "description": "one labeled case: image (one path, or one path per channel), label, optional id and label_map",
    "properties": {
        "id": {"type": "string"},
        "image": CHANNELS_SCHEMA,
        "label": PATH_SCHEMA,
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
