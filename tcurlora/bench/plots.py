"""PNG plots of a benchmark report: Dice vs trainable parameters, Dice per method over test cases,
training loss curves. Written with matplotlib's Agg backend (no display needed)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from tcurlora.bench.summary import quality_rows
from tcurlora.fsutil import atomic_file

COLORS = {
    "tcur": "tab:red",
    "lora": "tab:blue",
    "decoder": "tab:green",
    "full": "black",
    "head": "tab:gray",
    "scratch": "tab:brown",
}


def _save(figure, path: Path) -> Path:
    with atomic_file(path, suffix=".png") as temp:
        figure.savefig(temp, dpi=110, bbox_inches="tight")
    return path


def dice_vs_parameters(rows: list[dict[str, Any]], path: Path, plt) -> Path:
    figure, axes = plt.subplots(figsize=(7, 4.5))
    for row in rows:
        if row.get("mean_dice") is None:
            continue
        method = row["method"]["method"]
        axes.scatter(
            row["parameters"]["trainable"],
            row["mean_dice"],
            color=COLORS[method],
            marker="o" if not row["method"]["conv_targets"] else "^",
            s=30,
        )
        axes.annotate(
            f"{row['label']} k={row['k']}",
            (row["parameters"]["trainable"], row["mean_dice"]),
            fontsize=6,
            xytext=(3, 2),
            textcoords="offset points",
        )
    axes.set_xscale("log")
    axes.set_xlabel("trainable parameters (log)")
    axes.set_ylabel("mean Dice on the test split")
    axes.set_title("Dice vs trainable parameters")
    for method, color in COLORS.items():
        axes.scatter([], [], color=color, label=method)
    axes.legend(fontsize=7)
    try:
        return _save(figure, path)
    finally:
        plt.close(figure)


def dice_boxes(rows: list[dict[str, Any]], k: int, path: Path, plt) -> Path:
    at_k = [r for r in rows if r["k"] == k and r.get("case_dice")]
    figure, axes = plt.subplots(figsize=(max(5, 0.6 * len(at_k) + 2), 4.5))
    axes.boxplot([r["case_dice"] for r in at_k], showmeans=True)
    axes.set_xticks(range(1, len(at_k) + 1), [r["label"] for r in at_k], rotation=60, ha="right", fontsize=7)
    axes.set_ylabel("Dice per test case (mean over classes)")
    axes.set_title(f"Dice per method over test cases and seeds, k = {k}")
    try:
        return _save(figure, path)
    finally:
        plt.close(figure)


def loss_curves(runs: list[dict[str, Any]], k: int, path: Path, plt) -> Path:
    curves: dict[str, list[list[float]]] = defaultdict(list)
    methods = {}
    for run in runs:
        if run["k"] == k and run.get("status") == "ok":
            curves[run["method"]["label"]].append([v for v in run["losses"] if v is not None])
            methods[run["method"]["label"]] = run["method"]["method"]
    figure, axes = plt.subplots(figsize=(7, 4.5))
    palette = plt.get_cmap("tab20")
    styles = {"tcur": "-", "lora": "--"}
    for index, (label, seeds) in enumerate(curves.items()):
        length = min(len(s) for s in seeds)
        mean = [sum(s[i] for s in seeds) / len(seeds) for i in range(length)]
        axes.plot(
            range(1, length + 1),
            mean,
            label=label,
            color=palette(index % 20),
            linewidth=0.9,
            linestyle=styles.get(methods[label], ":"),
        )
    axes.set_xlabel("iteration")
    axes.set_ylabel("training loss (DiceCE), mean over seeds")
    axes.set_title(f"Training loss, k = {k}")
    axes.legend(fontsize=6, ncol=2)
    try:
        return _save(figure, path)
    finally:
        plt.close(figure)


def write_plots(report: dict[str, Any], output: Path) -> list[Path]:
    """The plots of a report with quality runs (none for cost-only reports); returns their paths."""
    quality = report.get("quality")
    if not quality or not any(r.get("status") == "ok" for r in quality["runs"]):
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = quality_rows(quality)
    paths = [dice_vs_parameters(rows, output / "dice_vs_parameters.png", plt)]
    for k in sorted({r["k"] for r in rows}):
        paths.append(dice_boxes(rows, k, output / f"dice_per_case_k{k}.png", plt))
        paths.append(loss_curves(quality["runs"], k, output / f"loss_curves_k{k}.png", plt))
    return paths
