"""`tcurlora demo`: adapt the built-in base to a few cases with tCURLoRA and show Dice before and after."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:
    """Add the `demo` sub-command."""
    p = subparsers.add_parser(
        "demo",
        help="offline demo: adapt the built-in base with tCURLoRA, segment held-out cases, Dice before/after",
        description="Adapts the built-in base model with tCURLoRA to a few labeled cases (generated, or "
        "from --data, a Decathlon folder), segments held-out cases and writes the adapter, the "
        "segmentations, demo.png (overlays + loss curve) and summary.json to --output.",
    )
    p.add_argument(
        "--output", type=Path, default=Path("tcurlora-demo"), help="output folder (default ./tcurlora-demo)"
    )
    p.add_argument("--data", type=Path, help="Decathlon folder with labeled cases (default: generated cases)")
    p.add_argument("--base-model", help="base model (default: the built-in base)")
    p.add_argument("--num-train", type=int, help="training cases (default 4; --quick 2)")
    p.add_argument("--num-test", type=int, help="held-out cases (default 2; --quick 1)")
    p.add_argument("--iterations", type=int, help="training iterations (default 60; --quick 30)")
    p.add_argument("--rank", type=int, default=8, help="tCURLoRA rank (default 8)")
    p.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--quick", action="store_true", help="the reduced CI size")
    p.add_argument("--force", action="store_true", help="reuse a non-empty output folder")
    p.add_argument("--events", action="store_true", help="print JSON-lines events instead of progress")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from tcurlora.demo import DEFAULT_BASE, DemoOptions, run_demo, summary_text
    from tcurlora.errors import ConfigError
    from tcurlora.jobs.events import make_sink

    given = {
        k: v
        for k, v in {
            "num_train": args.num_train,
            "num_test": args.num_test,
            "iterations": args.iterations,
        }.items()
        if v is not None
    }
    if any(v < 1 for v in given.values()):
        raise ConfigError(f"--num-train, --num-test and --iterations must be positive, got {given}")
    common = dict(
        data=args.data,
        base_model=args.base_model or DEFAULT_BASE,
        rank=args.rank,
        seed=args.seed,
        device=args.device,
        force=args.force,
        **given,
    )
    options = (
        DemoOptions.quick(args.output, **common) if args.quick else DemoOptions(output=args.output, **common)
    )
    summary = run_demo(options, make_sink(args.events, sys.stdout))
    if not args.events:
        print(summary_text(summary))
    return 0
