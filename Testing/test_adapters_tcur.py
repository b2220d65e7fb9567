"""tCURLoRA adapter on a real (small) MONAI UNETR: identity at init, group structure, gradients to dU,
dW against a naive circular-convolution t-product, merge/unmerge/unload, caching, autocast, config."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F
from adapter_testing import CONV_TARGETS, adapted_copy, naive_t_product, small_unetr  # noqa: E402,F401
from torch import nn

import tcurlora.adapters.tcur as tcur_module
from tcurlora.adapters.config import UNETR_TARGETS, AdapterConfig
from tcurlora.adapters.model import apply_adapter
from tcurlora.adapters.tcur import TCURConv3d, TCURLayer, TCURLinear
from tcurlora.errors import ConfigError
from tcurlora.models.fingerprint import state_dict_fingerprint


def randomize_cores(adapted, scale: float = 0.5, seed: int = 3) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for group in adapted.tcur.groups.values():
            group.dU.copy_(scale * torch.randn(group.dU.shape, generator=gen, dtype=group.dU.dtype))


@pytest.mark.parametrize("selection", ["topnorm", "leverage", "inverse", "uniform"])
@pytest.mark.parametrize("conv", [False, True])
def test_identity_at_init(base64, batch64, base_out, selection, conv):
    adapted = adapted_copy(
        base64, method="tcur", rank=4, selection=selection, conv_target_modules=CONV_TARGETS if conv else []
    )
    with torch.no_grad():
        out = adapted(batch64)
    assert out.shape == (1, 3, 32, 32, 32)
    torch.testing.assert_close(out, base_out, atol=1e-6, rtol=0)
    convs = [layer for layer in adapted.tcur.layers.values() if isinstance(layer, TCURConv3d)]
    assert (len(convs) > 0) == conv
    assert all(float(g.dU.detach().abs().max()) == 0.0 for g in adapted.tcur.groups.values())


def test_group_structure_matches_the_paper(base64):
    adapted = adapted_copy(base64, method="tcur", rank=8)
    shapes = {k: (g.n1, g.n2, g.m, g.rank, tuple(g.dU.shape)) for k, g in adapted.tcur.groups.items()}
    assert shapes == {
        "linear_48x48": (48, 48, 48, 8, (8, 8, 48)),  # q, k, v, out of 12 blocks
        "linear_96x48": (96, 48, 12, 8, (8, 8, 12)),  # MLP up-projections
        "linear_48x96": (48, 96, 12, 8, (8, 8, 12)),  # MLP down-projections
    }
    assert len(adapted.tcur.layers) == 48  # 4 Linear layers in each of 12 blocks; qkv is one fused layer
    assert adapted.tcur.layers["vit.blocks.0.attn.qkv"].n_slices == 3
    counts = adapted.parameter_counts()
    assert counts.trainable == counts.adapter == 64 * 48 + 64 * 12 + 64 * 12
    assert counts.head == 0


def test_rank_is_clamped_and_conv_groups_are_per_layer(base64):
    adapted = adapted_copy(base64, method="tcur", rank=100, conv_target_modules=CONV_TARGETS)
    groups = adapted.tcur.groups
    assert groups["linear_48x48"].rank == 48
    assert tuple(groups["linear_96x48"].dU.shape) == (48, 48, 12)
    conv1 = groups["conv_encoder1_layer_conv1_conv"]  # Conv3d(1 -> 8, k=3): an 8 x 1 x 27 tensor
    assert (conv1.n1, conv1.n2, conv1.m, conv1.rank) == (8, 1, 27, 1)
    assert not any(name.startswith("out.") for name in adapted.tcur.layers)  # the head is never a target


def test_delta_matches_naive_t_product(base64):
    alpha = 0.7
    adapted = adapted_copy(base64, method="tcur", rank=5, alpha=alpha, conv_target_modules=CONV_TARGETS)
    randomize_cores(adapted)
    group = adapted.tcur.groups["linear_48x48"]
    # The group tensor built independently: matching Linear layers in module order, qkv as q, k, v.
    slices, owners = [], []
    for name, module in base64.named_modules():
        if (
            isinstance(module, nn.Linear)
            and re.fullmatch(UNETR_TARGETS, name)
            and module.weight.shape == (48, 48)
        ):
            slices.append(module.weight.detach())
            owners.append((name, 0))
        elif isinstance(module, nn.Linear) and name.endswith("attn.qkv"):
            for part in range(3):
                slices.append(module.weight.detach()[48 * part : 48 * (part + 1)])
                owners.append((name, part))
    w = torch.stack(slices, dim=-1)
    assert w.shape == (48, 48, 48)
    rows, cols = group.rows, group.cols
    assert rows.numel() == cols.numel() == 5
    reference = alpha * naive_t_product(naive_t_product(w[:, cols, :], group.dU.detach()), w[rows, :, :])
    torch.testing.assert_close(group.delta().detach(), reference, atol=1e-10, rtol=1e-8)
    # Each layer uses exactly its slices, and its forward is F.linear with W + dW.
    x = torch.randn(2, 7, 48, dtype=torch.float64)
    for index, (name, part) in enumerate(owners):
        if name.endswith("blocks.4.attn.qkv") or name.endswith("blocks.4.attn.out_proj"):
            layer = adapted.tcur.layers[name]
            rows_of_part = slice(48 * part, 48 * (part + 1))
            got = layer.adapted_weight().detach()[rows_of_part] - layer.base_layer.weight[rows_of_part]
            torch.testing.assert_close(got, reference[:, :, index], atol=1e-10, rtol=1e-8)
    layer = adapted.tcur.layers["vit.blocks.4.attn.out_proj"]
    base_layer = base64.get_submodule("vit.blocks.4.attn.out_proj")
    expected = F.linear(
        x,
        base_layer.weight + reference[:, :, owners.index(("vit.blocks.4.attn.out_proj", 0))],
        base_layer.bias,
    )
    torch.testing.assert_close(layer(x).detach(), expected, atol=1e-10, rtol=1e-8)
    # A conv group: (out x in x k^3), dW reshaped back to the kernel.
    conv_layer = adapted.tcur.layers["decoder2.conv_block.conv1.conv"]
    conv_group = conv_layer.group
    kernel = base64.get_submodule("decoder2.conv_block.conv1.conv").weight.detach()
    wc = kernel.reshape(kernel.shape[0], kernel.shape[1], -1)
    ref_c = alpha * naive_t_product(
        naive_t_product(wc[:, conv_group.cols, :], conv_group.dU.detach()), wc[conv_group.rows, :, :]
    )
    torch.testing.assert_close(
        conv_layer.delta_weight().detach(), ref_c.reshape(kernel.shape), atol=1e-10, rtol=1e-8
    )


@pytest.mark.slow
def test_training_dU_alone_lowers_loss_and_keeps_base_weights():
    model = small_unetr(torch.float32)
    frozen = {k: v.clone() for k, v in model.state_dict().items()}
    fingerprint = state_dict_fingerprint(model)
    adapted = apply_adapter(model, AdapterConfig(method="tcur", rank=8))
    params = adapted.trainable_parameters()
    assert len(params) == 3 and all(p.shape[:2] == (8, 8) for p in params)  # only the three dU cores
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(2, 1, 32, 32, 32, generator=gen)
    target = torch.randint(0, 3, (2, 32, 32, 32), generator=gen)
    optimizer = torch.optim.Adam(params, lr=0.05)
    adapted.train()
    losses = []
    for step in range(6):
        optimizer.zero_grad()
        loss = F.cross_entropy(adapted(x), target)
        loss.backward()
        if step == 0:
            assert all(p.grad is not None and float(p.grad.abs().max()) > 0 for p in params)
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0] - 1e-3, losses
    assert all(float(p.detach().abs().max()) > 0 for p in params)
    # Every base weight is bit-identical (wrapped layers keep theirs as .base_layer).
    plain_state = {k.replace(".base_layer", ""): v for k, v in adapted.model.state_dict().items()}
    assert set(plain_state) == set(frozen)
    assert all(torch.equal(plain_state[k], frozen[k]) for k in frozen)
    assert state_dict_fingerprint(frozen) == fingerprint


@pytest.mark.slow
def test_one_delta_per_group_per_pass_and_gradient_accumulation(base64, batch64, monkeypatch):
    adapted = adapted_copy(base64, method="tcur", rank=4)
    calls = []
    real = tcur_module.to_fourier  # called once per dW computation (for dU)
    monkeypatch.setattr(tcur_module, "to_fourier", lambda *a, **k: calls.append(1) or real(*a, **k))
    adapted.train()
    for _ in range(2):  # two passes without an optimiser step: each needs its own graph
        adapted(batch64).square().mean().backward()
    assert len(calls) == 2 * len(adapted.tcur.groups)  # once per group per pass, shared by its 12-48 layers
    grads = [g.dU.grad.clone() for g in adapted.tcur.groups.values()]
    assert all(float(g.abs().max()) > 0 for g in grads)
    calls.clear()
    with torch.no_grad():  # every pass recomputes (an in-place optimiser write may not bump dU's version)
        adapted(batch64)
        adapted(batch64)
    assert len(calls) == 2 * len(adapted.tcur.groups)


def test_autocast_keeps_delta_in_float32_and_runs_in_the_autocast_dtype():
    adapted = apply_adapter(small_unetr(torch.float32), AdapterConfig(method="tcur", rank=4))
    x = torch.randn(1, 1, 32, 32, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = adapted(x)
    assert out.dtype == torch.bfloat16
    group = adapted.tcur.groups["linear_48x48"]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert group.delta().dtype == torch.float32  # added to W in float32, cast once
        adapted(x).float().mean().backward()
    assert group.dU.grad is not None and group.dU.grad.dtype == torch.float32
    assert float(group.dU.grad.abs().max()) > 0


@pytest.mark.slow
def test_merge_unmerge_and_unload(base64, batch64, base_out):
    adapted = adapted_copy(base64, method="tcur", rank=6, conv_target_modules=CONV_TARGETS)
    randomize_cores(adapted, scale=2.0)
    before = {k: v.clone() for k, v in adapted.model.state_dict().items()}
    with torch.no_grad():
        unmerged = adapted(batch64)
    assert (unmerged - base_out).abs().max() > 1e-3  # the cores really change the output
    adapted.merge()
    assert adapted.merged
    qkv = adapted.tcur.layers["vit.blocks.2.attn.qkv"]
    assert not torch.equal(qkv.base_layer.weight, before["vit.blocks.2.attn.qkv.base_layer.weight"])
    with torch.no_grad():
        merged = adapted(batch64)
    torch.testing.assert_close(merged, unmerged, atol=1e-5, rtol=0)
    with pytest.warns(UserWarning, match="already merged"):
        adapted.merge()  # a second merge changes nothing
    with torch.no_grad():
        torch.testing.assert_close(adapted(batch64), unmerged, atol=1e-5, rtol=0)
    adapted.unmerge()
    after = adapted.model.state_dict()
    for key, value in before.items():
        torch.testing.assert_close(after[key], value, atol=1e-12, rtol=0)
    plain = adapted.merge_and_unload()
    assert not any(isinstance(m, TCURLayer) for m in plain.modules())
    assert type(plain.get_submodule("vit.blocks.2.attn.qkv")) is nn.Linear
    assert type(plain.get_submodule("decoder2.conv_block.conv1.conv")) is nn.Conv3d
    assert set(plain.state_dict()) == set(base64.state_dict())
    assert not plain._forward_pre_hooks
    with torch.no_grad():
        torch.testing.assert_close(plain(batch64), unmerged, atol=1e-5, rtol=0)


def test_wrappers_expose_base_weight(base64):
    adapted = adapted_copy(base64, method="tcur", rank=2)
    layer = adapted.tcur.layers["vit.blocks.0.mlp.linear1"]
    assert isinstance(layer, TCURLinear)
    assert layer.weight is layer.base_layer.weight and layer.bias is layer.base_layer.bias
    assert not layer.base_layer.weight.requires_grad


def test_config_validation_and_round_trip():
    config = AdapterConfig(
        method="lora", rank=4, num_classes=3, label_names=["a", "b"], label_colors=[[1, 0, 0]] * 2
    )
    assert config.resolved_alpha == 4.0
    data = config.to_dict()
    assert data["alpha"] == 4.0 and data["target_modules"][0] == UNETR_TARGETS
    assert AdapterConfig.from_dict(data) == AdapterConfig(**{**data})
    assert AdapterConfig(method="tcur").resolved_alpha == 1.0
    for bad, message in [
        (
            {"method": "dora"},
            "adapter config key 'method': must be one of tcur, lora, decoder, full, head, scratch; got 'dora'",
        ),
        ({"rank": 0}, "adapter config key 'rank': must be >= 1, got 0"),
        ({"rank": 2.5}, "adapter config key 'rank': expected an integer, got float 2.5"),
        ({"selection": "random"}, "adapter config key 'selection': must be one of topnorm"),
        (
            {"target_modules": ["vit.(blocks"]},
            "adapter config key 'target_modules[0]': invalid regular expression",
        ),
        ({"num_classes": 3, "label_names": ["only one"]}, "1 label_names for num_classes=3"),
        ({"alpha": float("nan")}, "adapter config key 'alpha': expected a number, got float nan"),
        ({"fused_splits": {"qkv": 0}}, "adapter config key 'fused_splits.qkv': must be >= 1, got 0"),
        ({"label_colors": [[1, 0]]}, "adapter config key 'label_colors[0]': expected [r, g, b]"),
        ({"new_head": 1}, "adapter config key 'new_head': expected true or false, got int 1"),
        ({"base_fingerprint": 7}, "adapter config key 'base_fingerprint': expected a string, got int 7"),
    ]:
        with pytest.raises(ConfigError, match=re.escape(message)):
            AdapterConfig(**bad)
    with pytest.raises(ConfigError, match="unknown adapter config keys: lora_rank"):
        AdapterConfig.from_dict({"method": "tcur", "lora_rank": 4})


def test_targets_matching_nothing_is_a_clear_error(base64):
    with pytest.raises(ConfigError, match="no layer matched the adapter targets"):
        adapted_copy(base64, method="tcur", target_modules=[r"encoder\.nothing"])
    with pytest.raises(ConfigError, match="head_module 'out.missing'"):
        adapted_copy(base64, method="tcur", head_module="out.missing", num_classes=2)


@pytest.mark.parametrize("m", [1, 2, 5, 8, 48])
def test_inverse_rdft_matrix_equals_irfft(m):
    spectrum = torch.randn(m // 2 + 1, 7, dtype=torch.complex128)
    expected = torch.fft.irfft(spectrum, n=m, dim=0)
    stacked = torch.cat([spectrum.real, spectrum.imag], dim=0)
    torch.testing.assert_close(tcur_module.inverse_rdft_matrix(m) @ stacked, expected)


def test_adapted_linear_matches_autograd_of_the_plain_form():
    """The memory-lean linear gives the same outputs and gradients as F.linear(x, W + dW) + autograd."""
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(2, 5, 6, dtype=torch.float64, generator=generator, requires_grad=True)
    weight = torch.randn(4, 6, dtype=torch.float64, generator=generator, requires_grad=True)
    delta = torch.randn(4, 6, dtype=torch.float64, generator=generator, requires_grad=True)
    bias = torch.randn(4, dtype=torch.float64, generator=generator, requires_grad=True)
    assert torch.autograd.gradcheck(tcur_module.AdaptedLinear.apply, (x, weight, delta, bias, torch.float64))
    lean = tcur_module.AdaptedLinear.apply(x, weight, delta, bias, torch.float64)
    plain = F.linear(x, weight + delta, bias)
    torch.testing.assert_close(lean, plain)
    upstream = torch.randn_like(plain)
    grads_lean = torch.autograd.grad(lean, (x, weight, delta, bias), upstream)
    grads_plain = torch.autograd.grad(plain, (x, weight, delta, bias), upstream)
    for got, expected in zip(grads_lean, grads_plain, strict=True):
        torch.testing.assert_close(got, expected)
