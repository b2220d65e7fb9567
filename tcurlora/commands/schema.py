"""`tcurlora schema job|events`: print the JSON Schema of the job file or of one event line."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def register(subparsers: Any) -> None:
    """Add the `schema` sub-command."""
    p = subparsers.add_parser(
        "schema",
        help="print the JSON Schema of the job file or of the event stream",
        description="Print the JSON Schema (draft 2020-12) of a job file (tcurlora.job/1) or of one JSON-lines "
        "event (tcurlora.events/1), for clients that drive the worker. Copies: docs/schemas/.",
    )
    p.add_argument("which", choices=("job", "events"), help="job: the job file; events: one event line")
    p.set_defaults(func=main)


def schema_text(which: str) -> str:
    """The schema as printed (and as committed under docs/schemas/): indented JSON, newline-terminated."""
    from tcurlora.jobs.schema_export import SCHEMAS

    return json.dumps(SCHEMAS[which](), indent=2) + "\n"


def main(args: argparse.Namespace) -> int:
    sys.stdout.write(schema_text(args.which))
    return 0
