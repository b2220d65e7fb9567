"""Int8 storage of model weights: symmetric, one scale per output channel (the first dimension).

A built-in base must stay small in the repository (every clone carries every version), so large float
tensors are stored as int8 with a float32 scale per slice of their first dimension (Conv3d and Linear
output channels) in `NAME + INT8_SCALE_SUFFIX`; small tensors (norms, biases, anything under
`MIN_QUANTIZED_ELEMENTS`) stay fp16. The file's metadata names the format, and loading dequantizes to
float32, so everything downstream (fingerprint, adapters) sees ordinary float weights.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import torch

from tcurlora.errors import InputError
from tcurlora.filenames import INT8_SCALE_SUFFIX, INT8_WEIGHTS_FORMAT, WEIGHTS_FORMAT_KEY

# Below this many elements a tensor's fp16 copy costs little and quantizing it would gain nothing.
MIN_QUANTIZED_ELEMENTS = 4096
INT8_MAX = 127


def quantize_tensor(tensor: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 values, float32 scale per first-dimension slice) with values * scale ~ tensor."""
    values = tensor.detach().to("cpu", torch.float32)
    rows = values.reshape(values.shape[0], -1)
    scale = rows.abs().amax(dim=1) / INT8_MAX
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # an all-zero row stays zero at scale 1
    quantized = torch.round(rows / scale[:, None]).clamp(-INT8_MAX, INT8_MAX).to(torch.int8)
    return quantized.reshape(values.shape).contiguous(), scale.contiguous()


def dequantize_tensor(values: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """float32 values * scale, the scale broadcast along the first dimension."""
    shape = (values.shape[0],) + (1,) * (values.dim() - 1)
    return values.to(torch.float32) * scale.to(torch.float32).reshape(shape)


def should_quantize(tensor: torch.Tensor) -> bool:
    """Large float tensors with at least two dimensions; everything else is kept in fp16."""
    return tensor.is_floating_point() and tensor.dim() >= 2 and tensor.numel() >= MIN_QUANTIZED_ELEMENTS


def quantize_state(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The tensors of an int8 weights file: int8 + scale for large float tensors, fp16 for other floats."""
    stored: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        if name.endswith(INT8_SCALE_SUFFIX):
            raise ValueError(f"tensor name {name!r} ends in the reserved suffix {INT8_SCALE_SUFFIX!r}")
        if should_quantize(tensor):
            stored[name], stored[name + INT8_SCALE_SUFFIX] = quantize_tensor(tensor)
        elif tensor.is_floating_point():
            stored[name] = tensor.detach().to("cpu", torch.float16).contiguous()
        else:
            stored[name] = tensor.detach().to("cpu").contiguous()
    return stored


def dequantize_state(stored: Mapping[str, torch.Tensor], path: Path | str) -> dict[str, torch.Tensor]:
    """float32 weights from an int8 weights file's tensors; InputError naming `path` when it is malformed."""
    suffix = INT8_SCALE_SUFFIX
    scales = {name[: -len(suffix)]: t for name, t in stored.items() if name.endswith(suffix)}
    for owner in scales:
        if owner not in stored:
            raise InputError(
                f"malformed int8 weights: scale tensor {owner}{suffix} has no tensor {owner}", path
            )
    state: dict[str, torch.Tensor] = {}
    for name, tensor in stored.items():
        if name.endswith(suffix):
            continue
        if tensor.dtype != torch.int8:
            state[name] = tensor.to(torch.float32) if tensor.is_floating_point() else tensor
            continue
        scale = scales.get(name)
        if scale is None:
            raise InputError(
                f"malformed int8 weights: int8 tensor {name} has no scale tensor {name}{suffix}", path
            )
        rows = tensor.shape[0] if tensor.dim() else None
        if rows is None or not scale.is_floating_point() or tuple(scale.shape) != (rows,):
            raise InputError(
                f"malformed int8 weights: scale of {name} has shape {tuple(scale.shape)} and dtype {scale.dtype}, "
                f"expected a float tensor of shape ({rows},)",
                path,
            )
        if not bool(torch.isfinite(scale).all()) or bool((scale <= 0).any()):
            raise InputError(
                f"malformed int8 weights: scale of {name} is not finite and positive (NaN, inf, 0 or negative)",
                path,
            )
        state[name] = dequantize_tensor(tensor, scale)
    return state


def read_model_weights(path: Path | str) -> dict[str, torch.Tensor]:
    """A model weights file's state dict: fp16/fp32 as stored, int8 files dequantized to float32."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), "pt") as handle:
            metadata = handle.metadata() or {}
            stored = {name: handle.get_tensor(name) for name in handle.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise InputError(f"corrupt or unreadable safetensors file: {error}", path) from error
    storage = metadata.get(WEIGHTS_FORMAT_KEY)
    if storage is None:
        return stored
    if storage != INT8_WEIGHTS_FORMAT:
        raise InputError(f"unknown weights storage {storage!r} (expected {INT8_WEIGHTS_FORMAT!r})", path)
    return dequantize_state(stored, path)


def save_int8_weights(state: Mapping[str, torch.Tensor], path: Path | str) -> None:
    """Write `state` as an int8 weights file (tagged in the metadata) at `path`."""
    from safetensors.torch import save_file

    save_file(quantize_state(state), str(path), metadata={WEIGHTS_FORMAT_KEY: INT8_WEIGHTS_FORMAT})


def relative_errors(
    state: Mapping[str, torch.Tensor], restored: Mapping[str, torch.Tensor]
) -> dict[str, float]:
    """Per float tensor: ||restored - original|| / ||original|| (0 for an all-zero tensor kept exact)."""
    errors = {}
    for name, tensor in state.items():
        if not tensor.is_floating_point():
            continue
        original = tensor.detach().to("cpu", torch.float32)
        norm = float(original.norm())
        difference = float((restored[name].to(torch.float32) - original).norm())
        errors[name] = difference / norm if norm > 0 else (0.0 if difference == 0 else math.inf)
    return errors
