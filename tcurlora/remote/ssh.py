"""One multiplexed OpenSSH connection to the remote host: the ssh argv every call shares, commands run over it,
and quoting for the remote POSIX shell."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tcurlora.remote.host import ConnectionLostError, RemoteError, RemoteHost


def explain_ssh_failure(host: RemoteHost, stderr: str) -> str:
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
            "-o",
            "BatchMode=yes",
            "-o",
            "ConnectTimeout=15",
            "-o",
            "ServerAliveInterval=5",
            "-o",
            "ServerAliveCountMax=3",
            "-o",
            f"ControlPath={self.control_path}",
        ]
        return [*args, *extra]

    def open(self) -> None:
        """Connect (the master runs in the background until `close`); RemoteError when ssh fails."""
        if os.name == "nt":
            raise RemoteError(
                "running on a remote host needs OpenSSH connection sharing (ControlMaster), "
                "which the Windows OpenSSH client does not have: use Linux or macOS here"
            )
        if shutil.which("ssh") is None:
            raise RemoteError("the OpenSSH client (ssh) is not installed here")
        with tempfile.TemporaryFile() as err:
            result = subprocess.run(
                self.ssh_args(
                    "-o",
                    "ControlMaster=yes",
                    "-o",
                    "ControlPersist=600",
                    "-f",
                    "-N",
                    "--",
                    self.host.destination,
                ),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                timeout=60,
            )
            err.seek(0)
            stderr = err.read().decode("utf-8", "replace")
        if result.returncode != 0:
            raise RemoteError(explain_ssh_failure(self.host, stderr))

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
                raise ConnectionLostError(explain_ssh_failure(self.host, stderr))
            raise RemoteError(f"{self.host}: `{script}` failed (exit {result.returncode}): {stderr}")
        return result.stdout.decode("utf-8", "replace")

    def close(self) -> None:
        """Stop the master connection and remove its control folder."""
        if self.control_path.exists():
            subprocess.run(
                self.ssh_args("-O", "exit", "--", self.host.destination), capture_output=True, timeout=30
            )
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
