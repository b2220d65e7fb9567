"""Decisions of the TCUR Fine-Tune panel, Qt-free: the default base model and the job settings that the
parameter node stands for (the widget only wires Qt to these)."""

from __future__ import annotations

import re
from typing import Any

from tcurlora.errors import InputError
from TCURLoRACommon.jobs import FineTuneSettings


def parse_patch_size(text: str) -> tuple[int, int, int] | None:
    """(96, 96, 96) for "96,96,96", "96x96x96" or "96 96 96"; None for an empty field (the model's default)."""
    parts = [p for p in re.split(r"[\s,xX*]+", text.strip()) if p]
    if not parts:
        return None
    try:
        values = tuple(int(p) for p in parts)
    except ValueError:
        raise InputError(f"patch size {text!r}: use three whole numbers, e.g. 96,96,96") from None
    if len(values) != 3 or min(values) < 1:
        raise InputError(f"patch size {text!r}: use three positive whole numbers, e.g. 96,96,96")
    return values  # type: ignore[return-value]


def settings_from_parameters(node: Any) -> FineTuneSettings:
    """The FineTuneSettings a TCURFineTuneParameterNode (or anything with its fields) stands for."""
    if not (node.baseModel or "").strip():
        raise InputError("choose a base model (none is selected)")
    if not (node.adapterName or "").strip():
        raise InputError("give the adapter a name")
    return FineTuneSettings(
        base_model=node.baseModel,
        method=node.method,
        rank=int(node.rank),
        iterations=int(node.iterations),
        patch_size=parse_patch_size(node.patchSize or ""),
        device=node.device,
        batch_size=int(node.batchSize),
        learning_rate=float(node.learningRate) or None,
        seed=int(node.seed),
        val_fraction=float(node.valFraction),
    )
