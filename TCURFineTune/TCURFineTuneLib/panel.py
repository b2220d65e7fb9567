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


def parse_train_modules(text: str) -> list[str] | None:
    """None for an empty field (the method's default), [] for "none", else the listed regexes."""
    parts = [p for p in re.split(r"[\s,]+", text.strip()) if p]
    if not parts:
        return None
    if [p.lower() for p in parts] == ["none"]:
        return []
    for part in parts:
        try:
            re.compile(part)
        except re.error as error:
            raise InputError(
                f"extra trained modules: {part!r} is not a regular expression ({error})"
            ) from None
    return parts


def parse_spacing(text: str) -> list[float] | str:
    """ "auto" (also for an empty field), "base", or three (or one) positive numbers in mm."""
    value = text.strip().lower()
    if value in ("", "auto", "base"):
        return value or "auto"
    parts = [p for p in re.split(r"[\s,xX*]+", value) if p]
    try:
        numbers = [float(p) for p in parts]
    except ValueError:
        raise InputError(f"working spacing {text!r}: use auto, base or numbers in mm, e.g. 1,1,1") from None
    if len(numbers) == 1:
        numbers *= 3
    if len(numbers) != 3 or min(numbers) <= 0:
        raise InputError(f"working spacing {text!r}: use one or three positive numbers in mm, e.g. 1,1,1")
    return numbers


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
        head_learning_rate=float(getattr(node, "headLearningRate", 0.0) or 0.0) or None,
        train_modules=parse_train_modules(getattr(node, "trainModules", "") or ""),
        spacing=parse_spacing(getattr(node, "spacing", "") or ""),
    )
