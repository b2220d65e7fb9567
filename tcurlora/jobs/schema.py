"""The worker protocol's job schema, defined once: job files in ("tcurlora.job/1"); the events out
("tcurlora.events/1") are in tcurlora.jobs.event_schema, the fields' bounds and parsers in
tcurlora.jobs.fields, their command-line converters in tcurlora.jobs.cli_args.

A job file is a JSON object with `"command"` ("finetune", "segment" or "suggest") and optional
`"schema": "tcurlora.job/1"`; every other key is a field of `FinetuneJob`, `SegmentJob` or `SuggestJob`, declared
once with its kind, bounds, default, help text and command-line flag (tcurlora.settings): the CLI
flags, the Slicer FineTune settings and the JSON Schema (`tcurlora schema job`) are derived from
these declarations. Relative paths are resolved against the job file's folder. Every problem
(unknown key, wrong type, missing key, bad value) is a `ConfigError` naming the job file and the key.

This module is the jobs' front door (the job classes and `load_job`); the classes are declared in
finetune_job.py and segment_job.py, what they share in job_reading.py.
"""

from __future__ import annotations

from pathlib import Path

from tcurlora.errors import ConfigError
from tcurlora.jobs.finetune_job import FinetuneJob
from tcurlora.jobs.job_reading import MISSING, read_job_json
from tcurlora.jobs.segment_job import SegmentJob, SuggestJob

__all__ = ["JOB_CLASSES", "FinetuneJob", "SegmentJob", "SuggestJob", "load_job"]

JOB_CLASSES: dict[str, type[FinetuneJob] | type[SegmentJob] | type[SuggestJob]] = {
    "finetune": FinetuneJob,
    "segment": SegmentJob,
    "suggest": SuggestJob,
}


def load_job(path: str | Path) -> FinetuneJob | SegmentJob | SuggestJob:
    """Read a job file and return the job of its "command"."""
    path = Path(path)
    data = read_job_json(path)
    if not isinstance(data, dict):
        raise ConfigError(f"a job must be a JSON object, not {type(data).__name__}", path)
    command = data.get("command", MISSING)
    if command is MISSING:
        raise ConfigError('key \'command\': missing (required; "finetune", "segment" or "suggest")', path)
    if command not in JOB_CLASSES:
        raise ConfigError(f"key 'command': must be one of {', '.join(JOB_CLASSES)}; got {command!r}", path)
    return JOB_CLASSES[command].from_dict(data, path.parent, path)
