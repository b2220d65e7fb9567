"""Read JSON a user (or someone handing over a file) wrote: strictly, with errors that name the problem.

Python's json module takes the last of two equal keys, accepts NaN / Infinity, turns 1e999 into
inf and fails with RecursionError or a bare ValueError on deep nesting or huge integers; a job or
adapter config that says two things, or nothing sensible, is refused instead.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from tcurlora.errors import InputError

MAX_JSON_DEPTH = 64  # no tcurlora file nests deeper than a few levels
MAX_JSON_INT_DIGITS = 100  # seeds and RNG states have at most 39 digits; 100 is no value anyone meant


def is_finite_number(value: Any) -> bool:
    """Whether `value` is a JSON number Python can compute with: an int or a finite float, never a bool
    (which Python counts as an int)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class JSONProblem(ValueError):
    """The text is JSON that tcurlora refuses (or no JSON at all); the message says where and why."""


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    record: dict[str, Any] = {}
    for key, value in pairs:
        if key in record:
            raise JSONProblem(f"duplicate key {key!r} (which one is meant?)")
        record[key] = value
    return record


def _constant(name: str) -> float:
    raise JSONProblem(f"{name} is not a number JSON allows")


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise JSONProblem(f"the number {text[:40]} is too large")
    return value


def _int(text: str) -> int:
    digits = text.lstrip("-")
    if len(digits) > MAX_JSON_INT_DIGITS:
        raise JSONProblem(f"an integer with {len(digits)} digits (at most {MAX_JSON_INT_DIGITS})")
    return int(text)


def _check_depth(value: Any) -> None:
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise JSONProblem(f"nests deeper than {MAX_JSON_DEPTH} levels")
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))


def loads_strict(text: str) -> Any:
    """json.loads, refusing duplicate keys, NaN / Infinity, non-finite or huge numbers and deep nesting.

    Raises json.JSONDecodeError for text that is not JSON (its msg, lineno, colno), JSONProblem otherwise.
    """
    try:
        value = json.loads(
            text, object_pairs_hook=_pairs, parse_constant=_constant, parse_float=_float, parse_int=_int
        )
    except RecursionError as error:
        raise JSONProblem(f"nests deeper than {MAX_JSON_DEPTH} levels") from error
    except json.JSONDecodeError:
        raise
    except JSONProblem:
        raise
    except ValueError as error:  # e.g. Python's own limit on integer digits
        raise JSONProblem(str(error).split(";")[0]) from error
    _check_depth(value)
    return value


def read_json_object(path: str | Path, what: str) -> dict[str, Any]:
    """The JSON object in `path`; InputError("<what> ...", path) when missing, unreadable or not an object."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what} not found", path)
    try:
        data = loads_strict(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(f"corrupt {what} (not valid JSON: {error})", path) from error
    except JSONProblem as error:
        raise InputError(f"refused {what}: {error}", path) from error
    if not isinstance(data, dict):
        raise InputError(f"corrupt {what}: not a JSON object", path)
    return data
