"""What every adaptation method does to a base network, with the defaults most methods share.

An `AdaptedModel` (tcurlora.adapters.model) owns the base network, the head and the `train_modules`; it
asks its method, found by name in the registry, how to adapt the rest: which layers (`configure_*`),
how to install itself, which tensors an adapter file holds, how to load them, merge, unmerge and unload.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from tcurlora.adapters.config import AdapterConfig
from tcurlora.errors import ConfigError

# A CNN's tCURLoRA/LoRA targets: every Conv3d (the head is never a target, see tcur.find_targets).
CNN_CONV_TARGETS = [r".+"]


class AdaptationMethod:
    """One method. Subclasses override what differs; the defaults suit a method that trains plain weights."""

    def label_for(self, name: str, model: nn.Module, config: AdapterConfig, transformer: bool) -> str | None:
        """The method as a user reads it in "Methods for <arch>" on `model`, or None where it does not apply."""
        return name

    def configure_cnn(self, config: AdapterConfig, model: nn.Module, conv: bool | None, applies: str) -> None:
        """Set the config's targets on a pure CNN (conv: Conv3d targets asked, or None); ConfigError naming
        `applies` (the methods for it) when the method cannot adapt it."""

    def install(self, adapted: Any, model: nn.Module) -> nn.Module:
        """Adapt the frozen `model` in place; returns the module the adapted model's forward runs through."""
        return model

    def adapter_tensors(self, adapted: Any) -> dict[str, Tensor]:
        """Live tensors an adapter file holds: the trainable parameters and the persistent buffers of the
        modules that own them."""
        tensors: dict[str, Tensor] = {}
        for module_name, module in adapted.named_modules():
            own = list(module.named_parameters(recurse=False))
            if not any(p.requires_grad for _, p in own):
                continue
            prefix = module_name + "." if module_name else ""
            for name, parameter in own:
                if parameter.requires_grad:
                    tensors[prefix + name] = parameter
            for name, buffer in module.named_buffers(recurse=False):
                if buffer is not None and name not in module._non_persistent_buffers_set:
                    tensors[prefix + name] = buffer
        return tensors

    def check_tensor(self, adapted: Any, key: str, tensor: Tensor) -> None:
        """ConfigError when a stored tensor (already of the right shape) cannot be loaded as it is."""

    def load_tensors(self, adapted: Any, live: dict[str, Tensor], state: dict[str, Tensor]) -> None:
        """Copy checked `state` into the `live` tensors (unmerged; under no_grad)."""
        for key, tensor in state.items():
            live[key].copy_(tensor.to(device=live[key].device, dtype=live[key].dtype))

    def merge(self, adapted: Any) -> None:
        """Fold the method's update into the base weights (nothing to fold for plain weights)."""

    def unmerge(self, adapted: Any) -> None:
        """Undo `merge`."""

    def unload(self, adapted: Any) -> nn.Module:
        """The plain network with the update merged in, no wrappers left."""
        return adapted.model

    def target_names(self, adapted: Any) -> list[str]:
        """The adapted layer names, for people reading an adapter's config."""
        return []

    def rank_limits(self, adapted: Any) -> dict[str, int]:
        """The largest rank each adapted weight group or layer can hold: min(rows, columns)."""
        return {}


class LowRankMethod(AdaptationMethod):
    """A low-rank update of chosen layers (tCUR, LoRA): transformer projections, or a CNN's Conv3d kernels."""

    def label_for(self, name: str, model: nn.Module, config: AdapterConfig, transformer: bool) -> str | None:
        return name if transformer else f"{name} (Conv3d kernels)"

    def configure_cnn(self, config: AdapterConfig, model: nn.Module, conv: bool | None, applies: str) -> None:
        arch = type(model).__name__
        if conv is False:
            raise ConfigError(
                f"{arch} has no transformer layers: {config.method} adapts its Conv3d kernels, and "
                f"conv targets are switched off, which leaves nothing to adapt. Methods for {arch}: {applies}"
            )
        config.conv_target_modules = list(CNN_CONV_TARGETS)
