"""Which layers each method adapts on a given base network: transformer projections where it has any
(UNETR, SwinUNETR), every Conv3d kernel of a pure CNN (MONAI UNet, SegResNet), or a ConfigError that
says which methods apply. What a method does on a CNN is the method's own (tcurlora.adapters.methods)."""

from __future__ import annotations

from torch import nn

from tcurlora.adapters.config import CONV_TARGETS, AdapterConfig, full_match_any
from tcurlora.adapters.methods.registry import METHODS, conv_targets_on, get_method

# The methods a user reads first, in this order, when told which apply; the others follow as registered.
_LISTED_FIRST = ("tcur", "lora", "decoder", "head")


def has_linear_targets(model: nn.Module, config: AdapterConfig) -> bool:
    """True when a Linear layer of `model` matches the config's transformer targets."""
    return any(
        isinstance(module, nn.Linear) and full_match_any(config.target_modules, name)
        for name, module in model.named_modules()
    )


def methods_for(model: nn.Module, config: AdapterConfig) -> list[str]:
    """The methods that can adapt `model`, as a user reads them."""
    transformer = has_linear_targets(model, config)
    order = sorted(
        METHODS, key=lambda m: _LISTED_FIRST.index(m) if m in _LISTED_FIRST else len(_LISTED_FIRST)
    )
    labels = (get_method(name).label_for(name, model, config, transformer) for name in order)
    return [label for label in labels if label is not None]


def configure_targets(config: AdapterConfig, model: nn.Module, conv: bool | None) -> AdapterConfig:
    """Set the config's Conv3d targets and decoder modules for `model` (conv: asked, None = default:
    on for tcur; a CNN's kernels are its only targets, so on for tcur and lora)."""
    if has_linear_targets(model, config):
        if conv_targets_on(config.method, conv):
            config.conv_target_modules = list(CONV_TARGETS)
        return config
    applies = ", ".join(methods_for(model, config))
    get_method(config.method).configure_cnn(config, model, conv, applies)
    return config
