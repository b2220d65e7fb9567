"""Run on: this computer | remote host. What the panels need to run their worker on a GPU server over SSH:
the settings, checked, and the worker arguments they stand for (`tcurlora ... --remote`, see
tcurlora.remote and docs/scaling.md)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

THIS_COMPUTER, REMOTE_HOST = "this computer", "remote host"
RUN_ON = (THIS_COMPUTER, REMOTE_HOST)
DEFAULT_COMMAND = "tcurlora"  # the remote worker command when none is given


@dataclass
class RemoteSettings:
    """Where the worker runs: `user@host[:port]`, the remote tcurlora command, an optional ssh config file
    and remote run folder (empty: ssh's own config, the default folder)."""

    host: str
    command: str = DEFAULT_COMMAND
    ssh_config: str = ""
    folder: str = ""

    def worker_args(self) -> list[str]:
        """The flags added to the local `tcurlora <command> --job job.json` worker, as `--flag=value`: a value
        is never read as a flag of its own."""
        args = [f"--remote={self.host}", f"--remote-command={self.command}"]
        if self.ssh_config:
            args.append(f"--ssh-config={self.ssh_config}")
        if self.folder:
            args.append(f"--remote-folder={self.folder}")
        return args

    def to_dict(self) -> dict[str, str]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> RemoteSettings | None:
        """The settings a run.json saved, or None for a local run."""
        if not isinstance(data, dict) or not data.get("host"):
            return None
        return remote_settings(
            REMOTE_HOST,
            str(data["host"]),
            str(data.get("command") or DEFAULT_COMMAND),
            str(data.get("ssh_config") or ""),
            str(data.get("folder") or ""),
        )


def remote_settings(
    run_on: str, host: str, command: str = DEFAULT_COMMAND, ssh_config: str = "", folder: str = ""
) -> RemoteSettings | None:
    """None for "this computer"; for "remote host" the checked settings (InputError naming the problem)."""
    from tcurlora.errors import InputError

    if run_on not in RUN_ON:
        raise InputError(f"run on {run_on!r}: choose {' or '.join(RUN_ON)}")
    if run_on == THIS_COMPUTER:
        return None
    if not host.strip():
        raise InputError("give the remote host as user@host or user@host:port")
    from tcurlora.remote.host import RemoteError, RemoteHost

    try:
        RemoteHost.parse(host, command.strip() or DEFAULT_COMMAND, folder or None, ssh_config or None)
    except RemoteError as error:
        raise InputError(error.problem) from None
    return RemoteSettings(
        host.strip(), command.strip() or DEFAULT_COMMAND, ssh_config.strip(), folder.strip()
    )


def remote_from_parameters(node: Any) -> RemoteSettings | None:
    """Where a panel's parameter node (runOn, remoteHost, remoteCommand, sshConfig) says to run: None for
    this computer, else the checked remote settings. Shared by TCUR Fine-Tune and TCUR Segmenter."""
    return remote_settings(
        getattr(node, "runOn", THIS_COMPUTER) or THIS_COMPUTER,
        getattr(node, "remoteHost", "") or "",
        getattr(node, "remoteCommand", "") or DEFAULT_COMMAND,
        getattr(node, "sshConfig", "") or "",
    )
