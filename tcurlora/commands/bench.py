"""`tcurlora bench CONFIG --output DIR`: fine-tune with each method, evaluate, measure cost, report."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from tcurlora.filenames import BENCH_MARKDOWN_FILE, BENCH_REPORT_FILE


def register(subparsers: Any) -> None:
    """Add the `bench` sub-command."""
    p = subparsers.add_parser(
        "bench",
        help="benchmark tCURLoRA against LoRA, decoder-only, head-only and full fine-tuning",
        description="Run a benchmark config (configs/bench/*.json): every method on k labeled cases and "
        "seeds, evaluated on a fixed test split, plus cost on synthetic batches. Writes report.json, "
        "report.md and PNG plots into --output.",
    )
    p.add_argument("config", type=Path, nargs="?", help="benchmark config JSON (schema tcurlora.bench/1)")
    p.add_argument("--output", "-o", type=Path, help="output folder for the report and the runs")
    p.add_argument(
        "--only", choices=("quality", "cost"), help="run only the quality runs or only the cost runs"
    )
    p.add_argument("--data", type=Path, help="replace the config's Decathlon folder")
    p.add_argument("--base-model", help="replace the config's base model")
    p.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        help="replace the config's devices (quality and cost runs)",
    )
    p.add_argument(
        "--in-process",
        action="store_true",
        help="run everything in this process (faster start; peak memory then not per run)",
    )
    p.add_argument("--resume", action="store_true", help="keep finished runs of an earlier, interrupted call")
    p.add_argument("--force", action="store_true", help="replace an existing report in --output")
    p.add_argument(
        "--report-only",
        type=Path,
        metavar="DIR",
        help="rewrite report.md and the plots of an existing benchmark folder from its report.json",
    )
    p.set_defaults(func=main)


def command_line(args: argparse.Namespace) -> str:
    """The command as a user would type it, recorded in the report (with torchrun when it started it)."""
    from tcurlora.bench import ranks

    launcher = ["torchrun", f"--nproc-per-node={ranks.world()}", "-m"] if ranks.launched() else []
    parts = [*launcher, "tcurlora", "bench", str(args.config), "--output", str(args.output)]
    for flag, value in (
        ("--only", args.only),
        ("--data", args.data),
        ("--base-model", args.base_model),
        ("--device", args.device),
    ):
        if value is not None:
            parts += [flag, str(value)]
    parts += [
        flag
        for flag, on in (
            ("--in-process", args.in_process),
            ("--resume", args.resume),
            ("--force", args.force),
        )
        if on
    ]
    return " ".join(parts)


def main(args: argparse.Namespace) -> int:
    from tcurlora.bench.config import load_config
    from tcurlora.bench.report import read_report, write_report
    from tcurlora.bench.runner import run_benchmark
    from tcurlora.errors import EXIT_INTERNAL, ConfigError

    if args.report_only is not None:
        from tcurlora.bench import ranks

        if not ranks.is_writer():  # torchrun, rank > 0: rank 0 rewrites the report
            return 0
        paths = write_report(read_report(args.report_only), args.report_only)
        print(f"wrote {paths['markdown']}")
        return 0
    if args.config is None or args.output is None:
        raise ConfigError("give a benchmark CONFIG and --output DIR (or --report-only DIR)")
    config = load_config(args.config)
    if args.data is not None:
        config.data = args.data.expanduser().resolve()
    if args.base_model:
        config.base_model = args.base_model
    if args.device:
        config.device = args.device
        if config.cost is not None:
            config.cost.device = args.device
    if args.in_process:
        config.isolate = False
    command = command_line(args)

    def log(message: str) -> None:
        print(message, flush=True)

    report = run_benchmark(
        config, args.output, force=args.force, resume=args.resume, only=args.only, command=command, log=log
    )
    if not report:  # torchrun, rank > 0: rank 0 reports
        return 0
    print(f"wrote {args.output / BENCH_MARKDOWN_FILE} and {args.output / BENCH_REPORT_FILE}")
    failed = [
        r
        for r in report.get("quality", {}).get("runs", []) + report.get("cost", [])
        if r.get("status") != "ok"
    ]
    if failed:
        print(f"tcurlora bench: {len(failed)} run(s) failed; see 'Failed runs' in report.md", file=sys.stderr)
        return EXIT_INTERNAL
    return 0
