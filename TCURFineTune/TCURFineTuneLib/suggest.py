""" "Suggest next case": rank the scene's unlabeled volumes by the adapter's uncertainty in the worker
(`tcurlora suggest`, in the background like the other runs); the panel then labels the top one through
its "label a new case" path (a new segmentation, pre-filled with the adapter's prediction)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import slicer

from TCURFineTuneLib.cases import TrainingPair, unlabeled_volumes
from tcurlora.errors import InputError
from TCURLoRACommon import scene
from TCURLoRACommon.jobs import suggest_job
from TCURLoRACommon.runs import WorkerRun, new_workdir


def suggestion_candidates(pairs: Sequence[TrainingPair]) -> list[slicer.vtkMRMLScalarVolumeNode]:
    """The volumes worth labeling next: the scene's scalar volumes that have no segmentation yet (neither
    a training case nor the reference of any segmentation); InputError when there are none."""
    volumes = unlabeled_volumes(pairs)
    if not volumes:
        raise InputError(
            "every volume in the scene already has a segmentation: load the volumes you could label next"
        )
    return volumes


class SuggestRun(WorkerRun):
    """Exports the volumes, runs `tcurlora suggest` on them; when done, `ranking` holds (volume, score)
    pairs, most uncertain first, and `top` the volume to label next."""

    def __init__(
        self,
        volumes: Sequence[slicer.vtkMRMLScalarVolumeNode],
        base_model: str,
        adapter: str | Path | None,
        device: str = "auto",
        workdir: Path | None = None,
        score: str = "entropy",
    ) -> None:
        if not volumes:
            raise InputError("no volume to rank")
        workdir = workdir or new_workdir("suggest")
        self.volumes = list(volumes)
        self.inputs = [
            scene.write_volume(v, workdir / "inputs" / f"volume{i}.nrrd") for i, v in enumerate(self.volumes)
        ]
        self.ranking: list[tuple[slicer.vtkMRMLScalarVolumeNode, float]] = []
        job = suggest_job(base_model, adapter, self.inputs, device=device, score=score)
        super().__init__(job, workdir)

    def update(self) -> list[dict[str, Any]]:
        """As WorkerRun.update; once finished, the exported volumes are removed (nothing is left behind)."""
        events = super().update()
        if self.finished:
            self.remove_workdir()
        return events

    def on_done(self, event: dict[str, Any]) -> None:
        by_file = {str(path): volume for path, volume in zip(self.inputs, self.volumes)}
        ranking = []
        for entry in event["outputs"]["ranking"]:
            volume = by_file.get(str(entry["volume"]))
            if volume is None:
                raise InputError(f"the ranking names a file that was not exported: {entry['volume']}")
            ranking.append((volume, float(entry["score"])))
        gone = [v for v, _ in ranking if v.GetScene() is not slicer.mrmlScene]
        if gone:  # the scene was closed (or the volume deleted) while the worker ran
            raise InputError(
                f"volume '{gone[0].GetName()}' was removed from the scene while the volumes were ranked"
            )
        self.ranking = ranking

    @property
    def top(self) -> slicer.vtkMRMLScalarVolumeNode | None:
        """The most uncertain volume, once the run is done."""
        return self.ranking[0][0] if self.ranking else None

    def ranking_lines(self) -> list[str]:
        """The ranking for the panel's log: one line per volume, most uncertain first."""
        score = self.job.get("score", "entropy")
        return [
            f"{rank}. {volume.GetName()}: {score} {value:.4f}"
            for rank, (volume, value) in enumerate(self.ranking, start=1)
        ]


def suggestion_run(
    pairs: Sequence[TrainingPair],
    adapter_path: str | Path | None,
    base_model: str,
    device: str = "auto",
    workdir: Path | None = None,
) -> SuggestRun:
    """The run behind "Suggest next case": the scene's unlabeled volumes, ranked with the adapter chosen
    for pre-filling (on the base model it names; `base_model`, the panel's, is searched too)."""
    from tcurlora.library import read_adapter
    from TCURLoRACommon.models import resolve_base_model

    if not adapter_path:
        raise InputError(
            "choose the adapter to ask under 'Label a new case' (train one first if the list is empty)"
        )
    volumes = suggestion_candidates(pairs)  # before reading anything: the commonest mistake first
    entry = read_adapter(adapter_path)
    return SuggestRun(
        volumes, resolve_base_model(entry.base_model_id, [base_model]), entry.path, device, workdir
    )
