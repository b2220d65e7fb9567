"""Held-out Dice of a pretrained network, per class and per volume, on the network's own grid."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from tcurlora import distributed  # torchrun: no-ops without it
from tcurlora.dice import dice_by_class
from tcurlora.models.spec import ModelSpec
from tcurlora.pretraining.data import SourceData


@torch.no_grad()
def evaluate_sources(
    model: torch.nn.Module, sources: list[SourceData], spec: ModelSpec, device: torch.device
) -> dict[str, Any]:
    """Mean held-out Dice per class (on the network's 1.5 mm grid) and per volume. Under torchrun each rank
    scores volumes r, r+N, ... and every rank gets all the scores (in the 1-process order)."""
    from monai.inferers import sliding_window_inference

    model.eval()
    volumes = [(source, volume) for source in sources for volume in source.val]
    scored: dict[int, dict[int, float]] = {}
    for index in distributed.mine(len(volumes)):  # torchrun: this rank's share of the volumes
        source, volume = volumes[index]
        image = volume.image.float()[None].to(device)
        logits = sliding_window_inference(
            image, spec.patch_size, sw_batch_size=4, predictor=model, overlap=0.25, mode="gaussian"
        )
        pred = logits.argmax(1)[0].cpu()
        scored[index] = dice_by_class(pred, volume.label.long(), source.classes, skip_absent=True)
    scored = distributed.merged(scored)  # torchrun: every rank's scores
    per_class: dict[str, list[float]] = {}
    per_volume = {}
    for index, (_, volume) in enumerate(volumes):
        scores = scored[index]
        per_volume[volume.case_id] = {spec.labels[c]: round(s, 4) for c, s in scores.items()}
        for c, s in scores.items():
            per_class.setdefault(spec.labels[c], []).append(s)
    model.train()
    return {
        "val_dice": {name: round(float(np.mean(v)), 4) for name, v in per_class.items()},
        "val_dice_per_volume": per_volume,
    }
