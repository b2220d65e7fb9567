"""Semi-supervised fine-tuning from unlabeled volumes: a mean teacher (Tarvainen & Valpola 2017; as in
UA-MT, Yu et al. 2019, without the uncertainty mask).

The teacher is an exponential moving average (EMA) of the student's *trainable* parameters only: with
tCURLoRA / LoRA the frozen base is shared, so the teacher is the same network with the EMA copies of the
adapter cores, train_modules and head swapped in for its forward pass (`EMATeacher.swapped`). Each step
the student sees the unlabeled patches with Gaussian noise, the teacher the clean patches (no gradient),
and the loss adds `weight * sigmoid_rampup(iteration, 40% of the iterations) * MSE(softmax(student),
softmax(teacher))`; after each optimizer step the EMA is updated (`EMATeacher.update`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

RAMPUP_FRACTION = 0.4  # of the iterations, for the consistency weight's sigmoid ramp-up
NOISE_STD = 0.1  # of the student's input noise (UA-MT), clipped to +-2 std
NOISE_CLIP = 0.2


def sigmoid_rampup(iteration: int, length: float) -> float:
    """exp(-5 (1 - t)^2) with t = iteration / length clipped to [0, 1] (Laine & Aila): exp(-5) at 0, 1 from
    `length` on; 1 throughout when length <= 0."""
    if length <= 0:
        return 1.0
    t = min(1.0, max(0.0, iteration / length))
    return float(math.exp(-5.0 * (1.0 - t) ** 2))


def consistency_weight(iteration: int, total: int, weight: float) -> float:
    """The consistency loss's weight at 0-based `iteration` of `total`: ramped up over the first 40%."""
    return weight * sigmoid_rampup(iteration, RAMPUP_FRACTION * total)


def consistency_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of the class probabilities (softmax over the channel axis); float32."""
    student = torch.softmax(student_logits.float(), dim=1)
    teacher = torch.softmax(teacher_logits.float(), dim=1)
    return torch.mean((student - teacher) ** 2)


def add_noise(image: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """The student's view: `image` + Gaussian noise (std 0.1, clipped to +-0.2), drawn from torch's RNG."""
    noise = torch.randn(image.shape, generator=generator, dtype=image.dtype, device="cpu").to(image.device)
    return image + torch.clamp(noise * NOISE_STD, -NOISE_CLIP, NOISE_CLIP)


class EMATeacher:
    """An EMA copy of exactly the trainable parameters of `model` (by name), on their devices."""

    def __init__(self, model: nn.Module, decay: float):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.model, self.decay = model, decay
        self.shadow: dict[str, torch.Tensor] = {
            name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad
        }

    def _live(self) -> Iterator[tuple[str, nn.Parameter]]:
        for name, parameter in self.model.named_parameters():
            if name in self.shadow:
                yield name, parameter

    @torch.no_grad()
    def update(self) -> None:
        """teacher = decay * teacher + (1 - decay) * student, for every trainable parameter."""
        for name, parameter in self._live():
            shadow = self.shadow[name]
            shadow.mul_(self.decay).add_(parameter.detach().to(shadow.dtype), alpha=1.0 - self.decay)

    @contextmanager
    def swapped(self) -> Iterator[nn.Module]:
        """The model with the teacher's parameters in place of the student's (restored on exit)."""
        saved: dict[str, torch.Tensor] = {}
        with torch.no_grad():
            for name, parameter in self._live():
                saved[name] = parameter.detach().clone()
                parameter.copy_(self.shadow[name])
        try:
            yield self.model
        finally:
            with torch.no_grad():
                for name, parameter in self._live():
                    parameter.copy_(saved[name])

    @torch.no_grad()
    def copy_to_model(self) -> None:
        """Put the teacher's parameters into the model for good (to save the teacher)."""
        for name, parameter in self._live():
            parameter.copy_(self.shadow[name])

    def state_dict(self) -> dict[str, torch.Tensor]:
        """CPU copies of the EMA tensors, by parameter name (for a checkpoint)."""
        return {name: t.detach().to("cpu", copy=True).contiguous() for name, t in self.shadow.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore `state_dict`; KeyError / ValueError when it belongs to other parameters."""
        if set(state) != set(self.shadow):
            raise KeyError(
                f"teacher tensors {sorted(set(state) ^ set(self.shadow))[:3]} do not fit this model"
            )
        with torch.no_grad():
            for name, tensor in state.items():
                if tuple(tensor.shape) != tuple(self.shadow[name].shape):
                    raise ValueError(f"teacher tensor {name} has shape {tuple(tensor.shape)}")
                self.shadow[name].copy_(tensor)


class SemiSupervisedLoss:
    """The loss of one step whose batch is [labeled patches; noisy unlabeled patches] (one student forward):
    the supervised loss on the first `labeled` logits plus `weight` x the consistency of the rest with the
    teacher's logits (computed beforehand, without gradient)."""

    def __init__(self, supervised, labeled: int, teacher_logits: torch.Tensor, weight: float):
        self.supervised, self.labeled, self.teacher_logits, self.weight = (
            supervised,
            labeled,
            teacher_logits,
            weight,
        )
        self.last: dict[str, float] = {}

    def __call__(self, logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        supervised = self.supervised(logits[: self.labeled], label)
        consistency = consistency_loss(logits[self.labeled :], self.teacher_logits)
        self.last = {"supervised": float(supervised.detach()), "consistency": float(consistency.detach())}
        return supervised + self.weight * consistency
