"""Segment volumes of the scene with an adapter from the model library."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import slicer

from tcurlora.errors import InputError
from tcurlora.library import AdapterEntry
from TCURLoRACommon.models import resolve_base_model
from TCURLoRACommon.remote import RemoteSettings
from TCURLoRACommon.segment_run import SegmentVolumesRun


def volumes_to_segment() -> list[slicer.vtkMRMLScalarVolumeNode]:
    """Every scalar volume of the scene (labelmaps excluded), for 'segment all volumes in the scene'."""
    nodes = slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode")
    return [
        n for n in nodes if n.GetClassName() == "vtkMRMLScalarVolumeNode" and n.GetImageData() is not None
    ]


def choose_adapter(entries: Sequence[AdapterEntry], wanted: str) -> int:
    """The combo-box index to select: the adapter at `wanted` (its path), else the first; -1 when none."""
    paths = [str(e.path) for e in entries]
    if wanted in paths:
        return paths.index(wanted)
    return 0 if entries else -1


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
                f"{name} {value:.3f}" if isinstance(value, (int, float)) else f"{name} n/a"
                for name, value in dice.items()
            )
        )
    return "\n".join(lines)


def start_segmentation(
    volumes: Sequence[slicer.vtkMRMLScalarVolumeNode],
    adapter: AdapterEntry,
    device: str = "auto",
    targets: Sequence[slicer.vtkMRMLSegmentationNode | None] | None = None,
    overlap: float = 0.5,
    largest_component: bool | str = "auto",
    extra_models: Sequence[str] = (),
    remote: RemoteSettings | None = None,
    tta: bool = True,
) -> SegmentVolumesRun:
    """Export the volumes and start the worker (on `remote` over SSH, else here); the run imports one
    segmentation per volume when done."""
    run = segmentation_run(
        volumes, adapter, device, targets, overlap, largest_component, extra_models, remote, tta
    )
    return run.start()


def segmentation_run(
    volumes: Sequence[slicer.vtkMRMLScalarVolumeNode],
    adapter: AdapterEntry,
    device: str = "auto",
    targets: Sequence[slicer.vtkMRMLSegmentationNode | None] | None = None,
    overlap: float = 0.5,
    largest_component: bool | str = "auto",
    extra_models: Sequence[str] = (),
    remote: RemoteSettings | None = None,
    tta: bool = True,
) -> SegmentVolumesRun:
    """The run `start_segmentation` starts: inputs checked and exported, job written.

    The adapter's base model is found by its id (built-in, model library, or one of `extra_models`).
    """
    if not volumes:
        raise InputError("no input volume: choose one, or load a volume into the scene")
    if not adapter.base_model_id:
        raise InputError("the adapter does not name its base model", adapter.path)
    if not adapter.label_names:
        raise InputError("the adapter does not name its classes", adapter.path)
    if not 0.0 <= overlap < 1.0:
        raise InputError(f"overlap must be at least 0 and below 1, not {overlap}")
    return SegmentVolumesRun(
        volumes,
        resolve_base_model(adapter.base_model_id, extra_models),
        adapter.path,
        adapter.label_names,
        adapter.label_colors,
        device,
        targets,
        overlap=overlap,
        largest_component=largest_component,
        tta=tta,
        remote=remote,
    )


def volumes_and_targets(
    node: Any,
) -> tuple[list[slicer.vtkMRMLScalarVolumeNode], list[slicer.vtkMRMLSegmentationNode | None] | None]:
    """What a TCURSegmenterParameterNode asks to segment: every volume, or the input volume into the
    chosen output segmentation (None: a new one); InputError when there is nothing to segment."""
    volumes = volumes_to_segment() if node.allVolumes else [v for v in [node.inputVolume] if v]
    if not volumes:
        raise InputError("no input volume: choose one, or load a volume into the scene")
    return volumes, (None if node.allVolumes else [node.outputSegmentation])
