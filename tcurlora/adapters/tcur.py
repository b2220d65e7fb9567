"""tCURLoRA: W' = W + alpha * C * dU * R (t-product) for groups of same-shaped weights, dU trainable.

A group stacks m frozen weight slices into W (n1, n2, m). C = W[:, J, :] and R = W[I, :, :] are
frozen (stored as their rfft along mode 3); only the core dU (r, r, m), zero at start, trains. The
whole group's dW is computed once per forward pass of the model and shared by its layers.
"""

from __future__ import annotations

import re
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tcurlora.adapters.config import AdapterConfig, full_match_any
from tcurlora.adapters.head import head_module_names
from tcurlora.errors import ConfigError
from tcurlora.tensor_algebra import select_indices, to_fourier

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def _as_complex(buffer: Tensor) -> Tensor:
    """A (..., 2) real buffer viewed as complex (computed in float32 when stored in half precision)."""
    if buffer.dtype in _LOW_PRECISION:
        buffer = buffer.float()
    return torch.view_as_complex(buffer.contiguous())


def _autocast_dtype(device: torch.device) -> torch.dtype | None:
    """The autocast dtype active for `device`, or None."""
    kind = device.type
    try:
        if torch.is_autocast_enabled(kind):
            return torch.get_autocast_dtype(kind)
    except (RuntimeError, TypeError):  # a device type autocast does not know
        return None
    return None


