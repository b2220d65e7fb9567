"""Training cases from the scene: (volume, segmentation) pairs, checked, exported with exact geometry."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import slicer

from tcurlora.errors import InputError
from TCURLoRACommon import scene


@dataclass
class TrainingPair:
    """One row of the training-case table."""

    volume: slicer.vtkMRMLScalarVolumeNode | None
    segmentation: slicer.vtkMRMLSegmentationNode | None


def _name(node: slicer.vtkMRMLNode) -> str:
    return f"'{node.GetName()}'"


def pair_by_study() -> list[TrainingPair]:
    """Pair each scalar volume with the segmentation that references it, else the only one in its study.

    Volumes without a match are left out; segmentations are used once.
    """
    volumes = [
        v
        for v in slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode")
        if v.GetClassName() == "vtkMRMLScalarVolumeNode"
    ]
    segmentations = slicer.util.getNodesByClass("vtkMRMLSegmentationNode")
    role = slicer.vtkMRMLSegmentationNode.GetReferenceImageGeometryReferenceRole()
    scene_item = slicer.mrmlScene.GetSubjectHierarchyNode().GetSceneItemID()
    used: set[str] = set()
    pairs = []
    for volume in volumes:
        free = [s for s in segmentations if s.GetID() not in used]
        referencing = [s for s in free if s.GetNodeReference(role) is volume]
        study = scene.study_of(volume)
        same_study = [] if study == scene_item else [s for s in free if scene.study_of(s) == study]
        match = referencing[0] if referencing else (same_study[0] if len(same_study) == 1 else None)
        if match is not None:
            used.add(match.GetID())
            pairs.append(TrainingPair(volume, match))
    return pairs


def pairs_from_lists(volumes: Sequence[Any], segmentations: Sequence[Any]) -> list[TrainingPair]:
    """The table rows the parameter node's two lists stand for (a missing partner shows as None)."""
    count = max(len(volumes), len(segmentations))
    padded = [
        list(volumes) + [None] * (count - len(volumes)),
        list(segmentations) + [None] * (count - len(segmentations)),
    ]
    return [TrainingPair(v, s) for v, s in zip(*padded)]


def add_pair(pairs: Sequence[TrainingPair], volume: Any, segmentation: Any) -> list[TrainingPair]:
    """`pairs` plus (volume, segmentation); InputError naming what is missing or already used."""
    if volume is None:
        raise InputError("choose a volume first")
    if segmentation is None:
        raise InputError(
            f"volume {_name(volume)} has no segmentation: choose one, or create it with 'Label a new case'"
        )
    for pair in pairs:
        if pair.volume is volume or pair.segmentation is segmentation:
            used = volume if pair.volume is volume else segmentation
            raise InputError(f"{_name(used)} is already in the table")
    return [*pairs, TrainingPair(volume, segmentation)]


def merge_pairs(pairs: Sequence[TrainingPair], found: Sequence[TrainingPair]) -> list[TrainingPair]:
    """The table after "Pair by study": its rows kept, found pairs added unless a node is already used."""
    used = {n.GetID() for p in pairs for n in (p.volume, p.segmentation) if n is not None}
    merged = list(pairs)
    for pair in found:
        ids = {pair.volume.GetID(), pair.segmentation.GetID()}
        if not ids & used:
            merged.append(pair)
            used |= ids
    return merged


def classes_text(pairs: Sequence[TrainingPair]) -> str:
    """The line under the table: the classes, or the problem that stops training."""
    if not pairs:
        return "Classes: none"
    try:
        return f"Classes: {', '.join(class_names(pairs))}"
    except InputError as error:
        return f"Problem: {error}"


