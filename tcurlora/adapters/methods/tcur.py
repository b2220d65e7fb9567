"""tCURLoRA as a registered method: the tensor CUR layers of tcurlora.adapters.tcur, grouped by shape."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from tcurlora.adapters.methods.base import AdaptationMethod, LowRankMethod
from tcurlora.adapters.tcur import TCURAdapter
from tcurlora.errors import ConfigError


class TCURMethod(LowRankMethod):
    """W' = W + alpha * C * dU * R per group of same-shaped weights; only the cores dU (and their row and
    column indices, as buffers) are saved."""

    def install(self, adapted: Any, model: nn.Module) -> nn.Module:
        adapted.tcur = TCURAdapter(
            model, adapted.config
        )  # registered before the model: tensor names "tcur.*"
        return model

    def check_tensor(self, adapted: Any, key: str, tensor: Tensor) -> None:
        if not key.endswith((".rows", ".cols")):
            return
        group = adapted.get_submodule(key.rpartition(".")[0])
        limit = group.n1 if key.endswith(".rows") else group.n2
        if tensor.is_floating_point() or (tensor.numel() and (tensor.min() < 0 or tensor.max() >= limit)):
            raise ConfigError(f"adapter weight {key} holds indices outside 0..{limit - 1}")

    def load_tensors(self, adapted: Any, live: dict[str, Tensor], state: dict[str, Tensor]) -> None:
        # C and R come from the base weights: indices first, factors rebuilt where they changed, and only
        # then the trained tensors (a train_modules layer may also be a tCUR target).
        indices = [key for key in state if key.endswith((".rows", ".cols"))]
        changed = {
            key.rpartition(".")[0] for key in indices if not torch.equal(live[key].cpu(), state[key].cpu())
        }
        for key in indices:
            live[key].copy_(state[key].to(live[key].device))
        if changed:
            adapted.tcur.rebuild_factors()
        AdaptationMethod.load_tensors(
            self, adapted, live, {k: v for k, v in state.items() if k not in indices}
        )

    def merge(self, adapted: Any) -> None:
        adapted.tcur.merge()

    def unmerge(self, adapted: Any) -> None:
        adapted.tcur.unmerge()

    def unload(self, adapted: Any) -> nn.Module:
        if not adapted.merged:
            adapted.merge()
        plain = adapted.tcur.unload(adapted.model)
        adapted.tcur = None
        return plain

    def target_names(self, adapted: Any) -> list[str]:
        return sorted(adapted.tcur.layers)

    def rank_limits(self, adapted: Any) -> dict[str, int]:
        return {str(key): min(int(group.n1), int(group.n2)) for key, group in adapted.tcur.groups.items()}


IMPLEMENTS = {"tcur": TCURMethod()}
