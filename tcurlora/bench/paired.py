"""Paired per-case comparison of two runs on the same test cases: which cases each wins, and a bootstrap
interval of the mean difference, so that a report can say whether a gap is larger than its noise.

The unit of resampling is the test case (every method of a benchmark is scored on the same cases), so the
interval reflects how much the mean difference depends on which cases were tested; seeds are averaged
per case first. Plain Python and seeded: the same numbers give the same interval everywhere.
"""

from __future__ import annotations

import math
import random
import statistics
from typing import Any

BOOTSTRAP_DRAWS = 2000
INTERVAL_LEVEL = 0.95


def case_mean_dice(case: dict[str, Any]) -> float:
    """One test case's Dice averaged over classes."""
    return float(statistics.fmean(c["dice"] for c in case["classes"].values()))


def case_dice_by_id(run: dict[str, Any]) -> dict[str, float]:
    """Each test case's Dice averaged over classes, by case id."""
    return {case["id"]: case_mean_dice(case) for case in run["test"]["cases"]}


def paired_differences(run: dict[str, Any], reference: dict[str, Any]) -> dict[str, float]:
    """Per case id both runs scored with a finite Dice: the run's Dice minus the reference's."""
    mine, theirs = case_dice_by_id(run), case_dice_by_id(reference)
    differences = {case: mine[case] - theirs[case] for case in mine if case in theirs}
    return {case: value for case, value in differences.items() if math.isfinite(value)}


def mean_over_seeds(per_seed: list[dict[str, float]]) -> dict[str, float]:
    """Each case's difference averaged over the seeds, for the cases every seed scored."""
    if not per_seed:
        return {}
    shared = [case for case in per_seed[0] if all(case in d for d in per_seed[1:])]
    return {case: statistics.fmean(d[case] for d in per_seed) for case in shared}


def bootstrap_interval(
    differences: list[float], *, draws: int = BOOTSTRAP_DRAWS, level: float = INTERVAL_LEVEL, seed: int = 0
) -> tuple[float, float] | None:
    """Percentile bootstrap interval of the mean of `differences` (cases drawn with replacement), or None
    for fewer than two cases."""
    if len(differences) < 2:
        return None
    rng = random.Random(seed)
    n = len(differences)
    means = sorted(statistics.fmean(rng.choices(differences, k=n)) for _ in range(draws))
    tail = (1.0 - level) / 2.0
    low = means[int(tail * (draws - 1))]
    high = means[int(round((1.0 - tail) * (draws - 1)))]
    return float(low), float(high)


def paired_summary(differences: dict[str, float]) -> dict[str, Any]:
    """How many cases are better / worse, and the bootstrap interval of the mean difference."""
    values = list(differences.values())
    interval = bootstrap_interval(values)
    return {
        "cases": len(values),
        "better": sum(1 for v in values if v > 0),
        "worse": sum(1 for v in values if v < 0),
        "interval": list(interval) if interval else None,
    }
