"""Choose the compute device, with a clear fallback when CUDA is asked for but missing."""

from __future__ import annotations

import os
from collections.abc import Callable

import torch

from tcurlora.errors import ConfigError

MEMORY_FRACTION_VARIABLE = "TCURLORA_CUDA_MEMORY_FRACTION"


def memory_fraction() -> float | None:
    """$TCURLORA_CUDA_MEMORY_FRACTION: the share of the GPU's memory this process may use (a forced
    limit, e.g. to provoke an out-of-memory on purpose), or None when unset."""
    text = os.environ.get(MEMORY_FRACTION_VARIABLE, "").strip()
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value <= 1:
        raise ConfigError(f"{MEMORY_FRACTION_VARIABLE} must be a number in (0, 1], got {text!r}")
    return value


def resolve_device(name: str = "auto", warn: Callable[[str], None] | None = None) -> torch.device:
    """"auto" -> CUDA when available, else CPU; "cuda" without CUDA falls back to CPU with a warning."""
    name = (name or "auto").lower()
    if name not in {"auto", "cpu", "cuda", "gpu"} and not name.startswith("cuda:"):
        raise ConfigError(f"unknown device {name!r}: use auto, cpu or cuda")
    if name == "cpu":
        return torch.device("cpu")
    fraction = memory_fraction()
    if torch.cuda.is_available():
        device = torch.device("cuda" if name in {"auto", "gpu"} else name)
        if fraction is not None:
            torch.cuda.set_per_process_memory_fraction(fraction, device)
        return device
    if name != "auto" and warn is not None:
        warn(f"device {name!r} requested but CUDA is not available here: running on the CPU instead")
    return torch.device("cpu")


def describe_device(device: torch.device) -> str:
    """"cpu" or "cuda:0 (NVIDIA H200)"."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    return "cpu"
