"""Where the worker's events go: JSON lines for programs, a progress bar or plain lines for people.

Handlers call the `EventSink` methods; every sink builds the same event dicts ("tcurlora.events/1",
see `tcurlora.jobs.event_schema.EVENT_SCHEMA`) and validates them, so a handler that emits a bad event
fails in every test, not only in the Slicer module.
"""

from __future__ import annotations

import json
import math
import threading
import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Protocol, TextIO, runtime_checkable

from tcurlora.jobs.event_schema import validate_event


@runtime_checkable
class EventSink(Protocol):
    """What a command handler reports to."""

    def started(self, command: str, device: str, total: int, parameters: dict | None = None) -> None: ...

    def progress(
        self,
        iteration: int,
        total: int,
        loss: float | None = None,
        val_dice: dict | None = None,
        eta_s: float | None = None,
        lr: float | None = None,
        message: str | None = None,
    ) -> None: ...

    def checkpoint(self, iteration: int, path: str) -> None: ...

    def log(self, level: str, message: str) -> None: ...

    def done(self, outputs: dict, metrics: dict) -> None: ...

    def error(self, kind: str, message: str, path: str | None, exit_code: int) -> None: ...


def json_safe(value: Any) -> Any:
    """`value` with non-finite floats as None, tuples as lists and paths as strings (strict JSON)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 1) == 0:
        return json_safe(value.item())  # numpy / torch scalars
    return value


class BaseSink(ABC):
    """Builds, cleans and validates each event, then hands it to `emit`."""

    @abstractmethod
    def emit(self, event: dict[str, Any]) -> None:
        """Deliver one validated event."""

    def _send(self, event_kind: str, /, **fields: Any) -> None:
        event = json_safe({"event": event_kind, "time": time.time(), **fields})
        validate_event(event)
        self.emit(event)

    def started(self, command: str, device: str, total: int, parameters: dict | None = None) -> None:
        fields: dict[str, Any] = {"command": command, "device": device, "total": int(total)}
        if parameters is not None:
            fields["parameters"] = parameters
        self._send("started", **fields)

    def progress(
        self,
        iteration: int,
        total: int,
        loss: float | None = None,
        val_dice: dict | None = None,
        eta_s: float | None = None,
        lr: float | None = None,
        message: str | None = None,
    ) -> None:
        self._send(
            "progress",
            iteration=int(iteration),
            total=int(total),
            loss=loss,
            val_dice=val_dice,
            eta_s=eta_s,
            lr=lr,
            message=message,
        )

    def checkpoint(self, iteration: int, path: str) -> None:
        self._send("checkpoint", iteration=int(iteration), path=str(path))

    def log(self, level: str, message: str) -> None:
        self._send("log", level=level, message=message)

    def done(self, outputs: dict, metrics: dict) -> None:
        self._send("done", outputs=outputs, metrics=metrics)

    def error(self, kind: str, message: str, path: str | None, exit_code: int) -> None:
        self._send(
            "error",
            kind=kind,
            message=message,
            path=None if path is None else str(path),
            exit_code=int(exit_code),
        )


class JsonLinesSink(BaseSink):
    """One strict-JSON object per line, flushed at once; safe to call from several threads."""

    def __init__(self, stream: TextIO):
        self.stream = stream
        self._lock = threading.Lock()

    def emit(self, event: dict[str, Any]) -> None:
        line = json.dumps(event, allow_nan=False, separators=(",", ":")) + "\n"
        with self._lock:
            self.stream.write(line)
            self.stream.flush()


class RecordingSink(BaseSink):
    """Keeps every event in `events` (tests, training_log.jsonl)."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def emit(self, event: dict[str, Any]) -> None:
        with self._lock:
            self.events.append(event)

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["event"] == kind]

    def to_jsonl(self) -> str:
        return "".join(json.dumps(e, allow_nan=False) + "\n" for e in self.events)


class TeeSink(BaseSink):
    """Sends each event to several sinks (e.g. stdout and a RecordingSink)."""

    def __init__(self, *sinks: BaseSink):
        self.sinks = sinks

    def emit(self, event: dict[str, Any]) -> None:
        for sink in self.sinks:
            sink.emit(dict(event))


