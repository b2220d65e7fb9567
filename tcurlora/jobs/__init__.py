"""The worker protocol: job files in, JSON-lines events out, exit codes, cancellation.

Light on purpose (no torch import): the Slicer modules import it to write jobs and parse events.
"""

from tcurlora.jobs.cancel import CancelToken, handle_signals
from tcurlora.jobs.events import (
    BaseSink,
    EventSink,
    JsonLinesSink,
    PlainTextSink,
    ProgressBarSink,
    RecordingSink,
    TeeSink,
    make_sink,
)
from tcurlora.jobs.runner import report_error, run_cli, run_command
from tcurlora.jobs.schema import (
    EVENT_SCHEMA,
    FinetuneJob,
    JobCase,
    SegmentJob,
    load_job,
    parse_event_line,
    validate_event,
)

__all__ = [
    "EVENT_SCHEMA",
    "BaseSink",
    "CancelToken",
    "EventSink",
    "FinetuneJob",
    "JobCase",
    "JsonLinesSink",
    "PlainTextSink",
    "ProgressBarSink",
    "RecordingSink",
    "SegmentJob",
    "TeeSink",
    "handle_signals",
    "load_job",
    "make_sink",
    "parse_event_line",
    "report_error",
    "run_cli",
    "run_command",
    "validate_event",
]
