"""The peers behind the same interface: LoRA (HuggingFace PEFT), decoder-only, full, head-only; and
the new segmentation head shared by every method."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from adapter_testing import CONV_TARGETS, adapted_copy, small_unetr  # noqa: E402,F401
from torch import nn

from tcurlora.adapters.config import AdapterConfig
from tcurlora.adapters.model import apply_adapter
from tcurlora.adapters.tcur import TCURLayer


def lora_layers(adapted) -> dict[str, nn.Module]:
    return {
        name.removeprefix("model."): m for name, m in adapted.model.named_modules() if hasattr(m, "lora_A")
    }


@pytest.mark.parametrize("conv", [False, True])
def test_lora_identity_at_init_and_targets(base64, batch64, base_out, conv):
    adapted = adapted_copy(base64, method="lora", rank=4, conv_target_modules=CONV_TARGETS if conv else [])
    with torch.no_grad():
        torch.testing.assert_close(adapted(batch64), base_out, atol=1e-6, rtol=0)
    layers = lora_layers(adapted)
    linear = [n for n in layers if n.startswith("vit.")]
    assert len(linear) == 48 and "vit.blocks.11.attn.qkv" in layers
    convs = [n for n in layers if not n.startswith("vit.")]
    assert (len(convs) > 0) == conv
    assert not any(n.startswith("out") for n in layers)  # the head is ours, never PEFT's
    assert adapted.config.resolved_alpha == 4.0
    # LoRA parameter count: r * (in + out) per Linear (qkv is one 144 x 48 matrix), B zero at start.
    expected = 12 * 4 * ((48 + 144) + (48 + 48) + (48 + 96) + (96 + 48))
    if not conv:
        assert adapted.parameter_counts().adapter == expected
    assert all(float(p.detach().abs().max()) == 0 for n, p in adapted.named_parameters() if "lora_B" in n)


def test_lora_trains_only_lora_and_new_head_and_keeps_base(batch64):
    model = small_unetr(torch.float32)
    frozen = {k: v.clone() for k, v in model.state_dict().items()}
    adapted = apply_adapter(
        model, AdapterConfig(method="lora", rank=4, num_classes=2, label_names=["hippocampus"])
    )
    names = [n for n, p in adapted.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n or n.startswith("model.model.out.conv.conv.") for n in names)
    head = adapted.model.model.get_submodule("out.conv.conv")
    assert type(head) is nn.Conv3d and head.out_channels == 2
    counts = adapted.parameter_counts()
    assert counts.head == 8 * 2 + 2 and counts.trainable == counts.adapter + counts.head
    x = batch64.float()
    target = torch.randint(0, 2, (1, 32, 32, 32), generator=torch.Generator().manual_seed(2))
    optimizer = torch.optim.Adam(adapted.trainable_parameters(), lr=0.01)
    adapted.train()
    losses = []
    for _ in range(3):
        optimizer.zero_grad()
        loss = F.cross_entropy(adapted(x), target)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0]
    live = adapted.model.model.state_dict()
    for key, value in frozen.items():
        if key.startswith("out."):
            continue  # replaced by the new head
        live_key = (
            key
            if key in live
            else key.replace(".weight", ".base_layer.weight").replace(".bias", ".base_layer.bias")
        )
        assert torch.equal(live[live_key], value), key


@pytest.mark.slow
def test_lora_merge_unmerge_unload(base64, batch64):
    adapted = adapted_copy(base64, method="lora", rank=4, conv_target_modules=CONV_TARGETS)
    with torch.no_grad():
        for name, p in adapted.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05, generator=torch.Generator().manual_seed(len(name)))
        unmerged = adapted(batch64)
        adapted.merge()
        merged = adapted(batch64)
        adapted.unmerge()
    torch.testing.assert_close(merged, unmerged, atol=1e-5, rtol=0)
    for name in ("vit.blocks.3.attn.qkv", "decoder5.conv_block.conv3.conv"):  # a 1x1x1 Conv3d too
        restored = adapted.model.model.get_submodule(name).base_layer.weight
        torch.testing.assert_close(restored, base64.get_submodule(name).weight, atol=1e-12, rtol=0)
    plain = adapted.merge_and_unload()
    assert not any(hasattr(m, "lora_A") for m in plain.modules())
    assert type(plain.get_submodule("vit.blocks.3.attn.qkv")) is nn.Linear
    assert set(plain.state_dict()) == set(base64.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(plain(batch64), unmerged, atol=1e-5, rtol=0)


def test_decoder_trains_everything_but_the_transformer(base64):
    adapted = adapted_copy(base64, method="decoder")
    trainable = {n.removeprefix("model.") for n, p in adapted.named_parameters() if p.requires_grad}
    frozen = {n.removeprefix("model.") for n, p in adapted.named_parameters() if not p.requires_grad}
    assert trainable and all(not n.startswith("vit.") for n in trainable)
    assert all(n.startswith("vit.") for n in frozen)  # patch embedding and blocks included
    assert "vit.patch_embedding.patch_embeddings.weight" in frozen
    expected = sum(p.numel() for name, c in base64.named_children() if name != "vit" for p in c.parameters())
    counts = adapted.parameter_counts()
    assert counts.trainable == expected and counts.head == 8 * 3 + 3  # the kept head is part of the decoder
    assert not any(isinstance(m, TCURLayer) for m in adapted.modules())
    assert set(adapted.adapter_state_dict()) == {"model." + n for n in trainable}


def test_full_and_head_methods(base64, batch64, base_out):
    full = adapted_copy(base64, method="full")
    assert all(p.requires_grad for p in full.parameters())
    state = full.adapter_state_dict()
    assert set(state) == {"model." + k for k in base64.state_dict()}
    assert full.merge_and_unload() is full.model
    head = adapted_copy(base64, method="head", num_classes=5)
    names = [n for n, p in head.named_parameters() if p.requires_grad]
    assert names == ["model.out.conv.conv.weight", "model.out.conv.conv.bias"]
    counts = head.parameter_counts()
    assert (counts.trainable, counts.adapter, counts.head) == (8 * 5 + 5, 0, 8 * 5 + 5)
    with torch.no_grad():
        out = head(batch64)
    assert out.shape == (1, 5, 32, 32, 32)
    kept = adapted_copy(base64, method="head")  # same class count: the base head itself trains
    with torch.no_grad():
        torch.testing.assert_close(kept(batch64), base_out, atol=0, rtol=0)
    assert kept.parameter_counts().head == 8 * 3 + 3


@pytest.mark.parametrize("method", ["tcur", "lora", "decoder", "full", "head"])
def test_new_head_is_seeded_and_trains_for_every_method(base64, method):
    one = adapted_copy(base64, method=method, rank=2, num_classes=4, seed=7)
    two = adapted_copy(base64, method=method, rank=2, num_classes=4, seed=7)
    other = adapted_copy(base64, method=method, rank=2, num_classes=4, seed=8)

    def head(adapted):
        root = adapted.model.model if method == "lora" else adapted.model
        return root.get_submodule("out.conv.conv")

    assert head(one).weight.shape == (4, 8, 1, 1, 1) and head(one).weight.dtype == torch.float64
    assert torch.equal(head(one).weight, head(two).weight)
    assert not torch.equal(head(one).weight, head(other).weight)
    assert head(one).weight.requires_grad and head(one).bias.requires_grad
    assert one.parameter_counts().head == 4 * 8 + 4
    state = one.adapter_state_dict()
    assert any(k.endswith("out.conv.conv.weight") for k in state)


def test_new_head_with_the_same_class_count_replaces_and_trains_it(base64):
    """Other classes with the same count (base 3 outputs, target 3): new_head gives a fresh trained head."""
    kept = adapted_copy(base64, method="tcur", rank=2, num_classes=3)
    fresh = adapted_copy(base64, method="tcur", rank=2, num_classes=3, new_head=True)
    base_head = base64.get_submodule("out.conv.conv").weight
    assert torch.equal(kept.model.get_submodule("out.conv.conv").weight, base_head)
    new_weight = fresh.model.get_submodule("out.conv.conv").weight
    assert new_weight.shape == base_head.shape and not torch.equal(new_weight, base_head)
    assert kept.parameter_counts().head == 0
    assert fresh.parameter_counts().head == base_head.numel() + 3
    assert any(k.endswith("out.conv.conv.weight") for k in fresh.adapter_state_dict())
