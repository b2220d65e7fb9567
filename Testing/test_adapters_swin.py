"""tCURLoRA on a real (small) MONAI SwinUNETR v2, as on UNETR: one group per stage and slice shape,
exact identity at init, dW against a naive t-product, merge == unmerged, save -> load reproducing the
outputs, Conv3d targets, the default train_modules (encoder1 + decoder1) and the parameter counts."""

from __future__ import annotations

import copy
import re

import pytest
import torch
from adapter_testing import naive_t_product, small_swin
from monai.losses import DiceCELoss
from torch import nn

from tcurlora.adapters.config import CONV_TARGETS, SWIN_TARGETS, AdapterConfig, default_train_modules
from tcurlora.adapters.io import load_adapter, save_adapter
from tcurlora.adapters.model import apply_adapter
from tcurlora.adapters.tcur import TCURLayer
from tcurlora.finetuning import build_optimizer

# Stage s has C = 12 * 2^s channels and 2 blocks; per block: qkv (3 C x C slices) + proj (C x C), and
# the MLP's C x 4C / 4C x C layers. So C x C groups stack 2 * (3 + 1) = 8 slices, MLP groups 2.
STAGE_GROUPS = {
    f"linear_{a}x{b}": (a, b, m)
    for c in (12, 24, 48, 96)
    for a, b, m in ((c, c, 8), (4 * c, c, 2), (c, 4 * c, 2))
}


@pytest.fixture(scope="module")
def swin() -> nn.Module:
    return small_swin(torch.float64)


