"""The adaptation methods by name, like PEFT's mapping from a method type to its tuner.

Torch-free, so the job schema, bench plans and `tcurlora info` read the method names and their plain facts
without loading a network library. Adding a method: one module whose `IMPLEMENTS` maps its name to an
`AdaptationMethod` (tcurlora.adapters.methods.base), and one entry in `REGISTRY` below.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from tcurlora.errors import ConfigError


@dataclass(frozen=True)
class MethodInfo:
    """What code that never builds a network needs to know about a method."""

    module: str  # the module whose `IMPLEMENTS[name]` installs, merges, saves and counts it
    learning_rate: float  # measured default peak rate of the method's own parameters (docs/benchmarks.md)
    ranked: bool = False  # rank and alpha shape it; its low-rank cores take no weight decay
    alpha_is_rank: bool = False  # alpha's default is the rank (LoRA scale alpha/r = 1), else 1.0
    index_selection: bool = False  # tCUR index selection applies; Conv3d targets on by default
    full_resolution_blocks: bool = False  # trains the full-resolution blocks unless a job says otherwise
    random_init: bool = False  # starts from a seeded random initialisation, not the base's weights
    trains_head: bool = False  # the head is what it trains, even when not replaced (and at its rate)


# "scratch" (random initialisation, every weight trained) learns faster than "full" from pretrained
# weights; 1e-3 is a first value, tuned by measurement elsewhere: change it here only.
SCRATCH_LEARNING_RATE = 1e-3
_PACKAGE = "tcurlora.adapters.methods"
# "scratch" is the control group: the base's architecture, randomly initialised (seeded by the job's seed),
# every weight trained as by "full"; what a method reaches above it is what the pretrained base contributes.
REGISTRY: dict[str, MethodInfo] = {
    "tcur": MethodInfo(
        f"{_PACKAGE}.tcur", 1e-2, ranked=True, index_selection=True, full_resolution_blocks=True
    ),
    "lora": MethodInfo(f"{_PACKAGE}.lora", 2e-3, ranked=True, alpha_is_rank=True),
    "decoder": MethodInfo(f"{_PACKAGE}.baselines", 1e-3),
    "full": MethodInfo(f"{_PACKAGE}.baselines", 2e-4),
    "head": MethodInfo(f"{_PACKAGE}.baselines", 5e-3, trains_head=True),
    "scratch": MethodInfo(f"{_PACKAGE}.baselines", SCRATCH_LEARNING_RATE, random_init=True),
}
METHODS = tuple(REGISTRY)


def unknown_method(name: Any) -> ConfigError:
    """The error for a method name that is not registered (the words the adapter config's check uses)."""
    return ConfigError(f"adapter config key 'method': must be one of {', '.join(METHODS)}; got {name!r}")


def method_info(name: str) -> MethodInfo:
    """The registered facts of method `name`; ConfigError listing the methods otherwise."""
    try:
        return REGISTRY[name]
    except (KeyError, TypeError):
        raise unknown_method(name) from None


def get_method(name: str) -> Any:
    """The `AdaptationMethod` of `name`, its module imported on first use (LoRA's pulls in PEFT only then)."""
    return importlib.import_module(method_info(name).module).IMPLEMENTS[name]


def conv_targets_on(method: str, asked: bool | None) -> bool:
    """Whether Conv3d kernels are adapted: as asked, else the default (on for tcur, measured best in docs/benchmarks.md)."""
    return asked if asked is not None else method_info(method).index_selection
