"""A small real MONAI UNETR and helpers shared by the adapter tests (fixtures are in conftest.py)."""

from __future__ import annotations

import copy

import torch
from monai.networks.nets import UNETR, SwinUNETR
from torch import nn

from tcurlora.adapters.config import AdapterConfig
from tcurlora.adapters.model import apply_adapter

CONV_TARGETS = [r".*(encoder|decoder)\d+\..*conv\d?\.conv"]


def small_unetr(dtype: torch.dtype = torch.float64) -> nn.Module:
    """UNETR img 32^3, hidden 48, 12 blocks: the paper's structure at a size tests can run."""
    torch.manual_seed(0)
    model = UNETR(
        in_channels=1,
        out_channels=3,
        img_size=(32, 32, 32),
        feature_size=8,
        hidden_size=48,
        mlp_dim=96,
        num_heads=4,
    )
    return model.to(dtype).eval()


def adapted_copy(base: nn.Module, **kwargs):
    """`apply_adapter` on a deep copy, so a module-scoped base stays untouched."""
    return apply_adapter(copy.deepcopy(base), AdapterConfig(**kwargs))


def small_swin(dtype: torch.dtype = torch.float64, norm_name: str = "batch") -> nn.Module:
    """MONAI SwinUNETR v2, feature_size 12 (stages of 12/24/48/96 channels, 2 blocks each), for 32^3
    inputs. Batch norm: MONAI's default instance norm cannot normalise the 1^3 bottleneck of a 32^3
    input, and 64^3 in float64 costs seconds per forward on CPU; the attention layers are the same."""
    torch.manual_seed(0)
    model = SwinUNETR(
        in_channels=1, out_channels=3, feature_size=12, use_v2=True, spatial_dims=3, norm_name=norm_name
    )
    return model.to(dtype).eval()


def naive_t_product(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(a * b)_j = sum_i a_i @ b_{(j - i) mod m}, straight from the definition."""
    m = a.shape[-1]
    out = torch.zeros(a.shape[0], b.shape[1], m, dtype=a.dtype)
    for j in range(m):
        for i in range(m):
            out[:, :, j] += a[:, :, i] @ b[:, :, (j - i) % m]
    return out
