"""Segment volumes of the scene with an adapter from the model library."""

from __future__ import annotations

from collections.abc import Sequence

import slicer

from tcurlora.errors import InputError
from tcurlora.library import AdapterEntry
from TCURLoRACommon.segmenting import SegmentVolumesRun


def volumes_to_segment() -> list[slicer.vtkMRMLScalarVolumeNode]:
    """Every scalar volume of the scene (labelmaps excluded), for 'segment all volumes in the scene'."""
    nodes = slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode")
    return [
        n for n in nodes if n.GetClassName() == "vtkMRMLScalarVolumeNode" and n.GetImageData() is not None
    ]


def adapter_summary(entry: AdapterEntry) -> str:
    """Classes, method and validation Dice of an adapter, for the module panel."""
    lines = [f"Classes: {', '.join(entry.label_names) or 'unknown'}"]
    lines.append(
        f"Method: {entry.method or '?'}, rank {entry.rank if entry.rank is not None else '?'}; "
        f"base model: {entry.base_model_id or '?'}"
    )
    dice = entry.metrics.get("val_dice") if isinstance(entry.metrics, dict) else None
    if isinstance(dice, dict) and dice:
        lines.append(
            "Validation Dice: "
            + ", ".join(
                f"{name} {value:.3f}" if isinstance(value, int | float) else f"{name} n/a"
                for name, value in dice.items()
            )
        )
    return "\n".join(lines)


def start_segmentation(
    volumes: Sequence[slicer.vtkMRMLScalarVolumeNode],
    adapter: AdapterEntry,
    device: str = "auto",
    targets: Sequence[slicer.vtkMRMLSegmentationNode | None] | None = None,
) -> SegmentVolumesRun:
    """Export the volumes and start the worker; the run imports one segmentation per volume when done."""
    if not volumes:
        raise InputError("no input volume: choose one, or load a volume into the scene")
    if not adapter.base_model_id:
        raise InputError("the adapter does not name its base model", adapter.path)
    if not adapter.label_names:
        raise InputError("the adapter does not name its classes", adapter.path)
    return SegmentVolumesRun(
        volumes,
        adapter.base_model_id,
        adapter.path,
        adapter.label_names,
        adapter.label_colors,
        device,
        targets,
    ).start()
