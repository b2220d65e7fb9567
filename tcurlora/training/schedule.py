"""The one learning-rate schedule of fine-tuning and pretraining: linear warm-up, then cosine decay.

Both schedules are factors of each parameter group's peak rate (`OptimStep` multiplies them in), so
fine-tuning's per-role rates and pretraining's single rate follow the same curve.
"""

from __future__ import annotations

import math

# Fine-tuning warms up over this share of its iterations (pretraining recipes name their warm-up steps).
WARMUP_FRACTION = 0.05


def warmup_cosine(iteration: int, total: int, warmup: int, floor: float = 0.0) -> float:
    """Factor of the peak rate at 0-based `iteration`: (iteration + 1) / warmup during the first `warmup`
    steps, then a cosine from 1 down to `floor` at `total` (and `floor` after it)."""
    if iteration < warmup:
        return (iteration + 1) / warmup
    progress = (iteration - warmup) / max(1, total - warmup)
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def finetuning_factor(iteration: int, total: int) -> float:
    """Fine-tuning's schedule: warm-up over the first 5% of `total` (at least one step), cosine to zero."""
    return warmup_cosine(iteration, total, max(1, int(total * WARMUP_FRACTION)))
