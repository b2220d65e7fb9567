"""`tcurlora finetune`: adapt a base model to labeled cases (from --job job.json or from flags)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, TextIO

from tcurlora.errors import ConfigError
from tcurlora.filenames import case_id_from_path
from tcurlora.jobs.runner import Handler, run_cli
from tcurlora.jobs.schema import METHODS, SELECTIONS, FinetuneJob
from tcurlora.remote import RemoteFinetune, add_remote_arguments, remote_handler

# Flags that describe the job; none of them may be combined with --job.
JOB_FLAGS = {
    "base_model": "--base-model",
    "data": "--data",
    "cases": "--case",
    "num_cases": "--num-cases",
    "labels": "--labels",
    "method": "--method",
    "rank": "--rank",
    "alpha": "--alpha",
    "selection": "--selection",
    "conv_targets": "--conv-targets",
    "iterations": "--iterations",
    "batch_size": "--batch-size",
    "lr": "--lr",
    "head_lr": "--head-lr",
    "modules_lr": "--modules-lr",
    "train_modules": "--train-modules",
    "spacing": "--spacing",
    "patch_size": "--patch-size",
    "seed": "--seed",
    "val_fraction": "--val-fraction",
    "early_stopping": "--early-stopping",
    "checkpoint_every": "--checkpoint-every",
    "device": "--device",
    "amp": "--no-amp",
    "output": "--output",
    "force": "--force",
    "resume": "--resume",
}


def _triple(text: str, cast: type, what: str, kind: str) -> list:
    """ "v" -> [v, v, v]; "a,b,c" or "axbxc" -> [a, b, c], each cast and positive; else an argparse error."""
    parts = [p for p in text.lower().replace("x", ",").split(",") if p.strip()]
    try:
        values = [cast(p) for p in parts]
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"{what} must be {kind}s, got {text!r}") from error
    if len(values) == 1:
        values *= 3
    if len(values) != 3 or min(values) <= 0:
        raise argparse.ArgumentTypeError(f"{what} needs 1 or 3 positive {kind}s, got {text!r}")
    return values


def patch_size_arg(text: str) -> list[int]:
    """ "96" -> [96, 96, 96]; "96,96,64" or "96x96x64" -> [96, 96, 64]."""
    return _triple(text, int, "patch size", "integer")


def spacing_arg(text: str) -> list[float] | str:
    """ "1" -> [1.0, 1.0, 1.0]; "1,1,1.5" or "1x1x1.5" -> [1.0, 1.0, 1.5]; "auto" and "base" as they are."""
    return text if text in ("auto", "base") else _triple(text, float, "spacing", "number")


def register(subparsers: Any) -> None:
    """Add the `finetune` sub-command."""
    p = subparsers.add_parser(
        "finetune",
        help="adapt a base model to a few labeled cases",
        description="Fine-tune a pretrained 3D segmentation model with tCURLoRA, LoRA, decoder-only, head-only "
        "or full fine-tuning. Give either --job job.json or the flags below.",
    )
    p.add_argument("--job", type=Path, help="job file (tcurlora.job/1); events are printed as JSON lines")
    p.add_argument("--base-model", help="built-in base model name, model folder or MONAI bundle folder")
    p.add_argument("--data", type=Path, help="training cases from a Decathlon folder (dataset.json)")
    p.add_argument(
        "--case",
        "--cases",
        dest="cases",
        nargs=2,
        action="append",
        metavar=("IMAGE", "LABEL"),
        help="one labeled case (repeat the flag); IMAGE may list channel files separated by commas",
    )
    p.add_argument("--num-cases", type=int, help="use only the first N cases of --data")
    p.add_argument("--labels", nargs="+", metavar="NAME", help="class names for label values 1..N")
    p.add_argument("--method", choices=METHODS, help="adaptation method (default tcur)")
    p.add_argument("--rank", type=int, help="adapter rank (default 8)")
    p.add_argument("--alpha", type=float, help="adapter scale (default: the method's)")
    p.add_argument("--selection", choices=SELECTIONS, help="tCUR index selection (default topnorm)")
    p.add_argument("--conv-targets", action="store_const", const=True,
                   help="adapt the encoder/decoder Conv3d kernels too (tcur, lora; the default for tcur)")
    p.add_argument("--no-conv-targets", dest="conv_targets", action="store_const", const=False,
                   help="adapt only the transformer's linear layers (tCURLoRA as in the paper)")
    p.add_argument("--iterations", type=int, help="training steps (default 500)")
    p.add_argument("--batch-size", type=int, help="patches per step (default 2)")
    p.add_argument("--lr", type=float, help="learning rate of the adapter (default: the method's)")
    p.add_argument("--head-lr", type=float, help="learning rate of a new segmentation head (default 5e-3)")
    p.add_argument("--modules-lr", type=float, help="learning rate of the --train-modules (default 1e-3)")
    p.add_argument(
        "--train-modules", nargs="+", metavar="REGEX",
        help="extra modules trained in full (full-matched module names; 'decoder' = every decoderN block, "
        "the tCURLoRA authors' setting), saved in the adapter (default for tcur: the full-resolution blocks, "
        "UNETR encoder1 + decoder2; for other methods none)",
    )
    p.add_argument("--no-train-modules", dest="train_modules", action="store_const", const=[],
                   help="no extra trained modules (tCURLoRA alone, as in the paper)")
    p.add_argument(
        "--spacing", type=spacing_arg,
        help="working spacing in mm (e.g. 1 or 1,1,1.5), 'base' (the base model's) or 'auto' (default: the "
        "cases' median spacing, coarsened until the labeled structure fits in a patch, within 2/3..1 x the base's); "
        "saved in the adapter, used by segment",
    )
    p.add_argument(
        "--patch-size", type=patch_size_arg, help="e.g. 96 or 96,96,64 (default: the base model's)"
    )
    p.add_argument("--seed", type=int, help="random seed (default 0)")
    p.add_argument("--val-fraction", type=float, help="fraction of cases held out for validation (default 0)")
    p.add_argument(
        "--early-stopping", type=int, metavar="N",
        help="with a validation split: stop after N validations without a better Dice and keep the best "
        "adapter (default 4; 0 = train all iterations, still keeping the best)",
    )
    p.add_argument(
        "--checkpoint-every", type=int, help="iterations between checkpoints (default 50; 0 = none)"
    )
    p.add_argument("--device", help="auto, cpu, cuda or cuda:N (default auto)")
    p.add_argument(
        "--no-amp", dest="amp", action="store_const", const=False, help="no mixed precision on CUDA"
    )
    p.add_argument("--output", "-o", help="adapter folder to write")
    p.add_argument("--force", action="store_const", const=True, help="replace an existing adapter folder")
    p.add_argument("--resume", action="store_const", const=True, help="continue from the last checkpoint")
    p.add_argument("--events", action="store_true", help="print JSON-lines events (tcurlora.events/1)")
    add_remote_arguments(p)
    p.set_defaults(func=main)


def _split_channels(text: str) -> str | list[str]:
    parts = [p for p in text.split(",") if p]
    return parts[0] if len(parts) == 1 else parts


# Flags that may accompany --job: how to run it, not what to train.
JOB_OVERRIDES = ("resume", "force", "device")


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
    data: dict[str, Any] = {"command": "finetune", "base_model": args.base_model, "output": args.output}
    if args.cases is not None:
        data["cases"] = [
            {"id": case_id_from_path(image.split(",")[0]), "image": _split_channels(image), "label": label}
            for image, label in args.cases
        ]
    else:
        data["data"] = str(args.data)
    labels = None if args.labels is None else [n for item in args.labels for n in item.split(",") if n]
    optional = {
        "num_cases": args.num_cases,
        "label_names": labels,
        "method": args.method,
        "rank": args.rank,
        "alpha": args.alpha,
        "selection": args.selection,
        "conv_targets": args.conv_targets,
        "iterations": args.iterations,
        "batch_size": args.batch_size,
        "learning_rate": args.lr,
        "head_learning_rate": args.head_lr,
        "modules_learning_rate": args.modules_lr,
        "train_modules": args.train_modules,
        "spacing": args.spacing,
        "patch_size": args.patch_size,
        "seed": args.seed,
        "val_fraction": args.val_fraction,
        "early_stopping": args.early_stopping,
        "checkpoint_every": args.checkpoint_every,
        "device": args.device,
        "amp": args.amp,
        "force": args.force,
        "resume": args.resume,
    }
    data.update({k: v for k, v in optional.items() if v is not None})
    return FinetuneJob.from_dict(data, Path.cwd())


def _run_finetune(job: FinetuneJob, sink, token) -> dict:
    from tcurlora.train import run_finetune  # lazy: torch and MONAI load only when the work starts

    return run_finetune(job, sink, token)


def _under_torchrun() -> bool:
    """Started by torchrun with more than one process (tcurlora.distributed, without importing torch)."""
    return "RANK" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1


def main(args: argparse.Namespace, handler: Handler | None = None, stream: TextIO | None = None) -> int:
    """Run the command; `handler` and `stream` are for tests (default: tcurlora.train, or --remote, stdout)."""
    events = bool(args.events or args.job is not None)
    if handler is None and getattr(args, "remote", None):
        handler = remote_handler(args, RemoteFinetune)
    elif handler is None and _under_torchrun():
        from tcurlora.distributed import run_finetune

        handler = run_finetune
        if os.environ.get("RANK", "0") != "0":  # rank 0 alone reports; the others only errors, on stderr
            events, stream = False, sys.stderr
    return run_cli(
        lambda: build_job(args),
        events,
        handler or _run_finetune,
        stream if stream is not None else sys.stdout,
    )
