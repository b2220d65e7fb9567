"""The baselines, registered methods that train plain weights: decoder-only, full fine-tuning, head-only
and scratch (every weight, from a random initialisation the caller puts in place:
tcurlora.models.architectures.randomly_initialise)."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from tcurlora.adapters.config import AdapterConfig, full_match_any
from tcurlora.adapters.methods.base import AdaptationMethod
from tcurlora.errors import ConfigError

# "decoder" on a CNN: its upsampling path and head, where the network names one.
CNN_DECODERS = {"SegResNet": [r"up_layers", r"up_samples", r"conv_final"]}


def _prefixes(name: str) -> list[str]:
    """'a.b.c.weight' -> ['a', 'a.b', 'a.b.c']: the modules that own a parameter."""
    parts = name.split(".")[:-1]
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


def decoder_parameter_names(model: nn.Module, config: AdapterConfig) -> list[str]:
    """Parameters inside a module whose name full-matches one of `config.decoder_modules`."""
    names = [
        name
        for name, _ in model.named_parameters()
        if any(full_match_any(config.decoder_modules, prefix) for prefix in _prefixes(name))
    ]
    if not names:
        raise ConfigError(f"decoder_modules {config.decoder_modules} match no parameter of this network")
    return names


class DecoderMethod(AdaptationMethod):
    """Trains the modules named by `config.decoder_modules` (on a CNN: its known upsampling path)."""

    def label_for(self, name: str, model: nn.Module, config: AdapterConfig, transformer: bool) -> str | None:
        return name if transformer or type(model).__name__ in CNN_DECODERS else None

    def configure_cnn(self, config: AdapterConfig, model: nn.Module, conv: bool | None, applies: str) -> None:
        arch = type(model).__name__
        if arch not in CNN_DECODERS:
            raise ConfigError(
                f"the decoder method needs a network with a known decoder; {arch} names none "
                f"(its encoder and decoder are nested in one module). Methods for {arch}: {applies}"
            )
        config.decoder_modules = list(CNN_DECODERS[arch])

    def install(self, adapted: Any, model: nn.Module) -> nn.Module:
        wanted = set(decoder_parameter_names(model, adapted.config))
        for name, parameter in model.named_parameters():
            parameter.requires_grad_(name in wanted)
        return model


class HeadMethod(AdaptationMethod):
    """Trains the segmentation head only (the adapted model unfreezes it: `trains_head` in the registry)."""


class FullMethod(AdaptationMethod):
    """Trains every weight; the adapter file holds the whole state dict (for "scratch", the base's
    pretrained weights must play no part when it is loaded)."""

    def install(self, adapted: Any, model: nn.Module) -> nn.Module:
        for parameter in model.parameters():
            parameter.requires_grad_(True)
        return model

    def adapter_tensors(self, adapted: Any) -> dict[str, Tensor]:
        return dict(adapted.state_dict(keep_vars=True))


IMPLEMENTS: dict[str, AdaptationMethod] = {
    "decoder": DecoderMethod(),
    "full": FullMethod(),
    "head": HeadMethod(),
    "scratch": FullMethod(),
}
