"""Aggregate run records into table rows (one per method and k) and plain-language findings."""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from typing import Any

from tcurlora.bench.config import MethodSpec
from tcurlora.bench.paired import case_mean_dice, mean_over_seeds, paired_differences, paired_summary

# What `tcurlora finetune --method tcur` does by default (rank 8, top-norm selection, Conv3d targets).
DEFAULT_SETTING = MethodSpec("tcur", conv_targets=True).label


def _mean(values: list[float]) -> float | None:
    values = [v for v in values if v is not None and math.isfinite(v)]
    return float(statistics.fmean(values)) if values else None


def _sd(values: list[float]) -> float | None:
    values = [v for v in values if v is not None]
    return float(statistics.stdev(values)) if len(values) > 1 else None


def _median(values: list[float | None]) -> float | None:
    values = [v for v in values if v is not None]
    return float(statistics.median(values)) if values else None


def run_mean_dice(run: dict[str, Any]) -> float:
    """A run's Dice averaged over classes (each class already averaged over the test cases)."""
    return float(statistics.fmean(v["dice"] for v in run["test"]["mean"].values()))


def case_dice(run: dict[str, Any]) -> list[float]:
    """Each test case's Dice averaged over classes."""
    return [case_mean_dice(case) for case in run["test"]["cases"]]


