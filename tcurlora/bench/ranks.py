"""`torchrun --nproc-per-node N -m tcurlora bench CONFIG ...`: the quality runs split across processes.

Every process plans the same runs (the plan is deterministic); process r executes runs r, r+N, ... of
it, each run once and whole (a run is one ordinary fine-tuning, not a data-parallel one), writing its
own `runs/<run_id>/` folder. When its share is done, each process joins a gloo process group only to
hand its result records to rank 0 (`gather`); rank 0 then runs the cost runs alone and writes
report.json, report.md and the plots. The process group is not joined while runs train, so an
in-process run never sees another process's collectives. Without torchrun everything here is the
1-process identity.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from tcurlora.torchrun_env import TORCHRUN_VARIABLES, launched
from tcurlora.torchrun_env import env_rank as rank
from tcurlora.torchrun_env import env_world as world

# The gather waits for the slowest process's whole share of runs: hours, not the finetune timeout.
GATHER_TIMEOUT_S = float(os.environ.get("TCURLORA_BENCH_DIST_TIMEOUT_S", str(7 * 24 * 3600)))

__all__ = ["TORCHRUN_VARIABLES", "launched", "rank", "world"]


def is_writer() -> bool:
    """Whether this process writes the report (rank 0, or no torchrun)."""
    return rank() == 0


def mine(count: int) -> list[int]:
    """The indices of the runs this process executes: r, r+N, ... of `count`."""
    return list(range(rank(), count, world()))


def use_local_gpu(device: str) -> None:
    """Under torchrun, make "cuda" mean this process's GPU (local rank) for in-process runs."""
    if not launched() or not device.startswith(("cuda", "auto")):
        return
    import torch

    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())


def worker_env(env: dict[str, str]) -> dict[str, str]:
    """The environment of an isolated run's worker: a plain 1-process run on this process's GPU."""
    if not launched():
        return env
    env = {k: v for k, v in env.items() if k not in TORCHRUN_VARIABLES}
    local = int(os.environ.get("LOCAL_RANK", "0"))
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None or visible.strip() not in ("", "-1"):
        ids = [v for v in (visible or "").split(",") if v.strip()]
        env["CUDA_VISIBLE_DEVICES"] = ids[local % len(ids)] if ids else str(local)
    return env


def gather(results: dict[int, dict[str, Any]], count: int) -> list[dict[str, Any]] | None:
    """All processes' result records in plan order, on rank 0 (None on the others); identity alone."""
    if not launched():
        return [results[i] for i in range(count)]
    import torch.distributed as dist

    dist.init_process_group("gloo", timeout=timedelta(seconds=GATHER_TIMEOUT_S))
    try:
        shares: Sequence[Any] = [None] * world()
        dist.gather_object(results, shares if is_writer() else None, dst=0)
    finally:
        dist.destroy_process_group()
    if not is_writer():
        return None
    merged: dict[int, dict[str, Any]] = {}
    for share in shares:
        merged.update(share)
    missing = [i for i in range(count) if i not in merged]
    if missing:  # a bug, not a user error: every index belongs to exactly one rank
        raise RuntimeError(f"benchmark runs {missing} were executed by no process")
    return [merged[i] for i in range(count)]
