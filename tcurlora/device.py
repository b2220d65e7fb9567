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
    """ "auto" -> CUDA when available, else CPU; "cuda" without CUDA falls back to CPU with a warning."""
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
    """ "cpu" or "cuda:0 (NVIDIA H200)"."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    return "cpu"


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def other_load() -> float | None:
    """The 1-minute load average (runnable processes), or None where the OS has none (Windows)."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def choose_threads(cores: int, load: float | None) -> int:
    """Torch CPU threads for `cores` available cores while other work keeps `load` of them busy (the
    1-minute load average, taken before this process computes): threads + load <= cores, at least 1.
    On a shared CPU a thread more than the free cores does not add speed: its OpenMP team waits at
    every barrier for the thread that lost its core (measured 0.4 -> 8 s/step, docs/benchmarks.md)."""
    busy = 0 if load is None or load != load or load < 0 else int(load + 0.5)  # 0.4 is noise, 0.6 a core
    return max(1, min(cores, cores - busy))


def resolve_threads(threads: int | str | None, device: torch.device) -> tuple[int, str]:
    """Set torch's CPU threads for a run; returns (threads, why). An explicit count wins; "auto" (or None)
    leaves CUDA runs as they are and picks `choose_threads` on the CPU, capped by torch's own default
    (OMP_NUM_THREADS where set, else the physical cores)."""
    if threads not in (None, "auto"):
        torch.set_num_threads(int(threads))
        return int(threads), "as asked"
    if device.type != "cpu":
        return torch.get_num_threads(), f"auto: left as torch's default on {device.type}"
    cores, load = min(available_cores(), torch.get_num_threads()), other_load()
    chosen = choose_threads(cores, load)
    torch.set_num_threads(chosen)
    seen = "no load average" if load is None else f"1-minute load {load:.2f}"
    return chosen, f"auto: {cores} cores, {seen}"
