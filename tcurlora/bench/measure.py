"""Measurements: per-step times from the training loop's own progress events, peak memory, environment.

Peak memory follows one rule on every device: on CUDA, torch.cuda.max_memory_allocated after the
warm-up steps and a reset of the peak statistics (cuDNN autotuning inflates the first steps); on the
CPU, the process's peak resident set size (each run lives in its own process, so runs don't mix).
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from tcurlora.jobs.events import RecordingSink


class TimingSink(RecordingSink):
    """Records every event and the monotonic time of each training step's progress event.

    After `warmup` steps it resets the CUDA peak-memory statistics, so `peak_bytes` excludes the
    warm-up (autotuning) steps. Step time = the interval between consecutive progress events.
    """

    def __init__(self, device: torch.device, warmup: int) -> None:
        super().__init__()
        self.device, self.warmup = device, int(warmup)
        self.stamps: list[float] = []

    def progress(self, iteration: int, total: int, *args: Any, **kwargs: Any) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.stamps.append(time.perf_counter())
        if iteration == self.warmup and self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        super().progress(iteration, total, *args, **kwargs)

    def step_times(self) -> list[float]:
        """Seconds per step after the warm-up (empty when there were too few steps)."""
        stamps = self.stamps[max(0, self.warmup - 1) :]
        return [b - a for a, b in zip(stamps, stamps[1:])]

    def losses(self) -> list[float | None]:
        return [e["loss"] for e in self.of_kind("progress")]


def median_or_none(values: list[float]) -> float | None:
    return float(statistics.median(values)) if values else None


def peak_rss_bytes() -> int | None:
    """This process's peak resident set size so far (None where the OS does not say)."""
    try:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(peak) if sys.platform == "darwin" else int(peak) * 1024
    except (ImportError, OSError):
        try:
            import psutil

            info = psutil.Process().memory_info()
            return int(getattr(info, "peak_wset", 0) or info.rss)
        except Exception:  # noqa: BLE001 - memory reporting must never break a benchmark
            return None


def peak_memory(device: torch.device) -> dict[str, Any]:
    """{"kind", "bytes"}: CUDA max allocated since the last reset, or the process's peak RSS."""
    if device.type == "cuda":
        return {
            "kind": "cuda_max_allocated_after_warmup",
            "bytes": int(torch.cuda.max_memory_allocated(device)),
        }
    return {"kind": "cpu_peak_rss", "bytes": peak_rss_bytes()}


def git_commit(start: Path | None = None) -> str | None:
    """The commit checked out in the repository holding `start`, read from .git (no git command run)."""
    folder = (start or Path(__file__)).resolve()
    for candidate in [folder, *folder.parents]:
        git = candidate / ".git"
        if git.is_dir():
            break
    else:
        return None
    try:
        head = (git / "HEAD").read_text().strip()
        if not head.startswith("ref: "):
            return head or None
        ref = head[5:]
        loose = git / ref
        if loose.is_file():
            return loose.read_text().strip()
        packed = git / "packed-refs"
        if packed.is_file():
            for line in packed.read_text().splitlines():
                if line.endswith(" " + ref):
                    return line.split()[0]
    except OSError:
        return None
    return None


def environment(device: torch.device, threads: int | None = None) -> dict[str, Any]:
    """Device, host, library versions and git commit, for the report header."""
    from tcurlora.adapters.io import library_versions
    from tcurlora.device import describe_device

    return {
        "device": describe_device(device),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": threads or torch.get_num_threads(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": library_versions(),
        "git_commit": git_commit(),
    }
