"""Self-supervised labels for unlabeled scans: a volume's own intensity classes.

A scan without labels still says which voxels look alike. Its lightly smoothed grey levels are cut at
their quartiles into four classes (0 the darkest, the "background" of the softmax; 1-3 brighter ones).
Pretraining shows each patch under a random contrast (tcurlora.pretraining.contrast), which scrambles
the grey levels but not these classes, so the network has to recover them from shape and context: a
pretext task on the very domains a base is later adapted to, without reading any label file.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

TISSUE_CLASSES = 3  # foreground classes; class 0 is the darkest quarter


def tissue_class_names(source: str) -> list[str]:
    """The class names of a self-supervised source: '<source> intensity class 1..3'."""
    return [f"{source} intensity class {i}" for i in range(1, TISSUE_CLASSES + 1)]


def tissue_classes(image: torch.Tensor) -> torch.Tensor:
    """(X, Y, Z) int64 classes 0..3 of a 3D image: the quartiles of its 3x3x3-smoothed grey levels."""
    if image.dim() != 3:
        raise ValueError(f"expected a 3D image, got shape {tuple(image.shape)}")
    smooth = F.avg_pool3d(image.float()[None, None], 3, stride=1, padding=1, count_include_pad=False)[0, 0]
    values = smooth.flatten()
    if values.numel() > 1_000_000:  # quantiles of a regular subsample: same cut points, bounded memory
        values = values[:: values.numel() // 1_000_000 + 1]
    edges = torch.quantile(values, torch.tensor([0.25, 0.5, 0.75]))
    return torch.bucketize(smooth, edges, right=True).to(torch.int64)
