"""One job run on the remote host: staged, started under a shell that records its PID, its events passed on
here, its outputs brought back; on cancel or a lost connection the remote worker is stopped and its last
checkpoint brought back."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import threading
import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

from tcurlora.errors import CancelledError, TCURLoRAError
from tcurlora.filenames import CHECKPOINT_FILE, CHECKPOINT_SUFFIX, checkpoint_dir
from tcurlora.jobs.cancel import CancelToken
from tcurlora.jobs.event_schema import validate_event
from tcurlora.jobs.events import EventSink
from tcurlora.jobs.schema import FinetuneJob, SegmentJob
from tcurlora.remote.host import ConnectionLostError, RemoteError, RemoteHost
from tcurlora.remote.ssh import SshConnection, connected, q
from tcurlora.remote.transfer import (
    download,
    rewrite_paths,
    run_id,
    stage_finetune,
    stage_segment,
    upload_tree,
)

CANCEL_WAIT_S = 10.0  # how long the remote worker gets to stop after SIGTERM before SIGKILL


class RemoteRun(ABC):
    """One job run on `host`; `run(sink, token)` returns the handler result or raises a TCURLoRAError.

    Subclasses say how the job is staged (`remote_job`), which remote paths stand for which local ones
    (`path_mapping`), what comes back after `done` (`collect`) and what a stopped run keeps (`keep`).
    """

    command = ""

    def __init__(self, job: Any, host: RemoteHost, key: Path) -> None:
        self.job = job
        self.host = host
        self.remote_dir = f"{host.folder}/{run_id(key, host)}"
        self.remote_pid: int | None = None
        self.connection: SshConnection | None = None

    # ---- per command
    def check_outputs(self) -> None:  # noqa: B027 - optional hook
        """Refuse before connecting when an output exists and may not be replaced."""

    @abstractmethod
    def remote_job(self, stage: Path) -> dict[str, Any]:
        """The job dict the remote worker runs, its inputs copied into `stage` (per command)."""

    def path_mapping(self, absolute: str) -> list[tuple[str, str]]:
        return []

    def collect(self, connection: SshConnection) -> None:  # noqa: B027 - optional hook
        """Bring the outputs back after `done`."""

    def keep(self, connection: SshConnection) -> bool:
        """Bring back what a stopped run keeps (a checkpoint); True when something came back."""
        return False

    # ---- shared
    def run(self, sink: EventSink, token: CancelToken) -> dict:
        self.check_outputs()
        with connected(self.host) as connection:
            self.connection = connection
            absolute = self._stage(connection)
            sink.log("info", f"staged the job on {self.host} in {absolute}")
            return self._execute(connection, absolute, sink, token)

    def _stage(self, connection: SshConnection) -> str:
        with tempfile.TemporaryDirectory(prefix="tcurlora-stage-") as temp:
            stage = Path(temp)
            (stage / "job.json").write_text(json.dumps(self.remote_job(stage), indent=1), encoding="utf-8")
            connection.run(f"mkdir -p {q(self.remote_dir)} && rm -rf {q(self.remote_dir)}/inputs")
            upload_tree(connection, stage, self.remote_dir)
        return connection.run(f"cd {q(self.remote_dir)} && pwd").strip()

    def _execute(self, connection: SshConnection, absolute: str, sink: EventSink, token: CancelToken) -> dict:
        mapping = self.path_mapping(absolute)
        script = (
            f"cd {q(self.remote_dir)} && echo $$ > pid && "
            f"exec {self.host.command} {self.command} --job job.json --events"
        )
        process = subprocess.Popen(
            connection.command(script),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        stderr_tail: list[str] = []
        pump = threading.Thread(target=_forward_stderr, args=(process.stderr, stderr_tail), daemon=True)
        pump.start()
        watcher = threading.Thread(target=self._watch_cancel, args=(token, process), daemon=True)
        watcher.start()
        final: dict[str, Any] | None = None
        assert process.stdout is not None
        for raw in process.stdout:
            event = _parse(raw)
            if event is None:
                continue
            if self.remote_pid is None:
                self.remote_pid = self._read_pid(connection)
            event = rewrite_paths(event, mapping)
            if event["event"] in ("done", "error"):
                final = event
                continue
            sink.emit(event)  # type: ignore[attr-defined] - every sink here is a BaseSink
        code = process.wait()
        pump.join(timeout=5)
        if final is not None and final["event"] == "done" and code == 0:
            try:
                self.collect(connection)
            except BaseException:
                self._cleanup(
                    connection, quietly=True
                )  # the outputs could not come back: nothing stays there
                raise
            self._cleanup(connection)
            return {"outputs": final["outputs"], "metrics": final["metrics"]}
        if token.cancelled or code < 0:
            self._stop_remote(connection)
            kept = self.keep(connection)
            self._cleanup(connection)
            raise CancelledError(
                f"{token.reason or 'cancelled'}: the remote run on {self.host} was stopped"
                + (f"; {self.kept_text()}" if kept else "")
            )
        if final is not None:  # the remote worker reported its own error
            self.keep(connection)
            self._cleanup(connection)
            raise RemoteWorkerError(final)
        return self._connection_lost(code, stderr_tail)

    def kept_text(self) -> str:
        return "its last checkpoint was brought back: resume the run to continue"

    def _connection_lost(self, code: int, stderr_tail: list[str]) -> dict:
        """The session ended without a final event: reconnect once to stop the remote run and keep its checkpoint."""
        reason = stderr_tail[-1] if stderr_tail else f"ssh exit {code}"
        where = f"{self.host}:{self.remote_dir}"
        try:
            with connected(self.host) as again:
                self._stop_remote(again)
                kept = self.keep(again)
                self._cleanup(again)
        except RemoteError as error:
            raise ConnectionLostError(
                f"lost the SSH connection to {self.host} during the run ({reason}); reconnecting failed "
                f"({error.problem}): the remote run folder {where} is kept with what it wrote - "
                "run the same job again (resume) to continue from it"
            ) from None
        raise ConnectionLostError(
            f"lost the SSH connection to {self.host} during the run ({reason}); the remote run was stopped"
            + (f" and {self.kept_text()}" if kept else "")
        )

    def _read_pid(self, connection: SshConnection) -> int | None:
        try:
            return int(connection.run(f"cat {q(self.remote_dir)}/pid").strip())
        except (RemoteError, ValueError):
            return None

    def _watch_cancel(self, token: CancelToken, process: subprocess.Popen) -> None:
        """On cancel, SIGTERM the remote worker over a second channel (it stops at its next step)."""
        while process.poll() is None:
            if token.cancelled:
                if self.connection is not None:
                    try:
                        self.connection.run(_kill_script(self.remote_dir, "TERM"), timeout=30)
                    except RemoteError:
                        pass
                return
            time.sleep(0.1)

    def _stop_remote(self, connection: SshConnection) -> None:
        """SIGTERM the remote worker if it still runs, wait for it, then SIGKILL."""
        ticks = int(CANCEL_WAIT_S / 0.1)
        connection.run(
            f"{_kill_script(self.remote_dir, 'TERM')}; p=$(cat {q(self.remote_dir)}/pid 2>/dev/null) || exit 0; "
            f"i=0; while kill -0 $p 2>/dev/null && [ $i -lt {ticks} ]; do sleep 0.1; i=$((i+1)); done; "
            "kill -KILL $p 2>/dev/null; exit 0",
            timeout=CANCEL_WAIT_S + 30,
        )

    def _cleanup(self, connection: SshConnection, quietly: bool = False) -> None:
        """Remove the remote run folder; `quietly` while another error is on its way (that one is reported)."""
        try:
            connection.run(f"rm -rf {q(self.remote_dir)}")
        except RemoteError:
            if not quietly:
                raise


class RemoteFinetune(RemoteRun):
    """`tcurlora finetune --remote`: the adapter comes back; a stopped run brings its checkpoint back, and a
    resumed one takes the local checkpoint along (or finds the one a lost connection left on the host)."""

    command = "finetune"

    def __init__(self, job: FinetuneJob, host: RemoteHost) -> None:
        super().__init__(job, host, job.output)
        self.output = job.output
        self.local_checkpoint = checkpoint_dir(self.output)

    def check_outputs(self) -> None:  # noqa: B027 - optional hook
        """As a local run: free, or with --force an adapter folder tcurlora wrote (it is replaced on return)."""
        from tcurlora.outputs import check_adapter_output

        check_adapter_output(self.output, self.job.force)

    def remote_job(self, stage: Path) -> dict[str, Any]:
        data = stage_finetune(self.job, stage)
        if self.job.resume and (self.local_checkpoint / CHECKPOINT_FILE).is_file():
            (stage / "out").mkdir()
            (stage / "out" / self.local_checkpoint.name).symlink_to(self.local_checkpoint.resolve())
        return data

    def path_mapping(self, absolute: str) -> list[tuple[str, str]]:
        remote_out = f"{absolute}/out/{self.output.name}"
        return [(remote_out + CHECKPOINT_SUFFIX, str(self.local_checkpoint)), (remote_out, str(self.output))]

    def collect(self, connection: SshConnection) -> None:  # noqa: B027 - optional hook
        self.check_outputs()  # what was put there during the run is not replaced either
        download(connection, f"{self.remote_dir}/out", self.output.name, self.output.parent)

    def keep(self, connection: SshConnection) -> bool:
        return download(connection, f"{self.remote_dir}/out", self.local_checkpoint.name, self.output.parent)

    def kept_text(self) -> str:
        return f"its last checkpoint was brought back to {self.local_checkpoint}: resume the run to continue"


class RemoteSegment(RemoteRun):
    """`tcurlora segment --remote`: each segmentation comes back to the path a local run would write."""

    command = "segment"

    def __init__(self, job: SegmentJob, host: RemoteHost) -> None:
        self.outputs = job.output_paths()
        super().__init__(job, host, self.outputs[0])

    def check_outputs(self) -> None:  # noqa: B027 - optional hook
        """As a local run: free, or with --force a segmentation tcurlora wrote (it is replaced on return)."""
        from tcurlora.data.io import check_labelmap_output

        for path in self.outputs:
            check_labelmap_output(path, self.job.force)

    def remote_job(self, stage: Path) -> dict[str, Any]:
        return stage_segment(self.job, stage)

    def path_mapping(self, absolute: str) -> list[tuple[str, str]]:
        return [(f"{absolute}/out/{i}/{p.name}", str(p)) for i, p in enumerate(self.outputs)]

    def collect(self, connection: SshConnection) -> None:  # noqa: B027 - optional hook
        self.check_outputs()  # what was put there during the run is not replaced either
        for index, path in enumerate(self.outputs):
            if not download(connection, f"{self.remote_dir}/out/{index}", path.name, path.parent):
                raise RemoteError(f"{self.host}: the remote run reported success but wrote no {path.name}")


def _kill_script(remote_dir: str, signal_name: str) -> str:
    return f"p=$(cat {q(remote_dir)}/pid 2>/dev/null) && kill -{signal_name} $p 2>/dev/null; true"


class RemoteWorkerError(TCURLoRAError):
    """The remote worker's own error event, passed on with its kind, path and exit code."""

    def __init__(self, event: dict[str, Any]) -> None:
        super().__init__(str(event.get("message") or "the remote worker failed"), event.get("path"))
        self.kind = str(event.get("kind") or "internal")
        self.exit_code = int(event.get("exit_code") or 1)


def _parse(raw: bytes) -> dict[str, Any] | None:
    text = raw.decode("utf-8", "replace").strip()
    if not text.startswith("{"):
        if text:
            sys.stderr.write(text + "\n")
        return None
    try:
        event = json.loads(text)
        validate_event(event)
    except ValueError as error:  # not an event of this protocol version: show it, do not crash the run
        sys.stderr.write(f"remote output that is not an event ({error}): {text}\n")
        return None
    return event


def _forward_stderr(stream: Any, tail: list[str]) -> None:
    """Remote stderr (and ssh's own messages) to ours, keeping the last lines for the error message."""
    for raw in stream:
        line = raw.decode("utf-8", "replace").rstrip("\n")
        tail[:] = (tail + [line])[-20:]
        sys.stderr.write(line + "\n")
        sys.stderr.flush()
