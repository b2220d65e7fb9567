"""Run a finetune or segment job on another machine over SSH, as if it ran here.

One OpenSSH connection (ControlMaster, multiplexed) carries everything: the job's inputs are staged
into a per-run folder on the host (tar over the connection), the paths in the job are rewritten to that
folder, the remote `tcurlora finetune|segment --job job.json --events` runs under a shell that records its PID,
its events are re-emitted here with the remote paths turned into local ones, the outputs come back
and the remote folder is removed. Cancel (SIGTERM/SIGINT here) sends SIGTERM to the remote PID over a
second channel, brings the last checkpoint back and cleans up, so the run can be resumed here.

Security: host keys are verified by ssh as configured (known_hosts; never turned off here) and
`BatchMode=yes` means ssh never asks for or stores a password: key-based login only.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tcurlora.errors import EXIT_USAGE, CancelledError, TCURLoRAError
from tcurlora.filenames import CHECKPOINT_FILE, CHECKPOINT_SUFFIX, checkpoint_dir
from tcurlora.jobs.cancel import CancelToken
from tcurlora.jobs.events import EventSink
from tcurlora.jobs.schema import FinetuneJob, SegmentJob, validate_event

EXIT_CONNECTION = 5  # the SSH connection could not be made or was lost
DEFAULT_REMOTE_FOLDER = ".cache/tcurlora/remote-runs"  # relative to the remote home
CANCEL_WAIT_S = 10.0  # how long the remote worker gets to stop after SIGTERM before SIGKILL
_TARGET = re.compile(r"^(?:(?P<user>[^@\s:/]+)@)?(?P<host>[A-Za-z0-9._-]+)(?::(?P<port>\d{1,5}))?$")
# A host or user beginning with "-" would be read by ssh as an option (`-oProxyCommand=...` runs a command
# here): refused, and `--` ends ssh's options before the destination anyway.
_OPTION_LIKE = re.compile(r"^-|@-")


class RemoteError(TCURLoRAError):
    """The SSH connection could not be made, or the host refused (host key, login)."""

    kind = "connection"
    exit_code = EXIT_CONNECTION


class RemoteTargetError(RemoteError):
    """A `--remote` host, port or folder that cannot be meant (bad usage: nothing was connected to)."""

    kind = "config_error"
    exit_code = EXIT_USAGE


class ConnectionLostError(RemoteError):
    """The SSH connection ended while the remote run was going."""

    kind = "connection_lost"


@dataclass
class RemoteHost:
    """Where to run: `user@host[:port]`, the remote tcurlora command, its run folder, an ssh config."""

    host: str
    user: str | None = None
    port: int | None = None
    command: str = "tcurlora"
    folder: str = DEFAULT_REMOTE_FOLDER
    ssh_config: Path | None = None

    @classmethod
    def parse(
        cls,
        target: str,
        command: str | None = None,
        folder: str | None = None,
        ssh_config: str | Path | None = None,
    ) -> RemoteHost:
        """`user@host`, `host:2222`, `user@host:2222`; a clear error for anything else."""
        if _OPTION_LIKE.search(target.strip()):
            raise RemoteTargetError(
                f"remote host {target!r}: a host or user may not begin with '-' (ssh would read it as an option)"
            )
        match = _TARGET.match(target.strip())
        if not match:
            raise RemoteTargetError(f"remote host {target!r}: expected user@host or user@host:port")
        port = int(match["port"]) if match["port"] else None
        if port is not None and not 0 < port < 65536:
            raise RemoteTargetError(f"remote host {target!r}: port {port} is not in 1..65535")
        if command is not None and not command.strip():
            raise RemoteTargetError("the remote tcurlora command is empty")
        if folder is not None and folder.strip().startswith("-"):
            raise RemoteTargetError(
                f"remote folder {folder!r} may not begin with '-' (remote commands would read it as an option); "
                f"write ./{folder.strip()} for a folder of that name"
            )
        return cls(
            host=match["host"],
            user=match["user"],
            port=port,
            command=(command or "tcurlora").strip(),
            folder=(folder or DEFAULT_REMOTE_FOLDER).rstrip("/") or "/",
            ssh_config=Path(ssh_config).expanduser() if ssh_config else None,
        )

    @property
    def destination(self) -> str:
        return f"{self.user}@{self.host}" if self.user else self.host

    def __str__(self) -> str:
        return self.destination + (f":{self.port}" if self.port else "")


def _explain_ssh_failure(host: RemoteHost, stderr: str) -> str:
    """One clear sentence for ssh's own error output."""
    text = stderr.strip()
    last = text.splitlines()[-1] if text else "no message"
    if "REMOTE HOST IDENTIFICATION HAS CHANGED" in text or "Host key verification failed" in text:
        return (
            f"the host key of {host} is unknown or does not match known_hosts; refusing to connect "
            f"(check the key with the server's administrator, then add it with `ssh {host.destination}` once)"
        )
    if "Permission denied" in text:
        return (
            f"{host} refused the login: set up key-based SSH login (ssh-copy-id); passwords are never "
            f"asked for or stored ({last})"
        )
    return f"cannot connect to {host}: {last}"


