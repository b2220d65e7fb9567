"""Parameter counts of an adapted model: everything, what trains, and the adapter core vs the head."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from torch import nn


@dataclass(frozen=True)
class ParameterCounts:
    """total: all parameters of the adapted model; trainable = adapter (core) + modules + head.

    `modules` counts the extra modules trained in full (`train_modules`), apart from the head."""

    total: int
    trainable: int
    adapter: int
    head: int
    modules: int = 0

    @property
    def trainable_percent(self) -> float:
        return 100.0 * self.trainable / self.total if self.total else 0.0

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["trainable_percent"] = self.trainable_percent
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ParameterCounts:
        counts = {k: int(data[k]) for k in ("total", "trainable", "adapter", "head")}
        return cls(**counts, modules=int(data.get("modules", 0)))


def count_parameters(
    model: nn.Module, head_ids: set[int], module_ids: frozenset[int] = frozenset()
) -> ParameterCounts:
    """Count the unique parameters of `model`; ids in `head_ids` count as head, in `module_ids` as modules."""
    total = trainable = head = modules = 0
    for parameter in model.parameters():
        total += parameter.numel()
        if parameter.requires_grad:
            trainable += parameter.numel()
            if id(parameter) in head_ids:
                head += parameter.numel()
            elif id(parameter) in module_ids:
                modules += parameter.numel()
    return ParameterCounts(
        total=total, trainable=trainable, adapter=trainable - head - modules, head=head, modules=modules
    )


def human_size(num_bytes: int) -> str:
    """1536 -> '1.5 KiB'."""
    size = float(num_bytes)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{int(size)} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"
