"""`tcurlora suggest`: which volume to label next, ranked by the model's uncertainty (active learning)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, TextIO

from tcurlora.commands.segment import job_file_or_checked_flags, volumes_job_data
from tcurlora.errors import ConfigError
from tcurlora.jobs.runner import Handler, run_cli
from tcurlora.jobs.schema import SuggestJob
from tcurlora.settings import add_arguments, job_flags

JOB_FLAGS = job_flags(SuggestJob)


def register(subparsers: Any) -> None:
    """Add the `suggest` sub-command."""
    p = subparsers.add_parser(
        "suggest",
        help="rank volumes by the model's uncertainty: which case to label next",
        description="Rank volumes (files or folders) by how unsure the base model + adapter is about them, "
        "most uncertain first. Give either --job job.json or PATHs and flags.",
    )
    p.add_argument(
        "inputs",
        nargs="*",
        metavar="PATH",
        help="volume file, channel files joined by commas, or a folder (every volume in it)",
    )
    p.add_argument("--job", type=Path, help="job file (tcurlora.job/1); events are printed as JSON lines")
    add_arguments(p, SuggestJob)
    p.add_argument(
        "--channels",
        type=int,
        default=1,
        help="for folder inputs: channels per case, files named CASE_0000, CASE_0001, ... (default 1)",
    )
    p.add_argument(
        "--json",
        action="store_true",
        help="print the ranking as one JSON document (tcurlora.suggest/1) on stdout",
    )
    p.add_argument("--events", action="store_true", help="print JSON-lines events (tcurlora.events/1)")
    p.set_defaults(func=main)


def build_job(args: argparse.Namespace) -> SuggestJob:
    """The job from --job, or from PATHs and flags (validated by the same schema as a job file)."""
    job = job_file_or_checked_flags(args, SuggestJob, JOB_FLAGS, "PATH", (("base_model", "--base-model"),))
    return job if job is not None else SuggestJob.from_dict(volumes_job_data(args, SuggestJob), Path.cwd())


def ranking_document(outputs: dict, metrics: dict) -> dict[str, Any]:
    """What --json prints: the schema name, how it was scored, and the ranking, most uncertain first."""
    return {
        "schema": metrics.get("schema"),
        "score": metrics.get("score"),
        "label_names": metrics.get("label_names"),
        "ranking": outputs["ranking"],
    }


def format_table(ranking: list[dict[str, Any]], score: str) -> str:
    """The ranking for people: rank, score, predicted foreground voxels, volume."""
    lines = [f"{'rank':>4}  {score:>8}  {'fg voxels':>9}  volume"]
    for entry in ranking:
        volume = entry["volume"] if isinstance(entry["volume"], str) else ",".join(entry["volume"])
        lines.append(f"{entry['rank']:>4}  {entry['score']:>8.4f}  {entry['foreground_voxels']:>9}  {volume}")
    return "\n".join(lines)


def _run_suggest(job: SuggestJob, sink, token) -> dict:
    from tcurlora.suggest import run_suggest  # lazy: torch and MONAI load only when the work starts

    return run_suggest(job, sink, token)


def main(args: argparse.Namespace, handler: Handler | None = None, stream: TextIO | None = None) -> int:
    """Run the command; `handler` and `stream` are for tests (default: tcurlora.suggest, stdout)."""
    events = bool(args.events or args.job is not None)
    out = stream if stream is not None else sys.stdout
    if args.json and events:
        raise ConfigError(
            "--json cannot be combined with --events or --job (the done event carries the ranking)"
        )
    result: dict[str, Any] = {}

    def keep(job, sink, token) -> dict:
        result.update((handler or _run_suggest)(job, sink, token))
        return result

    # For people the progress goes to stderr, so that stdout holds only the ranking (a table or --json).
    code = run_cli(lambda: build_job(args), events, keep, out if events else sys.stderr)
    if code == 0 and not events:
        ranking = result["outputs"]["ranking"]
        if args.json:
            out.write(json.dumps(ranking_document(result["outputs"], result["metrics"]), indent=2) + "\n")
        else:
            out.write(format_table(ranking, result["metrics"]["score"]) + "\n")
        out.flush()
    return code