class TCURGroup(nn.Module):
    """One tensor W (n1, n2, m): frozen C_hat, R_hat (rfft of C and R) and the trainable core dU."""

    def __init__(self, weight: Tensor, rank: int, alpha: float, selection: str = "topnorm", seed: int = 0):
        super().__init__()
        if weight.ndim != 3:
            raise ConfigError(f"a tCUR group needs a (n1, n2, m) tensor, got shape {tuple(weight.shape)}")
        self.n1, self.n2, self.m = (int(s) for s in weight.shape)
        self.alpha = float(alpha)
        rows, cols = select_indices(weight.detach(), rank, selection, seed)
        self.rank = int(rows.numel())
        self.register_buffer("rows", rows.clone())
        self.register_buffer("cols", cols.clone())
        # Derived from W and the indices, so never saved: C in the Fourier domain, frequency first
        # (f, n1, r, re/im); R as the real block matrices [[Rr; -Ri], [Ri; Rr]] (2, f, 2r, n2); and
        # alpha times the inverse real DFT along mode 3 as a (m, 2f) matrix.
        self.register_buffer("c_freq", torch.empty(0), persistent=False)
        self.register_buffer("r_blocks", torch.empty(0), persistent=False)
        self.register_buffer("inverse_dft", torch.empty(0), persistent=False)
        self.set_factors(weight)
        self.dU = nn.Parameter(
            torch.zeros(self.rank, self.rank, self.m, dtype=weight.dtype, device=weight.device)
        )
        self._cache: tuple[Tensor, tuple[Tensor, ...]] | None = None
        self._cache_key: tuple | None = None
        self._members: list[TCURLayer] = []  # bound layers in slice order (a plain list: not submodules)

    def extra_repr(self) -> str:
        return f"n1={self.n1}, n2={self.n2}, m={self.m}, rank={self.rank}, alpha={self.alpha}"

    @torch.no_grad()
    def set_factors(self, weight: Tensor) -> None:
        """Recompute C_hat and R_hat from the base weights W (n1, n2, m) and the stored indices."""
        weight = weight.detach()
        if tuple(weight.shape) != (self.n1, self.n2, self.m):
            raise ConfigError(
                f"group weights have shape {tuple(weight.shape)}, expected {(self.n1, self.n2, self.m)}"
            )
        rows, cols = self.rows.to(weight.device), self.cols.to(weight.device)
        device = self.c_freq.device if self.c_freq.numel() else weight.device
        c_hat = to_fourier(weight[:, cols, :]).permute(2, 0, 1)  # (f, n1, r) complex
        r_hat = to_fourier(weight[rows, :, :]).permute(2, 0, 1)  # (f, r, n2) complex
        self.c_freq = torch.view_as_real(c_hat.contiguous()).to(device)
        real, imag = r_hat.real, r_hat.imag
        self.r_blocks = (
            torch.stack([torch.cat([real, -imag], 1), torch.cat([imag, real], 1)]).contiguous().to(device)
        )
        self.inverse_dft = (self.alpha * inverse_rdft_matrix(self.m, dtype=weight.dtype)).to(device)
        self.clear_cache()

    def clear_cache(self) -> None:
        self._cache = None
        self._cache_key = None

    def delta(self) -> Tensor:
        """alpha * C * dU * R as a (n1, n2, m) tensor (a view of `delta_slices`)."""
        return self.delta_slices().permute(1, 2, 0)

    def delta_slices(self) -> Tensor:
        """alpha * C * dU * R with the slice index first, (m, n1, n2), cached until dU, grad mode or
        autocast change (for inspection; layers use `member_delta`)."""
        return self._compute()[0]

    def member_delta(self, index: int) -> Tensor:
        """The (k, n1, n2) part of dW that belongs to bound layer number `index`: one `split` for all
        members, not a slice per layer (whose backward would zero-fill a full-size gradient each)."""
        return self._compute()[1][index]

    def _compute(self) -> tuple[Tensor, tuple[Tensor, ...]]:
        """All of dW with real GEMMs: P_k = C_k dU_k per frequency (small, complex), then
        [Re; Im](P_k R_k) as one real batched GEMM against the R blocks, then the inverse DFT along
        mode 3 as one (m, 2f) x (2f, n1 n2) GEMM (faster than an FFT along a strided axis), split
        into the members' parts once (so backward assembles dW's gradient once per group).

        Always computed and returned in at least float32, whatever the autocast state or the dtype the
        module was cast to: the layers add it to W in float32 and cast once (small updates would
        vanish in a bf16 sum)."""
        key = (self.dU._version, torch.is_grad_enabled(), self.dU.device, self.dU.dtype)
        if self._cache is not None and self._cache_key == key:
            return self._cache
        self._cache = None  # free the old one before computing the new one
        compute = accumulation_dtype(self.r_blocks.dtype)
        with torch.autocast(self.dU.device.type, enabled=False):
            du_hat = to_fourier(self.dU.to(compute)).permute(2, 0, 1)  # (f, r, r)
            p = torch.bmm(_as_complex(self.c_freq.to(compute)), du_hat)  # (f, n1, r)
            p_real = torch.cat([p.real, p.imag], dim=-1)  # (f, n1, 2r): [Pr, Pi]
            f = p.shape[0]
            spectrum = torch.bmm(
                p_real.expand(2, -1, -1, -1).reshape(2 * f, self.n1, 2 * self.rank),
                self.r_blocks.to(compute).reshape(2 * f, 2 * self.rank, self.n2),
            )
            spectrum = spectrum.reshape(2 * f, self.n1 * self.n2)  # rows: Re of each frequency, then Im
            whole = (self.inverse_dft.to(compute) @ spectrum).reshape(self.m, self.n1, self.n2)
        sizes = [layer.n_slices for layer in self._members] or [self.m]
        parts_tuple = whole.split(sizes, dim=0)
        self._cache, self._cache_key = (whole, parts_tuple), key
        return self._cache


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for half/bfloat16/float32 tensors, float64 for float64: where W + dW is summed."""
    return torch.promote_types(dtype, torch.float32)


def compute_dtype(weight: Tensor) -> torch.dtype:
    """The dtype a layer runs in: the active autocast dtype on the weight's device, else the weight's."""
    return _autocast_dtype(weight.device) or weight.dtype


def sum_weight(weight: Tensor, delta: Tensor, dtype: torch.dtype) -> Tensor:
    """W + dW added in (at least) float32, then cast once to `dtype`."""
    total = accumulation_dtype(weight.dtype)
    return (weight.to(total) + delta.to(total)).to(dtype)


def inverse_rdft_matrix(m: int, dtype: torch.dtype = torch.float64) -> Tensor:
    """(m, 2f) real matrix M with x = M @ [Re X; Im X] for X = rfft(x) of length m (f = m//2 + 1)."""
    f = m // 2 + 1
    j = torch.arange(m, dtype=torch.float64)[:, None]
    k = torch.arange(f, dtype=torch.float64)[None, :]
    weight = torch.full((f,), 2.0, dtype=torch.float64)
    weight[0] = 1.0
    if m % 2 == 0:
        weight[-1] = 1.0
    angle = 2 * torch.pi * j * k / m
    matrix = torch.cat([weight * torch.cos(angle), -weight * torch.sin(angle)], dim=1) / m
    return matrix.to(dtype)


class TCURLayer(nn.Module, ABC):
    """Wraps a frozen base layer whose weight is one or more slices of a TCURGroup."""

    def __init__(self, base_layer: nn.Module, n_slices: int):
        super().__init__()
        self.base_layer = base_layer
        self.n_slices = int(n_slices)
        self.offset = 0
        self.merged = False
        object.__setattr__(self, "_group", None)  # not a submodule: groups live in the adapter
        self.member_index = 0

    @property
    def group(self) -> TCURGroup:
        if self._group is None:
            raise RuntimeError("tCUR layer is not bound to a group")
        return self._group

    def bind(self, group: TCURGroup, offset: int) -> None:
        """Attach to `group` as its next member, owning slices offset .. offset + n_slices."""
        object.__setattr__(self, "_group", group)
        self.offset = int(offset)
        self.member_index = len(group._members)
        group._members.append(self)
        group.clear_cache()

    @property
    def weight(self) -> Tensor:
        return self.base_layer.weight

    @property
    def bias(self) -> Tensor | None:
        return self.base_layer.bias

    @abstractmethod
    def to_slices(self, weight: Tensor) -> Tensor:
        """The base weight as (n1, n2, k) slices of its group."""

    @abstractmethod
    def from_slices(self, slices: Tensor) -> Tensor:
        """A (k, n1, n2) slice-first part of dW in the base weight's shape."""

    def delta_weight(self) -> Tensor:
        """This layer's part of the group's dW, in the base weight's shape."""
        return self.from_slices(self.group.member_delta(self.member_index))

    def adapted_weight(self) -> Tensor:
        """W + dW, summed in float32 and cast once to the dtype the layer runs in."""
        weight = self.base_layer.weight
        return sum_weight(weight, self.delta_weight(), compute_dtype(weight))

    @torch.no_grad()
    def merge(self) -> None:
        if self.merged:
            warnings.warn("tCUR layer already merged; merge skipped", stacklevel=2)
            return
        weight = self.base_layer.weight
        weight.copy_(sum_weight(weight, self.delta_weight(), weight.dtype))
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if not self.merged:
            warnings.warn("tCUR layer is not merged; unmerge skipped", stacklevel=2)
            return
        weight = self.base_layer.weight
        weight.copy_(sum_weight(weight, -self.delta_weight(), weight.dtype))
        self.merged = False


class AdaptedLinear(torch.autograd.Function):
    """y = x (W + dW)^T + b that keeps no (W + dW) copy for backward: it is rebuilt there.

    The straightforward F.linear(x, W + dW) saves one full weight-sized tensor per layer; here
    backward recomputes it from W (frozen, alive anyway) and dW (a view of the group's cached dW), so
    training holds no more than the frozen model plus one dW per group. W + dW is summed in float32
    and cast once to `dtype` (the autocast dtype under autocast); the input gradient comes back in
    the input's dtype, dW's gradient in dW's dtype (float32).
    """

    @staticmethod
    def forward(
        ctx, x: Tensor, weight: Tensor, delta: Tensor, bias: Tensor | None, dtype: torch.dtype
    ) -> Tensor:
        x_cast = x.to(dtype)
        ctx.x_dtype, ctx.dtype = x.dtype, dtype
        ctx.save_for_backward(x_cast, weight, delta, bias)
        return F.linear(x_cast, sum_weight(weight, delta, dtype), None if bias is None else bias.to(dtype))

    @staticmethod
    def backward(ctx, grad: Tensor):
        x_cast, weight, delta, bias = ctx.saved_tensors
        grad = grad.to(ctx.dtype)
        grad_x = grad_weight = grad_delta = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_x = (grad @ sum_weight(weight, delta, ctx.dtype)).to(ctx.x_dtype)
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            flat_grad = grad.reshape(-1, grad.shape[-1])
            grad_w = flat_grad.transpose(0, 1) @ x_cast.reshape(-1, x_cast.shape[-1])
            grad_delta = grad_w.to(delta.dtype) if ctx.needs_input_grad[2] else None
            grad_weight = grad_w.to(weight.dtype) if ctx.needs_input_grad[1] else None
        if bias is not None and ctx.needs_input_grad[3]:
            grad_bias = grad.reshape(-1, grad.shape[-1]).sum(0).to(bias.dtype)
        return grad_x, grad_weight, grad_delta, grad_bias, None


class TCURLinear(TCURLayer):
    """nn.Linear (n_slices * n1, n2) adapted slice by slice (a fused qkv gives 3 slices)."""

    def to_slices(self, weight: Tensor) -> Tensor:
        out_features, in_features = weight.shape
        return weight.reshape(self.n_slices, out_features // self.n_slices, in_features).permute(1, 2, 0)

    def from_slices(self, slices: Tensor) -> Tensor:
        """(k, n1, n2) slice-first part of dW -> the (k * n1, n2) weight (a view)."""
        k, n1, n2 = slices.shape
        return slices.reshape(k * n1, n2)

    def forward(self, x: Tensor) -> Tensor:
        if self.merged or self._group is None:
            return self.base_layer(x)
        weight = self.base_layer.weight
        return AdaptedLinear.apply(
            x, weight, self.delta_weight(), self.base_layer.bias, compute_dtype(weight)
        )


class TCURConv3d(TCURLayer):
    """nn.Conv3d (out, in, k, k, k) adapted as one (out x in x k^3) tensor."""

    def to_slices(self, weight: Tensor) -> Tensor:
        return weight.reshape(weight.shape[0], weight.shape[1], -1)

    def from_slices(self, slices: Tensor) -> Tensor:
        """(k^3, out, in) slice-first part of dW -> the (out, in, k, k, k) kernel."""
        return slices.permute(1, 2, 0).reshape(self.base_layer.weight.shape)

    def forward(self, x: Tensor) -> Tensor:
        if self.merged or self._group is None:
            return self.base_layer(x)
        return self.base_layer._conv_forward(x, self.adapted_weight(), self.base_layer.bias)


def _set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, module)


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def find_targets(model: nn.Module, config: AdapterConfig) -> tuple[list[str], list[str]]:
    """Names of the nn.Linear and nn.Conv3d modules the config adapts (never the head)."""
    linear, conv = [], []
    heads = head_module_names(model, config.head_module)
    for name, module in model.named_modules():
        if not name or any(_under(name, head) for head in heads):
            continue
        if isinstance(module, nn.Linear) and full_match_any(config.target_modules, name):
            linear.append(name)
        elif isinstance(module, nn.Conv3d) and full_match_any(config.conv_target_modules, name):
            conv.append(name)
    if not linear and not conv:
        raise ConfigError(
            "no layer matched the adapter targets: target_modules "
            f"{config.target_modules} (nn.Linear) and conv_target_modules {config.conv_target_modules} "
            "(nn.Conv3d) match no module name of this network"
        )
    return linear, conv


def _fused_split(name: str, module: nn.Linear, config: AdapterConfig) -> int:
    splits = config.fused_splits.get(name.rpartition(".")[2], 1)
    if module.out_features % splits:
        raise ConfigError(f"fused layer {name} has {module.out_features} outputs, not divisible by {splits}")
    return splits


def _group_key(prefix: str, text: str) -> str:
    return prefix + re.sub(r"[^A-Za-z0-9_]", "_", text)


class TCURAdapter(nn.Module):
    """The groups of one adapted model, and the layers bound to them."""

    def __init__(self, model: nn.Module, config: AdapterConfig):
        super().__init__()
        linear, conv = find_targets(model, config)
        self.groups = nn.ModuleDict()
        self._layers: dict[str, TCURLayer] = {}
        members: dict[str, list[TCURLayer]] = {}
        for name in linear:
            base = model.get_submodule(name)
            layer = TCURLinear(base, _fused_split(name, base, config))
            n1, n2 = base.out_features // layer.n_slices, base.in_features
            members.setdefault(_group_key("linear_", f"{n1}x{n2}"), []).append(layer)
            self._install(model, name, layer)
        for name in conv:
            base = model.get_submodule(name)
            layer = TCURConv3d(base, n_slices=int(base.weight[0, 0].numel()))
            members[_group_key("conv_", name)] = [layer]
            self._install(model, name, layer)
        for key, layers in members.items():
            weight = torch.cat(
                [layer.to_slices(layer.base_layer.weight.detach()) for layer in layers], dim=-1
            )
            group = TCURGroup(weight, config.rank, config.resolved_alpha, config.selection, config.seed)
            offset = 0
            for layer in layers:
                layer.bind(group, offset)
                offset += layer.n_slices
            self.groups[key] = group
        self._hook = model.register_forward_pre_hook(self._new_pass)

    def _install(self, model: nn.Module, name: str, layer: TCURLayer) -> None:
        for parameter in layer.base_layer.parameters():
            parameter.requires_grad_(False)
        _set_submodule(model, name, layer)
        self._layers[name] = layer

    def _new_pass(self, module: nn.Module, args: tuple) -> None:
        """Each forward pass computes dW afresh (once per group, shared by its layers): a pass with grad
        needs a new graph, and an optimiser that writes dU in place without bumping its version
        (fused/foreach Adam, `.data` writes) must still be seen by the next pass."""
        for group in self.groups.values():
            group.clear_cache()

    @property
    def layers(self) -> dict[str, TCURLayer]:
        return dict(self._layers)

    @property
    def merged(self) -> bool:
        return any(layer.merged for layer in self._layers.values())

    def group_weight(self, group: TCURGroup) -> Tensor:
        """The stacked current base weights (n1, n2, m) of a group's layers."""
        return torch.cat(
            [layer.to_slices(layer.base_layer.weight.detach()) for layer in group._members], dim=-1
        )

    def rebuild_factors(self) -> None:
        """Recompute every group's C_hat/R_hat (after its indices were loaded)."""
        for group in self.groups.values():
            group.set_factors(self.group_weight(group))

    def _each(self, action: Callable[[TCURLayer], None]) -> None:
        with torch.no_grad():
            for layer in self._layers.values():
                action(layer)

    def merge(self) -> None:
        self._each(TCURLayer.merge)

    def unmerge(self) -> None:
        self._each(TCURLayer.unmerge)

    def unload(self, model: nn.Module) -> nn.Module:
        """Put every base layer back in place of its wrapper and remove the hook."""
        for name, layer in self._layers.items():
            _set_submodule(model, name, layer.base_layer)
        self._hook.remove()
        self._layers = {}
        return model