class SshConnection:
    """A multiplexed OpenSSH connection (ControlMaster) and the commands run over it."""

    def __init__(self, host: RemoteHost) -> None:
        self.host = host
        # Short: a control socket path must fit in a Unix socket address (about 100 bytes).
        self._dir = Path(tempfile.mkdtemp(prefix="tcs-", dir="/tmp" if Path("/tmp").is_dir() else None))
        self.control_path = self._dir / "c"

    def ssh_args(self, *extra: str) -> list[str]:
        """`ssh` with the options every call shares; host-key checking stays as ssh is configured."""
        args = ["ssh"]
        if self.host.ssh_config is not None:
            args += ["-F", str(self.host.ssh_config)]
        if self.host.port:
            args += ["-p", str(self.host.port)]
        args += [
            "-o", "BatchMode=yes",
            "-o", "ConnectTimeout=15",
            "-o", "ServerAliveInterval=5",
            "-o", "ServerAliveCountMax=3",
            "-o", f"ControlPath={self.control_path}",
        ]
        return [*args, *extra]

    def open(self) -> None:
        """Connect (the master runs in the background until `close`); RemoteError when ssh fails."""
        if os.name == "nt":
            raise RemoteError("running on a remote host needs OpenSSH connection sharing (ControlMaster), "
                              "which the Windows OpenSSH client does not have: use Linux or macOS here")
        if shutil.which("ssh") is None:
            raise RemoteError("the OpenSSH client (ssh) is not installed here")
        with tempfile.TemporaryFile() as err:
            result = subprocess.run(
                self.ssh_args("-o", "ControlMaster=yes", "-o", "ControlPersist=600", "-f", "-N",
                              "--", self.host.destination),
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err, timeout=60,
            )
            err.seek(0)
            stderr = err.read().decode("utf-8", "replace")
        if result.returncode != 0:
            raise RemoteError(_explain_ssh_failure(self.host, stderr))

    def command(self, script: str) -> list[str]:
        """The argv that runs the shell `script` on the host over the master connection."""
        return self.ssh_args("-o", "ControlMaster=no", "--", self.host.destination, script)

    def run(self, script: str, timeout: float = 120, input: bytes | None = None) -> str:
        """Run `script` remotely and return its stdout; RemoteError with its stderr when it fails."""
        try:
            result = subprocess.run(self.command(script), input=input, capture_output=True, timeout=timeout)
        except subprocess.TimeoutExpired as error:
            raise RemoteError(f"{self.host}: a remote command took over {timeout:.0f} s: {script}") from error
        if result.returncode != 0:
            stderr = result.stderr.decode("utf-8", "replace").strip()
            if result.returncode == 255:
                raise ConnectionLostError(_explain_ssh_failure(self.host, stderr))
            raise RemoteError(f"{self.host}: `{script}` failed (exit {result.returncode}): {stderr}")
        return result.stdout.decode("utf-8", "replace")

    def upload_tree(self, local_dir: Path, remote_dir: str) -> None:
        """Copy `local_dir`'s content (symlinks followed) into `remote_dir` over the connection."""
        tar = subprocess.Popen(["tar", "-C", str(local_dir), "-chf", "-", "."], stdout=subprocess.PIPE)
        try:
            self.run(f"mkdir -p {q(remote_dir)} && tar -C {q(remote_dir)} -xf -", timeout=3600,
                     input=tar.stdout.read())
        finally:
            tar.stdout.close()
            tar.wait()
        if tar.returncode != 0:
            raise RemoteError(f"staging {local_dir} failed (tar exit {tar.returncode})")

    def download(self, remote_parent: str, name: str, local_parent: Path) -> bool:
        """Copy `remote_parent/name` into `local_parent/name` (replacing it); False when absent remotely."""
        # `./NAME`: a name that begins with "-" (`-Ifoo_seg.nii.gz`) is a file for every tar, never an option.
        member = q(f"./{name}")
        script = f"cd {q(remote_parent)} 2>/dev/null && [ -e {member} ] || exit 3; tar -cf - {member}"
        result = subprocess.run(self.command(script), capture_output=True, timeout=3600)
        if result.returncode == 3:
            return False
        if result.returncode != 0:
            raise RemoteError(f"{self.host}: fetching {remote_parent}/{name} failed: "
                              f"{result.stderr.decode('utf-8', 'replace').strip()}")
        local_parent.mkdir(parents=True, exist_ok=True)
        temp = Path(tempfile.mkdtemp(prefix=f".{name}.fetch-", dir=local_parent))
        try:
            subprocess.run(["tar", "-C", str(temp), "-xf", "-"], input=result.stdout, check=True)
            target = local_parent / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
            (temp / name).rename(target)
        finally:
            shutil.rmtree(temp, ignore_errors=True)
        return True

    def close(self) -> None:
        """Stop the master connection and remove its control folder."""
        if self.control_path.exists():
            subprocess.run(self.ssh_args("-O", "exit", "--", self.host.destination), capture_output=True, timeout=30)
        shutil.rmtree(self._dir, ignore_errors=True)


