"""One worker run from the GUI's point of view: job written, process started, events folded into state."""

from __future__ import annotations

import shutil
import tempfile
import time
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tcurlora.fsutil import atomic_write_json
from tcurlora.jobs.events import format_duration
from TCURLoRACommon.worker import WorkerProcess

RUNNING, DONE, FAILED, CANCELLED = "running", "done", "failed", "cancelled"
EVENT_HISTORY = 2000  # events kept per run (a long training sends one per logged iteration)
LOG_MAX_LINES = 5000  # lines the panels' log views keep
SSH_ERROR_KINDS = ("connection", "connection_lost")  # tcurlora.remote: refused host, lost connection


def event_text(event: dict[str, Any]) -> str | None:
    """The log line an event shows in a panel, or None for events the progress bar alone shows."""
    kind = event.get("event")
    if kind == "log" or (kind == "progress" and event.get("message")):
        return str(event.get("message") or "")
    if kind == "started":
        params = event.get("parameters") or {}
        if not params:
            return f"Running on {event.get('device', '?')}"
        return (
            f"Training on {event.get('device', '?')}: {params.get('trainable', '?')} trainable parameters "
            f"({float(params.get('trainable_percent') or 0.0):.3f}%)"
        )
    if kind == "checkpoint":
        return f"Checkpoint at iteration {event.get('iteration')}"
    if kind == "error":
        return f"Error: {event.get('message')}"
    return None


def new_workdir(prefix: str) -> Path:
    """A fresh private folder for one run's exported inputs, job file and outputs."""
    return Path(tempfile.mkdtemp(prefix=f"tcurlora-{prefix}-"))


class WorkerRun:
    """Writes `job` to `workdir/job.json`, runs the worker on it and keeps what its events say.

    Subclasses react in `on_event` and `on_done`. `update()` is what the GUI timer calls.
    """

    def __init__(
        self,
        job: dict[str, Any],
        workdir: Path,
        partial_outputs: Sequence[Path] = (),
        extra_args: Sequence[str] = (),
    ) -> None:
        self.job = job
        self.workdir = workdir
        self.job_path = atomic_write_json(workdir / "job.json", job)
        self.worker = WorkerProcess(
            job["command"], self.job_path, job.get("device", "auto"), partial_outputs, extra_args=extra_args
        )
        self.state = RUNNING
        self.events: deque[dict[str, Any]] = deque(maxlen=EVENT_HISTORY)
        self.event_count = 0
        self.first_event: dict[str, Any] | None = None
        self.error: dict[str, Any] | None = None
        self.done: dict[str, Any] | None = None
        self.progress: dict[str, Any] | None = None

    def start(self) -> WorkerRun:
        self.worker.start()
        return self

    def update(self) -> list[dict[str, Any]]:
        """Take the new events, fold them into the state; returns them for the log and progress bar."""
        events = self.worker.poll()
        for event in events:
            self.events.append(event)
            self.event_count += 1
            self.first_event = self.first_event or event
            kind = event["event"]
            if kind == "progress":
                self.progress = event
            elif kind == "done":
                self.done = event
            elif kind == "error":
                self.error = event
            self.on_event(event)
        if self.worker.finished and self.state == RUNNING:
            self._finish()
        return events

    def _finish(self) -> None:
        if self.worker.cancelled or (self.error and self.error["kind"] == "cancelled"):
            self.state = CANCELLED
        elif self.worker.returncode == 0 and self.done is not None and self.error is None:
            try:
                self.on_done(self.done)
                self.state = DONE
            except Exception as error:  # noqa: BLE001 - shown to the user as a failed run
                self.error = {
                    "event": "error",
                    "time": time.time(),
                    "kind": "internal",
                    "message": str(error),
                    "path": None,
                    "exit_code": 1,
                }
                self.worker.remove_partial_outputs()
                self.state = FAILED
        else:
            if self.error is None:  # exit 0 without a "done" event: say so rather than fail silently
                tail = "\n".join(self.worker.tail[-5:])
                self.error = {
                    "event": "error",
                    "time": time.time(),
                    "kind": "internal",
                    "message": f"the worker ended without a result (exit code {self.worker.returncode})"
                    + (f":\n{tail}" if tail else ""),
                    "path": None,
                    "exit_code": self.worker.returncode if self.worker.returncode is not None else 1,
                }
            self.state = FAILED

    def on_event(self, event: dict[str, Any]) -> None:
        """Hook: one event arrived."""

    def on_done(self, event: dict[str, Any]) -> None:
        """Hook: the worker finished successfully; raise to turn the run into a failure."""

    @property
    def finished(self) -> bool:
        return self.state != RUNNING

    def fraction(self) -> float:
        """Progress 0..1 from the last progress event."""
        if not self.progress or not self.progress.get("total"):
            return 1.0 if self.state == DONE else 0.0
        return min(1.0, self.progress["iteration"] / self.progress["total"])

    def progress_bar(self) -> tuple[int, int]:
        """(maximum, value) for a QProgressBar: percent done, or (0, 0), Qt's busy indicator, while the
        worker has started but not yet reported progress (loading the model, a long first volume)."""
        if not self.finished and self.progress is None and self.first_event is not None:
            return 0, 0
        return 100, int(round(100 * self.fraction()))

    def eta_text(self) -> str:
        """'ETA 1m20s' (jobs.events.format_duration) from the last progress event, or ''."""
        eta = (self.progress or {}).get("eta_s")
        if eta is None or self.finished:
            return ""
        return f"ETA {format_duration(eta)}"

    def cancel(self) -> None:
        """Ask the worker's process tree to stop, without waiting; the state becomes 'cancelled' once it
        has exited (the timer's `update()` sees it; the tree is killed if it outlives the grace time)."""
        self.worker.cancel()
        self.update()

    def shutdown(self) -> None:
        """Stop the worker within a couple of seconds (Slicer is closing) and forget the run's files."""
        self.worker.shutdown()
        self.remove_workdir()

    def wait(self, timeout: float) -> WorkerRun:
        """Block until finished (tests, batch jobs without a GUI)."""
        deadline = time.monotonic() + timeout
        while not self.finished:
            self.update()
            if self.finished:
                break
            if time.monotonic() > deadline:
                self.worker.shutdown()
                raise TimeoutError(f"worker still running after {timeout:.0f} s ({self.job_path})")
            time.sleep(0.1)
        return self

    def cpu_fallback_reason(self) -> str | None:
        """Why retrying on the CPU may succeed (GPU out of memory, CUDA missing), or None (also for an SSH
        failure: a host named gpu-server is no GPU problem)."""
        if self.state != FAILED or self.error is None or self.job.get("device") == "cpu":
            return None
        if self.error["kind"] in SSH_ERROR_KINDS:
            return None
        message = self.error.get("message", "")
        if self.error["kind"] == "out_of_memory":
            return f"The GPU ran out of memory ({message}). Run again on the CPU (slower)?"
        if "cuda" in message.lower() or "gpu" in message.lower():
            return f"The GPU could not be used ({message}). Run again on the CPU (slower)?"
        return None

    def error_text(self) -> str:
        """The error for a message box: what happened and which file, in one or two lines."""
        if self.error is None:
            return ""
        where = f"\nFile: {self.error['path']}" if self.error.get("path") else ""
        return f"{self.error['message']}{where}"

    def remove_workdir(self) -> None:
        shutil.rmtree(self.workdir, ignore_errors=True)
