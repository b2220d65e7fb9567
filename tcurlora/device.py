"""Choose the compute device, with a clear fallback when CUDA is asked for but missing."""

from __future__ import annotations

from collections.abc import Callable

import torch

from tcurlora.errors import ConfigError


def resolve_device(name: str = "auto", warn: Callable[[str], None] | None = None) -> torch.device:
    """"auto" -> CUDA when available, else CPU; "cuda" without CUDA falls back to CPU with a warning."""
    name = (name or "auto").lower()
    if name not in {"auto", "cpu", "cuda", "gpu"} and not name.startswith("cuda:"):
        raise ConfigError(f"unknown device {name!r}: use auto, cpu or cuda")
    if name == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda" if name in {"auto", "gpu"} else name)
    if name != "auto" and warn is not None:
        warn(f"device {name!r} requested but CUDA is not available here: running on the CPU instead")
    return torch.device("cpu")


def describe_device(device: torch.device) -> str:
    """"cpu" or "cuda:0 (NVIDIA H200)"."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    return "cpu"