def q(text: str) -> str:
    """`text` quoted for the remote POSIX shell; a leading `~/` stays expandable."""
    if text.startswith("~/"):
        return '"$HOME"/' + shlex.quote(text[2:])
    return shlex.quote(text)


@contextmanager
def connected(host: RemoteHost) -> Iterator[SshConnection]:
    connection = SshConnection(host)
    try:
        connection.open()
        yield connection
    finally:
        connection.close()


def run_id(output: Path, host: RemoteHost) -> str:
    """The remote run folder's name: stable for one local output, so a resumed run finds its checkpoint."""
    digest = hashlib.sha256(f"{output.resolve()}|{host}".encode()).hexdigest()[:16]
    return f"run-{digest}"


class _Stager:
    """Links local inputs into a staging folder's `inputs/<slot>/` and returns their remote relative paths."""

    def __init__(self, stage: Path) -> None:
        self.stage = stage

    def link(self, path: str | Path, slot: str) -> str:
        source = Path(path)
        target = self.stage / "inputs" / slot / source.name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(source.resolve())
        return str(target.relative_to(self.stage))

    def channels(self, value: str | list[str], slot: str) -> str | list[str]:
        return self.link(value, slot) if isinstance(value, str) else [self.link(p, slot) for p in value]

    def reference(self, value: str | None, slot: str) -> str | None:
        """A model or adapter: a local path is staged, a name (built-in, preset) is passed as it is."""
        if value is None:
            return None
        path = Path(value).expanduser()
        return self.link(path, slot) if path.is_absolute() and path.exists() else value


def stage_finetune(job: FinetuneJob, stage: Path) -> dict[str, Any]:
    """Link the job's inputs into `stage/inputs` and return the remote job (paths relative to its folder)."""
    data = job.to_dict()
    stager = _Stager(stage)
    for index, case in enumerate(data["cases"] or []):
        case["image"] = stager.channels(case["image"], f"case{index}")
        case["label"] = stager.link(case["label"], f"case{index}/label")
    if data["data"] is not None:
        data["data"] = stager.link(data["data"], "data")
    if data.get("unlabeled") is not None:  # files or folders of unlabeled volumes (semi-supervised)
        data["unlabeled"] = [stager.link(path, f"unlabeled{index}") for index, path in enumerate(data["unlabeled"])]
    data["base_model"] = stager.reference(data["base_model"], "base")
    data["output"] = f"out/{job.output.name}"
    data["force"] = False
    return data


