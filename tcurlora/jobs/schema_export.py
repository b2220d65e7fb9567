"""JSON Schemas (draft 2020-12) of the worker protocol, derived from its one definition (schema.py and
event_schema.py): the job file (tcurlora.job/1) and one line of the event stream (tcurlora.events/1), so
that another client can write jobs and read events. `tcurlora schema job|events` prints them; docs/schemas/ holds copies.

What a JSON Schema cannot say is still checked by the worker and by `validate_event`: the number of
label colors equals the number of label names, a train_modules entry is a valid regular expression,
a case id is unique, a progress event's iteration is at most its total.
"""

from __future__ import annotations

from typing import Any

from tcurlora.filenames import EVENT_SCHEMA_NAME, JOB_SCHEMA
from tcurlora.jobs.event_schema import (
    COMMANDS,
    EVENT_OPTIONAL,
    EVENT_SCHEMA,
    LOG_LEVELS,
    PARAMETERS_KEYS,
)
from tcurlora.jobs.fields import CASE_SCHEMA, CHANNELS_SCHEMA
from tcurlora.jobs.schema import FinetuneJob, SegmentJob, SuggestJob
from tcurlora.settings import JSON_SCHEMA_DIALECT, object_schema

SCHEMA_BASE = "https://raw.githubusercontent.com/tcurlora/SlicerTCURLoRA/main/docs/schemas/"
SCHEMA_FILES = {"job": "job.schema.json", "events": "events.schema.json"}


def _absent_or_null(*keys: str) -> dict[str, Any]:
    return {key: {"type": "null"} for key in keys}


def _job_schema(cls: Any) -> dict[str, Any]:
    """One command's job object, with its "exactly one of" pairs as a oneOf."""
    schema = object_schema(
        cls,
        extra={
            "schema": {"const": JOB_SCHEMA, "default": JOB_SCHEMA, "description": "the job schema version"},
            "command": {"const": cls.command},
        },
        extra_required=("command",),
    )
    rules = []
    for first, second, problem in cls.ONE_OF:
        with_first = {
            "required": [first],
            "properties": {first: {"not": {"type": "null"}}, **_absent_or_null(second)},
        }
        with_second = {
            "required": [second],
            "properties": {second: {"not": {"type": "null"}}, **_absent_or_null(first)},
        }
        if first == "cases":  # num_cases and case_ids choose among the cases of 'data' only
            with_first["properties"].update(_absent_or_null(*cls.DATA_ONLY))
        rules.append({"oneOf": [with_first, with_second], "description": problem})
    for key, other, other_value, problem in getattr(cls, "REPLACES", ()):
        rules.append(
            {
                "if": {"required": [key], "properties": {key: {"not": {"type": "null"}}}},
                "then": {"properties": {other: {"const": other_value}}},
                "description": problem,
            }
        )
    if rules:  # an empty allOf is not valid JSON Schema
        schema["allOf"] = rules
    return schema


def _document(name: str, title: str, description: str, **body: Any) -> dict[str, Any]:
    """A top-level schema document: dialect, $id (the committed file docs/schemas/<name>), title, description."""
    return {
        "$schema": JSON_SCHEMA_DIALECT,
        "$id": SCHEMA_BASE + SCHEMA_FILES[name],
        "title": title,
        "description": description,
        **body,
    }


def job_json_schema() -> dict[str, Any]:
    """The JSON Schema of a job file: a finetune, segment or suggest job."""
    return _document(
        "job",
        JOB_SCHEMA,
        "A tcurlora worker job (`tcurlora finetune|segment|suggest --job job.json`). Relative paths are "
        "resolved against the job file's folder.",
        type="object",
        required=["command"],
        oneOf=[{"$ref": "#/$defs/finetune"}, {"$ref": "#/$defs/segment"}, {"$ref": "#/$defs/suggest"}],
        **{
            "$defs": {
                "finetune": _job_schema(FinetuneJob),
                "segment": _job_schema(SegmentJob),
                "suggest": _job_schema(SuggestJob),
                "case": CASE_SCHEMA,
                "channels": CHANNELS_SCHEMA,
            }
        },
    )


def _typed(kinds: tuple[str, ...]) -> dict[str, Any]:
    types = list(kinds)
    return {"type": types[0] if len(types) == 1 else types}


def _event_schema(kind: str) -> dict[str, Any]:
    spec = EVENT_SCHEMA[kind]
    properties: dict[str, Any] = {
        "event": {"const": kind},
        "time": {"type": "number", "description": "unix seconds"},
    }
    properties.update({key: _typed(kinds) for key, kinds in spec.items()})
    if kind == "started":
        properties["command"] = {"enum": list(COMMANDS)}
        properties["parameters"] = {
            "anyOf": [
                {
                    "type": "object",
                    "properties": {key: _typed(kinds) for key, kinds in PARAMETERS_KEYS.items()},
                    "required": list(PARAMETERS_KEYS),
                    "additionalProperties": False,
                },
                {"type": "null"},
            ]
        }
    elif kind == "progress":
        properties["iteration"] = {"type": "integer", "minimum": 0, "description": "at most total"}
        properties["total"] = {"type": "integer", "minimum": 0}
        properties["val_dice"] = {
            "type": ["object", "null"],
            "additionalProperties": {"type": ["number", "null"]},
            "description": "validation Dice per class name",
        }
    elif kind == "log":
        properties["level"] = {"enum": list(LOG_LEVELS)}
    optional = EVENT_OPTIONAL.get(kind, frozenset())
    return {
        "type": "object",
        "properties": properties,
        "required": ["event", "time", *(key for key in spec if key not in optional)],
        "additionalProperties": False,
    }


def events_json_schema() -> dict[str, Any]:
    """The JSON Schema of one line of the event stream."""
    return _document(
        "events",
        EVENT_SCHEMA_NAME,
        "One JSON-lines event of a tcurlora worker on stdout (non-finite numbers are written as "
        "null). Lines that are not JSON objects are stray library output, not events.",
        oneOf=[{"$ref": f"#/$defs/{kind}"} for kind in EVENT_SCHEMA],
        **{"$defs": {kind: _event_schema(kind) for kind in EVENT_SCHEMA}},
    )


SCHEMAS = {"job": job_json_schema, "events": events_json_schema}
