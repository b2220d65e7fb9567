"""A real OpenSSH server on 127.0.0.1 for the remote-run tests: throwaway host and client keys, its own
config, key login as the current user; the client side gets its own ssh config and known_hosts.

Tests that need it skip where Debian's openssh-server is not installed, or fail when
TCURLORA_REQUIRE_SSHD=1 (CI installs it: .ci/run).
"""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SSHD = shutil.which("sshd") or next((p for p in ("/usr/sbin/sshd",) if Path(p).is_file()), None)


def require_sshd() -> str:
    """The sshd binary, or skip (fail under TCURLORA_REQUIRE_SSHD=1) with the reason."""
    if SSHD is None or shutil.which("ssh") is None or shutil.which("ssh-keygen") is None:
        reason = "OpenSSH server/client not installed (apt-get install openssh-server)"
        if os.environ.get("TCURLORA_REQUIRE_SSHD") == "1":
            pytest.fail(f"{reason}, but TCURLORA_REQUIRE_SSHD=1")
        pytest.skip(reason)
    return SSHD


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _keygen(path: Path) -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return path.with_suffix(".pub").read_text().strip()


@dataclass
class LoopbackSshd:
    """A running sshd and what a client needs to reach it."""

    folder: Path
    port: int
    process: subprocess.Popen
    ssh_config: Path
    known_hosts: Path
    user: str

    @property
    def target(self) -> str:
        return f"{self.user}@127.0.0.1:{self.port}"

    @property
    def remote_command(self) -> str:
        """This checkout's tcurlora, one thread, no GPU (the session has a bare environment)."""
        return (
            f"env PYTHONPATH={REPO_ROOT} OMP_NUM_THREADS=1 CUDA_VISIBLE_DEVICES=-1 "
            f"{sys.executable} -m tcurlora"
        )

    def remote_args(self, folder: Path) -> list[str]:
        return [
            "--remote",
            self.target,
            "--remote-command",
            self.remote_command,
            "--remote-folder",
            str(folder),
            "--ssh-config",
            str(self.ssh_config),
        ]

    def session_processes(self) -> list:
        """The per-connection sshd processes (not the listener, not the commands they run)."""
        import psutil

        return [p for p in psutil.Process(self.process.pid).children(recursive=True) if p.name() == "sshd"]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_sshd(folder: Path) -> LoopbackSshd:
    """Start sshd on a free port of 127.0.0.1 and wait until it accepts connections."""
    sshd = require_sshd()
    folder.mkdir(parents=True, exist_ok=True)
    host_key = _keygen(folder / "host_ed25519")
    (folder / "authorized_keys").write_text(_keygen(folder / "client_ed25519") + "\n")
    port = _free_port()
    config = folder / "sshd_config"
    config.write_text(
        "\n".join(
            [
                f"Port {port}",
                "ListenAddress 127.0.0.1",
                f"HostKey {folder / 'host_ed25519'}",
                f"PidFile {folder / 'sshd.pid'}",
                f"AuthorizedKeysFile {folder / 'authorized_keys'}",
                "PubkeyAuthentication yes",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "UsePAM no",
                "StrictModes no",
                "PermitRootLogin prohibit-password",
                "LogLevel ERROR",
            ]
        )
        + "\n"
    )
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(parents=True, exist_ok=True)  # privilege separation folder
    known_hosts = folder / "known_hosts"
    known_hosts.write_text(f"[127.0.0.1]:{port} {' '.join(host_key.split()[:2])}\n")
    ssh_config = folder / "ssh_config"
    ssh_config.write_text(
        "\n".join(
            [
                "Host 127.0.0.1",
                f"  IdentityFile {folder / 'client_ed25519'}",
                "  IdentitiesOnly yes",
                f"  UserKnownHostsFile {known_hosts}",
                "  GlobalKnownHostsFile /dev/null",
                "  StrictHostKeyChecking yes",
            ]
        )
        + "\n"
    )
    process = subprocess.Popen([sshd, "-D", "-e", "-f", str(config)], stderr=open(folder / "sshd.log", "w"))
    deadline = time.monotonic() + 20
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"sshd exited: {(folder / 'sshd.log').read_text()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                break
        except OSError:
            if time.monotonic() > deadline:
                process.kill()
                raise RuntimeError("sshd did not listen within 20 s") from None
            time.sleep(0.1)
    return LoopbackSshd(folder, port, process, ssh_config, known_hosts, getpass.getuser())


def gone(pid: int, timeout: float = 30) -> bool:
    """Whether the (remote, here local) process `pid` has ended within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.1)
    return False