@pytest.fixture(scope="module")
def x() -> torch.Tensor:
    return torch.randn(1, 1, 32, 32, 32, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


@pytest.fixture(scope="module")
def swin_out(swin, x) -> torch.Tensor:
    with torch.no_grad():
        return swin(x)


def adapt(base: nn.Module, **kwargs):
    return apply_adapter(copy.deepcopy(base), AdapterConfig(**kwargs))


def randomize_cores(adapted, scale: float = 1.0, seed: int = 3) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for group in adapted.tcur.groups.values():
            group.dU.copy_(scale * torch.randn(group.dU.shape, generator=gen, dtype=group.dU.dtype))


def test_groups_stack_per_stage_shape_and_counts_are_right(swin):
    adapted = adapt(swin, method="tcur", rank=4)
    groups = adapted.tcur.groups
    assert {k: (g.n1, g.n2, g.m) for k, g in groups.items()} == STAGE_GROUPS
    assert all(g.rank == 4 and tuple(g.dU.shape) == (4, 4, g.m) for g in groups.values())
    layers = adapted.tcur.layers
    assert len(layers) == 4 * 2 * 4  # 4 stages x 2 blocks x (qkv, proj, linear1, linear2)
    assert all(re.fullmatch(SWIN_TARGETS, name) for name in layers)
    assert layers["swinViT.layers3.0.blocks.1.attn.qkv"].n_slices == 3
    assert layers["swinViT.layers3.0.blocks.1.attn.qkv"].group is groups["linear_48x48"]
    # Patch merging (downsample.reduction) and the patch embedding are not transformer projections.
    assert not any("downsample" in name or "patch_embed" in name for name in layers)
    counts = adapted.parameter_counts()
    assert counts.adapter == counts.trainable == sum(16 * m for _, _, m in STAGE_GROUPS.values()) == 16 * 48
    assert counts.total == sum(p.numel() for p in swin.parameters()) + counts.adapter
    assert counts.head == counts.modules == 0


@pytest.mark.slow
@pytest.mark.parametrize("method", ["tcur", "lora"])
def test_exact_identity_at_init_with_conv_targets_and_default_modules(swin, x, swin_out, method):
    adapted = adapt(
        swin,
        method=method,
        rank=4,
        conv_target_modules=CONV_TARGETS,
        train_modules=default_train_modules("tcur", "SwinUNETR"),
    )
    with torch.no_grad():
        out = adapted(x)
    assert out.shape == (1, 3, 32, 32, 32)
    assert torch.equal(out, swin_out)


def test_conv_targets_are_the_encoder_and_decoder_blocks(swin):
    adapted = adapt(swin, method="tcur", rank=4, conv_target_modules=CONV_TARGETS)
    convs = {name for name, layer in adapted.tcur.layers.items() if not re.fullmatch(SWIN_TARGETS, name)}
    blocks = {name.split(".")[0] for name in convs}
    assert blocks == {
        "encoder1",
        "encoder2",
        "encoder3",
        "encoder4",
        "encoder10",
        "decoder1",
        "decoder2",
        "decoder3",
        "decoder4",
        "decoder5",
    }
    assert not any(name.startswith(("out.", "swinViT.")) for name in convs)
    group = adapted.tcur.groups["conv_decoder1_conv_block_conv1_conv"]  # Conv3d(24 -> 12, k=3)
    assert (group.n1, group.n2, group.m, group.rank) == (12, 24, 27, 4)
    conv_cores = sum(g.dU.numel() for k, g in adapted.tcur.groups.items() if k.startswith("conv_"))
    assert adapted.parameter_counts().adapter == 16 * 48 + conv_cores


def test_delta_of_a_stage_group_matches_the_naive_t_product(swin):
    alpha = 0.7
    adapted = adapt(swin, method="tcur", rank=3, alpha=alpha)
    randomize_cores(adapted, scale=0.5)
    group = adapted.tcur.groups["linear_24x24"]  # stage 2: q, k, v, proj of block 0, then of block 1
    slices, owners = [], []
    for block in (0, 1):
        prefix = f"swinViT.layers2.0.blocks.{block}.attn"
        qkv = swin.get_submodule(f"{prefix}.qkv").weight.detach()
        for part in range(3):
            slices.append(qkv[24 * part : 24 * (part + 1)])
            owners.append((f"{prefix}.qkv", part))
        slices.append(swin.get_submodule(f"{prefix}.proj").weight.detach())
        owners.append((f"{prefix}.proj", 0))
    w = torch.stack(slices, dim=-1)
    reference = alpha * naive_t_product(
        naive_t_product(w[:, group.cols, :], group.dU.detach()), w[group.rows, :, :]
    )
    torch.testing.assert_close(group.delta().detach(), reference, atol=1e-10, rtol=1e-8)
    for index, (name, part) in enumerate(owners):
        layer = adapted.tcur.layers[name]
        rows = slice(24 * part, 24 * (part + 1))
        got = layer.adapted_weight().detach()[rows] - layer.base_layer.weight[rows]
        torch.testing.assert_close(got, reference[:, :, index], atol=1e-10, rtol=1e-8)


@pytest.mark.slow
def test_merge_equals_unmerged_and_unmerge_restores_the_base(swin, x, swin_out):
    adapted = adapt(swin, method="tcur", rank=4, conv_target_modules=CONV_TARGETS)
    randomize_cores(adapted, scale=2.0)
    before = {k: v.clone() for k, v in adapted.model.state_dict().items()}
    with torch.no_grad():
        unmerged = adapted(x)
    assert (unmerged - swin_out).abs().max() > 1e-3  # the cores of every stage change the output
    adapted.merge()
    with torch.no_grad():
        torch.testing.assert_close(adapted(x), unmerged, atol=1e-9, rtol=0)
    adapted.unmerge()
    for key, value in adapted.model.state_dict().items():
        torch.testing.assert_close(value, before[key], atol=1e-12, rtol=0)
    plain = adapted.merge_and_unload()
    assert not any(isinstance(m, TCURLayer) for m in plain.modules())
    assert type(plain.get_submodule("swinViT.layers4.0.blocks.1.attn.qkv")) is nn.Linear
    assert set(plain.state_dict()) == set(swin.state_dict()) and not plain._forward_pre_hooks
    with torch.no_grad():
        torch.testing.assert_close(plain(x), unmerged, atol=1e-9, rtol=0)


def train_steps(base: nn.Module, method: str, steps: int = 1):
    """Real optimiser steps with the default train_modules and a fresh 2-class head."""
    config = AdapterConfig(
        method=method,
        rank=4,
        num_classes=2,
        label_names=["blob"],
        new_head=True,
        conv_target_modules=CONV_TARGETS,
        train_modules=default_train_modules("tcur", "SwinUNETR"),
    )
    adapted = apply_adapter(copy.deepcopy(base), config)
    gen = torch.Generator().manual_seed(5)
    image = torch.randn(2, 1, 32, 32, 32, generator=gen, dtype=torch.float64)  # batch 2: batch norm trains
    label = (image > 0.8).long()
    optimizer = build_optimizer(adapted, {"adapter": 5e-2, "modules": 1e-2, "head": 5e-2}, method)
    adapted.train()
    for _ in range(steps):
        optimizer.zero_grad()
        DiceCELoss(to_onehot_y=True, softmax=True)(adapted(image), label).backward()
        if method == "tcur":  # every stage's core and every conv core gets a gradient
            assert all(float(g.dU.grad.abs().max()) > 0 for g in adapted.tcur.groups.values())
        optimizer.step()
    return adapted.eval()


@pytest.mark.slow
@pytest.mark.parametrize("method", ["tcur", "lora"])
def test_default_train_modules_train_and_save_load_reproduces_outputs(swin, x, tmp_path, method):
    assert default_train_modules("tcur", "SwinUNETR") == ["encoder1", "decoder1"]
    adapted = train_steps(swin, method)
    counts = adapted.parameter_counts()
    full_resolution = sum(p.numel() for m in (swin.encoder1, swin.decoder1) for p in m.parameters())
    assert counts.modules == full_resolution and counts.head == 12 * 2 + 2
    assert counts.trainable == counts.adapter + counts.modules + counts.head
    if method == "tcur":
        assert counts.adapter == sum(g.dU.numel() for g in adapted.tcur.groups.values())
    moved = adapted.model.get_submodule("decoder1.conv_block.conv2.conv")
    moved = moved.base_layer if hasattr(moved, "base_layer") else moved
    assert not torch.equal(moved.weight, swin.decoder1.conv_block.conv2.conv.weight)  # trained in full
    frozen = adapted.model.get_submodule("decoder3.conv_block.conv2.conv")
    frozen = getattr(frozen, "base_layer", frozen)
    assert torch.equal(frozen.weight, swin.decoder3.conv_block.conv2.conv.weight)  # a target: base kept
    # Frozen batch norm keeps its running statistics (the adapter does not save them); a trained one's move.
    assert torch.equal(
        adapted.model.encoder2.layer.norm1.running_mean, swin.encoder2.layer.norm1.running_mean
    )
    assert not torch.equal(
        adapted.model.encoder1.layer.norm1.running_mean, swin.encoder1.layer.norm1.running_mean
    )
    with torch.no_grad():
        trained = adapted(x)
    save_adapter(tmp_path / "a", adapted)
    loaded = load_adapter(tmp_path / "a", copy.deepcopy(swin))
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), trained, atol=1e-12, rtol=0)
        plain = loaded.merge_and_unload()
        torch.testing.assert_close(plain(x), trained, atol=1e-9, rtol=0)
