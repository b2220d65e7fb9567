"""SHA-256 fingerprint of a model's weights, independent of device and storage dtype order."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import torch


def state_dict_fingerprint(state: torch.nn.Module | Mapping[str, torch.Tensor]) -> str:
    """Hash names, shapes and float32 values of every tensor, in sorted name order.

    Weights stored in fp16 and loaded as fp32 hash the same as their fp32 load, and int8 files hash as
    their dequantized float32 values, so a fingerprint identifies the weights a user actually runs, not
    the file they came in (re-encoding a base in int8 changes its values, hence its fingerprint).
    """
    tensors = state.state_dict() if isinstance(state, torch.nn.Module) else state
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name]
        if not isinstance(tensor, torch.Tensor):
            continue
        values = tensor.detach().to("cpu")
        if values.is_floating_point():
            values = values.to(torch.float32)
        digest.update(name.encode())
        digest.update(str(tuple(values.shape)).encode())
        digest.update(str(values.dtype).encode())
        digest.update(values.contiguous().numpy().tobytes())
    return digest.hexdigest()
