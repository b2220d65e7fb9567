"""Which layers each method adapts on a given base network: transformer projections where it has any
(UNETR, SwinUNETR), every Conv3d kernel of a pure CNN (MONAI UNet, SegResNet), or a ConfigError that
says which methods apply."""

from __future__ import annotations

from torch import nn

from tcurlora.adapters.config import CONV_TARGETS, AdapterConfig, full_match_any
from tcurlora.errors import ConfigError

# A CNN's tCURLoRA/LoRA targets: every Conv3d (the head is never a target, see tcur.find_targets).
CNN_CONV_TARGETS = [r".+"]
# "decoder" on a CNN: its upsampling path and head, where the network names one.
CNN_DECODERS = {"SegResNet": [r"up_layers", r"up_samples", r"conv_final"]}


def has_linear_targets(model: nn.Module, config: AdapterConfig) -> bool:
    """True when a Linear layer of `model` matches the config's transformer targets."""
    return any(
        isinstance(module, nn.Linear) and full_match_any(config.target_modules, name)
        for name, module in model.named_modules()
    )


def methods_for(model: nn.Module, config: AdapterConfig) -> list[str]:
    """The methods that can adapt `model`, as a user reads them."""
    arch = type(model).__name__
    if has_linear_targets(model, config):
        return ["tcur", "lora", "decoder", "head", "full", "scratch"]
    methods = ["tcur (Conv3d kernels)", "lora (Conv3d kernels)"]
    return methods + (["decoder"] if arch in CNN_DECODERS else []) + ["head", "full", "scratch"]


def configure_targets(config: AdapterConfig, model: nn.Module, conv: bool | None) -> AdapterConfig:
    """Set the config's Conv3d targets and decoder modules for `model` (conv: asked, None = default:
    on for tcur; a CNN's kernels are its only targets, so on for tcur and lora)."""
    arch = type(model).__name__
    if has_linear_targets(model, config):
        if conv if conv is not None else config.method == "tcur":
            config.conv_target_modules = list(CONV_TARGETS)
        return config
    applies = ", ".join(methods_for(model, config))
    if config.method in ("tcur", "lora"):
        if conv is False:
            raise ConfigError(
                f"{arch} has no transformer layers: {config.method} adapts its Conv3d kernels, and "
                f"conv targets are switched off, which leaves nothing to adapt. Methods for {arch}: {applies}"
            )
        config.conv_target_modules = list(CNN_CONV_TARGETS)
    elif config.method == "decoder":
        if arch not in CNN_DECODERS:
            raise ConfigError(
                f"the decoder method needs a network with a known decoder; {arch} names none "
                f"(its encoder and decoder are nested in one module). Methods for {arch}: {applies}"
            )
        config.decoder_modules = list(CNN_DECODERS[arch])
    return config
