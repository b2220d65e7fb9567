"""One interface for every adaptation method: apply -> train -> merge/unmerge -> save/load.

    adapted = apply_adapter(model, AdapterConfig(method="tcur", rank=8, num_classes=3))
    optimizer = torch.optim.AdamW(adapted.trainable_parameters())
    ...
    plain = adapted.merge_and_unload()

`apply_adapter` changes `model` in place (like PEFT): deep-copy it first to keep the original. What
differs between methods is asked of the method registered under `config.method`
(tcurlora.adapters.methods.registry); the head and `train_modules` work alike for all of them.
"""

from __future__ import annotations

import copy
import warnings
from typing import Any

import torch
from torch import Tensor, nn

from tcurlora.adapters.config import AdapterConfig, expand_train_modules, full_match_any
from tcurlora.adapters.counts import ParameterCounts, count_parameters
from tcurlora.adapters.head import head_module_names, replace_head
from tcurlora.adapters.methods.registry import get_method, method_info
from tcurlora.errors import ConfigError
from tcurlora.models.fingerprint import state_dict_fingerprint


def train_module_parameters(model: nn.Module, config: AdapterConfig) -> list[nn.Parameter]:
    """The parameters of the modules named by `config.train_modules` (full match; never the head's,
    which trains on its own terms); ConfigError when a pattern matches no module."""
    patterns = expand_train_modules(config.train_modules)
    found: dict[int, nn.Parameter] = {}
    for pattern in patterns:
        matched = [
            module for name, module in model.named_modules() if name and full_match_any([pattern], name)
        ]
        if not matched:
            raise ConfigError(f"train_modules pattern {pattern!r} matches no module of this network")
        for module in matched:
            for parameter in module.parameters():
                found[id(parameter)] = parameter
    return list(found.values())


class AdaptedModel(nn.Module):
    """A base network with one adaptation method applied; forward(x) -> model(x)."""

    def __init__(self, model: nn.Module, config: AdapterConfig):
        super().__init__()
        self.config = config
        if config.base_fingerprint is None:
            config.base_fingerprint = state_dict_fingerprint(model)
        for parameter in model.parameters():
            parameter.requires_grad_(False)
        self.head_replaced = replace_head(
            model, config.head_module, config.num_classes, config.new_head, config.seed
        )
        # The head, and the skip connection of a residual unit it sits in (adapters/head.py).
        head = nn.ModuleList([model.get_submodule(n) for n in head_module_names(model, config.head_module)])
        # Found before the method wraps layers (names change then); the Parameter objects stay the same.
        extra = train_module_parameters(model, config)
        self.method = get_method(config.method)
        self.tcur: nn.Module | None = None  # tCURLoRA's groups (tcurlora.adapters.methods.tcur)
        self.model = self.method.install(self, model)
        if self.head_replaced or method_info(config.method).trains_head:
            for parameter in head.parameters():
                parameter.requires_grad_(True)
        self._head_ids = {id(p) for p in head.parameters()}
        for parameter in extra:
            parameter.requires_grad_(True)
        self._module_ids = frozenset(id(p) for p in extra) - self._head_ids
        self.merged = False

    def forward(self, *args, **kwargs):
        return self.model(*args, **kwargs)

    def train(self, mode: bool = True) -> AdaptedModel:
        """Train mode, except for frozen normalisation layers with running statistics (batch norm of a
        CNN or SwinUNETR base): they stay in eval mode, so their statistics, which the adapter does not
        save, do not drift; the trained model and the saved-and-loaded one then compute the same."""
        super().train(mode)
        if mode:
            for module in self.modules():
                if (
                    isinstance(module, nn.modules.batchnorm._NormBase)
                    and module.track_running_stats
                    and not any(p.requires_grad for p in module.parameters(recurse=False))
                ):
                    module.eval()
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The parameters an optimiser should update."""
        return [p for p in self.parameters() if p.requires_grad]

    def _adapter_tensors(self) -> dict[str, Tensor]:
        """Live tensors of the adapter state, as the method says (tCUR: dU with its row/column indices;
        "full" and "scratch": the whole state dict)."""
        return self.method.adapter_tensors(self)

    def adapter_state_dict(self) -> dict[str, Tensor]:
        """What an adapter file holds: the trained core and head (full, scratch: all weights), as CPU copies."""
        return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in self._adapter_tensors().items()}

    def load_adapter_state_dict(self, state: dict[str, Tensor]) -> None:
        """Load `adapter_state_dict` output; missing/unexpected keys or shapes -> ConfigError naming the key."""
        live = self._adapter_tensors()
        missing = sorted(set(live) - set(state))
        unexpected = sorted(set(state) - set(live))
        if missing or unexpected:
            raise ConfigError(
                f"adapter weights do not fit this {self.config.method} adapter: "
                f"missing {missing[:5]}{' ...' if len(missing) > 5 else ''}, "
                f"unexpected {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}"
            )
        for key, tensor in state.items():
            if tuple(tensor.shape) != tuple(live[key].shape):
                raise ConfigError(
                    f"adapter weight {key} has shape {tuple(tensor.shape)}, this model needs {tuple(live[key].shape)}"
                )
            self.method.check_tensor(self, key, tensor)
        was_merged = self.merged
        if was_merged:
            self.unmerge()
        with torch.no_grad():
            self.method.load_tensors(self, live, state)
        if was_merged:
            self.merge()

    def merge(self) -> None:
        """Fold the adapter into the base weights (inference then costs what the base costs)."""
        if self.merged:
            warnings.warn("adapter already merged; merge skipped", stacklevel=2)
            return
        self.method.merge(self)
        self.merged = True

    def unmerge(self) -> None:
        """Undo `merge` (base weights restored up to floating-point rounding)."""
        if not self.merged:
            warnings.warn("adapter is not merged; unmerge skipped", stacklevel=2)
            return
        self.method.unmerge(self)
        self.merged = False

    def merge_and_unload(self) -> nn.Module:
        """The plain network with the adapter merged in: no wrappers, no hooks. Consumes this object."""
        return self.method.unload(self)

    def parameter_counts(self) -> ParameterCounts:
        """Total, trainable, adapter core and head parameter counts."""
        return count_parameters(self, self._head_ids, self._module_ids)

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Trainable parameters by role: "adapter" (the method's own), "modules" (train_modules), "head"."""
        groups: dict[str, list[nn.Parameter]] = {"adapter": [], "modules": [], "head": []}
        for parameter in self.trainable_parameters():
            if id(parameter) in self._head_ids:
                groups["head"].append(parameter)
            elif id(parameter) in self._module_ids:
                groups["modules"].append(parameter)
            else:
                groups["adapter"].append(parameter)
        return groups


def apply_adapter(model: nn.Module, config: AdapterConfig) -> AdaptedModel:
    """Adapt `model` (in place) as `config` says; all base weights are frozen except as the method says."""
    config.validate()
    return AdaptedModel(model, config)


def counts_for(model: nn.Module, config: Any) -> ParameterCounts:
    """What `config` would train on `model`, counted on a deep copy (the model is left as it is)."""
    if config.base_fingerprint is None:
        config.base_fingerprint = state_dict_fingerprint(model)
    return apply_adapter(copy.deepcopy(model), config).parameter_counts()
