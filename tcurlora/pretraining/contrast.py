"""Seeded MRI contrast randomisation of z-scored patches, so pretrained features do not depend on one sequence.

Cine, LGE, T1, FLAIR: the same anatomy with other grey-level curves, another coil shading, other noise
and sharpness. Pretraining on a few sequences learns their statistics unless each patch is shown under a
random one: a monotone or non-monotone grey-level curve (random gamma, or a random smooth curve through
control points, as MONAI's RandHistogramShift), a smooth multiplicative bias field (as RandBiasField), a
blur or sharpening, and noise. Every draw comes from the caller's numpy random source (a Generator, or
the RandomState of the MONAI transform `RandMRIContrastd`, seeded by the patch sampler), so a resumed
pretraining run sees the same patches as an uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.transforms import MapTransform, Randomizable

# Anything with numpy's random(), uniform() and standard_normal(): a Generator or a RandomState.
Random = np.random.Generator | np.random.RandomState


def random_contrast_curve(image: torch.Tensor, rng: Random, control_points: int = 5) -> torch.Tensor:
    """Map grey levels through a random curve: gamma in [0.6, 1.6] (half the time) or a piecewise-linear
    curve through shuffled control points (RandHistogramShift's idea; not monotone, so contrast can invert
    locally, as between sequences). Output keeps the patch's range."""
    low, high = float(image.min()), float(image.max())
    if high - low < 1e-6:
        return image
    unit = (image - low) / (high - low)
    if rng.random() < 0.5:
        mapped = unit.pow(float(np.exp(rng.uniform(np.log(0.6), np.log(1.6)))))
    else:
        xs = np.linspace(0.0, 1.0, control_points)
        ys = np.clip(xs + rng.uniform(-0.2, 0.2, control_points), 0.0, 1.0)
        ys[0], ys[-1] = 0.0, 1.0
        mapped = _interpolate(
            unit, torch.as_tensor(xs, dtype=unit.dtype), torch.as_tensor(ys, dtype=unit.dtype)
        )
    return mapped * (high - low) + low


def _interpolate(x: torch.Tensor, xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
    """Piecewise-linear y(x) through (xs, ys), xs increasing from 0 to 1."""
    index = torch.clamp(torch.searchsorted(xs, x.contiguous()) - 1, 0, len(xs) - 2)
    x0, x1, y0, y1 = xs[index], xs[index + 1], ys[index], ys[index + 1]
    return y0 + (y1 - y0) * (x - x0) / (x1 - x0)


def bias_field(shape: tuple[int, ...], rng: Random, strength: float = 0.3) -> torch.Tensor:
    """exp(a smooth random polynomial of degree 2 in normalised coordinates): a coil shading field."""
    grids = torch.meshgrid(*[torch.linspace(-1.0, 1.0, n) for n in shape], indexing="ij")
    x, y, z = grids
    terms = [x, y, z, x * y, x * z, y * z, x * x, y * y, z * z]
    coefficients = rng.uniform(-strength, strength, len(terms))
    field = sum(float(c) * t for c, t in zip(coefficients, terms))
    return torch.exp(field)


def blur_or_sharpen(image: torch.Tensor, rng: Random) -> torch.Tensor:
    """A 3x3x3 box-blur of (C, X, Y, Z), mixed in with a random weight: > 0 blurs, < 0 sharpens."""
    smooth = F.avg_pool3d(image[None], kernel_size=3, stride=1, padding=1, count_include_pad=False)[0]
    weight = float(rng.uniform(-0.5, 1.0))
    return image + weight * (smooth - image)


def randomise_intensity(image: torch.Tensor, rng: Random) -> torch.Tensor:
    """Apply each randomisation with its probability to one (C, X, Y, Z) float patch; keep its mean and sd."""
    out = image
    if rng.random() < 0.8:
        out = random_contrast_curve(out, rng)
    if rng.random() < 0.5:
        out = out - out.min()
        out = out * bias_field(tuple(out.shape[1:]), rng)[None]
    if rng.random() < 0.4:
        out = blur_or_sharpen(out, rng)
    if rng.random() < 0.3:
        noise = torch.from_numpy(rng.standard_normal(out.shape).astype(np.float32))
        out = out + float(rng.uniform(0.0, 0.1)) * out.std() * noise
    std = float(out.std())
    return (out - out.mean()) / (std if std > 1e-6 else 1.0) * image.std() + image.mean()


class RandMRIContrastd(Randomizable, MapTransform):
    """MONAI dictionary transform: `randomise_intensity` of each key's (C, X, Y, Z) float patch, drawn from
    this transform's RandomState (set_random_state seeds it, as every MONAI random transform)."""

    def randomize(self, data: Any = None) -> None:
        """Nothing to draw ahead: `randomise_intensity` draws as it goes."""

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        out = dict(data)
        for key in self.key_iterator(out):
            out[key] = randomise_intensity(torch.as_tensor(out[key]).as_subclass(torch.Tensor), self.R)
        return out