def format_duration(seconds: float | None) -> str:
    """ "1h02m", "3m05s", "42s"; "?" when unknown."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "?"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def describe_progress(event: dict[str, Any], bar_width: int = 0) -> str:
    """One human line for a progress event: [bar] it/total, loss, Dice per class, lr, ETA, message."""
    iteration, total = event["iteration"], event["total"]
    parts = []
    if bar_width:
        filled = int(bar_width * iteration / total) if total else bar_width
        parts.append("[" + "#" * filled + "-" * (bar_width - filled) + "]")
    parts.append(f"{iteration}/{total}")
    if event.get("loss") is not None:
        parts.append(f"loss {event['loss']:.4f}")
    if event.get("val_dice"):
        scores = " ".join(
            f"{name} {'-' if v is None else f'{v:.3f}'}" for name, v in event["val_dice"].items()
        )
        parts.append(f"Dice {scores}")
    if event.get("lr") is not None:
        parts.append(f"lr {event['lr']:.2e}")
    if event.get("eta_s") is not None:
        parts.append(f"ETA {format_duration(event['eta_s'])}")
    if event.get("message"):
        parts.append(event["message"])
    return "  ".join(parts)


def _describe_output(value: Any) -> str:
    """A done event's output for people: paths joined; a list of records (a ranking) by its length."""
    if isinstance(value, list):
        if any(isinstance(item, dict) for item in value):
            return f"{len(value)} entries"
        return ", ".join(str(item) for item in value)
    return str(value)


def describe_event(event: dict[str, Any]) -> str:
    """One human line for any event except progress."""
    kind = event["event"]
    if kind == "started":
        text = f"{event['command']} on {event['device']}"
        params = event.get("parameters")
        if params:
            text += (
                f": {params['trainable']:,} of {params['total']:,} parameters trainable "
                f"({params['trainable_percent']:.3f}%), head {params['head']:,}"
            )
        return text
    if kind == "checkpoint":
        return f"checkpoint at iteration {event['iteration']}: {event['path']}"
    if kind == "log":
        return f"warning: {event['message']}" if event["level"] == "warning" else event["message"]
    if kind == "done":
        outputs = "; ".join(f"{k}: {_describe_output(v)}" for k, v in event["outputs"].items())
        return f"done: {outputs}"
    if kind == "error":
        where = f"{event['path']}: " if event.get("path") else ""
        return f"error ({event['kind']}): {where}{event['message']}"
    return describe_progress(event)


class PlainTextSink(BaseSink):
    """One plain line per event (logs, pipes that are not a terminal); errors to `error_stream` if given."""

    def __init__(self, stream: TextIO, error_stream: TextIO | None = None):
        self.stream = stream
        self.error_stream = error_stream
        self._lock = threading.Lock()

    def emit(self, event: dict[str, Any]) -> None:
        stream = self.error_stream if event["event"] == "error" and self.error_stream else self.stream
        with self._lock:
            stream.write(describe_event(event) + "\n")
            stream.flush()


class ProgressBarSink(BaseSink):
    """A terminal progress bar rewritten in place; other events print as plain lines above it."""

    def __init__(self, stream: TextIO, bar_width: int = 24, error_stream: TextIO | None = None):
        self.stream = stream
        self.error_stream = error_stream
        self.bar_width = bar_width
        self._lock = threading.Lock()
        self._bar_length = 0  # characters of the bar line currently on screen, 0 when none

    def emit(self, event: dict[str, Any]) -> None:
        with self._lock:
            if event["event"] == "progress":
                line = describe_progress(event, self.bar_width)
                self.stream.write("\r" + line.ljust(self._bar_length))
                self._bar_length = len(line)
            else:
                if self._bar_length:
                    self.stream.write("\n")
                    self._bar_length = 0
                    self.stream.flush()
                stream = self.error_stream if event["event"] == "error" and self.error_stream else self.stream
                stream.write(describe_event(event) + "\n")
                stream.flush()
            self.stream.flush()


def make_sink(events_flag: bool, stream: TextIO, error_stream: TextIO | None = None) -> BaseSink:
    """JSON lines when --events or --job is given (errors too: the protocol), a progress bar on a
    terminal, else plain lines; for people, error lines go to `error_stream` when given (stderr)."""
    if events_flag:
        return JsonLinesSink(stream)
    isatty = getattr(stream, "isatty", None)
    if callable(isatty) and isatty():
        return ProgressBarSink(stream, error_stream=error_stream)
    return PlainTextSink(stream, error_stream)


def eta_seconds(elapsed_s: float, done: int, remaining: int) -> float | None:
    """Seconds left at the mean time per step so far (`done` steps in `elapsed_s`); None before any."""
    return max(0.0, elapsed_s / done * remaining) if done > 0 else None
