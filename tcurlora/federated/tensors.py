"""What travels in a federation: the floating-point tensors of an adapter state, as numpy arrays.

Integer tensors (tCUR's row/column indices, norm counters) never travel: every site derives them from the
same base weights, and averaging them would be meaningless."""

from __future__ import annotations

import numpy as np
import torch


def shared_tensors(state: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """The floating-point tensors of an adapter state dict, as numpy arrays of their own precision (bf16 and
    fp16, which numpy lacks or averages poorly, as float32): what is sent."""
    return {k: _as_numpy(v) for k, v in state.items() if v.is_floating_point()}


def _as_numpy(tensor: torch.Tensor) -> np.ndarray:
    tensor = tensor.detach().cpu()
    if tensor.dtype in (torch.bfloat16, torch.float16):
        tensor = tensor.float()
    return tensor.numpy().copy()


def payload_bytes(params: dict[str, np.ndarray]) -> int:
    """Bytes of tensor data in `params` (what one site sends per round, before FLARE's framing)."""
    return int(sum(np.asarray(v).nbytes for v in params.values()))


def merged_state(local: dict[str, torch.Tensor], received: dict[str, np.ndarray], where: str) -> dict:
    """`local` (an adapter state dict) with its floating-point tensors replaced by `received`; ValueError
    naming `where` when the received keys are not exactly the local floating-point ones."""
    expected = {k for k, v in local.items() if v.is_floating_point()}
    missing, unexpected = sorted(expected - set(received)), sorted(set(received) - expected)
    if missing or unexpected:
        raise ValueError(
            f"{where}: the global adapter does not fit this site's adapter: missing "
            f"{missing[:3]}, unexpected {unexpected[:3]}"
        )
    out = dict(local)
    for key in expected:
        out[key] = torch.as_tensor(np.asarray(received[key])).to(local[key].dtype)
    return out
