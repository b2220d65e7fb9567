"""The one optimisation step of fine-tuning, pretraining and the bench cost runs, and the state a
checkpoint needs to continue it exactly (optimizer, GradScaler, torch RNG), without pickles."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from tcurlora.errors import InputError


def cpu_supports_bf16() -> bool:
    """Whether this CPU runs bfloat16 kernels natively (AVX512-BF16 or AMX): there bf16 autocast is faster."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def autocast_context(device: torch.device, enabled: bool):
    """bf16 autocast when asked for: on CUDA (fp16 where bf16 is unsupported) and on CPUs with native bf16
    (`cpu_supports_bf16`); a no-op elsewhere. Callers decide when to ask (fine-tuning asks only on CUDA)."""
    if not enabled or device.type not in ("cuda", "cpu"):
        return torch.autocast(device_type="cpu", enabled=False)
    if device.type == "cpu":
        return torch.autocast(device_type="cpu", dtype=torch.bfloat16, enabled=cpu_supports_bf16())
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast(device_type="cuda", dtype=dtype)


def grad_scaler(device: torch.device, amp: bool) -> torch.amp.GradScaler:
    """A GradScaler that scales only under fp16 autocast (CUDA without bf16); a pass-through otherwise."""
    return torch.amp.GradScaler(
        "cuda", enabled=amp and device.type == "cuda" and not torch.cuda.is_bf16_supported()
    )


Schedule = Callable[[int], float]


class OptimStep:
    """One training step: the learning-rate schedule (a factor of each parameter group's `initial_lr`, by
    0-based iteration), autocast forward (`autocast_context`), loss on float32 logits, InputError on a
    non-finite loss, scaled backward, optional gradient-norm clipping (on unscaled gradients), step."""

    def __init__(
        self,
        model: Any,
        optimizer: torch.optim.Optimizer,
        scaler: torch.amp.GradScaler,
        *,
        amp: bool,
        schedule: Schedule | None = None,
        clip: float | None = None,
    ):
        if clip is not None and not clip > 0:
            raise ValueError(f"clip must be a positive gradient norm, got {clip}")
        self.model, self.optimizer, self.scaler = model, optimizer, scaler
        self.amp, self.schedule, self.clip = amp, schedule, clip
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])

    def learning_rate_factor(self, iteration: int) -> float:
        return 1.0 if self.schedule is None else self.schedule(iteration)

    def __call__(
        self, image: torch.Tensor, label: torch.Tensor, loss_fn: Callable, iteration: int
    ) -> torch.Tensor:
        """Train on one batch at 0-based `iteration`; the (float32) loss."""
        optimizer, scaler = self.optimizer, self.scaler
        factor = self.learning_rate_factor(iteration)
        for group in optimizer.param_groups:
            group["lr"] = group["initial_lr"] * factor
        optimizer.zero_grad(set_to_none=True)
        with autocast_context(image.device, self.amp):
            logits = self.model(image)
        loss = loss_fn(logits.float(), label)
        if not torch.isfinite(loss):
            raise InputError(
                f"the loss became {loss.item()} at iteration {iteration + 1}: "
                "lower the learning rate or check the images for extreme values"
            )
        scaler.scale(loss).backward()
        if self.clip is not None:
            scaler.unscale_(optimizer)
            parameters = [p for group in optimizer.param_groups for p in group["params"]]
            torch.nn.utils.clip_grad_norm_(parameters, self.clip)
        scaler.step(optimizer)
        scaler.update()
        return loss

    def state(self) -> dict[str, Any]:
        """Optimizer, GradScaler and torch RNG states: tensors and plain values only (torch.save with
        weights_only loading, no pickled objects)."""
        state: dict[str, Any] = {
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "torch_rng": torch.get_rng_state(),
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda_rng"] = torch.cuda.get_rng_state_all()
        return state

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore `state()`; a checkpoint of an older tcurlora without scaler / RNG entries keeps them."""
        self.optimizer.load_state_dict(state["optimizer"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        if isinstance(state.get("torch_rng"), torch.Tensor):
            torch.set_rng_state(state["torch_rng"])
        if state.get("cuda_rng") and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
