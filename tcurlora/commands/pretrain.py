"""`tcurlora pretrain`: train a base model from scratch with a recipe from configs/pretrain/."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

DEFAULT_RECIPE = Path(__file__).resolve().parents[2] / "configs" / "pretrain" / "unetr-small-cpu.json"
DEFAULT_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"


def register(subparsers: Any) -> None:
    """Add the `pretrain` sub-command."""
    p = subparsers.add_parser(
        "pretrain",
        help="train a base model from scratch on several labeled Decathlon datasets (seeded recipe)",
        description="Train the recipe's UNETR on its source datasets (one head over the union of their "
        "labels) and write a model folder (model.json with the model card, model.safetensors fp16, "
        "MODEL_CARD.md, training_log.jsonl). Checkpoints go to OUTPUT.checkpoint.",
    )
    p.add_argument(
        "--config", type=Path, default=DEFAULT_RECIPE, help="recipe JSON (configs/pretrain/*.json)"
    )
    p.add_argument("--data-root", type=Path, default=DEFAULT_DATA, help="folder holding the sources' folders")
    p.add_argument("--output", type=Path, required=True, help="model folder to write")
    p.add_argument("--iterations", type=int, help="override the recipe's iterations")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--force", action="store_true", help="replace an existing output folder")
    p.add_argument(
        "--resume",
        type=Path,
        metavar="FOLDER",
        help="continue the interrupted run whose checkpoint is FOLDER exactly (same recipe; only iterations, "
        "checkpoint_every, threads, eval_every may change), or warm-start from a model FOLDER's weights",
    )
    p.add_argument("--checkpoint-every", type=int, help="override the recipe's checkpoint interval")
    p.add_argument(
        "--max-minutes", type=float, help="stop after this many minutes of training and finish the model"
    )
    p.add_argument("--checkpoint-minutes", type=float, help="also checkpoint every this many minutes")
    p.add_argument(
        "--stop-after",
        type=int,
        metavar="N",
        help="stop after iteration N of the recipe's schedule, checkpoint there and finish the model",
    )
    p.add_argument(
        "--cache-dir",
        type=Path,
        help="where preprocessed volumes are cached (default $TCURLORA_CACHE_DIR, else "
        "$XDG_CACHE_HOME/tcurlora/volumes or ~/.cache/tcurlora/volumes)",
    )
    p.add_argument("--no-cache", action="store_true", help="preprocess every volume again, cache nothing")
    p.add_argument(
        "--finish-checkpoint",
        type=Path,
        metavar="FOLDER",
        help="do not train: evaluate the checkpoint FOLDER of an interrupted run and write it as OUTPUT",
    )
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from tcurlora.errors import ConfigError
    from tcurlora.pretraining.cache import default_cache_dir
    from tcurlora.pretraining.config import PretrainConfig
    from tcurlora.pretraining.run import finish_from_checkpoint, main_log, run_pretrain
    from tcurlora.torchrun_env import launched

    config = PretrainConfig.from_file(args.config)
    if args.iterations is not None:
        if args.iterations < 1:
            raise ConfigError(f"--iterations must be positive, got {args.iterations}")
        config.iterations = args.iterations
    if args.checkpoint_every is not None:
        config.checkpoint_every = max(1, args.checkpoint_every)
    for flag, value in (
        ("--max-minutes", args.max_minutes),
        ("--checkpoint-minutes", args.checkpoint_minutes),
    ):
        if value is not None and not value > 0:
            raise ConfigError(f"{flag} must be a positive number of minutes, got {value}")
    if args.stop_after is not None and args.stop_after < 1:
        raise ConfigError(f"--stop-after must be a positive number of iterations, got {args.stop_after}")
    data_root = args.data_root.expanduser().resolve()
    cache_dir = None if args.no_cache else (args.cache_dir or default_cache_dir()).expanduser()
    if args.finish_checkpoint is not None:
        if launched():
            raise ConfigError("--finish-checkpoint trains nothing: run it without torchrun (one process)")
        finish_from_checkpoint(
            config,
            data_root,
            args.finish_checkpoint,
            args.output,
            force=args.force,
            log=main_log,
            cache_dir=cache_dir,
        )
        return 0
    train = run_pretrain
    if launched():  # torchrun with N > 1 processes: data-parallel (tcurlora.distributed_runs)
        from tcurlora.distributed_runs import run_pretrain as train
    train(
        config,
        data_root,
        args.output,
        device_name=args.device,
        force=args.force,
        log=main_log,
        resume_from=args.resume,
        max_minutes=args.max_minutes,
        checkpoint_minutes=args.checkpoint_minutes,
        stop_after=args.stop_after,
        cache_dir=cache_dir,
    )
    return 0
