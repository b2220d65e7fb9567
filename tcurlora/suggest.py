"""Which case to label next: rank volumes by how unsure a model (base + adapter) is about them.

Active learning as MONAI Label offers it: the user labels the volume the current adapter understands
least. Each volume goes through exactly what `tcurlora segment` does (the adapter's preprocessing,
sliding window, the merged model); the softmax on the network grid is scored, not written:

- `entropy` (default, one pass): the mean normalised predictive entropy, -sum p log p / log K, over
  the voxels the model predicts as foreground. Background far from the structure is confidently
  background in every volume and would only dilute the score.
- `flips` (four passes): the fraction of the predicted foreground (union over the passes) whose label
  changes when the volume is mirrored along each axis: a model that has learnt the structure is
  largely equivariant to flips, an unsure one is not.

A volume in which the model predicts no foreground at all scores 1.0 (the most uncertain): the model
has found nothing there, which is what a label teaches it most about.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

RANKING_SCHEMA = "tcurlora.suggest/1"


def score_probabilities(probabilities: Any) -> dict[str, float | int]:
    """Entropy score of softmax probabilities (K, X, Y, Z): {"entropy", "foreground_voxels"}."""
    import torch

    probs = torch.as_tensor(probabilities).float()
    classes = probs.shape[0]
    entropy = -(probs * torch.log(probs.clamp_min(1e-12))).sum(0) / math.log(max(classes, 2))
    foreground = probs.argmax(0) > 0
    count = int(foreground.sum())
    score = float(entropy[foreground].mean()) if count else 1.0
    return {"entropy": score, "foreground_voxels": count}


def flip_disagreement(labels: Sequence[Any]) -> float:
    """Fraction of the union of predicted foregrounds whose label differs between the passes (1.0: none)."""
    import torch

    stack = torch.stack([torch.as_tensor(lab) for lab in labels])
    union = (stack > 0).any(0)
    count = int(union.sum())
    if not count:
        return 1.0
    differs = (stack != stack[0:1]).any(0)
    return float(differs[union].float().mean())


def volume_uncertainty(model, image_paths: Sequence[str | Path], spec, *, device, overlap: float,
                       flips: bool, amp: bool = False, sw_batch_size: int = 2) -> dict[str, float | int]:
    """Uncertainty of one volume: its entropy score and, with `flips`, the flip disagreement."""
    import torch

    from tcurlora.data.transforms import inference_transforms, user_errors
    from tcurlora.infer import _sliding_window

    with user_errors():
        image = inference_transforms(spec)({"image": [str(p) for p in image_paths]})["image"].as_tensor()
    model = model.to(device).eval()
    probabilities = _sliding_window(model, image, spec, device, overlap, sw_batch_size, amp)
    result = score_probabilities(probabilities)
    if flips:
        labels = [probabilities.argmax(0)]
        for axis in (1, 2, 3):  # the spatial axes of (C, X, Y, Z); probabilities are (K, X, Y, Z)
            flipped = _sliding_window(model, torch.flip(image, dims=[axis]), spec, device, overlap,
                                      sw_batch_size, amp)
            labels.append(torch.flip(flipped, dims=[axis]).argmax(0))
        result["flips"] = flip_disagreement(labels)
    return result


def rank(entries: list[dict[str, Any]], score: str) -> list[dict[str, Any]]:
    """Entries sorted most uncertain first (ties: by input order), each with its 1-based `rank` and `score`."""
    ordered = sorted(enumerate(entries), key=lambda item: (-item[1][score], item[0]))
    return [{"rank": position, "score": entry[score], **entry}
            for position, (_, entry) in enumerate(ordered, start=1)]


def run_suggest(job, sink, token) -> dict[str, Any]:
    """Score every input and rank them; returns {"outputs": {"ranking": [...]}, "metrics": {...}}."""
    from tcurlora.device import describe_device, resolve_device, resolve_threads
    from tcurlora.segmentation import check_input_volumes, load_segmentation_model

    inputs = [[Path(p) for p in item] if isinstance(item, (list, tuple)) else [Path(item)] for item in job.inputs]
    check_input_volumes(inputs)
    device = resolve_device(job.device, warn=lambda m: sink.log("warning", m))
    threads, why = resolve_threads(getattr(job, "threads", "auto"), device)
    model, spec, names, _config = load_segmentation_model(job.base_model, job.adapter)
    model.to(device)
    sink.started(command="suggest", device=describe_device(device), total=len(inputs), parameters=None)
    sink.log("info", f"torch CPU threads: {threads} ({why}); score: {job.score}")
    entries, started = [], time.monotonic()
    for index, channels in enumerate(inputs, start=1):
        token.raise_if_cancelled()
        values = volume_uncertainty(model, channels, spec, device=device, overlap=job.overlap,
                                    flips=job.score == "flips", amp=device.type == "cuda")
        entries.append({"volume": str(channels[0]) if len(channels) == 1 else [str(c) for c in channels],
                        **values})
        elapsed = time.monotonic() - started
        eta = elapsed / index * (len(inputs) - index)
        sink.progress(iteration=index, total=len(inputs), loss=None, val_dice=None, eta_s=eta, lr=None,
                      message=f"scored {channels[0].name}: {job.score} {values[job.score]:.4f}")
    ranking = rank(entries, job.score)
    if job.top is not None:
        ranking = ranking[: job.top]
    return {"outputs": {"ranking": ranking},
            "metrics": {"schema": RANKING_SCHEMA, "score": job.score, "label_names": names,
                        "volumes": len(inputs), "seconds": time.monotonic() - started,
                        "device": describe_device(device)}}