def quality_rows(quality: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per (k, method label), in config order, with means over seeds; ratio to full at the same k."""
    groups: dict[tuple[int, str], list[dict[str, Any]]] = defaultdict(list)
    for run in quality["runs"]:
        groups[(run["k"], run["method"]["label"])].append(run)
    rows = []
    for (k, label), runs in groups.items():
        ok = [r for r in runs if r.get("status") == "ok"]
        row: dict[str, Any] = {
            "k": k,
            "label": label,
            "method": runs[0]["method"],
            "runs": len(runs),
            "failed": len(runs) - len(ok),
        }
        if ok:
            names = quality["label_names"]
            latency = [r.get("latency", {}) for r in ok]
            row.update(
                {
                    "parameters": ok[0]["parameters"],
                    "dice": {n: _mean([r["test"]["mean"][n]["dice"] for r in ok]) for n in names},
                    "hd95": {n: _mean([r["test"]["mean"][n]["hd95"] for r in ok]) for n in names},
                    "hd95_infinite": {
                        n: sum(r["test"]["mean"][n]["hd95_infinite"] for r in ok) for n in names
                    },
                    "test_cases": sum(len(r["test"]["cases"]) for r in ok),
                    "mean_dice": _mean([run_mean_dice(r) for r in ok]),
                    "mean_dice_sd": _sd([run_mean_dice(r) for r in ok]),
                    "adapter_bytes": ok[0]["adapter_bytes"],
                    "step_time_s": _median([r["step_time_s"]["median"] for r in ok]),
                    "peak_memory_bytes": _median([r["peak_memory"].get("bytes") for r in ok]),
                    "peak_memory_kind": ok[0]["peak_memory"].get("kind"),
                    "adapt_wall_s": _mean([r["adapt_wall_s"] for r in ok]),
                    "latency_unmerged_s": _median([x.get("unmerged_median_s") for x in latency]),
                    "latency_merged_s": _median([x.get("merged_median_s") for x in latency]),
                    "case_dice": [d for r in ok for d in case_dice(r)],
                }
            )
        rows.append(row)
    for row in rows:
        full = next(
            (r for r in rows if r["k"] == row["k"] and r["label"] == "full" and r.get("mean_dice")), None
        )
        row["ratio_to_full"] = (
            row["mean_dice"] / full["mean_dice"] if full and row.get("mean_dice") is not None else None
        )
    return rows


def cost_rows(cost: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per cost run."""
    rows = []
    for result in cost:
        row = {"label": result["method"]["label"], "method": result["method"], "status": result.get("status")}
        if result.get("status") == "ok":
            row.update(
                {
                    "parameters": result["parameters"],
                    "step_time_s": result["step_time_s"]["median"],
                    "step_time_min_s": result["step_time_s"].get("min"),
                    "peak_memory_bytes": result["peak_memory"].get("bytes"),
                    "peak_memory_kind": result["peak_memory"].get("kind"),
                    "latency_unmerged_s": result["forward_latency"]["unmerged_s"],
                    "latency_merged_s": result["forward_latency"]["merged_s"],
                    "img_size": result["img_size"],
                    "batch_size": result["batch_size"],
                    "device": result["device"],
                }
            )
        else:
            row["error"] = result.get("error")
        rows.append(row)
    return rows


def _pct(value: float) -> str:
    return f"{100 * value:.1f}%"


def _times(a: float, b: float) -> str:
    """'1.8x slower' style comparison of a cost a against b (lower is better)."""
    if not a or not b:
        return "n/a"
    ratio = a / b
    text = f"{ratio:.2f}x" if ratio >= 0.1 else f"1/{1 / ratio:,.0f}"
    return f"{text} ({'same' if abs(ratio - 1) < 0.005 else 'lower' if ratio < 1 else 'higher'})"


def _verdict(diff: float) -> str:
    """WIN/LOSS for tCURLoRA; differences below the third decimal of Dice are a TIE."""
    return "TIE" if abs(diff) < 5e-4 else "WIN" if diff > 0 else "LOSS"


def _quality_findings(rows: list[dict[str, Any]]) -> list[str]:
    lines = []
    for k in sorted({r["k"] for r in rows}):
        at_k = [r for r in rows if r["k"] == k and r.get("mean_dice") is not None]
        tcur = [r for r in at_k if r["method"]["method"] == "tcur"]
        by_label = {r["label"]: r for r in at_k}
        if not tcur:
            continue
        best = max(tcur, key=lambda r: r["mean_dice"])
        if (
            best["ratio_to_full"] is not None
            and DEFAULT_SETTING in by_label
            and best["label"] != DEFAULT_SETTING
        ):
            default = by_label[DEFAULT_SETTING]
            lines.append(
                f"k={k}: the default setting {DEFAULT_SETTING} reaches {_pct(default['ratio_to_full'])} of full "
                f"fine-tuning's mean Dice ({default['mean_dice']:.3f})."
            )
        if best["ratio_to_full"] is not None:
            ratio = best["ratio_to_full"]
            verdict = "WIN (reaches the paper's >= 98%)" if ratio >= 0.98 else "LOSS (below the paper's 98%)"
            lines.append(
                f"k={k}: best tCURLoRA ({best['label']}, {best['parameters']['trainable']:,} trainable) "
                f"reaches {_pct(ratio)} of full fine-tuning's mean Dice "
                f"({best['mean_dice']:.3f} vs {by_label['full']['mean_dice']:.3f}): {verdict}."
            )
        for peer in ("decoder", "head"):
            if peer in by_label:
                diff = best["mean_dice"] - by_label[peer]["mean_dice"]
                lines.append(
                    f"k={k}: best tCURLoRA vs {peer}-only: {diff:+.3f} mean Dice "
                    f"({_verdict(diff)}; {peer} trains "
                    f"{by_label[peer]['parameters']['trainable']:,} parameters)."
                )
        for lora in (r for r in at_k if r["method"]["method"] == "lora"):
            size = max(1, lora["parameters"]["adapter"])
            near = min(tcur, key=lambda r: abs(math.log(max(1, r["parameters"]["adapter"]) / size)))
            diff = near["mean_dice"] - lora["mean_dice"]
            lines.append(
                f"k={k}: {near['label']} ({near['parameters']['adapter']:,} adapter parameters) vs "
                f"{lora['label']} ({lora['parameters']['adapter']:,}): {diff:+.3f} mean Dice "
                f"({_verdict(diff)} for tCURLoRA at "
                f"{near['parameters']['adapter'] / size:.2g}x LoRA's adapter parameters)."
            )
    return lines


def _cost_findings(rows: list[dict[str, Any]], where: str) -> list[str]:
    lines = []
    ok = [r for r in rows if r.get("step_time_s") is not None]
    tcur = [r for r in ok if r["method"]["method"] == "tcur"]
    plain = [r for r in tcur if r["method"]["selection"] == "topnorm" and not r["method"]["conv_targets"]]
    for t in plain or tcur:  # one line per tCURLoRA rank: vs LoRA of the same rank (else every LoRA), vs full
        loras = [r for r in ok if r["method"]["method"] == "lora"]
        same = [r for r in loras if r["method"]["rank"] == t["method"]["rank"]]
        for p in (same or loras) + [r for r in ok if r["method"]["method"] == "full"]:
            line = f"{where}: {t['label']} vs {p['label']}: step time {_times(t['step_time_s'], p['step_time_s'])}"
            if t.get("peak_memory_bytes") and p.get("peak_memory_bytes"):
                line += f", peak memory {_times(t['peak_memory_bytes'], p['peak_memory_bytes'])}"
            if t.get("adapter_bytes") and p.get("adapter_bytes"):
                line += f", adapter file {_times(t['adapter_bytes'], p['adapter_bytes'])}"
            lines.append(line + ".")
    return lines


def default_label(report: dict[str, Any]) -> str | None:
    """The benchmark's default method: the first method entry of its config (else of its runs)."""
    methods = (report.get("config") or {}).get("methods") or []
    if methods:
        return methods[0]["label"]
    runs = report.get("quality", {}).get("runs", [])
    return runs[0]["method"]["label"] if runs else None


def base_contribution(report: dict[str, Any]) -> list[dict[str, Any]]:
    """What the pretrained base contributes, where a `scratch` run (the base's architecture trained from
    random initialisation) is present: one row per (k, seed, method label) with the method's mean Dice,
    scratch's, and the difference, then one row per (k, method label) with seed None: the means over
    the seeds both have. Each row also compares the two case by case (`paired_summary`: cases better /
    worse, a bootstrap interval of the mean difference; the mean rows average each case over the seeds).
    Empty without a scratch run."""
    quality = report.get("quality") or {}
    ok = [r for r in quality.get("runs", []) if r.get("status") == "ok"]
    scratch = {(r["k"], r["seed"]): r for r in ok if r["method"]["method"] == "scratch"}
    if not scratch:
        return []
    rows: list[dict[str, Any]] = []
    case_differences: list[dict[str, float]] = []  # per row, for the mean rows' per-case means
    for run in ok:
        key = (run["k"], run["seed"])
        if run["method"]["method"] == "scratch" or key not in scratch:
            continue
        dice, scratch_dice = run_mean_dice(run), run_mean_dice(scratch[key])
        differences = paired_differences(run, scratch[key])
        case_differences.append(differences)
        rows.append(
            {
                "k": run["k"],
                "seed": run["seed"],
                "label": run["method"]["label"],
                "mean_dice": dice,
                "scratch_dice": scratch_dice,
                "difference": dice - scratch_dice,
                **paired_summary(differences),
            }
        )
    means = []
    for k in sorted({r["k"] for r in rows}):
        for label in dict.fromkeys(r["label"] for r in rows if r["k"] == k):
            members = [i for i, r in enumerate(rows) if r["k"] == k and r["label"] == label]
            group = [rows[i] for i in members]
            means.append(
                {
                    "k": k,
                    "seed": None,
                    "label": label,
                    "seeds": len(group),
                    "mean_dice": _mean([r["mean_dice"] for r in group]),
                    "scratch_dice": _mean([r["scratch_dice"] for r in group]),
                    "difference": _mean([r["difference"] for r in group]),
                    **paired_summary(mean_over_seeds([case_differences[i] for i in members])),
                }
            )
    return rows + means


def findings(report: dict[str, Any]) -> list[str]:
    """Plain statements of where tCURLoRA wins and loses, computed from the numbers."""
    lines = []
    if "quality" in report:
        rows = quality_rows(report["quality"])
        lines += _quality_findings(rows)
        largest_k = max((r["k"] for r in rows), default=None)
        lines += _cost_findings([r for r in rows if r["k"] == largest_k], f"training at k={largest_k}")
    if "cost" in report:
        rows = cost_rows(report["cost"])
        size = next((r["img_size"] for r in rows if r.get("img_size")), "?")
        lines += _cost_findings(rows, f"synthetic {size}^3 batches")
    return lines
