"""The job dicts the modules hand to the worker (schema tcurlora.job/1)."""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tcurlora.filenames import JOB_SCHEMA
from tcurlora.jobs.schema import FinetuneJob, SegmentJob
from tcurlora.settings import REQUIRED, default_of, settings_of, to_json

DEVICES = ("auto", "cuda", "cpu")
# The Segmenter's "Largest component only" choices -> the segment job's largest_component value.
LARGEST_COMPONENT_CHOICES = {"auto": "auto", "every class": True, "no class": False}


def _settings_class() -> type:
    """FineTuneSettings: the FinetuneJob settings the FineTune panel offers (declared `slicer=True` there),
    with their job defaults, types and order; derived, so that a default is written once."""
    fields = []
    for f, s in settings_of(FinetuneJob):
        if s.slicer:
            default = default_of(f)
            fields.append(
                (f.name, f.type)
                if default is REQUIRED
                else (f.name, f.type, dataclasses.field(default=default))
            )

    def to_job(self) -> dict[str, Any]:
        """The job keys these settings stand for."""
        return {f.name: to_json(getattr(self, f.name)) for f in dataclasses.fields(self)}

    doc = "What the user chose in the FineTune module; everything else takes the job defaults."
    return dataclasses.make_dataclass(
        "FineTuneSettings", fields, namespace={"to_job": to_job, "__doc__": doc, "__module__": __name__}
    )


FineTuneSettings = _settings_class()


def _declared_defaults(cls: type) -> types.SimpleNamespace:
    """The default of each of a job class's settings that has one, by job key."""
    return types.SimpleNamespace(
        **{f.name: default_of(f) for f, _ in settings_of(cls) if default_of(f) is not REQUIRED}
    )


# The job defaults the parameter nodes start from (TCURFineTune.py, TCURSegmenter.py): declared once, in the job.
JOB_DEFAULTS = _declared_defaults(FinetuneJob)
SEGMENT_DEFAULTS = _declared_defaults(SegmentJob)


def finetune_job(
    settings: FineTuneSettings,
    cases: Sequence[dict[str, Any]],
    label_names: Sequence[str],
    label_colors: Sequence[Sequence[float]] | None,
    output: str | Path,
    unlabeled: Sequence[str | Path] | None = None,
) -> dict[str, Any]:
    """A complete finetune job; `unlabeled`: image files for semi-supervised training (the key only when given)."""
    if settings.device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, not {settings.device!r}")
    job = {
        "schema": JOB_SCHEMA,
        "command": "finetune",
        **settings.to_job(),
        "cases": list(cases),
        "label_names": list(label_names),
        "label_colors": [list(c) for c in label_colors] if label_colors is not None else None,
        "output": str(output),
        "force": False,
        "resume": False,
    }
    if unlabeled:
        job["unlabeled"] = [str(p) for p in unlabeled]
    return job


def segment_job(
    base_model: str,
    adapter: str | Path | None,
    inputs: Sequence[str | Path],
    outputs: Sequence[str | Path],
    device: str = "auto",
    overlap: float = 0.5,
    largest_component: bool | str = "auto",
    tta: bool = True,
) -> dict[str, Any]:
    """A complete segment job: one output labelmap per input volume."""
    if len(inputs) != len(outputs):
        raise ValueError("one output per input is needed")
    return {
        "schema": JOB_SCHEMA,
        "command": "segment",
        "base_model": base_model,
        "adapter": str(adapter) if adapter is not None else None,
        "inputs": [str(p) for p in inputs],
        "outputs": [str(p) for p in outputs],
        "overlap": overlap,
        "largest_component": largest_component,
        "tta": tta,
        "device": device,
        "force": True,
    }


def suggest_job(
    base_model: str,
    adapter: str | Path | None,
    inputs: Sequence[str | Path],
    device: str = "auto",
    overlap: float = 0.5,
    score: str = "entropy",
) -> dict[str, Any]:
    """A complete suggest job: rank `inputs` by the model's uncertainty (tcurlora.suggest)."""
    if not inputs:
        raise ValueError("no volume to rank")
    return {
        "schema": JOB_SCHEMA,
        "command": "suggest",
        "base_model": base_model,
        "adapter": str(adapter) if adapter is not None else None,
        "inputs": [str(p) for p in inputs],
        "score": score,
        "overlap": overlap,
        "device": device,
    }
