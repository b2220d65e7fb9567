"""Baselines that train plain weights: decoder-only, full fine-tuning, head-only and scratch (every weight,
from a random initialisation the caller puts in place: tcurlora.adapters.scratch)."""

from __future__ import annotations

from torch import nn

from tcurlora.adapters.config import AdapterConfig, full_match_any
from tcurlora.errors import ConfigError


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


def set_baseline_trainable(model: nn.Module, config: AdapterConfig) -> None:
    """Unfreeze what the baseline trains: "decoder" (decoder modules), "full" and "scratch" (all), "head"
    (none here: the head is unfrozen by the caller)."""
    if config.method in ("full", "scratch"):
        for parameter in model.parameters():
            parameter.requires_grad_(True)
    elif config.method == "decoder":
        wanted = set(decoder_parameter_names(model, config))
        for name, parameter in model.named_parameters():
            parameter.requires_grad_(name in wanted)
    elif config.method != "head":
        raise ConfigError(f"{config.method!r} is not a baseline method")
