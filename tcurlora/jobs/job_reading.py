"""What every job class shares: the header check ("command", "schema"), reading the declared fields,
exactly-one pairs, the job file's strict JSON, and the setting declarations several jobs repeat."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tcurlora.data.cases import Case
from tcurlora.errors import ConfigError, InputError
from tcurlora.filenames import JOB_SCHEMA
from tcurlora.jobs.cli_args import threads_arg
from tcurlora.jobs.fields import MAX_THREADS, parse_threads
from tcurlora.jsonio import JSONProblem, loads_strict
from tcurlora.settings import SettingError, check_keys, expect, read_fields

MISSING = object()
RATE = {"kind": "number", "minimum": 0.0, "exclusive_minimum": True}
DEVICE_HELP = "auto, cpu, cuda or cuda:N"
THREADS = {
    "kind": "custom",
    "parse": parse_threads,
    "flag": "--threads",
    "cli": {"type": threads_arg, "metavar": "N"},
    "schema": {"anyOf": [{"const": "auto"}, {"type": "integer", "minimum": 1, "maximum": MAX_THREADS}]},
    "help": "torch CPU threads, or 'auto' (default): on the CPU the cores not kept busy by other work "
    "(1-minute load average), at least 1; CUDA runs keep torch's default",
}
BASE_HELP = "built-in base model name, model folder or MONAI bundle folder"


# One labeled training case of a job is the data layer's Case (id, images, label, label_map).
JobCase = Case


def fail(error: SettingError, source: Path | None):
    raise ConfigError(str(error), source) from None


def check_header(data: dict, command: str) -> None:
    value = data.get("command", MISSING)
    if value is MISSING:
        raise SettingError("command", "missing (required)")
    expect("command", value, (str,), "a string")
    if value != command:
        raise SettingError("command", f"expected {command!r}, got {value!r}")
    schema = expect("schema", data.get("schema", JOB_SCHEMA), (str,), "a string")
    if schema != JOB_SCHEMA:
        raise SettingError("schema", f"unsupported job schema {schema!r}; this version reads {JOB_SCHEMA!r}")


def job_keys(cls: Any) -> set[str]:
    return {f for f in cls.__dataclass_fields__ if f != "job_file"} | {"command", "schema"}


def read_job_values(cls, data: dict[str, Any], base_dir: str | Path, command: str) -> dict[str, Any]:
    """The declared fields of a `command` job read from `data` (keys, header, types, exactly-one pairs)."""
    check_keys(data, job_keys(cls))
    check_header(data, command)
    values = read_fields(cls, data, Path(base_dir).resolve())
    exactly_one(cls, values)
    return values


def exactly_one(cls: Any, values: dict[str, Any]) -> None:
    for first, second, problem in cls.ONE_OF:
        if (values[first] is None) == (values[second] is None):
            raise SettingError(first if values[first] is None else second, problem)


def read_job_json(path: Path) -> Any:
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
