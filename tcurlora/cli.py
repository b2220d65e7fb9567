"""`tcurlora` command line: one sub-command per module in tcurlora.commands."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from tcurlora import __version__
from tcurlora.errors import EXIT_INTERNAL, TCURLoRAError

# Each module defines `register(subparsers)`, which adds its parser and sets `func(args) -> int`.
COMMAND_MODULES = (
    "finetune",
    "federate",
    "segment",
    "suggest",
    "evaluate",
    "info",
    "bench",
    "pretrain",
    "demo",
    "schema",
)


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser, with every available sub-command."""
    parser = argparse.ArgumentParser(
        prog="tcurlora",
        description="Adapt pretrained 3D segmentation models to a few labeled cases (tCURLoRA, LoRA, full).",
    )
    parser.add_argument("--version", action="version", version=f"tcurlora {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"tcurlora.commands.{name}").register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; user errors print one clear line and return their exit code."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except TCURLoRAError as error:
        print(f"tcurlora {args.command}: error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        from tcurlora.errors import EXIT_CANCELLED

        print(f"tcurlora {args.command}: cancelled", file=sys.stderr)
        return EXIT_CANCELLED
    except Exception:  # noqa: BLE001 - last resort: a bug, reported with its traceback
        import traceback

        traceback.print_exc()
        return EXIT_INTERNAL
