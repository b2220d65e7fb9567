"""Where a remote run goes (`user@host[:port]`, the remote command and folder) and the errors of remote runs."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from tcurlora.errors import EXIT_USAGE, TCURLoRAError

EXIT_CONNECTION = 5  # the SSH connection could not be made or was lost
DEFAULT_REMOTE_FOLDER = ".cache/tcurlora/remote-runs"  # relative to the remote home
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
