"""The one training loop of fine-tuning, pretraining and the bench cost runs.

Each caller supplies what differs (its batches and what to do around each step: progress events,
validation, checkpoints, timing) as `LoopHooks`; the loop and the step (`OptimStep`: schedule, autocast,
scaler, clipping) are shared, so the three agree on iteration counting, precision and scheduling.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from tcurlora.training.step import OptimStep


@dataclass
class Batch:
    """One training batch on the training device, the loss to train it with, and what the hooks may want
    to know about it (e.g. the pretraining source it was drawn from)."""

    image: torch.Tensor
    label: torch.Tensor
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    info: dict[str, Any] = field(default_factory=dict)


class LoopHooks:
    """What a caller does around each step; the defaults do nothing."""

    def before_step(self, iteration: int) -> None:
        """Before the batch of 0-based `iteration` is drawn (cancellation, timers)."""

    def after_step(self, done: int, batch: Batch, loss: torch.Tensor) -> bool:
        """After `done` iterations in all (1-based: the one just trained); True ends the loop there."""
        return False


def run_loop(step: OptimStep, batches: Iterator[Batch], first: int, total: int, hooks: LoopHooks) -> int:
    """Train with `step` from 0-based iteration `first` until `total` iterations are done or a hook stops
    the loop; each batch is drawn just before its step. Returns the number of iterations done."""
    if first < 0 or first > total:
        raise ValueError(f"cannot start at iteration {first} of {total}")
    step.model.train()
    done = first
    while done < total:
        hooks.before_step(done)
        batch = next(batches)
        loss = step(batch.image, batch.label, batch.loss_fn, done)
        done += 1
        if hooks.after_step(done, batch, loss):
            break
    return done
