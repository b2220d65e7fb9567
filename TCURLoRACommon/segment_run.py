"""Segment scene volumes with a base model (+ adapter) in the worker and bring the labelmaps back."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import slicer

from tcurlora.errors import InputError
from TCURLoRACommon import scene
from TCURLoRACommon.jobs import segment_job
from TCURLoRACommon.remote import RemoteSettings
from TCURLoRACommon.runs import WorkerRun, new_workdir


class SegmentVolumesRun(WorkerRun):
    """Exports the volumes, runs `tcurlora segment`, imports one segmentation per volume when done.

    `targets[i]` is an existing segmentation node to fill for volume i, or None for a new node. With
    `remote` the worker runs on that host over SSH (tcurlora.remote): the exported volumes go there, the
    labelmaps come back to the same files, and Cancel (SIGTERM to the local worker) stops the remote run.
    """

    def __init__(
        self,
        volumes: Sequence[slicer.vtkMRMLVolumeNode],
        base_model: str,
        adapter: str | Path | None,
        label_names: Sequence[str],
        label_colors: Sequence[Sequence[float]] | None = None,
        device: str = "auto",
        targets: Sequence[slicer.vtkMRMLSegmentationNode | None] | None = None,
        workdir: Path | None = None,
        overlap: float = 0.5,
        largest_component: bool | str = "auto",
        tta: bool = True,
        remote: RemoteSettings | None = None,
    ) -> None:
        if not volumes:
            raise ValueError("no volume to segment")
        workdir = workdir or new_workdir("segment")
        self.remote = remote  # None: on this computer
        self.volumes = list(volumes)
        self.label_names = list(label_names)
        self.label_colors = label_colors
        self.targets = list(targets) if targets is not None else [None] * len(self.volumes)
        inputs = [
            scene.write_volume(v, workdir / "inputs" / f"volume{i}.nrrd") for i, v in enumerate(self.volumes)
        ]
        self.outputs = [workdir / "outputs" / f"volume{i}_seg.nrrd" for i in range(len(self.volumes))]
        self.segmentations: list[slicer.vtkMRMLSegmentationNode] = []
        job = segment_job(
            base_model,
            adapter,
            inputs,
            self.outputs,
            device=device,
            overlap=overlap,
            largest_component=largest_component,
            tta=tta,
        )
        extra_args = remote.worker_args() if remote else ()
        super().__init__(job, workdir, partial_outputs=[workdir / "outputs"], extra_args=extra_args)

    def on_done(self, event: dict[str, Any]) -> None:
        gone = [v for v in self.volumes if v.GetScene() is not slicer.mrmlScene]
        if gone:  # the scene was closed (or the volume deleted) while the worker ran
            raise InputError(
                f"volume '{gone[0].GetName()}' was removed from the scene before its segmentation was "
                "ready; nothing was imported"
            )
        for volume, output, target in zip(self.volumes, self.outputs, self.targets):
            node = scene.import_labelmap(
                output,
                volume,
                self.label_names,
                self.label_colors,
                target,
                f"{volume.GetName()} segmentation",
            )
            self.segmentations.append(node)