def class_names(pairs: Sequence[TrainingPair]) -> list[str]:
    """The classes: the segment names, which every case must share (order from the first case)."""
    if not pairs:
        raise InputError("no training cases: add at least one (volume, segmentation) pair")
    seen_volumes: set[str] = set()
    names: list[str] | None = None
    first: slicer.vtkMRMLSegmentationNode | None = None
    for row, pair in enumerate(pairs, start=1):
        if pair.volume is None:
            raise InputError(f"training case {row} has no volume")
        if pair.segmentation is None:
            raise InputError(
                f"volume {_name(pair.volume)} has no segmentation: choose one, or create it with 'Label new case'"
            )
        if pair.volume.GetID() in seen_volumes:
            raise InputError(f"volume {_name(pair.volume)} is used by two training cases")
        seen_volumes.add(pair.volume.GetID())
        current = scene.segment_names(pair.segmentation)
        if not current:
            raise InputError(f"segmentation {_name(pair.segmentation)} has no segments")
        duplicates = sorted({n for n in current if current.count(n) > 1})
        if duplicates:
            raise InputError(
                f"segmentation {_name(pair.segmentation)} has several segments named '{duplicates[0]}'"
            )
        if names is None:
            names, first = current, pair.segmentation
        elif set(current) != set(names):
            missing = ", ".join(n for n in names if n not in current) or "none"
            extra = ", ".join(n for n in current if n not in names) or "none"
            raise InputError(
                f"segment names differ between cases: {_name(pair.segmentation)} has [{', '.join(current)}] but "
                f"{_name(first)} has [{', '.join(names)}] (missing: {missing}; unexpected: {extra}). "
                "The segment names define the classes and must be the same in every case."
            )
    assert names is not None
    return names


def class_colors(pairs: Sequence[TrainingPair], names: Sequence[str]) -> list[list[float]]:
    """Each class's colour as the first case shows it."""
    seg = pairs[0].segmentation.GetSegmentation()
    return [list(seg.GetSegment(seg.GetSegmentIdBySegmentName(n)).GetColor()) for n in names]


def _case_ids(pairs: Sequence[TrainingPair]) -> list[str]:
    return _file_ids([pair.volume for pair in pairs])


def _file_ids(volumes: Sequence[Any]) -> list[str]:
    """One file-safe name per volume, made unique with _2, _3, ..."""
    ids: list[str] = []
    for volume in volumes:
        base = re.sub(r"[^A-Za-z0-9_-]+", "_", volume.GetName()).strip("_") or "case"
        case_id, number = base, 2
        while case_id in ids:
            case_id, number = f"{base}_{number}", number + 1
        ids.append(case_id)
    return ids


def export_cases(pairs: Sequence[TrainingPair], folder: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """Write every case as image + labelmap NRRD on the image's grid; returns job cases and class names.

    A segmentation on another grid is resampled onto its volume's grid. A class with no voxel after that is
    an error, named with its segment and case.
    """
    names = class_names(pairs)
    cases = []
    for case_id, pair in zip(_case_ids(pairs), pairs):
        image = scene.write_volume(pair.volume, folder / "images" / f"{case_id}.nrrd")
        label = folder / "labels" / f"{case_id}.nrrd"
        counts = scene.export_labelmap(pair.segmentation, pair.volume, names, label)
        empty = [n for n, c in zip(names, counts) if c == 0]
        if empty:
            raise InputError(
                f"segment '{empty[0]}' of {_name(pair.segmentation)} is empty on the grid of volume "
                f"{_name(pair.volume)}: paint it, or remove the case"
            )
        cases.append({"id": case_id, "image": str(image), "label": str(label)})
    return cases, names


def unlabeled_volumes(pairs: Sequence[TrainingPair]) -> list[slicer.vtkMRMLScalarVolumeNode]:
    """The scene's scalar volumes that belong to no labeled case: neither in the table nor the reference
    volume of any segmentation, and holding voxels (scene order). Labelmaps are not scalar volumes here."""
    used = {pair.volume.GetID() for pair in pairs if pair.volume is not None}
    role = slicer.vtkMRMLSegmentationNode.GetReferenceImageGeometryReferenceRole()
    for segmentation in slicer.util.getNodesByClass("vtkMRMLSegmentationNode"):
        reference = segmentation.GetNodeReference(role)
        if reference is not None:
            used.add(reference.GetID())
    return [
        v
        for v in slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode")
        if v.GetClassName() == "vtkMRMLScalarVolumeNode"
        and v.GetID() not in used
        and v.GetImageData() is not None
    ]


def export_unlabeled(volumes: Sequence[Any], folder: Path) -> list[str]:
    """Write each unlabeled volume as NRRD (exact geometry) under `folder`; the files, for the job's `unlabeled`."""
    return [
        str(scene.write_volume(v, folder / f"{name}.nrrd")) for name, v in zip(_file_ids(volumes), volumes)
    ]


def unlabeled_for_job(pairs: Sequence[TrainingPair], enabled: bool) -> list[slicer.vtkMRMLScalarVolumeNode]:
    """What the panel's "Also learn from unlabeled volumes in the scene" adds to a run: `unlabeled_volumes`
    when it is on, nothing when off."""
    return unlabeled_volumes(pairs) if enabled else []
