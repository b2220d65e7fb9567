"""The worker protocol's event schema, defined once ("tcurlora.events/1"): what each JSON-lines event a
worker writes must hold, and the check that every sink (tcurlora.jobs.events) and every reader (the
Slicer modules, `--remote`) applies to it. tcurlora.jobs.schema_export derives its JSON Schema from here.
"""

from __future__ import annotations

import json
from typing import Any

from tcurlora.jsonio import is_finite_number

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
        return is_finite_number(value)
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
