"""`tcurlora finetune`: adapt a base model to labeled cases (from --job job.json or from flags)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, TextIO

from tcurlora.errors import ConfigError
from tcurlora.jobs.runner import Handler, run_cli
from tcurlora.jobs.schema import FinetuneJob
from tcurlora.remote.cli import add_remote_arguments, remote_handler
from tcurlora.remote.run import RemoteFinetune
from tcurlora.settings import add_arguments, flag_values, job_flags, override_dests
from tcurlora.torchrun_env import launched

# Flags that describe the job (derived from FinetuneJob's declarations); none may be combined with --job,
# except the JOB_OVERRIDES: how to run it, not what to train.
JOB_FLAGS = job_flags(FinetuneJob)
JOB_OVERRIDES = override_dests(FinetuneJob)


def register(subparsers: Any) -> None:
    """Add the `finetune` sub-command: --job, or one flag per declared job setting (FinetuneJob)."""
    p = subparsers.add_parser(
        "finetune",
        help="adapt a base model to a few labeled cases",
        description="Fine-tune a pretrained 3D segmentation model with tCURLoRA, LoRA, decoder-only, head-only "
        "or full fine-tuning. Give either --job job.json or the flags below.",
    )
    p.add_argument("--job", type=Path, help="job file (tcurlora.job/1); events are printed as JSON lines")
    add_arguments(p, FinetuneJob)
    p.add_argument("--events", action="store_true", help="print JSON-lines events (tcurlora.events/1)")
    add_remote_arguments(p)
    p.set_defaults(func=main)


def build_job(args: argparse.Namespace) -> FinetuneJob:
    """The job from --job, or from the flags (validated by the same schema as a job file)."""
    overrides = {dest: getattr(args, dest) for dest in JOB_OVERRIDES if getattr(args, dest, None) is not None}
    given = [
        flag
        for dest, flag in JOB_FLAGS.items()
        if getattr(args, dest, None) is not None and dest not in JOB_OVERRIDES
    ]
    if args.job is not None:
        if given:
            raise ConfigError(f"{given[0]} cannot be combined with --job (put it in the job file)", args.job)
        job = FinetuneJob.from_file(args.job)
        for dest, value in overrides.items():
            setattr(job, dest, value)
        return job
    for dest, flag in (("base_model", "--base-model"), ("output", "--output")):
        if getattr(args, dest) is None:
            raise ConfigError(f"{flag} is required (or give --job job.json)")
    if (args.data is None) == (args.cases is None):
        raise ConfigError(
            "give the training cases with either --data FOLDER or --case IMAGE LABEL (repeatable)"
        )
    data: dict[str, Any] = {"command": "finetune", **flag_values(args, FinetuneJob)}
    return FinetuneJob.from_dict(data, Path.cwd())


def _run_finetune(job: FinetuneJob, sink, token) -> dict:
    from tcurlora.finetuning import run_finetune  # lazy: torch and MONAI load only when the work starts

    return run_finetune(job, sink, token)


def main(args: argparse.Namespace, handler: Handler | None = None, stream: TextIO | None = None) -> int:
    """Run the command; `handler` and `stream` are for tests (default: tcurlora.finetuning, or --remote, stdout)."""
    events = bool(args.events or args.job is not None)
    sink = None
    if handler is None and getattr(args, "remote", None):
        handler = remote_handler(args, RemoteFinetune)
    elif handler is None and launched():
        from tcurlora.distributed import rank_sink
        from tcurlora.distributed_runs import run_finetune

        handler, sink = run_finetune, rank_sink()  # rank 0 alone reports; the others only errors, on stderr
    return run_cli(
        lambda: build_job(args),
        events,
        handler or _run_finetune,
        stream if stream is not None else sys.stdout,
        sink,
    )
