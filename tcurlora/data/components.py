"""Which classes come in one connected piece in the training labels.

Keeping only the largest connected component removes stray islands from a prediction, but cuts real
parts off a class that has several (lesions, tumours). Fine-tuning therefore records the classes that
were one 26-connected piece in every training label, and `segment` cleans exactly those by default.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from tcurlora.data.cases import Case
from tcurlora.data.io import read_label
from tcurlora.data.validate import remap_labels

CONNECTIVITY_26 = np.ones((3, 3, 3), dtype=bool)


def piece_counts(array: np.ndarray, classes: Sequence[int]) -> dict[int, int]:
    """Class -> number of 26-connected pieces of that class in a label array (0: absent)."""
    return {c: int(ndimage.label(array == c, structure=CONNECTIVITY_26)[1]) for c in classes}


def class_pieces(cases: Sequence[Case], num_classes: int) -> tuple[list[int], list[int]]:
    """(present, split): the classes 1..num_classes-1 present in some labeled case, and those in more than
    one piece in some label, with the labels read (and remapped by each case's label_map) as training reads
    them. A federated site sends these two lists, so that the server can combine them (`combine_pieces`)."""
    classes = range(1, num_classes)
    present: set[int] = set()
    split: set[int] = set()
    for case in cases:
        if case.label is None:
            continue
        label, _ = read_label(case.label)
        array = remap_labels(sitk.GetArrayFromImage(label).astype(np.int64), case.label_map)
        for c, count in piece_counts(array, classes).items():
            present.update([c] if count else [])
            split.update([c] if count > 1 else [])
    return sorted(present), sorted(split)


def combine_pieces(parts: Sequence[tuple[Sequence[int], Sequence[int]]]) -> list[int]:
    """The classes present in some part and split in none: one piece in every label of every part."""
    present = {int(c) for part, _ in parts for c in part}
    split = {int(c) for _, part in parts for c in part}
    return sorted(present - split)


def single_piece_classes(cases: Sequence[Case], num_classes: int) -> list[int]:
    """Classes 1..num_classes-1 present in some labeled case and never in more than one piece."""
    return combine_pieces([class_pieces(cases, num_classes)])
