"""One interface for every adaptation method: apply -> train -> merge/unmerge -> save/load.

    adapted = apply_adapter(model, AdapterConfig(method="tcur", rank=8, num_classes=3))
    optimizer = torch.optim.AdamW(adapted.trainable_parameters())
    ...
    plain = adapted.merge_and_unload()

`apply_adapter` changes `model` in place (like PEFT): deep-copy it first to keep the original.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor, nn

from tcurlora.adapters.baselines import set_baseline_trainable
from tcurlora.adapters.config import METHODS, AdapterConfig, expand_train_modules, full_match_any
from tcurlora.adapters.counts import ParameterCounts, count_parameters
from tcurlora.adapters.head import head_module_names, replace_head
from tcurlora.adapters.lora import inject_lora, lora_merge, lora_merge_and_unload, lora_unmerge
from tcurlora.adapters.tcur import TCURAdapter, TCURConv3d, TCURGroup, TCURLayer, TCURLinear
from tcurlora.errors import ConfigError
from tcurlora.models.fingerprint import state_dict_fingerprint

__all__ = [
    "METHODS",
    "AdaptedModel",
    "AdapterConfig",
    "ParameterCounts",
    "TCURConv3d",
    "TCURGroup",
    "TCURLayer",
    "TCURLinear",
    "apply_adapter",
]


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
        self.tcur: TCURAdapter | None = None
        if config.method == "tcur":
            self.tcur = TCURAdapter(model, config)
            self.model = model
        elif config.method == "lora":
            self.model = inject_lora(model, config)
        else:
            set_baseline_trainable(model, config)
            self.model = model
        if self.head_replaced or config.method == "head":
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
        """Live tensors of the adapter state: trainable parameters and the buffers of their modules
        (tCUR: dU with its row/column indices); "full" and "scratch": the whole state dict (scratch: the
        base's pretrained weights must play no part when it is loaded)."""
        if self.config.method in ("full", "scratch"):
            return dict(self.state_dict(keep_vars=True))
        tensors: dict[str, Tensor] = {}
        for module_name, module in self.named_modules():
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
            if key.endswith((".rows", ".cols")) and self.tcur is not None:
                self._check_indices(key, tensor)
        was_merged = self.merged
        if was_merged:
            self.unmerge()
        indices = [key for key in state if self.tcur is not None and key.endswith((".rows", ".cols"))]
        with torch.no_grad():
            # C and R come from the base weights: indices first, factors rebuilt where they changed,
            # and only then the trained tensors (a train_modules layer may also be a tCUR target).
            changed = {
                key.rpartition(".")[0]
                for key in indices
                if not torch.equal(live[key].cpu(), state[key].cpu())
            }
            for key in indices:
                live[key].copy_(state[key].to(live[key].device))
            if changed and self.tcur is not None:
                self.tcur.rebuild_factors()
            for key, tensor in state.items():
                if key not in indices:
                    live[key].copy_(tensor.to(device=live[key].device, dtype=live[key].dtype))
        if was_merged:
            self.merge()

    def _check_indices(self, key: str, tensor: Tensor) -> None:
        group = self.get_submodule(key.rpartition(".")[0])
        limit = group.n1 if key.endswith(".rows") else group.n2
        if tensor.is_floating_point() or (tensor.numel() and (tensor.min() < 0 or tensor.max() >= limit)):
            raise ConfigError(f"adapter weight {key} holds indices outside 0..{limit - 1}")

    def merge(self) -> None:
        """Fold the adapter into the base weights (inference then costs what the base costs)."""
        if self.merged:
            warnings.warn("adapter already merged; merge skipped", stacklevel=2)
            return
        if self.tcur is not None:
            self.tcur.merge()
        elif self.config.method == "lora":
            lora_merge(self.model)
        self.merged = True

    def unmerge(self) -> None:
        """Undo `merge` (base weights restored up to floating-point rounding)."""
        if not self.merged:
            warnings.warn("adapter is not merged; unmerge skipped", stacklevel=2)
            return
        if self.tcur is not None:
            self.tcur.unmerge()
        elif self.config.method == "lora":
            lora_unmerge(self.model)
        self.merged = False

    def merge_and_unload(self) -> nn.Module:
        """The plain network with the adapter merged in: no wrappers, no hooks. Consumes this object."""
        if self.config.method == "lora":
            if self.merged:
                self.unmerge()
            return lora_merge_and_unload(self.model)
        if self.tcur is not None:
            if not self.merged:
                self.merge()
            plain = self.tcur.unload(self.model)
            self.tcur = None
            return plain
        return self.model

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
