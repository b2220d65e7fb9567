"""Extra trained modules (`train_modules`, like PEFT's modules_to_save) for every method: what trains,
what is saved, what is counted, and that save -> load -> merge reproduces the trained model exactly,
also where a trained module is a tCUR target too (C and R stay those of the base weights)."""

from __future__ import annotations

import copy

import pytest
import torch
from adapter_testing import CONV_TARGETS, small_unetr
from monai.losses import DiceCELoss
from torch import nn

from tcurlora.adapters.config import AdapterConfig, expand_train_modules
from tcurlora.adapters.io import load_adapter, read_adapter_config, save_adapter
from tcurlora.adapters.model import apply_adapter
from tcurlora.errors import ConfigError
from tcurlora.finetuning import build_optimizer


@pytest.fixture(scope="module")
def base() -> nn.Module:
    return small_unetr(torch.float64)


@pytest.fixture(scope="module")
def data() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(5)
    image = torch.randn(2, 1, 32, 32, 32, generator=gen, dtype=torch.float64)
    label = (image > 0.8).long()  # a learnable, image-dependent target
    return image, label


def loss_of(model: nn.Module, data) -> float:
    image, label = data
    model.eval()
    with torch.no_grad():
        return float(DiceCELoss(to_onehot_y=True, softmax=True)(model(image), label))


def train(base: nn.Module, data, method: str, steps: int = 4, **kwargs):
    config = AdapterConfig(
        method=method, rank=4, num_classes=2, label_names=["blob"], new_head=True, **kwargs
    )
    adapted = apply_adapter(copy.deepcopy(base), config)
    optimizer = build_optimizer(adapted, {"adapter": 5e-2, "modules": 1e-2, "head": 5e-2}, method)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    adapted.train()
    for _ in range(steps):
        optimizer.zero_grad()
        loss_fn(adapted(data[0]), data[1]).backward()
        optimizer.step()
    return adapted


def test_shorthand_and_unknown_patterns(base):
    assert expand_train_modules(["decoder", r"encoder1", r"decoder\d+"]) == [r"decoder\d+", "encoder1"]
    with pytest.raises(ConfigError, match="'nothing_here' matches no module"):
        apply_adapter(copy.deepcopy(base), AdapterConfig(method="tcur", train_modules=["nothing_here"]))


@pytest.mark.parametrize("method", ["tcur", "lora", "head"])
def test_train_modules_train_are_counted_and_keep_the_rest_frozen(base, method):
    config = AdapterConfig(method=method, rank=4, num_classes=2, new_head=True, train_modules=[r"decoder2"])
    adapted = apply_adapter(copy.deepcopy(base), config)
    decoder2 = sum(p.numel() for p in base.decoder2.parameters())
    counts = adapted.parameter_counts()
    assert counts.modules == decoder2
    groups = adapted.parameter_groups()
    assert sum(p.numel() for p in groups["modules"]) == decoder2
    assert sum(p.numel() for p in groups["head"]) == counts.head == 8 * 2 + 2
    assert counts.trainable == counts.adapter + counts.modules + counts.head
    state = adapted.adapter_state_dict()
    assert any(".decoder2." in key and key.endswith("weight") for key in state)
    assert not any(
        ".decoder3." in key and "lora" not in key and "base_layer" not in key and key.endswith("weight")
        for key in state
        if "dU" not in key
    )
    frozen = [name for name, p in adapted.named_parameters() if ".vit.patch_embedding" in name]
    assert frozen and not any(p.requires_grad for n, p in adapted.named_parameters() if n in frozen)


def test_optimizer_has_one_group_per_role_at_its_rate(base):
    config = AdapterConfig(method="tcur", rank=4, num_classes=2, new_head=True, train_modules=["decoder2"])
    adapted = apply_adapter(copy.deepcopy(base), config)
    optimizer = build_optimizer(adapted, {"adapter": 1e-2, "modules": 1e-3, "head": 5e-2}, "tcur")
    by_role = {group["role"]: group for group in optimizer.param_groups}
    assert {role: group["lr"] for role, group in by_role.items()} == {
        "adapter": 1e-2,
        "modules": 1e-3,
        "head": 5e-2,
    }
    assert by_role["adapter"]["weight_decay"] == 0.0 and by_role["modules"]["weight_decay"] > 0


@pytest.mark.slow
@pytest.mark.parametrize("method", ["tcur", "lora"])
def test_save_load_merge_reproduces_the_trained_loss(base, data, tmp_path, method):
    # decoder2's convolutions are both Conv3d targets of the adapter and trained in full.
    adapted = train(base, data, method, conv_target_modules=CONV_TARGETS, train_modules=["decoder2"])
    trained_loss = loss_of(adapted, data)
    assert trained_loss < loss_of(base_with_fresh_head(base, method), data)  # it did learn something
    save_adapter(tmp_path / "a", adapted)
    assert read_adapter_config(tmp_path / "a")["train_modules"] == ["decoder2"]
    loaded = load_adapter(tmp_path / "a", copy.deepcopy(base))
    assert loss_of(loaded, data) == pytest.approx(trained_loss, abs=1e-9)
    merged = loaded.merge_and_unload()
    assert loss_of(merged, data) == pytest.approx(trained_loss, abs=1e-9)


@pytest.mark.slow
def test_factors_rebuilt_from_trained_weights_would_change_the_model(base, data, tmp_path):
    """The pitfall the load order avoids: C and R taken from the trained decoder2 kernels."""
    adapted = train(base, data, "tcur", conv_target_modules=CONV_TARGETS, train_modules=["decoder2"])
    save_adapter(tmp_path / "a", adapted)
    loaded = load_adapter(tmp_path / "a", copy.deepcopy(base))
    good = loss_of(loaded, data)
    loaded.tcur.rebuild_factors()  # C, R from the weights as they are now: the trained ones
    assert abs(loss_of(loaded, data) - good) > 1e-6


def base_with_fresh_head(base: nn.Module, method: str) -> nn.Module:
    config = AdapterConfig(method=method, rank=4, num_classes=2, label_names=["blob"], new_head=True)
    return apply_adapter(copy.deepcopy(base), config)
