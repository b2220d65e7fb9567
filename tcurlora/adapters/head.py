"""The segmentation head: which modules it is, and giving it another number of classes.

A MONAI UNet with residual units ends in a ResidualUnit whose last conv is the head and whose skip
connection (`residual`, an Identity there) adds the unit's input, which has the base's class count, to
the head's output. To give such a head K classes, the skip connection is lifted with it: the Identity
becomes a fresh 1x1 conv to K channels (what ResidualUnit itself builds when its input and output
differ), and both train as the head. A UNet without residual units ends in a ConvTranspose3d, which is
replaced like a conv.
"""

from __future__ import annotations

import torch
from torch import nn

from tcurlora.errors import ConfigError

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_TRANSPOSED = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def residual_owner(model: nn.Module, head_module: str) -> str | None:
    """The name of the ResidualUnit the head sits in (MONAI UNet with residual units), else None."""
    from monai.networks.blocks import ResidualUnit

    parts = head_module.split(".")
    for depth in range(len(parts) - 1, 0, -1):
        owner = ".".join(parts[:depth])
        try:
            if isinstance(model.get_submodule(owner), ResidualUnit):
                return owner
        except AttributeError:
            return None
    return None


def head_module_names(model: nn.Module, head_module: str) -> list[str]:
    """The head and, when it sits in a residual unit, that unit's skip connection (part of the head: it
    is lifted and trained with it, and never an adapter target)."""
    owner = residual_owner(model, head_module)
    return [head_module] + ([f"{owner}.residual"] if owner else [])


def _output_count(module: nn.Module, head_module: str) -> int:
    if isinstance(module, nn.Linear):
        return module.out_features
    if isinstance(module, _CONVS + _TRANSPOSED):
        return module.out_channels
    raise ConfigError(
        f"head_module {head_module!r} is a {type(module).__name__}, not a Linear, Conv or ConvTranspose layer"
    )


def _resized(old: nn.Module, outputs: int) -> nn.Module:
    """A fresh layer like `old` (same geometry, device and dtype) with `outputs` outputs."""
    factory = {"device": old.weight.device, "dtype": old.weight.dtype}
    bias = old.bias is not None
    if isinstance(old, nn.Linear):
        return nn.Linear(old.in_features, outputs, bias=bias, **factory)
    if isinstance(old, _TRANSPOSED):
        return type(old)(
            old.in_channels,
            outputs,
            old.kernel_size,
            stride=old.stride,
            padding=old.padding,
            output_padding=old.output_padding,
            dilation=old.dilation,
            bias=bias,
            padding_mode=old.padding_mode,
            **factory,
        )
    return type(old)(
        old.in_channels,
        outputs,
        old.kernel_size,
        stride=old.stride,
        padding=old.padding,
        dilation=old.dilation,
        bias=bias,
        padding_mode=old.padding_mode,
        **factory,
    )


def _lifted_residual(unit: nn.Module, head: nn.Module, outputs: int) -> nn.Module:
    """The residual unit's skip connection mapping its input to `outputs` channels."""
    residual = unit.residual
    if isinstance(residual, _CONVS):
        return _resized(residual, outputs)
    if not isinstance(residual, nn.Identity) or not isinstance(head, _CONVS):
        raise ConfigError(
            f"the head's residual unit has a {type(residual).__name__} skip connection, "
            "which tcurlora cannot give another number of classes"
        )
    factory = {"device": head.weight.device, "dtype": head.weight.dtype}
    return type(head)(unit.in_channels, outputs, 1, bias=head.bias is not None, **factory)


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def replace_head(
    model: nn.Module, head_module: str, num_classes: int | None, new_head: bool, seed: int
) -> bool:
    """Put a fresh, seeded head with `num_classes` outputs at `head_module` (and lift the skip connection
    of a residual unit it sits in); True when replaced."""
    try:
        old = model.get_submodule(head_module)
    except AttributeError as error:
        raise ConfigError(f"head_module {head_module!r} is not a module of this network") from error
    current = _output_count(old, head_module)
    if not new_head and (num_classes is None or num_classes == current):
        return False
    outputs = num_classes or current
    owner = residual_owner(model, head_module) if outputs != current else None
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        new = _resized(old, outputs)
        residual = _lifted_residual(model.get_submodule(owner), old, outputs) if owner else None
    _set(model, head_module, new)
    if owner:
        _set(model, f"{owner}.residual", residual)
    return True
