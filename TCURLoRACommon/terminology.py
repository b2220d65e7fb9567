"""Terminology (DICOM/SNOMED CT codes) for each class's segment: looked up in Slicer's terminology logic by
the class name, so that a "Liver" segment is coded as liver, not as generic tissue."""

from __future__ import annotations

import re
from collections.abc import Callable

GENERAL_ANATOMY = "Segmentation category and type - 3D Slicer General Anatomy list"
TISSUE = f"{GENERAL_ANATOMY}~SCT^85756007^Tissue~SCT^85756007^Tissue~^^~~^^~^^"
# Common class names that Slicer's list words differently (its '3dSlicerLabel' values).
SYNONYMS = {
    "tumour": "mass",
    "tumor": "mass",
    "lesion": "mass",
    "left ventricle": "left ventricle of heart",
    "right ventricle": "right ventricle of heart",
    "oedema": "edema",
    "background tissue": "tissue",
}

Lookup = Callable[[str], "str | None"]


def normalized(name: str) -> str:
    """'Left_Ventricle ' -> 'left ventricle'."""
    return re.sub(r"[\s_-]+", " ", name).strip().lower()


def terminology_for(name: str, lookup: Lookup | None) -> str:
    """The serialized terminology entry for a class: Slicer's entry for its name (or a synonym), else tissue."""
    if lookup is None:
        return TISSUE
    key = normalized(name)
    for label in dict.fromkeys([key, SYNONYMS.get(key)]):
        if not label:
            continue
        try:
            found = lookup(label)
        except Exception:  # noqa: BLE001 - a terminology problem must never stop an import
            return TISSUE
        if found:
            return found
    return TISSUE


def slicer_lookup() -> Lookup | None:
    """Slicer's terminology logic as a lookup by 3dSlicerLabel, or None where it is absent (slicer-core)."""
    import slicer

    try:
        logic = slicer.modules.terminologies.logic()
        entry_class = slicer.vtkSlicerTerminologyEntry
    except AttributeError:
        return None

    def find(label: str) -> str | None:
        entry = entry_class()
        if logic.FindTypeInTerminologyBy3dSlicerLabel(GENERAL_ANATOMY, label, entry):
            return logic.SerializeTerminologyEntry(entry)
        return None

    return find
