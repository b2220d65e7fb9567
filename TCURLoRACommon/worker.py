"""The backend worker as a background process: start it, read its JSON-lines events, cancel its tree."""

from __future__ import annotations

import importlib.util
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

TAIL_LINES = 40
CANCEL_GRACE_S = 15.0  # after SIGTERM the worker exits at its next step (last checkpoint kept)
EXIT_GRACE_S = 2.0  # what closing Slicer waits for the worker before killing it
EXIT_CANCELLED = 130  # tcurlora.errors.EXIT_CANCELLED: the worker stopped on SIGTERM
# What a cancelled run may exit with: the worker's own 130, or, when PythonSlicer (CTKAppLauncher) is the
# process we started, the launcher's: killed by SIGTERM (-15) on POSIX, 1 on Windows.
CANCEL_EXIT_CODES = frozenset({EXIT_CANCELLED, 1 if os.name == "nt" else -signal.SIGTERM})


def in_slicer() -> bool:
    """True inside the Slicer application (not with the slicer-core wheel alone).

    Slicer imports `slicer` before any module runs, so an import here would only load the slicer-core wheel
    (whose package path also picks up the test folder) for nothing.
    """
    return hasattr(sys.modules.get("slicer"), "app")


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
        from tcurlora.jobs.event_schema import parse_event_line

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
    from a timer. `partial_outputs` are deleted when the run is cancelled or fails. `extra_args` follow
    `--job` (e.g. `--remote user@host`: TCURLoRACommon.remote). `args` replaces the command line (tests).
    """

    def __init__(
        self,
        command: str,
        job_path: str | Path,
        device: str = "auto",
        partial_outputs: Sequence[str | Path] = (),
        args: Sequence[str] | None = None,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.args = (
            list(args)
            if args
            else [python_executable(), "-m", "tcurlora", command, "--job", str(job_path), *extra_args]
        )
        self.device = device
        self.partial_outputs = [Path(p) for p in partial_outputs]
        self.process: subprocess.Popen | None = None
        self.cancelled = False
        self.tail: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._reader: threading.Thread | None = None
        self._finished = False
        self._error_seen = False
        self._tree: list[Any] = []
        self._kill_at: float | None = None

    def start(self) -> None:
        """Launch the process (launchConsoleProcess inside Slicer) and its reader thread."""
        self.process = launch(self.args, worker_environment(self.device))
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        """Lines into the queue, decoded here (UTF-8, bad bytes replaced); always ends with None."""
        assert self.process is not None and self.process.stdout is not None
        stream = getattr(self.process.stdout, "buffer", self.process.stdout)
        try:
            for line in stream:
                self._queue.put(line.decode("utf-8", "replace") if isinstance(line, bytes) else line)
        except Exception as error:  # noqa: BLE001 - a reader that dies silently leaves a run that never ends
            self._queue.put(f"reading the worker's output failed: {type(error).__name__}: {error}\n")
            _drain(stream)
        finally:
            try:
                self.process.wait()
            finally:
                self._queue.put(None)

    @property
    def returncode(self) -> int | None:
        return None if self.process is None else self.process.returncode

    @property
    def finished(self) -> bool:
        """True once the process has exited and every line of its output has been handed over."""
        return self._finished

    def poll(self) -> list[dict[str, Any]]:
        """Events that arrived since the last call, without waiting; kills a cancelled tree past its grace."""
        self._escalate()
        events: list[dict[str, Any]] = []
        while True:
            try:
                line = self._queue.get_nowait()
            except queue.Empty:
                return events
            if line is None:
                self._finished = True
                self._kill(self._tree)  # children that outlived the worker
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
        kind = "cancelled" if self.cancelled or code == EXIT_CANCELLED else "internal"
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

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def cancel(self, grace: float = CANCEL_GRACE_S) -> None:
        """Ask the whole process tree to stop (SIGTERM: the worker keeps its last checkpoint) and return at once.

        `poll()` kills whatever still runs `grace` seconds later, so the GUI thread never waits.
        """
        if not self.running:
            return
        self.cancelled = True
        self._tree = _children(self.process.pid)
        for proc in self._tree:
            _signal(proc, "terminate")
        _signal(self.process, "terminate")
        self._kill_at = time.monotonic() + grace

    def _escalate(self) -> None:
        if self._kill_at is not None and time.monotonic() >= self._kill_at:
            self._kill_at = None
            self._kill([*self._tree, *_children(self.process.pid)])
            if self.running:
                _signal(self.process, "kill")

    def shutdown(self, timeout: float = EXIT_GRACE_S) -> None:
        """Stop the tree within about `timeout` seconds (Slicer is closing): terminate, wait briefly, kill."""
        if not self.running:
            return
        self.cancel(grace=timeout)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
        self._kill_at = time.monotonic()
        self._escalate()
        try:
            self.process.wait(timeout=1.0)  # reap it; a kill takes effect at once
        except subprocess.TimeoutExpired:
            pass
        self.remove_partial_outputs()

    @staticmethod
    def _kill(procs: Sequence[Any]) -> None:
        for proc in procs:
            _signal(proc, "kill")

    def remove_partial_outputs(self) -> None:
        """Delete what a failed or cancelled run may have half-written."""
        for path in self.partial_outputs:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                try:
                    path.unlink()
                except FileNotFoundError:
                    pass


def launch(args: Sequence[str], env: dict[str, str]) -> subprocess.Popen:
    """Start a console process: slicer.util.launchConsoleProcess in Slicer, else a Popen made the same way
    (text mode with the locale's encoding, stderr into stdout); the reader decodes the raw bytes itself."""
    if in_slicer():
        import slicer

        return slicer.util.launchConsoleProcess(list(args), updateEnvironment=env)
    return subprocess.Popen(
        list(args),
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        universal_newlines=True,
    )


def _drain(stream: Any) -> None:
    """Read and drop the rest of a pipe, so the worker never blocks on a full one."""
    try:
        while stream.read(65536):
            pass
    except Exception:  # noqa: BLE001 - nothing left to save
        pass


def _children(pid: int) -> list[Any]:
    """The process's descendants (psutil), or [] when psutil is missing or the process is gone."""
    try:
        import psutil
    except ImportError:
        return []
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def _signal(proc: Any, action: str) -> None:
    """terminate() or kill() a process (psutil or Popen) that may already be gone."""
    try:
        getattr(proc, action)()
    except Exception:  # noqa: BLE001 - psutil.NoSuchProcess, ProcessLookupError, access denied: gone or not ours
        pass
