"""Build a MONAI network from a model spec, and the named architecture presets."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from tcurlora.errors import ConfigError
from tcurlora.models.spec import IntensitySpec, ModelSpec


def build_network(spec: ModelSpec) -> nn.Module:
    """Instantiate the (untrained) MONAI network that `spec` describes."""
    from monai.networks import nets

    builders = {
        "UNETR": nets.UNETR,
        "SwinUNETR": nets.SwinUNETR,
        "SegResNet": nets.SegResNet,
        "UNet": nets.UNet,
    }
    if spec.arch not in builders:
        raise ConfigError(f"unknown architecture {spec.arch!r}; known: {', '.join(sorted(builders))}")
    try:
        return builders[spec.arch](**spec.arch_params)
    except (TypeError, ValueError, AssertionError) as error:
        raise ConfigError(f"cannot build {spec.arch} from {spec.arch_params}: {error}") from error


def _unetr(img: int, hidden: int, mlp: int, heads: int, feature: int, out_channels: int) -> dict[str, Any]:
    return {
        "in_channels": 1,
        "out_channels": out_channels,
        "img_size": [img, img, img],
        "feature_size": feature,
        "hidden_size": hidden,
        "mlp_dim": mlp,
        "num_heads": heads,
        "proj_type": "conv",
        "norm_name": "instance",
        "res_block": True,
        "dropout_rate": 0.0,
    }


# Randomly initialised architectures, referred to as "preset:<name>": for tests, `info` and benchmarks
# at the paper's size. They are not pretrained; the built-in pretrained base lives in Resources/Models.
PRESETS: dict[str, ModelSpec] = {
    "unetr-base": ModelSpec(
        name="unetr-base",
        arch="UNETR",
        arch_params=_unetr(128, 768, 3072, 12, 16, 2),
        spacing=(1.0, 1.0, 1.0),
        patch_size=(128, 128, 128),
        labels={1: "foreground"},
        description="MONAI UNETR at the tCURLoRA paper's size (img 128^3, hidden 768), random init.",
    ),
    "unetr-tiny": ModelSpec(
        name="unetr-tiny",
        arch="UNETR",
        arch_params=_unetr(32, 48, 96, 4, 8, 3),
        spacing=(1.0, 1.0, 1.0),
        patch_size=(32, 32, 32),
        intensity=IntensitySpec(kind="zscore"),
        labels={1: "class 1", 2: "class 2"},
        description="A tiny MONAI UNETR (img 32^3, hidden 48) for tests, random init.",
    ),
}


def build_preset(name: str, seed: int = 0) -> tuple[nn.Module, ModelSpec]:
    """A preset's network with a seeded random initialisation, and its spec."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; known: {', '.join(sorted(PRESETS))}")
    spec = ModelSpec.from_dict(PRESETS[name].to_dict())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_network(spec)
    return model, spec


# "scratch" (the control group) draws its random initialisation from the job's seed plus this offset, so
# that it never equals a preset base built with the same small seed (presets are built with seed 0).
SCRATCH_SEED_OFFSET = 0x5C7A7C


def scratch_seed(seed: int) -> int:
    """The torch seed of a scratch run's initial weights (job seed + SCRATCH_SEED_OFFSET, within 63 bits)."""
    return (int(seed) + SCRATCH_SEED_OFFSET) % 2**63


def randomly_initialise(model: nn.Module, spec: ModelSpec, seed: int) -> None:
    """Overwrite `model`'s weights (in place) with a fresh seeded `build_network(spec)`'s: the base's
    architecture without its pretrained weights ("scratch"). The global RNG streams are left as they were."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(scratch_seed(seed))
        fresh = build_network(spec)
    try:
        model.load_state_dict(fresh.state_dict(), strict=True)
    except RuntimeError as error:
        raise ConfigError(
            f"scratch: {spec.arch} rebuilt from the base's spec does not match the base network ({error})"
        ) from error