def stage_segment(job: SegmentJob, stage: Path) -> dict[str, Any]:
    """The same for a segment job: one remote output per input, `out/<index>/<local file name>`."""
    data = job.to_dict()
    stager = _Stager(stage)
    data["inputs"] = [stager.channels(item, f"input{i}") for i, item in enumerate(data["inputs"])]
    data["base_model"] = stager.reference(data["base_model"], "base")
    data["adapter"] = stager.reference(data["adapter"], "adapter")
    data["outputs"] = [f"out/{i}/{path.name}" for i, path in enumerate(job.output_paths())]
    data["output_dir"] = None
    data["force"] = False
    return data


def _rewrite(value: Any, mapping: Sequence[tuple[str, str]]) -> Any:
    """Remote path prefixes in an event replaced by local ones."""
    if isinstance(value, str):
        for remote, local in mapping:
            if value == remote or value.startswith(remote + "/"):
                return local + value[len(remote):]
        return value
    if isinstance(value, dict):
        return {k: _rewrite(v, mapping) for k, v in value.items()}
    if isinstance(value, list):
        return [_rewrite(v, mapping) for v in value]
    return value


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
            connection.upload_tree(stage, self.remote_dir)
        return connection.run(f"cd {q(self.remote_dir)} && pwd").strip()

    def _execute(self, connection: SshConnection, absolute: str, sink: EventSink, token: CancelToken) -> dict:
        mapping = self.path_mapping(absolute)
        script = (
            f"cd {q(self.remote_dir)} && echo $$ > pid && "
            f"exec {self.host.command} {self.command} --job job.json --events"
        )
        process = subprocess.Popen(
            connection.command(script), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
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
            event = _rewrite(event, mapping)
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
                self._cleanup(connection, quietly=True)  # the outputs could not come back: nothing stays there
                raise
            self._cleanup(connection)
            return {"outputs": final["outputs"], "metrics": final["metrics"]}
        if token.cancelled or code < 0:
            self._stop_remote(connection)
            kept = self.keep(connection)
            self._cleanup(connection)
            raise CancelledError(f"{token.reason or 'cancelled'}: the remote run on {self.host} was stopped"
                                 + (f"; {self.kept_text()}" if kept else ""))
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
        connection.download(f"{self.remote_dir}/out", self.output.name, self.output.parent)

    def keep(self, connection: SshConnection) -> bool:
        return connection.download(f"{self.remote_dir}/out", self.local_checkpoint.name, self.output.parent)

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
            if not connection.download(f"{self.remote_dir}/out/{index}", path.name, path.parent):
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


# ------------------------------------------------------------------------------------------ command line
def add_remote_arguments(parser: argparse.ArgumentParser) -> None:
    """--remote and its companions, for `finetune` and `segment` (docs/scaling.md)."""
    parser.add_argument("--remote", metavar="USER@HOST[:PORT]",
                        help="run on this host over SSH (key login, known host key); outputs come back here")
    parser.add_argument("--remote-command", metavar="CMD",
                        help="the tcurlora command on the remote host (default: tcurlora)")
    parser.add_argument("--remote-folder", metavar="DIR",
                        help=f"where per-run folders go on the remote host (default: ~/{DEFAULT_REMOTE_FOLDER})")
    parser.add_argument("--ssh-config", type=Path, metavar="FILE", help="ssh client config file (ssh -F)")


def remote_handler(args: argparse.Namespace, kind: type[RemoteRun]) -> Callable[[Any, EventSink, CancelToken], dict]:
    """The command handler that runs the job on `args.remote` (a bad host is reported as an error event)."""

    def handler(job: Any, sink: EventSink, token: CancelToken) -> dict:
        host = RemoteHost.parse(args.remote, args.remote_command, args.remote_folder, args.ssh_config)
        return kind(job, host).run(sink, token)

    return handler
