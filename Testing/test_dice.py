"""The one Dice (tcurlora/dice.py): its empty-mask rule, NumPy and torch alike, per class."""

from __future__ import annotations

import numpy as np
import torch

from tcurlora.dice import dice_by_class, dice_score


def test_dice_rule_on_numpy_and_torch():
    a = np.zeros((4, 5, 6), dtype=bool)
    b = np.zeros_like(a)
    a[0, :2, :3] = True  # 6 voxels
    b[0, 1:3, :3] = True  # 6 voxels, 3 shared
    for cast in (np.asarray, torch.from_numpy):
        assert dice_score(cast(a), cast(b)) == 0.5
        assert dice_score(cast(a), cast(a)) == 1.0
        assert dice_score(cast(a), cast(np.zeros_like(a))) == 0.0  # one side empty
        assert dice_score(cast(np.zeros_like(a)), cast(np.zeros_like(a))) == 1.0  # both empty


def test_dice_by_class_skips_classes_absent_from_reference_only_when_asked():
    prediction = torch.tensor([[0, 1, 1, 3]])
    reference = torch.tensor([[0, 1, 2, 0]])
    assert dice_by_class(prediction, reference, [1, 2, 3, 4]) == {
        1: 2 / 3,
        2: 0.0,
        3: 0.0,
        4: 1.0,
    }
    assert dice_by_class(prediction, reference, [1, 2, 3, 4], skip_absent=True) == {1: 2 / 3, 2: 0.0}
    assert dice_by_class(prediction.numpy(), reference.numpy(), [1, 2]) == {1: 2 / 3, 2: 0.0}
