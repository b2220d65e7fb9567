"""`--remote` and its companions on the command line, and the command handler that runs a job remotely."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tcurlora.jobs.cancel import CancelToken
from tcurlora.jobs.events import EventSink
from tcurlora.remote.host import DEFAULT_REMOTE_FOLDER, RemoteHost
from tcurlora.remote.run import RemoteRun


def add_remote_arguments(parser: argparse.ArgumentParser) -> None:
    """--remote and its companions, for `finetune` and `segment` (docs/scaling.md)."""
    parser.add_argument(
        "--remote",
        metavar="USER@HOST[:PORT]",
        help="run on this host over SSH (key login, known host key); outputs come back here",
    )
    parser.add_argument(
        "--remote-command", metavar="CMD", help="the tcurlora command on the remote host (default: tcurlora)"
    )
    parser.add_argument(
        "--remote-folder",
        metavar="DIR",
        help=f"where per-run folders go on the remote host (default: ~/{DEFAULT_REMOTE_FOLDER})",
    )
    parser.add_argument("--ssh-config", type=Path, metavar="FILE", help="ssh client config file (ssh -F)")


def remote_handler(
    args: argparse.Namespace, kind: type[RemoteRun]
) -> Callable[[Any, EventSink, CancelToken], dict]:
    """The command handler that runs the job on `args.remote` (a bad host is reported as an error event)."""

    def handler(job: Any, sink: EventSink, token: CancelToken) -> dict:
        host = RemoteHost.parse(args.remote, args.remote_command, args.remote_folder, args.ssh_config)
        return kind(job, host).run(sink, token)

    return handler
