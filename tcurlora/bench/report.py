"""Benchmark report files: report.json (every number), report.md (tables + findings) and PNG plots."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from tcurlora.bench.summary import base_contribution, cost_rows, default_label, findings, quality_rows
from tcurlora.errors import InputError
from tcurlora.filenames import BENCH_MARKDOWN_FILE, BENCH_REPORT_FILE
from tcurlora.fsutil import atomic_write_text


def _num(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _bytes(value: int | None) -> str:
    from tcurlora.adapters.counts import human_size

    return "n/a" if value is None else human_size(int(value))


def _hd95(row: dict[str, Any], name: str) -> str:
    """Mean finite HD95, with how many test cases had an empty prediction or reference (infinite)."""
    infinite = row["hd95_infinite"][name]
    text = _num(row["hd95"][name], 2) if row["hd95"][name] is not None else "inf"
    return (
        f"{text} ({infinite}/{row['test_cases']} inf)" if infinite and row["hd95"][name] is not None else text
    )


def _params(parameters: dict[str, Any]) -> str:
    return f"{parameters['trainable']:,} ({parameters['trainable_percent']:.3g}%)"


def header_lines(report: dict[str, Any]) -> list[str]:
    env = report["environment"]
    versions = ", ".join(f"{k} {v}" for k, v in env["versions"].items())
    lines = [f"# Benchmark `{report['name']}`", ""]
    if report.get("description"):
        lines += [report["description"], ""]
    lines += [
        f"- command: `{report['command']}`",
        f"- device: {env['device']} ({env['cpu']}, {env['cpu_count']} CPU cores, {env['torch_threads']} torch threads)",
        f"- versions: {versions}; Python {env['python']}; {env['platform']}",
        f"- git commit: {env.get('git_commit') or 'unknown'}",
        *(
            [
                f"- processes: {report['processes']} (torchrun; the quality runs split across them, each run by one)"
            ]
            if report.get("processes")
            else []
        ),
        f"- finished: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(report.get('finished', time.time())))}",
    ]
    quality = report.get("quality")
    if quality:
        base = quality["base_model"]
        settings = quality["settings"]
        cfg = report["config"]
        base_patch = "the base model's"
        lines += [
            f"- base model: `{base['reference']}` ({base['arch']}, fingerprint {base['fingerprint'][:12]}, "
            f"{'pretrained' if base['pretrained'] else 'RANDOM INIT, not pretrained'})",
            f"- data: {quality['data']}; fixed test split of {len(quality['test_case_ids'])} cases "
            f"({quality['test_case_ids'][0]} .. {quality['test_case_ids'][-1]}); k drawn from the other "
            f"{quality['pool_size']} per seed; k = {cfg['k']}, seeds = {cfg['seeds']}",
            f"- training: {settings['iterations']} iterations, batch {settings['batch_size']}, patch "
            f"{settings['patch_size'] or base_patch}, method-default learning rates unless given",
        ]
        if base.get("note"):
            lines += ["", f"> **Note:** {base['note']}"]
    return lines + [""]


def quality_table(quality: dict[str, Any]) -> list[str]:
    names = quality["label_names"]
    lines = []
    rows = quality_rows(quality)
    for k in sorted({r["k"] for r in rows}):
        lines += [
            f"### k = {k} labeled cases",
            "",
            "| method | trainable (%) | " + " | ".join(f"Dice {n}" for n in names) + " | mean Dice (sd) | "
            "ratio to full | " + " | ".join(f"HD95 {n} (mm)" for n in names) + " | adapter file | "
            "step time (s) | peak memory | adapt wall (s) | latency unmerged / merged (s) |",
            "|---|---:|"
            + "---:|" * len(names)
            + "---:|---:|"
            + "---:|" * len(names)
            + "---:|---:|---:|---:|---:|",
        ]
        for row in (r for r in rows if r["k"] == k):
            if row.get("mean_dice") is None:
                lines.append(
                    f"| {row['label']} | failed ({row['failed']}/{row['runs']} runs) |"
                    + " |" * (2 * len(names) + 7)
                )
                continue
            sd = f" ({_num(row['mean_dice_sd'])})" if row["mean_dice_sd"] is not None else ""
            cells = [
                row["label"],
                _params(row["parameters"]),
                *[_num(row["dice"][n]) for n in names],
                _num(row["mean_dice"]) + sd,
                _num(row["ratio_to_full"]),
                *[_hd95(row, n) for n in names],
                _bytes(row["adapter_bytes"]),
                _num(row["step_time_s"]),
                _bytes(row["peak_memory_bytes"]),
                _num(row["adapt_wall_s"], 1),
                f"{_num(row['latency_unmerged_s'], 2)} / {_num(row['latency_merged_s'], 2)}",
            ]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    kind = next((r.get("peak_memory_kind") for r in rows if r.get("peak_memory_kind")), "n/a")
    lines += [
        f"Dice and HD95: means over the test cases, then over seeds (sd over seeds). HD95: 95th percentile "
        f"of pooled symmetric surface distances, mean over cases where it is finite ('n/m inf': n of m cases had an empty prediction, so infinite HD95). Step time: median "
        f"interval between training steps after the warm-up (includes data loading). Peak memory: {kind}. "
        f"Latency: sliding-window inference per test volume, median.",
        "",
    ]
    return lines


LOSS_TO_SCRATCH = "**LOSS: the base does not beat scratch**"


def _paired(row: dict[str, Any]) -> tuple[str, str]:
    """The 'cases better / worse' and '95% interval' cells of a contribution row."""
    counts = f"{row['better']} / {row['worse']} of {row['cases']}"
    interval = row.get("interval")
    return counts, ("n/a" if not interval else f"[{interval[0]:+.3f}, {interval[1]:+.3f}]")


def _within_noise(row: dict[str, Any]) -> bool:
    """Whether the interval of the mean per-case difference holds 0 (the gap is not told from noise)."""
    interval = row.get("interval")
    return bool(interval) and interval[0] <= 0.0 <= interval[1]


def contribution_table(report: dict[str, Any]) -> list[str]:
    """'What the base contributes': each method's mean Dice minus scratch's (the base's architecture
    trained from random initialisation), per (k, seed) and as means over seeds, with the cases each wins
    and a bootstrap interval of the mean per-case difference; the default method (the config's first)
    not above scratch is a LOSS, in bold. Empty without a scratch run."""
    rows = base_contribution(report)
    if not rows:
        return []
    default = default_label(report)
    lines = [
        "## What the base contributes (each method's mean Dice minus scratch's)",
        "",
        "`scratch` is the base's architecture trained from random initialisation (seeded by the run's seed), "
        "every weight trained: a difference above 0 is what the pretrained weights add. Cases better / worse: "
        "test cases where the method's Dice is above / below scratch's; interval: 95% bootstrap interval of "
        "the mean per-case difference (test cases resampled; the mean rows average each case over the seeds). "
        "An interval that holds 0 is a difference this test split cannot tell from noise.",
        "",
        "| k | seed | method | mean Dice | scratch mean Dice | difference | cases better / worse | 95% interval "
        "| verdict |",
        "|---:|---:|---|---:|---:|---:|---:|---:|---|",
    ]
    verdicts = []
    for row in rows:
        seed = "mean" if row["seed"] is None else str(row["seed"])
        verdict = ""
        if row["label"] == default:
            verdict = "above scratch" if row["difference"] > 0 else LOSS_TO_SCRATCH
            if row["seed"] is None:
                noise = " (within noise: the 95% interval holds 0)" if _within_noise(row) else ""
                verdicts.append(
                    f"- k={row['k']}: the default method {default} "
                    f"{'is above' if row['difference'] > 0 else 'is not above'} scratch by "
                    f"{row['difference']:+.3f} mean Dice (over {row['seeds']} seed{'s' if row['seeds'] != 1 else ''})"
                    + noise
                    + ("." if row["difference"] > 0 else f": {LOSS_TO_SCRATCH}.")
                )
        counts, interval = _paired(row)
        lines.append(
            f"| {row['k']} | {seed} | {row['label']} | {_num(row['mean_dice'])} | {_num(row['scratch_dice'])} | "
            f"{row['difference']:+.3f} | {counts} | {interval} | {verdict} |"
        )
    return lines + [""] + verdicts + ([""] if verdicts else [])


def cost_table(cost: list[dict[str, Any]]) -> list[str]:
    rows = cost_rows(cost)
    first = next((r for r in rows if r.get("img_size")), None)
    lines = []
    if first:
        lines += [
            f"Synthetic batches of {first['batch_size']} x {first['img_size']}^3 on {first['device']}; "
            f"median step (forward + backward + AdamW) after warm-up; forward latency batch 1, no grad.",
            "",
        ]
    lines += [
        "| method | trainable (%) | adapter params | step time median (min) (s) | peak memory | forward unmerged (s) | "
        "forward merged (s) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        if row["status"] != "ok":
            lines.append(f"| {row['label']} | failed: {row.get('error')} | | | | | |")
            continue
        lines.append(
            f"| {row['label']} | {_params(row['parameters'])} | {row['parameters']['adapter']:,} | "
            f"{_num(row['step_time_s'])} ({_num(row['step_time_min_s'])}) | {_bytes(row['peak_memory_bytes'])} | "
            f"{_num(row['latency_unmerged_s'])} | {_num(row['latency_merged_s'])} |"
        )
    kind = first["peak_memory_kind"] if first else "n/a"
    return lines + ["", f"Peak memory: {kind}.", ""]


def failed_lines(report: dict[str, Any]) -> list[str]:
    runs = [
        r
        for r in report.get("quality", {}).get("runs", []) + report.get("cost", [])
        if r.get("status") != "ok"
    ]
    if not runs:
        return []
    return (
        ["## Failed runs", ""]
        + [f"- {r.get('run_id', r['method']['label'])}: {r.get('kind')}: {r.get('error')}" for r in runs]
        + [""]
    )


def to_markdown(report: dict[str, Any], plots: list[str] | None = None) -> str:
    """The whole report as Markdown (plots are linked by their file names)."""
    lines = header_lines(report)
    if report.get("quality"):
        lines += ["## Quality on the fixed test split", ""] + quality_table(report["quality"])
        lines += contribution_table(report)
    if report.get("cost"):
        lines += ["## Cost on synthetic batches", ""] + cost_table(report["cost"])
    statements = findings(report)
    if statements:
        lines += ["## Where tCURLoRA wins and loses (computed from the numbers above)", ""]
        lines += [f"- {s}" for s in statements] + [""]
    if plots:
        lines += ["## Plots", ""] + [f"![{Path(p).stem}]({Path(p).name})" for p in plots] + [""]
    return "\n".join(lines + failed_lines(report))


def write_report(report: dict[str, Any], output: Path) -> dict[str, Path]:
    """Write report.json, the PNG plots and report.md into `output`."""
    from tcurlora.bench.plots import write_plots
    from tcurlora.jobs.events import json_safe

    output = Path(output)
    paths = {
        "json": atomic_write_text(
            output / BENCH_REPORT_FILE, json.dumps(json_safe(report), indent=1, allow_nan=False) + "\n"
        )
    }
    plots = write_plots(report, output)
    paths["markdown"] = atomic_write_text(
        output / BENCH_MARKDOWN_FILE, to_markdown(report, [str(p) for p in plots])
    )
    return paths


def read_report(folder: Path) -> dict[str, Any]:
    """report.json of a finished benchmark folder."""
    path = Path(folder) / BENCH_REPORT_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as error:
        raise InputError("no benchmark report here", path) from error
    except (OSError, json.JSONDecodeError) as error:
        raise InputError(f"unreadable benchmark report: {error}", path) from error
