"""Pretraining's loss over the union of the sources' labels (the design: tcurlora.pretraining)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F


def union_loss(
    logits: torch.Tensor,
    label: torch.Tensor,
    classes: list[int],
    pool: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Cross-entropy over the union softmax + soft Dice over background and the source's classes. The Dice
    is pooled over the whole batch; `pool` (torchrun: distributed.pooled_sum) sums its per-class sums over
    the ranks' shares of the effective batch."""
    ce = F.cross_entropy(logits, label)
    probs = logits.softmax(1)
    channels = [0, *classes]
    onehot = F.one_hot(label, logits.shape[1]).permute(0, 4, 1, 2, 3).float()
    p, g = probs[:, channels], onehot[:, channels]
    dims = (0, 2, 3, 4)
    overlap, predicted, truth = (p * g).sum(dims), p.sum(dims), g.sum(dims)
    if pool is not None:
        overlap, predicted, truth = pool(overlap), pool(predicted), pool(truth)
    dice = (2 * overlap + 1e-5) / (predicted + truth + 1e-5)
    return ce + (1 - dice.mean())
