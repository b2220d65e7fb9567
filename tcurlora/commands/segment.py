"""`tcurlora segment`: segment volumes with a base model and, optionally, an adapter."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any, TextIO

from tcurlora.errors import ConfigError, InputError
from tcurlora.filenames import is_image_file, split_extension
from tcurlora.jobs.runner import Handler, run_cli
from tcurlora.jobs.schema import SegmentJob
from tcurlora.remote.cli import add_remote_arguments, remote_handler
from tcurlora.remote.run import RemoteSegment
from tcurlora.settings import add_arguments, flag_values, job_flags
from tcurlora.torchrun_env import launched

# Flags that describe the job: SegmentJob's declared ones and -o (which becomes outputs or output_dir).
JOB_FLAGS = {**job_flags(SegmentJob), "output": "--output"}
_CHANNEL = re.compile(r"^(.*)_(\d{4})$")


def register(subparsers: Any) -> None:
    """Add the `segment` sub-command."""
    p = subparsers.add_parser(
        "segment",
        help="segment volumes with a base model (+ adapter)",
        description="Segment one or more volumes. Give either --job job.json or INPUTs and flags.",
    )
    p.add_argument(
        "inputs",
        nargs="*",
        metavar="INPUT",
        help="volume file, channel files joined by commas, or a folder (every volume in it)",
    )
    p.add_argument("--job", type=Path, help="job file (tcurlora.job/1); events are printed as JSON lines")
    add_arguments(p, SegmentJob)
    p.add_argument(
        "--channels",
        type=int,
        default=1,
        help="for folder inputs: channels per case, files named CASE_0000, CASE_0001, ... (default 1)",
    )
    p.add_argument("--output", "-o", help="output file (one input) or folder (names: INPUT_seg + extension)")
    p.add_argument("--events", action="store_true", help="print JSON-lines events (tcurlora.events/1)")
    add_remote_arguments(p)
    p.set_defaults(func=main)


def folder_inputs(folder: Path, channels: int) -> list[list[str]]:
    """Every volume in `folder`, sorted; with channels > 1, CASE_0000..CASE_{n-1} files make one input.

    Segmentations tcurlora wrote (its header mark) are not volumes to segment: a folder segmented
    into itself, run again with --force, must not segment its own `_seg` files.
    """
    from tcurlora.outputs import is_tcurlora_segmentation

    files = sorted(
        f
        for f in folder.iterdir()
        if f.is_file() and is_image_file(f) and not f.name.startswith(".") and not is_tcurlora_segmentation(f)
    )
    if not files:
        raise InputError("no image volumes in this folder", folder)
    if channels == 1:
        return [[str(f)] for f in files]
    groups: dict[str, dict[int, Path]] = {}
    for f in files:
        match = _CHANNEL.match(split_extension(f)[0])
        if match is None:
            raise InputError(
                f"--channels {channels}: expected files named CASE_0000 ... CASE_{channels - 1:04d}", f
            )
        groups.setdefault(match.group(1), {})[int(match.group(2))] = f
    inputs = []
    for case, found in sorted(groups.items()):
        if sorted(found) != list(range(channels)):
            raise InputError(
                f"case {case!r} has channels {sorted(found)}, expected 0..{channels - 1}", folder
            )
        inputs.append([str(found[i]) for i in range(channels)])
    return inputs


def expand_inputs(values: list[str], channels: int) -> list[list[str]]:
    """Positional INPUTs -> one list of channel paths per volume."""
    inputs: list[list[str]] = []
    for value in values:
        path = Path(value)
        if path.is_dir():
            inputs.extend(folder_inputs(path, channels))
            continue
        parts = [p for p in value.split(",") if p] if not path.exists() else [value]
        for part in parts:
            if Path(part).is_symlink() and not Path(part).exists():
                raise InputError("input volume is a symbolic link to nothing (broken, or a loop)", part)
            if not Path(part).is_file():
                raise InputError("input volume not found", part)
        inputs.append(parts)
    return inputs


def check_output_folder_name(output: Path, count: int) -> None:
    """ConfigError when -o, which must be a folder here, names a file (existing, or by its extension)."""
    if output.is_dir():
        return
    if output.exists():
        raise ConfigError("--output exists and is a file; give a folder for the segmentations", output)
    if is_image_file(output):
        raise ConfigError(
            f"--output names one image file but there are {count} inputs; give a folder", output
        )
    if output.suffix:
        raise ConfigError(
            f"--output ends in {output.suffix!r}, which is not a label format: give a file ending in "
            ".nii.gz, .nii, .nrrd, .seg.nrrd or .mha, or a folder name without an extension",
            output,
        )


def job_file_or_checked_flags(
    args: argparse.Namespace,
    job_type: Any,
    flags: dict[str, str],
    input_flag: str,
    required: tuple[tuple[str, str], ...],
) -> Any | None:
    """The job from --job (no job flag may stand beside it), or None once the flags a job needs are given."""
    given = [flag for dest, flag in flags.items() if getattr(args, dest, None) is not None]
    if args.inputs:
        given.insert(0, input_flag)
    if args.job is not None:
        if given:
            raise ConfigError(f"{given[0]} cannot be combined with --job (put it in the job file)", args.job)
        return job_type.from_file(args.job)
    for dest, flag in (*required, ("inputs", input_flag)):
        if not getattr(args, dest):
            raise ConfigError(f"{flag} is required (or give --job job.json)")
    if args.channels < 1:
        raise ConfigError(f"--channels must be >= 1, got {args.channels}")
    return None


def volumes_job_data(args: argparse.Namespace, job_type: Any) -> dict[str, Any]:
    """A job dict from the flags and the expanded input volumes (a case of one channel as a plain path)."""
    inputs = expand_inputs(args.inputs, args.channels)
    return {
        "command": job_type.command,
        **flag_values(args, job_type),
        "inputs": [c[0] if len(c) == 1 else c for c in inputs],
    }


def build_job(args: argparse.Namespace) -> SegmentJob:
    """The job from --job, or from INPUTs and flags (validated by the same schema as a job file)."""
    required = (("base_model", "--base-model"), ("output", "--output"))
    job = job_file_or_checked_flags(args, SegmentJob, JOB_FLAGS, "INPUT", required)
    if job is not None:
        return job
    data = volumes_job_data(args, SegmentJob)
    output = Path(args.output)
    if len(data["inputs"]) == 1 and is_image_file(output) and not output.is_dir():
        data["outputs"] = [args.output]
    else:
        check_output_folder_name(output, len(data["inputs"]))
        data["output_dir"] = args.output
    return SegmentJob.from_dict(data, Path.cwd())


def _run_segment(job: SegmentJob, sink, token) -> dict:
    from tcurlora.segmentation import run_segment  # lazy: torch and MONAI load only when the work starts

    return run_segment(job, sink, token)


def main(args: argparse.Namespace, handler: Handler | None = None, stream: TextIO | None = None) -> int:
    """Run the command; `handler` and `stream` are for tests (default: tcurlora.segmentation, or --remote, stdout)."""
    events = bool(args.events or args.job is not None)
    sink = None
    if handler is None and getattr(args, "remote", None):
        handler = remote_handler(args, RemoteSegment)
    elif handler is None and launched():
        from tcurlora.distributed import rank_sink
        from tcurlora.distributed_runs import run_segment  # the volumes split across the ranks

        handler, sink = run_segment, rank_sink()  # rank 0 alone reports; the others only errors, on stderr
    return run_cli(
        lambda: build_job(args),
        events,
        handler or _run_segment,
        stream if stream is not None else sys.stdout,
        sink,
    )
