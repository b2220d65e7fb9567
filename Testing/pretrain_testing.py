"""What the pretraining tests share: the smallest UNETR that still trains in seconds on a CPU."""

from __future__ import annotations

# feature 8, hidden 48, 4 heads: a 32^3 patch trains a step in well under a second on one core.
TINY_UNETR_ARCH: dict[str, object] = {
    "feature_size": 8,
    "hidden_size": 48,
    "mlp_dim": 96,
    "num_heads": 4,
    "proj_type": "conv",
    "norm_name": "instance",
    "res_block": True,
    "dropout_rate": 0.0,
}
