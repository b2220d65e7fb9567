"""Dice overlap: the one definition behind fine-tune validation (finetuning.py), pretraining's held-out
score (pretraining/evaluation.py), `tcurlora evaluate` (evaluate.py), the bench (through evaluate.py) and the demo.

Empty-mask rule: when prediction and reference are both empty the Dice is 1.0 (nothing to find,
nothing found); when only one is empty it is 0.0. Before this module, pretraining instead left out
every class absent from the reference; it still does (`skip_absent=True`), so its numbers are
unchanged, and so are everyone else's (they already used this rule).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def dice_score(prediction: Any, reference: Any) -> float:
    """2|P & R| / (|P| + |R|) of two boolean masks of one shape (NumPy arrays or torch tensors);
    1.0 when both are empty."""
    total = int(prediction.sum()) + int(reference.sum())
    return 1.0 if total == 0 else 2.0 * int((prediction & reference).sum()) / total


def dice_by_class(
    prediction: Any, reference: Any, classes: Iterable[int], *, skip_absent: bool = False
) -> dict[int, float]:
    """{class value: Dice} between two integer label volumes, for each value in `classes`.

    With `skip_absent`, classes absent from the reference are left out instead of scoring by the
    empty-mask rule (pretraining: a source volume need not hold every class of the union)."""
    scores = {}
    for value in classes:
        pred, ref = prediction == value, reference == value
        if skip_absent and not bool(ref.any()):
            continue
        scores[value] = dice_score(pred, ref)
    return scores
