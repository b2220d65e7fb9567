"""A fine-tuning run: cases exported, job written, worker running, adapter installed into the library."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from TCURFineTuneLib.cases import TrainingPair, class_colors, export_cases
from tcurlora import library
from tcurlora.errors import InputError
from TCURLoRACommon.curves import TrainingCurves
from TCURLoRACommon.jobs import FineTuneSettings, finetune_job
from TCURLoRACommon.runs import WorkerRun, new_workdir


class FineTuneRun(WorkerRun):
    """Trains an adapter on scene cases; on success it lands in the model library as `adapter_name`.

    The worker writes into a hidden staging folder of the library, which is renamed into place only after
    the `done` event; a failed or cancelled run deletes it, so the library never lists a partial adapter.
    """

    def __init__(
        self,
        pairs: Sequence[TrainingPair],
        settings: FineTuneSettings,
        adapter_name: str,
        workdir: Path | None = None,
        curves: bool = True,
    ) -> None:
        if not adapter_name.strip():
            raise InputError("give the adapter a name")
        workdir = workdir or new_workdir("finetune")
        cases, names = export_cases(pairs, workdir / "cases")
        self.label_names = names
        self.adapter_name = adapter_name
        self.staging = library.staging_path(adapter_name)
        self.adapter: library.AdapterEntry | None = None
        job = finetune_job(settings, cases, names, class_colors(pairs, names), self.staging)
        self.curves = TrainingCurves(names, f"TCURLoRA {adapter_name}") if curves else None
        super().__init__(job, workdir, partial_outputs=[self.staging])

    def on_event(self, event: dict[str, Any]) -> None:
        if self.curves is not None:
            self.curves.add(event)

    def on_done(self, event: dict[str, Any]) -> None:
        staged = Path(event["outputs"].get("adapter", self.staging))
        self.adapter = library.install_adapter(staged, self.adapter_name)
