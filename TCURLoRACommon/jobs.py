"""The job dicts the modules hand to the worker (schema tcurlora.job/1)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tcurlora.jobs.schema import JOB_SCHEMA

DEVICES = ("auto", "cuda", "cpu")


@dataclass
class FineTuneSettings:
    """What the user chose in the FineTune module; everything else takes the job defaults."""

    base_model: str
    method: str = "tcur"
    rank: int = 8
    iterations: int = 500
    patch_size: tuple[int, int, int] | None = None
    device: str = "auto"
    batch_size: int = 2
    learning_rate: float | None = None
    seed: int = 0
    val_fraction: float = 0.0
    checkpoint_every: int = 50
    amp: bool = True
    head_learning_rate: float | None = None
    train_modules: list[str] | None = None  # None: the method's default; []: none
    spacing: list[float] | str = "auto"

    def to_job(self) -> dict[str, Any]:
        """The job keys these settings stand for."""
        job = asdict(self)
        job["patch_size"] = list(self.patch_size) if self.patch_size else None
        return job


def finetune_job(
    settings: FineTuneSettings,
    cases: Sequence[dict[str, Any]],
    label_names: Sequence[str],
    label_colors: Sequence[Sequence[float]] | None,
    output: str | Path,
) -> dict[str, Any]:
    """A complete finetune job."""
    if settings.device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, not {settings.device!r}")
    return {
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


def segment_job(
    base_model: str,
    adapter: str | Path | None,
    inputs: Sequence[str | Path],
    outputs: Sequence[str | Path],
    device: str = "auto",
    overlap: float = 0.5,
    largest_component: bool = False,
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
        "device": device,
        "force": True,
    }
