"""Segments carry the class's terminology code from Slicer's terminology logic, not "Tissue" for all.

slicer-core has no terminology logic; `SlicerTerminologies` below answers the two calls the module makes
(FindTypeInTerminologyBy3dSlicerLabel, SerializeTerminologyEntry) with entries worded as Slicer's General
Anatomy list words them (codes from SNOMED CT)."""

from __future__ import annotations

import types

import numpy as np
import pytest
import slicer
import vtk

from TCURLoRACommon import scene
from TCURLoRACommon.terminology import GENERAL_ANATOMY, TISSUE, normalized, terminology_for

LIVER = f"{GENERAL_ANATOMY}~SCT^123037004^Anatomical Structure~SCT^10200004^Liver~^^~~^^~^^"
MASS = f"{GENERAL_ANATOMY}~SCT^49755003^Morphologically Altered Structure~SCT^4147007^Mass~^^~~^^~^^"
KNOWN = {"liver": LIVER, "mass": MASS}


class SlicerTerminologies:
    def __init__(self) -> None:
        self.asked: list[tuple[str, str]] = []

    def FindTypeInTerminologyBy3dSlicerLabel(self, context: str, label: str, entry) -> bool:  # noqa: N802
        self.asked.append((context, label))
        entry.found = KNOWN.get(label)
        return entry.found is not None

    @staticmethod
    def SerializeTerminologyEntry(entry) -> str:  # noqa: N802
        return entry.found


def test_names_map_to_codes() -> None:
    lookup = KNOWN.get
    assert normalized(" Left_Ventricle ") == "left ventricle"
    assert terminology_for("Liver", lookup) == LIVER
    assert terminology_for("tumour", lookup) == MASS  # a synonym in Slicer's wording
    assert terminology_for("Anterior", lookup) == TISSUE  # no fitting code: generic tissue
    assert terminology_for("Liver", None) == TISSUE
    assert terminology_for("Liver", lambda label: 1 / 0) == TISSUE  # a failing lookup never breaks an import


def test_segments_are_coded(mrml, monkeypatch: pytest.MonkeyPatch) -> None:
    logic = SlicerTerminologies()
    monkeypatch.setattr(
        slicer.modules, "terminologies", types.SimpleNamespace(logic=lambda: logic), raising=False
    )
    monkeypatch.setattr(slicer, "vtkSlicerTerminologyEntry", types.SimpleNamespace, raising=False)
    volume = mrml.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "ct")
    slicer.util.updateVolumeFromArray(volume, np.zeros((4, 5, 6), np.int16))
    node = scene.new_label_segmentation(volume, ["Liver", "Tumor", "Other"])
    seg = node.GetSegmentation()
    tag = slicer.vtkSegment.GetTerminologyEntryTagName()
    tags = []
    for index in range(3):
        value = vtk.reference("")
        assert seg.GetNthSegment(index).GetTag(tag, value)
        tags.append(str(value))
    assert tags == [LIVER, MASS, TISSUE]
    assert (GENERAL_ANATOMY, "liver") in logic.asked and (GENERAL_ANATOMY, "mass") in logic.asked
