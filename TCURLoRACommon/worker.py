"""The backend worker as a background process: start it, read its JSON-lines events, cancel its tree."""

from __future__ import annotations

import importlib.util
import os
import queue
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

TAIL_LINES = 40


def in_slicer() -> bool:
    """True inside the Slicer application (not with the slicer-core wheel alone)."""
    import slicer

    return hasattr(slicer, "app")


def backend_parent() -> str:
    """The folder that contains the `tcurlora` package, for the worker's PYTHONPATH."""
    spec = importlib.util.find_spec("tcurlora")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the tcurlora backend is not installed")
    return str(Path(next(iter(spec.submodule_search_locations))).parent)


def python_executable() -> str:
    """PythonSlicer inside Slicer (Slicer's own Python without the GUI), else this interpreter."""
    if in_slicer():
        found = shutil.which("PythonSlicer")
        if found:
            return found
    return sys.executable


def worker_environment(device: str) -> dict[str, str]:
    """Variables added to the worker's environment: backend on the path, unbuffered, CPU when asked."""
    path = [backend_parent()]
    if os.environ.get("PYTHONPATH"):
        path.append(os.environ["PYTHONPATH"])
    env = {"PYTHONPATH": os.pathsep.join(path), "PYTHONUNBUFFERED": "1"}
    if device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = "-1"
    return env


def parse_line(line: str) -> dict[str, Any]:
    """One output line as an event; anything that is not an event (stderr, warnings) becomes a log event."""
    text = line.strip()
    if text.startswith("{"):
        from tcurlora.jobs.schema import parse_event_line

        try:
            event = parse_event_line(text)
        except ValueError as error:  # the worker and this reader disagree: show it, do not crash the GUI
            return {
                "event": "log",
                "time": time.time(),
                "level": "warning",
                "message": f"invalid event ({error}): {text}",
            }
        if event is not None:
            return event
    return {"event": "log", "time": time.time(), "level": "info", "message": text}


class WorkerProcess:
    """`python -m tcurlora <command> --job <job>` in the background; `poll()` hands over its events.

    Output is read on a thread into a queue so the GUI thread never blocks; the GUI drains `poll()`
    from a timer. `partial_outputs` are deleted when the run is cancelled or fails.
    """

    def __init__(
        self,
        command: str,
        job_path: str | Path,
        device: str = "auto",
        partial_outputs: Sequence[str | Path] = (),
    ) -> None:
        self.args = [python_executable(), "-m", "tcurlora", command, "--job", str(job_path)]
        self.device = device
        self.partial_outputs = [Path(p) for p in partial_outputs]
        self.process: subprocess.Popen[str] | None = None
        self.cancelled = False
        self.tail: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._reader: threading.Thread | None = None
        self._finished = False
        self._error_seen = False

    def start(self) -> None:
        """Launch the process (launchConsoleProcess inside Slicer) and its reader thread."""
        env = worker_environment(self.device)
        if in_slicer():
            import slicer

            self.process = slicer.util.launchConsoleProcess(self.args, updateEnvironment=env)
        else:
            self.process = subprocess.Popen(
                self.args,
                env={**os.environ, **env},
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                encoding="utf-8",
                errors="replace",
            )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        for line in self.process.stdout:
            self._queue.put(line)
        self.process.wait()
        self._queue.put(None)

    @property
    def returncode(self) -> int | None:
        return None if self.process is None else self.process.returncode

    @property
    def finished(self) -> bool:
        """True once the process has exited and every line of its output has been handed over."""
        return self._finished

    def poll(self) -> list[dict[str, Any]]:
        """Events that arrived since the last call, without waiting."""
        events: list[dict[str, Any]] = []
        while True:
            try:
                line = self._queue.get_nowait()
            except queue.Empty:
                return events
            if line is None:
                self._finished = True
                events.extend(self._closing_events())
                return events
            if not line.strip():
                continue
            event = parse_line(line)
            if event["event"] == "log":
                self.tail = (self.tail + [event["message"]])[-TAIL_LINES:]
            self._error_seen |= event["event"] == "error"
            events.append(event)

    def _closing_events(self) -> list[dict[str, Any]]:
        """An error event for a failure the worker did not report itself (crash, kill); clean-up."""
        code = self.returncode
        if code == 0 and not self.cancelled:
            return []
        self.remove_partial_outputs()
        if self._error_seen:
            return []
        kind = "cancelled" if self.cancelled or code == 130 else "internal"
        message = (
            "cancelled by the user" if kind == "cancelled" else "\n".join(self.tail[-10:]) or "worker failed"
        )
        return [
            {
                "event": "error",
                "time": time.time(),
                "kind": kind,
                "message": message,
                "path": None,
                "exit_code": code,
            }
        ]

    def cancel(self, grace: float = 30.0) -> None:
        """Stop the whole process tree: SIGTERM first (the worker keeps its last checkpoint), then kill."""
        if self.process is None or self.process.poll() is not None:
            return
        self.cancelled = True
        import psutil

        try:
            children = psutil.Process(self.process.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            children = []
        for proc in children:
            _signal(proc, "terminate")
        self.process.terminate()
        # The root is our child: only Popen may reap it (a psutil wait would reap it first and
        # Popen would then report exit code 0 instead of the worker's own 130).
        try:
            self.process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=grace)
        _, alive = psutil.wait_procs(children, timeout=grace)
        for proc in alive:
            _signal(proc, "kill")
        psutil.wait_procs(alive, timeout=grace)
        self.remove_partial_outputs()

    def remove_partial_outputs(self) -> None:
        """Delete what a failed or cancelled run may have half-written."""
        for path in self.partial_outputs:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)


def _signal(proc, action: str) -> None:
    """terminate() or kill() a psutil process that may already be gone."""
    import psutil

    try:
        getattr(proc, action)()
    except psutil.NoSuchProcess:
        pass
