"""tCURLoRA under reduced precision and in-place optimiser writes: small dW survives bf16 autocast, a
bf16/fp16-cast model runs, and an update that does not bump dU's version is seen by the next pass."""

from __future__ import annotations

import pytest
import torch
from adapter_testing import CONV_TARGETS, small_unetr

from tcurlora.adapters.config import AdapterConfig
from tcurlora.adapters.model import apply_adapter
from tcurlora.adapters.tcur import TCURConv3d, TCURLinear


def adapted_with_delta(relative: float, dtype: torch.dtype = torch.float32):
    """A tCUR-adapted UNETR whose dW is about `relative` times |W| in every group."""
    adapted = apply_adapter(
        small_unetr(dtype), AdapterConfig(method="tcur", rank=8, conv_target_modules=CONV_TARGETS)
    )
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for group in adapted.tcur.groups.values():
            group.dU.copy_(torch.randn(group.dU.shape, generator=gen))
            member = group._members[0]
            scale = relative * member.weight.abs().mean() / group.delta().abs().mean()
            group.dU.mul_(scale)
    return adapted


def fraction_of_delta_reaching(effective: torch.Tensor, weight: torch.Tensor, delta: torch.Tensor) -> float:
    """How much of dW the low-precision effective weight carries beyond the rounded W (1.0 = all of it)."""
    seen = effective.double() - weight.to(effective.dtype).double()
    return float((seen * delta.double()).sum() / delta.double().square().sum())


def test_bf16_autocast_keeps_small_updates():
    adapted = adapted_with_delta(1e-3)
    effective, weights, deltas = [], [], []
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        for layer in adapted.tcur.layers.values():
            if isinstance(layer, TCURLinear):
                layer.base_layer.bias = None  # so that layer(I) is exactly the effective weight, transposed
                used = layer(torch.eye(layer.weight.shape[1])).T
            else:
                assert isinstance(layer, TCURConv3d)
                used = layer.adapted_weight()
            assert used.dtype == torch.bfloat16
            delta = layer.delta_weight()
            assert delta.dtype == torch.float32
            effective.append(used.flatten())
            weights.append(layer.weight.flatten())
            deltas.append(delta.flatten())
    weight, delta = torch.cat(weights), torch.cat(deltas)
    # Summed in float32 and cast once, a 1e-3 update reaches the bf16 weights in full on average;
    # bf16(W) + bf16(dW) summed in bf16 loses about half of it.
    assert fraction_of_delta_reaching(torch.cat(effective), weight, delta) > 0.95
    naive = weight.to(torch.bfloat16) + delta.to(torch.bfloat16)
    assert fraction_of_delta_reaching(naive, weight, delta) < 0.6


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_model_cast_to_half_precision_runs_and_agrees(dtype):
    adapted = adapted_with_delta(0.05)
    x = torch.randn(1, 1, 32, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        reference = adapted(x)
        adapted.to(dtype)
        out = adapted(x.to(dtype))
    assert out.dtype == dtype
    relative = float((out.float() - reference).norm() / reference.norm())
    assert relative < 0.05, relative
    adapted.merge()  # merging in half precision works too and gives the same outputs
    with torch.no_grad():
        merged = adapted(x.to(dtype))
    assert float((merged.float() - out.float()).norm() / out.float().norm()) < 0.05


@pytest.mark.parametrize("write", ["fused_adam", "data"])
def test_in_place_update_without_version_bump_is_seen(write):
    adapted = adapted_with_delta(0.01)
    x = torch.randn(1, 1, 32, 32, 32, generator=torch.Generator().manual_seed(3))
    adapted.eval()
    with torch.no_grad():
        before = adapted(x).clone()  # fills the per-group cache
    group = next(iter(adapted.tcur.groups.values()))
    if write == "fused_adam":
        optimizer = torch.optim.Adam([group.dU], lr=0.5, fused=True)
        group.dU.grad = torch.ones_like(group.dU)
        version = group.dU._version
        optimizer.step()
        assert group.dU._version == version or True  # fused kernels may or may not bump it: either way
    else:
        group.dU.data.add_(0.5)
    with torch.no_grad():
        after = adapted(x)
        for g in adapted.tcur.groups.values():
            g.clear_cache()
        fresh = adapted(x)
    assert not torch.allclose(after, before)
    torch.testing.assert_close(after, fresh)
