"""Does labeling the cases `tcurlora suggest` picks beat labeling random ones? (docs/benchmarks.md)

Per seed: start cases and an unlabeled pool are drawn from the NON-test cases (the test split, the last
`--test-cases` labeled cases of the Decathlon folder, is never read); a fixed validation split (the same
for every seed, drawn before them) scores every adapter. An initial adapter is trained on the start
cases from the base; `tcurlora suggest --score flips` (which also gives the entropy score) ranks the
pool with it; then an adapter is trained from the base on start + the `--add` cases that each arm
picks: the most uncertain by entropy, (optionally) by flips, and `--add` at random. Every run goes
through the CLI (`python -m tcurlora finetune|suggest|segment`), exactly as a user runs it. Results are
appended, one JSON object per run, to OUTPUT/results.jsonl (a rerun skips finished runs), and
OUTPUT/summary.md is rewritten after each.

    python scripts/suggest_benchmark.py --data ../shared/data/hippocampus --test-cases 40 \\
        --start 4 --pool 20 --val 12 --add 4 --method decoder --iterations 150 --seeds 0 1 2 --output /tmp/suggest-hippo
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tcurlora.data.cases import cases_from_decathlon, dataset_label_names  # noqa: E402
from tcurlora.evaluate import evaluate_pairs  # noqa: E402


def tcurlora(*args: str, log: Path) -> str:
    """Run `python -m tcurlora ARGS`; stdout returned, both streams appended to `log`; fail loudly."""
    command = [sys.executable, "-m", "tcurlora", *args]
    started = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    with log.open("a") as f:
        f.write(f"$ {' '.join(command)}\n# exit {done.returncode}, {time.monotonic() - started:.0f} s\n")
        f.write(done.stderr[-4000:] + "\n")
    if done.returncode != 0:
        raise SystemExit(f"failed ({done.returncode}): {' '.join(command)}\n{done.stderr[-2000:]}")
    return done.stdout


def split(cases: list, args: argparse.Namespace, seed: int) -> tuple[list, list, list]:
    """(validation, start, pool): validation fixed across seeds; start and pool drawn per seed."""
    non_test = cases[: -args.test_cases]
    order = list(range(len(non_test)))
    random.Random(12345).shuffle(order)
    validation = [non_test[i] for i in order[: args.val]]
    rest = [non_test[i] for i in order[args.val :]]
    random.Random(seed).shuffle(rest)
    start, pool = rest[: args.start], rest[args.start : args.start + args.pool]
    if len(pool) < args.pool:
        raise SystemExit(f"only {len(rest)} non-test, non-validation cases; need {args.start + args.pool}")
    return validation, start, pool


def train(cases: list, out: Path, args: argparse.Namespace, seed: int, log: Path) -> float:
    """Fine-tune from the base on `cases` (--method, --iterations); returns wall seconds."""
    started = time.monotonic()
    pairs = [x for c in cases for x in ("--case", str(c.images[0]), str(c.label))]
    tcurlora(
        "finetune",
        "--base-model",
        args.base_model,
        *pairs,
        "--labels",
        *args.labels,
        "--method",
        args.method,
        "--iterations",
        str(args.iterations),
        "--seed",
        str(seed),
        "--threads",
        "1",
        "--checkpoint-every",
        "0",
        "--device",
        "cpu",
        "--force",
        "-o",
        str(out),
        log=log,
    )
    return time.monotonic() - started


def validate(adapter: Path, validation: list, out: Path, args: argparse.Namespace, log: Path) -> dict:
    """Segment the validation cases with the adapter; mean Dice over cases and classes, per class."""
    tcurlora(
        "segment",
        *[str(c.images[0]) for c in validation],
        "--base-model",
        args.base_model,
        "--adapter",
        str(adapter),
        "--overlap",
        "0.25",
        "--threads",
        "1",
        "--device",
        "cpu",
        "--force",
        "-o",
        str(out),
        log=log,
    )
    pairs = [(out / (c.images[0].name.replace(".nii.gz", "_seg.nii.gz")), c.label) for c in validation]
    result = evaluate_pairs(pairs, args.labels)
    per_class = {name: value["dice"] for name, value in result["mean"].items()}
    return {"mean_dice": statistics.mean(per_class.values()), "dice": per_class}


def pool_dice(seed: int, pool: list, args: argparse.Namespace, log: Path) -> dict:
    """Does the ranking find where the initial adapter is wrong? Its Dice on each pool case (their labels
    are used here only, never for picking) and the Spearman correlation of each score with 1 - Dice."""
    from scipy.stats import spearmanr

    work = args.output / f"seed{seed}"
    out = work / "val-pool"
    tcurlora(
        "segment",
        *[str(c.images[0]) for c in pool],
        "--base-model",
        args.base_model,
        "--adapter",
        str(work / "initial"),
        "--overlap",
        "0.25",
        "--threads",
        "1",
        "--device",
        "cpu",
        "--force",
        "-o",
        str(out),
        log=log,
    )
    ranking = {e["volume"]: e for e in json.loads((work / "ranking.json").read_text())["ranking"]}
    rows = []
    for c in pool:
        result = evaluate_pairs(
            [(out / c.images[0].name.replace(".nii.gz", "_seg.nii.gz"), c.label)], args.labels
        )
        dice = statistics.mean(v["dice"] for v in result["mean"].values())
        entry = ranking[str(c.images[0])]
        rows.append({"case": c.id, "dice": dice, "entropy": entry["entropy"], "flips": entry.get("flips")})
    error = [1 - r["dice"] for r in rows]
    report = {"seed": seed, "cases": rows}
    for score in ("entropy", "flips"):
        rho, p_value = spearmanr([r[score] for r in rows], error)
        report[f"spearman_{score}_vs_1_minus_dice"] = {"rho": float(rho), "p": float(p_value)}
    (work / "pool_dice.json").write_text(json.dumps(report, indent=1))
    return report


def summarize(rows: list[dict], output: Path) -> None:
    """summary.md: each run's Dice, and per arm the mean gain over the seed's initial adapter."""
    lines = [
        "| seed | arm | cases added | mean Dice | gain over initial | train s |",
        "|---|---|---|---:|---:|---:|",
    ]
    initial = {r["seed"]: r["mean_dice"] for r in rows if r["arm"] == "initial"}
    gains: dict[str, list[float]] = {}
    for r in rows:
        gain = r["mean_dice"] - initial[r["seed"]] if r["arm"] != "initial" and r["seed"] in initial else None
        if gain is not None:
            gains.setdefault(r["arm"], []).append(gain)
        added = ", ".join(Path(p).name.split(".")[0] for p in r.get("added", []))
        lines.append(
            f"| {r['seed']} | {r['arm']} | {added} | {r['mean_dice']:.4f} | "
            f"{'' if gain is None else f'{gain:+.4f}'} | {r['train_s']:.0f} |"
        )
    lines += ["", "| arm | seeds | mean Dice | mean gain over initial (sd) |", "|---|---:|---:|---:|"]
    for arm in sorted({r["arm"] for r in rows}):
        dice = [r["mean_dice"] for r in rows if r["arm"] == arm]
        g = gains.get(arm, [])
        sd = f" ({statistics.stdev(g):.4f})" if len(g) > 1 else ""
        lines.append(
            f"| {arm} | {len(dice)} | {statistics.mean(dice):.4f} | "
            f"{f'{statistics.mean(g):+.4f}' if g else ''}{sd} |"
        )
    (output / "summary.md").write_text("\n".join(lines) + "\n")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--test-cases", type=int, required=True, help="the last N labeled cases: never used")
    p.add_argument("--base-model", default="unetr-small-acdc-brats")
    p.add_argument("--start", type=int, default=4)
    p.add_argument("--pool", type=int, default=20)
    p.add_argument("--val", type=int, default=12)
    p.add_argument("--add", type=int, default=4)
    p.add_argument("--iterations", type=int, default=200)
    p.add_argument("--method", default="tcur", help="adaptation method of every run (default: tcur)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument(
        "--arms",
        nargs="+",
        default=["entropy", "random"],
        choices=["entropy", "flips", "random", *(f"random{k}" for k in range(1, 10))],
        help="random: one draw of --add pool cases; random1..random9: further draws",
    )
    p.add_argument("--output", type=Path, required=True)
    p.add_argument(
        "--pool-dice",
        action="store_true",
        help="only score the initial adapters' Dice on their pools against the ranking (after a run)",
    )
    args = p.parse_args()
    args.labels = dataset_label_names(args.data)
    cases = cases_from_decathlon(args.data)
    args.output.mkdir(parents=True, exist_ok=True)
    results, log = args.output / "results.jsonl", args.output / "commands.log"
    rows = [json.loads(line) for line in results.read_text().splitlines()] if results.exists() else []
    finished = {(r["seed"], r["arm"]) for r in rows}

    def record(row: dict) -> None:
        rows.append(row)
        with results.open("a") as f:
            f.write(json.dumps(row) + "\n")
        summarize(rows, args.output)
        print(json.dumps(row), flush=True)

    for seed in args.seeds:
        validation, start, pool = split(cases, args, seed)
        if args.pool_dice:
            report = pool_dice(seed, pool, args, log)
            print(json.dumps({k: v for k, v in report.items() if k != "cases"}), flush=True)
            continue
        work = args.output / f"seed{seed}"
        initial = work / "initial"
        if (seed, "initial") not in finished:
            seconds = train(start, initial, args, seed, log)
            record(
                {
                    "seed": seed,
                    "arm": "initial",
                    "start": [c.id for c in start],
                    "train_s": seconds,
                    "validation": [c.id for c in validation],
                    **validate(initial, validation, work / "val-initial", args, log),
                }
            )
        ranking_file = work / "ranking.json"
        if not ranking_file.exists():
            text = tcurlora(
                "suggest",
                *[str(c.images[0]) for c in pool],
                "--base-model",
                args.base_model,
                "--adapter",
                str(initial),
                "--score",
                "flips",
                "--threads",
                "1",
                "--device",
                "cpu",
                "--overlap",
                "0.25",
                "--json",
                log=log,
            )
            ranking_file.write_text(text)
        ranking = json.loads(ranking_file.read_text())["ranking"]
        by_image = {str(c.images[0]): c for c in pool}
        picks = {
            "flips": [by_image[e["volume"]] for e in ranking[: args.add]],
            "entropy": [
                by_image[e["volume"]] for e in sorted(ranking, key=lambda e: -e["entropy"])[: args.add]
            ],
            "random": random.Random(1000 + seed).sample(pool, args.add),
            **{
                f"random{k}": random.Random(1000 + seed + 7919 * k).sample(pool, args.add)
                for k in range(1, 10)
            },
        }
        for arm in args.arms:
            if (seed, arm) in finished:
                continue
            out = work / arm
            seconds = train(start + picks[arm], out, args, seed, log)
            record(
                {
                    "seed": seed,
                    "arm": arm,
                    "added": [str(c.images[0]) for c in picks[arm]],
                    "train_s": seconds,
                    **validate(out, validation, work / f"val-{arm}", args, log),
                }
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
