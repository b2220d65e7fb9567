"""Bound the memory a network config may ask for while it is built, before the memory is allocated.

A config says how large a network is (`Linear(20000, 20000)`, a UNETR with hidden_size 24000), and
building it allocates all of that at once. Building on the `meta` device first would count the
parameters exactly, but real MONAI networks call `.item()` in their constructors (SwinUNETR) and
cannot be built there. So the one real build runs under a torch function mode that charges every tensor
the constructors create against a budget, and refuses a tensor *before* allocating it when its declared
size would exceed the budget. Tensors that other operations compute inside a constructor (a meshgrid,
a difference of index grids) are not counted, but none may be larger than the whole budget.

The budget is `network_budget(weight_file_bytes)`: the network's tensors must fit in what its weight file
could fill (4 bytes per value: a file stores at least 1 byte per value, a float32 network 4; plus 64 MiB
for buffers and temporaries), and never more than the weight-file limit ($TCURLORA_MAX_WEIGHT_BYTES,
4 GiB by default), so a config cannot ask for more than the weights it brings.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

from tcurlora.errors import InputError
from tcurlora.models.weight_files import MAX_BYTES_VARIABLE, max_weight_bytes

SLACK_BYTES = 64 * 1024**2
BYTES_PER_STORED_VALUE = 4

# Constructors whose size is an argument: checked before anything is allocated.
_SIZED = {
    torch.empty,
    torch.zeros,
    torch.ones,
    torch.rand,
    torch.randn,
    torch.empty_strided,
    torch.full,
    torch.randint,
    torch.eye,
}
_SIZED_METHODS = {
    torch.Tensor.new_empty,
    torch.Tensor.new_zeros,
    torch.Tensor.new_ones,
    torch.Tensor.new_full,
}
_CONSTRUCTORS = {torch.tensor, torch.as_tensor, torch.arange, torch.linspace, torch.logspace, torch.randperm}


class BuildBudgetExceeded(InputError):
    """A config asked for more tensor memory than its budget while the network was built."""


def network_budget(weight_file_bytes: int) -> int:
    """Bytes of tensors a network loaded from a weight file of `weight_file_bytes` may need (see module doc)."""
    return min(max_weight_bytes(), BYTES_PER_STORED_VALUE * max(int(weight_file_bytes), 0) + SLACK_BYTES)


def _shape(values: Any) -> tuple[int, ...] | None:
    """A size given as ints or as one tuple/list/Size of ints; None when it is not one."""
    if len(values) == 1 and isinstance(values[0], (tuple, list, torch.Size)):
        values = tuple(values[0])
    if values and all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return tuple(values)
    return None


def _requested_elements(func: Any, args: tuple, kwargs: dict) -> int | None:
    """Values a sized constructor will allocate, read from its arguments (None when unknown)."""
    if "size" in kwargs:
        shape = _shape((kwargs["size"],))
    elif func in _SIZED_METHODS:
        shape = _shape(args[1:2] if func is torch.Tensor.new_full else args[1:])
    elif func is torch.full or func is torch.empty_strided:
        shape = _shape(args[:1])
    elif func is torch.randint:
        shape = next((_shape((a,)) for a in args if isinstance(a, (tuple, list, torch.Size))), None)
    elif func is torch.eye:
        shape = _shape(args[:2])
    else:
        shape = _shape(args)
    return max(math.prod(shape), 0) if shape is not None else None


class _Budget(TorchFunctionMode):
    def __init__(self, limit: int, what: str, path: Path | str | None):
        super().__init__()
        self.limit, self.what, self.path, self.used = limit, what, path, 0

    def _charge(self, nbytes: int, allocated: bool = False) -> None:
        self.used += nbytes
        if self.used > self.limit:
            raise BuildBudgetExceeded(
                f"refused: building {self.what} would need more than {self.limit:,} bytes of tensors "
                f"(at least {self.used:,}): more than its weight file can hold (4 bytes per stored byte) "
                f"or the limit ${MAX_BYTES_VARIABLE}; "
                + (
                    "stopped at the first tensor beyond it"
                    if allocated
                    else "nothing that large was allocated"
                ),
                self.path,
            )

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func in _SIZED or func in _SIZED_METHODS:
            elements = _requested_elements(func, args, kwargs)
            if elements is not None:
                dtype = kwargs.get("dtype") or torch.get_default_dtype()
                self._charge(elements * dtype.itemsize)
                return func(*args, **kwargs)
        result = func(*args, **kwargs)
        if isinstance(result, torch.Tensor):
            nbytes = result.numel() * result.element_size()
            if func in _SIZED or func in _SIZED_METHODS or func in _CONSTRUCTORS:
                self._charge(nbytes)
            elif (
                nbytes > self.limit
            ):  # any other operation: not counted, but no single result beyond the limit
                self._charge(nbytes, allocated=True)
        return result


@contextmanager
def build_budget(limit: int, what: str, path: Path | str | None = None) -> Iterator[None]:
    """Within: constructing tensors beyond `limit` bytes in total raises BuildBudgetExceeded (naming `path`)."""
    with _Budget(limit, what, path):
        yield
