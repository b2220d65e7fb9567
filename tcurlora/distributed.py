"""Data-parallel primitives under torchrun (`torchrun --nproc-per-node N -m tcurlora finetune|segment|pretrain`).

Under torchrun (RANK/WORLD_SIZE set, WORLD_SIZE > 1) every process builds the same model and draws the
same stream of global batches (`batch_size` patches, seeded by the job); process r trains on patches
r, r+N, ... of each batch, DistributedDataParallel averages the gradients (gloo on the CPU, NCCL on GPUs),
so N processes follow the 1-process run up to floating-point rounding. Only rank 0 reports events and
writes checkpoints and the adapter; a checkpoint resumes with any number of processes (it counts global
batches). Cancel is agreed on by all ranks at each step, and a rank that dies ends the others with a
clear error and no adapter. `segment` gives rank r the volumes r, r+N, ... of its list; each output is
written once, by the rank that segmented it, and rank 0 reports the whole list. `pretrain` shards its
global batches the same way and pools its batch-wide Dice over the ranks (`pooled_sum`), so N processes
follow the 1-process run; its held-out evaluation is split over the ranks (`mine`, `merged`). Without
torchrun every function here is a no-op pass-through.

The training modules call these primitives; the entry points that start a rank's run (and so import the
training modules) are in tcurlora.distributed_runs, which keeps the imports one-way.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from tcurlora.errors import EXIT_INTERNAL, CancelledError, ConfigError, TCURLoRAError
from tcurlora.jobs.events import BaseSink, describe_event
from tcurlora.torchrun_env import env_rank

# How long a collective waits for a rank that stopped answering (a rank that dies is noticed at once).
TIMEOUT_S = float(os.environ.get("TCURLORA_DIST_TIMEOUT_S", "600"))


class DistributedError(TCURLoRAError):
    """Another process of a torchrun run failed or vanished."""

    kind = "distributed"
    exit_code = EXIT_INTERNAL


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if active() else 0


def world() -> int:
    return dist.get_world_size() if active() else 1


def is_writer() -> bool:
    """Whether this process writes outputs, checkpoints and events (rank 0, or no torchrun)."""
    return rank() == 0


def init(job: Any) -> None:
    """Join the process group: NCCL with one GPU per local rank when CUDA is used, else gloo."""
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and job.device in ("auto", "cuda")
    if use_cuda:
        torch.cuda.set_device(local_rank)
        job.device = f"cuda:{local_rank}"
    size = int(os.environ["WORLD_SIZE"])
    if getattr(job, "batch_size", 0) % size:
        raise ConfigError(
            f"batch_size {job.batch_size} does not split over {size} processes: use a multiple "
            f"of {size} (batch_size is the effective batch, shared by the processes)"
        )
    dist.init_process_group("nccl" if use_cuda else "gloo", timeout=timedelta(seconds=TIMEOUT_S))


def wrap(module: torch.nn.Module, device: torch.device, *, find_unused: bool = False) -> torch.nn.Module:
    """The module to call in training steps: DistributedDataParallel over `module` under torchrun.
    `find_unused` for networks with trainable parameters no forward uses (MONAI's ViT blocks keep a
    `norm_cross_attn` without cross-attention); their gradients stay None, as in one process."""
    if not active():
        return module
    from torch.nn.parallel import DistributedDataParallel

    for parameter in module.parameters():
        if parameter.requires_grad:
            parameter.register_hook(_laid_out_like(parameter))
    return DistributedDataParallel(
        module,
        device_ids=[device.index] if device.type == "cuda" else None,
        find_unused_parameters=find_unused,
    )


def _laid_out_like(parameter: torch.Tensor) -> Any:
    """A gradient hook giving `parameter` a gradient with its own strides. Torch lets strides of size-1
    dimensions differ (a 1x1x1 tCUR core's gradient comes out of rfft's backward with strides (2, 2, 2)),
    but DDP copies each gradient into a bucket view laid out like its parameter, and warns ("Grad strides
    do not match bucket view strides") and copies slowly when they differ."""
    shape, strides = parameter.shape, parameter.stride()

    def hook(gradient: torch.Tensor) -> torch.Tensor:
        if gradient.layout != torch.strided or (gradient.shape, gradient.stride()) == (shape, strides):
            return gradient
        return torch.empty_strided(shape, strides, dtype=gradient.dtype, device=gradient.device).copy_(
            gradient
        )

    return hook


def shard(batches: Iterator[dict]) -> Iterator[dict]:
    """This rank's part (patches r, r+N, ...) of every global batch; the batches themselves unchanged alone."""
    if not active():
        yield from batches
        return
    for batch in batches:
        yield local_part(batch)


def local_part(batch: dict) -> dict:
    """This rank's patches r, r+N, ... of one global batch (its tensors); the batch itself alone."""
    if not active():
        return batch
    r, n = rank(), world()
    return {k: v[r::n] if isinstance(v, torch.Tensor) and v.ndim > 0 else v for k, v in batch.items()}


def pooled_sum(local: torch.Tensor) -> torch.Tensor:
    """The sum of `local` over the ranks (a batch-wide statistic of the effective batch), differentiable in
    this rank's share with its gradient scaled by N: DDP's gradient average then gives the gradient of
    the pooled statistic, as one process computing it over the whole batch. `local` alone without torchrun."""
    if not active():
        return local
    total = local.detach().clone()
    dist.all_reduce(total)
    return total + world() * (local - local.detach())


def any_rank(flag: bool) -> bool:
    """Whether `flag` holds on any rank (every rank must ask at the same point)."""
    if not active():
        return flag
    tensor = torch.tensor([1.0 if flag else 0.0], device=_collective_device())
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return bool(tensor.item())


def mine(count: int) -> range:
    """The indices of `count` work items this rank does: r, r+N, ... (all of them alone)."""
    return range(rank(), count, world())


def merged(part: dict) -> dict:
    """The union of every rank's `part` (a dict of picklable results keyed apart by rank); `part` alone."""
    if not active():
        return part
    parts: list[Any] = [None] * world()
    dist.all_gather_object(parts, part)
    return {key: value for share in parts for key, value in share.items()}


def barrier() -> None:
    """Wait for every rank (nothing without torchrun)."""
    if active():
        dist.barrier()


def mean(value: float) -> float:
    """The mean of `value` over the ranks (the loss of the whole effective batch)."""
    if not active():
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=_collective_device())
    dist.all_reduce(tensor)
    return float(tensor.item()) / world()


def raise_if_cancelled(token: Any) -> None:
    """Stop every rank at the same step when any of them was asked to stop (SIGTERM reaches them apart)."""
    if not active():
        token.raise_if_cancelled()
        return
    if any_rank(bool(token.cancelled)):
        raise CancelledError(
            f"{token.reason or 'cancelled on another process'}: stopped before finishing; "
            "the last checkpoint is kept"
        )


def _collective_device() -> torch.device:
    return (
        torch.device("cuda", torch.cuda.current_device())
        if dist.get_backend() == "nccl"
        else torch.device("cpu")
    )


class RankSink(BaseSink):
    """What ranks other than 0 report: only errors and warnings, on stderr, marked with the rank (torchrun's,
    still right after the process group is gone); never `done`, whose outputs rank 0 reports."""

    def emit(self, event: dict[str, Any]) -> None:
        if event["event"] == "error" or (event["event"] == "log" and event.get("level") == "warning"):
            sys.stderr.write(f"tcurlora rank {env_rank()}: {describe_event(event)}\n")
            sys.stderr.flush()


def rank_sink() -> RankSink | None:
    """The sink of a torchrun process other than rank 0 (None for rank 0, which reports to the usual one)."""
    return RankSink() if env_rank() != 0 else None
