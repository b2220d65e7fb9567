"""`tcurlora evaluate PRED REF`: Dice and HD95 of predicted label volumes against references."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from tcurlora.errors import InputError
from tcurlora.outputs import check_report_output


def register(subparsers: Any) -> None:
    """Add the `evaluate` sub-command."""
    p = subparsers.add_parser(
        "evaluate",
        help="Dice and HD95 of predictions against reference labels",
        description="Compare predicted label volumes with references: two files, or two folders matched by "
        "file name (a prediction may end in _seg). Prints a Markdown table.",
    )
    p.add_argument("prediction", type=Path, metavar="PRED", help="predicted label file or folder")
    p.add_argument("reference", type=Path, metavar="REF", help="reference label file or folder")
    p.add_argument(
        "--labels",
        nargs="+",
        metavar="NAME",
        help="class names for label values 1..N (default: every value found, as label_<v>)",
    )
    p.add_argument("--json", type=Path, metavar="OUT.json", help="write every number as JSON")
    p.add_argument("--markdown", type=Path, metavar="OUT.md", help="write the table as Markdown")
    p.add_argument("--force", action="store_true", help="overwrite existing output files")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from tcurlora.evaluate import evaluate_pairs, match_folders, to_markdown, write_json, write_markdown

    for output in (args.json, args.markdown):
        if output is not None:  # free, or (--force) a report tcurlora wrote; writable: before any work
            check_report_output(output, args.force)
    pred, ref = args.prediction, args.reference
    if pred.is_dir() != ref.is_dir():
        kinds = f"{pred} is {'a folder' if pred.is_dir() else 'a file'}, {ref} is {'a folder' if ref.is_dir() else 'a file'}"
        raise InputError(f"give two label files or two folders ({kinds})", pred)
    pairs = match_folders(pred, ref) if pred.is_dir() else [(pred, ref)]
    names = None if args.labels is None else [n for item in args.labels for n in item.split(",") if n]
    result = evaluate_pairs(pairs, names)
    if args.json is not None:
        write_json(result, args.json)
    if args.markdown is not None:
        write_markdown(result, args.markdown)
    sys.stdout.write(to_markdown(result))
    return 0
