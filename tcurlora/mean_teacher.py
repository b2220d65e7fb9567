"""Semi-supervised fine-tuning from unlabeled volumes: a mean teacher (Tarvainen & Valpola 2017; as in
UA-MT, Yu et al. 2019, without the uncertainty mask), with one of two unlabeled losses.

The teacher is an exponential moving average (EMA) of the student's *trainable* parameters only: with
tCURLoRA / LoRA the frozen base is shared, so the teacher is the same network with the EMA copies of the
adapter cores, train_modules and head swapped in for its forward pass (`EMATeacher.swapped`). Each step
the student sees the unlabeled patches with Gaussian noise, the teacher the clean patches (no gradient),
and the loss adds `weight * sigmoid_rampup(iteration, 40% of the iterations) * MSE(softmax(student),
softmax(teacher))`; after each optimizer step the EMA is updated (`EMATeacher.update`).

`pseudo_label` replaces the MSE with confidence-filtered pseudo-labels (as FixMatch, Sohn et al. 2020): the
student sees a strongly perturbed view (random gamma, contrast, brightness, noise; the geometry is kept) and
is trained by cross-entropy towards the teacher's most likely class wherever the teacher is at least
`PSEUDO_LABEL_THRESHOLD` sure, each pseudo-class weighted equally (so that the background, which the
teacher is surest of, does not drown a small structure).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from tcurlora.jobs.fields import UNLABELED_LOSSES

RAMPUP_FRACTION = 0.4  # of the iterations, for the consistency weight's sigmoid ramp-up
NOISE_STD = 0.1  # of the student's input noise (UA-MT), clipped to +-2 std
NOISE_CLIP = 0.2
PSEUDO_LABEL_THRESHOLD = 0.9  # the teacher's class probability from which a voxel is pseudo-labeled
GAMMA_RANGE = (0.7, 1.5)  # the strong view's random gamma, on the patch's intensities rescaled to [0, 1]
CONTRAST_RANGE = (0.75, 1.25)  # its random contrast (a factor) and brightness (a shift, in image units)
BRIGHTNESS_SHIFT = 0.2


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


def pseudo_label_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, threshold: float = PSEUDO_LABEL_THRESHOLD
) -> torch.Tensor:
    """Cross-entropy of the student towards the teacher's argmax on the voxels where the teacher's top
    probability is >= `threshold`: the mean over each pseudo-class's voxels, averaged over the pseudo-classes
    present; 0 (with a gradient) where no voxel is confident. float32."""
    with torch.no_grad():
        confidence, target = torch.softmax(teacher_logits.float(), dim=1).max(dim=1)
        confident = confidence >= threshold
    cross_entropy = F.cross_entropy(student_logits.float(), target, reduction="none")
    per_class = [
        cross_entropy[confident & (target == c)].mean() for c in torch.unique(target[confident]).tolist()
    ]
    if not per_class:
        return student_logits.float().sum() * 0.0
    return torch.stack(per_class).mean()


def strong_view(image: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """The student's view for pseudo-labels: per patch and channel a random gamma (on intensities rescaled to
    [0, 1] and back), contrast and brightness, then the mean teacher's clipped noise; drawn from `generator`
    (or torch's RNG) on the CPU, so a seeded run repeats on any device."""
    n, c = image.shape[:2]
    shape = (n, c) + (1,) * (image.dim() - 2)

    def uniform(low: float, high: float) -> torch.Tensor:
        draw = torch.rand(shape, generator=generator, dtype=torch.float32, device="cpu")
        return (low + (high - low) * draw).to(device=image.device, dtype=image.dtype)

    gamma, contrast = uniform(*GAMMA_RANGE), uniform(*CONTRAST_RANGE)
    shift = uniform(-BRIGHTNESS_SHIFT, BRIGHTNESS_SHIFT)
    dims = tuple(range(2, image.dim()))
    low, high = image.amin(dim=dims, keepdim=True), image.amax(dim=dims, keepdim=True)
    span = (high - low).clamp_min(1e-6)
    gamma_adjusted = ((image - low) / span).clamp(0, 1) ** gamma * span + low
    mean = gamma_adjusted.mean(dim=dims, keepdim=True)
    return add_noise((gamma_adjusted - mean) * contrast + mean + shift, generator)


def unlabeled_view_and_loss(kind: str):
    """(the student's view of an unlabeled patch, the loss against the teacher's logits) of an unlabeled loss."""
    if kind == "consistency":
        return add_noise, consistency_loss
    if kind == "pseudo_label":
        return strong_view, pseudo_label_loss
    raise ValueError(f"unknown unlabeled loss {kind!r} (choose from {', '.join(UNLABELED_LOSSES)})")


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
    """The loss of one step whose batch is [labeled patches; perturbed unlabeled patches] (one student
    forward): the supervised loss on the first `labeled` logits plus `weight` x the unlabeled loss of the
    rest against the teacher's logits (computed beforehand, without gradient)."""

    def __init__(
        self, supervised, labeled: int, teacher_logits: torch.Tensor, weight: float, unlabeled_loss=None
    ):
        self.supervised, self.labeled, self.teacher_logits, self.weight = (
            supervised,
            labeled,
            teacher_logits,
            weight,
        )
        self.unlabeled_loss = unlabeled_loss or consistency_loss
        self.last: dict[str, float] = {}

    def __call__(self, logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        supervised = self.supervised(logits[: self.labeled], label)
        consistency = self.unlabeled_loss(logits[self.labeled :], self.teacher_logits)
        self.last = {"supervised": float(supervised.detach()), "consistency": float(consistency.detach())}
        return supervised + self.weight * consistency
