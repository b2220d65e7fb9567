"""LoRA as a registered method: HuggingFace PEFT on a plain MONAI network, targeting the same layers as
tCURLoRA.

The segmentation head is not given to PEFT (`modules_to_save` suffix-matches LoRA's own module
names); the adapter layer handles it.
"""

from __future__ import annotations

import re
import types
import warnings
from typing import Any

import torch
from torch import nn

from tcurlora.adapters.config import AdapterConfig
from tcurlora.adapters.methods.base import LowRankMethod
from tcurlora.adapters.tcur import find_targets
from tcurlora.errors import ConfigError

ADAPTER_NAME = "default"


def target_regex(names: list[str]) -> str:
    """One regex that full-matches exactly the given module names."""
    return "(" + "|".join(re.escape(name) for name in names) + ")"


def inject_lora(model: nn.Module, config: AdapterConfig) -> nn.Module:
    """Wrap `model` in a PEFT LoraModel (LoRA B zero-initialised, A seeded); returns the LoraModel.

    PEFT is imported here only: the other methods never need it (nor the packages it pulls in).
    """
    try:
        from peft import LoraConfig, LoraModel
    except ImportError as error:
        raise ConfigError(
            f"method 'lora' needs PEFT, which is not importable ({error}): pip install 'peft>=0.13'. "
            "tcur, decoder, full and scratch do not need it"
        ) from error

    linear, conv = find_targets(model, config)
    lora_config = LoraConfig(
        r=config.rank,
        lora_alpha=config.resolved_alpha,
        lora_dropout=0.0,
        target_modules=target_regex(linear + conv),
        bias="none",
        init_lora_weights=True,
    )
    with torch.random.fork_rng(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PEFT warns about models without a HF config
        torch.manual_seed(config.seed)
        lora_model = LoraModel(model, lora_config, ADAPTER_NAME)
    _fix_conv3d_merge(lora_model)
    return lora_model


def _conv3d_delta_weight(layer: nn.Module, adapter: str) -> torch.Tensor:
    """LoRA dW of a Conv3d: lora_B (out, r, 1, 1, 1) composed with lora_A (r, in, k...) times scaling."""
    weight_a = layer.lora_A[adapter].weight
    weight_b = layer.lora_B[adapter].weight.flatten(1)
    compute = torch.float32 if weight_a.dtype in (torch.float16, torch.bfloat16) else weight_a.dtype
    delta = torch.einsum("or,ri...->oi...", weight_b.to(compute), weight_a.to(compute))
    return (delta * layer.scaling[adapter]).to(weight_a.dtype)


def _fix_conv3d_merge(lora_model: nn.Module) -> None:
    """PEFT 0.21 treats Conv3d kernels with k1 == k2 == 1 (e.g. 1x1x1) as Conv2d 1x1 when merging and
    crashes (huggingface/peft#3768, fixed by PR #3777); give those layers a correct get_delta_weight."""
    for module in lora_model.modules():
        base = getattr(module, "base_layer", None)
        if hasattr(module, "lora_A") and isinstance(base, nn.Conv3d) and base.groups == 1:
            if tuple(base.weight.shape[2:4]) == (1, 1):
                module.get_delta_weight = types.MethodType(_conv3d_delta_weight, module)


class LoRAMethod(LowRankMethod):
    """W' = W + (alpha / r) * B A on each target layer, through PEFT (its LoraModel wraps the network)."""

    def install(self, adapted: Any, model: nn.Module) -> nn.Module:
        return inject_lora(model, adapted.config)

    def merge(self, adapted: Any) -> None:
        adapted.model.merge_adapter()

    def unmerge(self, adapted: Any) -> None:
        adapted.model.unmerge_adapter()

    def unload(self, adapted: Any) -> nn.Module:
        """The plain network with LoRA merged into its weights and no PEFT layers left."""
        if adapted.merged:
            adapted.unmerge()
        return adapted.model.merge_and_unload()

    def target_names(self, adapted: Any) -> list[str]:
        return sorted(
            name.removeprefix("model.")
            for name, module in adapted.model.named_modules()
            if hasattr(module, "lora_A") and name
        )

    def rank_limits(self, adapted: Any) -> dict[str, int]:
        limits = {}
        for name, module in adapted.model.named_modules():
            base = getattr(module, "base_layer", None)
            if hasattr(module, "lora_A") and base is not None and hasattr(base, "weight"):
                shape = tuple(base.weight.shape)
                columns = 1
                for size in shape[1:]:
                    columns *= int(size)
                limits[name] = min(int(shape[0]), columns)
        return limits


IMPLEMENTS = {"lora": LoRAMethod()}
