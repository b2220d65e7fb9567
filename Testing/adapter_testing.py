"""A small real MONAI UNETR and helpers shared by the adapter tests (fixtures are in conftest.py)."""

from __future__ import annotations

import copy

import torch
from monai.networks.nets import UNETR
from torch import nn

from tcurlora.adapters import AdapterConfig, apply_adapter

CONV_TARGETS = [r".*(encoder|decoder)\d+\..*conv\d?\.conv"]


def small_unetr(dtype: torch.dtype = torch.float64) -> nn.Module:
    """UNETR img 32^3, hidden 48, 12 blocks: the paper's structure at a size tests can run."""
    torch.manual_seed(0)
    model = UNETR(in_channels=1, out_channels=3, img_size=(32, 32, 32), feature_size=8, hidden_size=48,
                  mlp_dim=96, num_heads=4)  # fmt: skip
    return model.to(dtype).eval()


def adapted_copy(base: nn.Module, **kwargs):
    """`apply_adapter` on a deep copy, so a module-scoped base stays untouched."""
    return apply_adapter(copy.deepcopy(base), AdapterConfig(**kwargs))
