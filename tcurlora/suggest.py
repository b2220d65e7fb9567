"""Which case to label next: rank volumes by how unsure a model (base + adapter) is about them.

Active learning as MONAI Label offers it: the user labels the volume the current adapter understands
least. Each volume goes through exactly what `tcurlora segment` does (the adapter's preprocessing,
sliding window, the merged model); the softmax on the network grid is scored, not written:

- `entropy` (default; one pass per mirroring the adapter was trained with, as `segment` averages
  them): the mean normalised predictive entropy, -sum p log p / log K, over the predicted foreground (foreground probability 1 - p(background) >= 0.5). Background far from
  the structure is confidently background in every volume and would only dilute the score. Where the
  model predicts no foreground at all, the score is 1 - its highest foreground probability: a volume
  where the adapter finds nothing ranks high, and such volumes still have an order.
- `flips` (four passes): how much the class probabilities change when the volume is mirrored along
  each axis (total variation over foreground mass, in [0, 1]): a model that has learnt the structure
  is largely equivariant to flips, an unsure one is not.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tcurlora.filenames import RANKING_SCHEMA


def foreground_probability(probabilities: Any) -> Any:
    """1 - p(background) per voxel of softmax probabilities (K, X, Y, Z)."""
    return 1.0 - probabilities[0]


def score_probabilities(probabilities: Any) -> dict[str, float | int]:
    """Entropy score of softmax probabilities (K, X, Y, Z): {"entropy", "foreground_voxels", "max_foreground"}.

    The mean normalised entropy over the predicted foreground (voxels with foreground probability >= 0.5).
    Where the model predicts none, 1 - its highest foreground probability: the less it sees, the higher
    (a volume where the adapter finds nothing is one a label teaches most about), and a weak adapter
    that predicts nothing anywhere still gives an order instead of a tie.
    """
    import torch

    probs = torch.as_tensor(probabilities).float()
    classes = probs.shape[0]
    entropy = -(probs * torch.log(probs.clamp_min(1e-12))).sum(0) / math.log(max(classes, 2))
    foreground = foreground_probability(probs)
    mask = foreground >= 0.5
    count = int(mask.sum())
    highest = float(foreground.max())
    score = float(entropy[mask].mean()) if count else 1.0 - highest
    return {"entropy": score, "foreground_voxels": count, "max_foreground": highest}


def flip_disagreement(reference: Any, flipped: Sequence[Any]) -> float:
    """How much the class probabilities change under flips, in [0, 1]: per flip, the summed total-variation
    distance between the two voxelwise distributions over the summed foreground probability of both
    (0: the same prediction, 1: disjoint foregrounds), averaged over the flips."""
    import torch

    p = torch.as_tensor(reference).float()
    values = []
    for other in flipped:
        q = torch.as_tensor(other).float()
        distance = 0.5 * (p - q).abs().sum(0)
        mass = foreground_probability(p) + foreground_probability(q)
        values.append(float(distance.sum() / mass.sum().clamp_min(1e-12)))
    return sum(values) / len(values)


def volume_uncertainty(
    model,
    image_paths: Sequence[str | Path],
    spec,
    *,
    device,
    overlap: float,
    flips: bool,
    amp: bool = False,
    sw_batch_size: int = 2,
    flip_axes: Sequence[int] = (),
) -> dict[str, float | int]:
    """Uncertainty of one volume: its entropy score (of the probabilities averaged over the mirrorings
    along `flip_axes`, as `segment` predicts) and, with `flips`, the flip disagreement (of one plain pass
    against each mirrored one)."""
    import torch

    from tcurlora.data.transforms import inference_transforms, user_errors
    from tcurlora.infer import _sliding_window, mirrored_probabilities

    with user_errors():
        image = inference_transforms(spec)({"image": [str(p) for p in image_paths]})["image"].as_tensor()
    model = model.to(device).eval()
    if not flips:
        averaged = mirrored_probabilities(model, image, spec, device, overlap, sw_batch_size, amp, flip_axes)
        return score_probabilities(averaged)
    plain = _sliding_window(model, image, spec, device, overlap, sw_batch_size, amp)
    mirrored = []
    for axis in (1, 2, 3):  # the spatial axes of (C, X, Y, Z); probabilities are (K, X, Y, Z)
        flipped = _sliding_window(
            model, torch.flip(image, dims=[axis]), spec, device, overlap, sw_batch_size, amp
        )
        mirrored.append(torch.flip(flipped, dims=[axis]))
    axes = sorted(set(flip_axes))
    if len(axes) <= 1:  # the usual mirroring: its passes are among the four (summed as infer sums them)
        averaged = (plain + mirrored[axes[0]]) / 2 if axes else plain
    else:
        averaged = mirrored_probabilities(model, image, spec, device, overlap, sw_batch_size, amp, flip_axes)
    result = score_probabilities(averaged)
    result["flips"] = flip_disagreement(plain, mirrored)
    return result


def rank(entries: list[dict[str, Any]], score: str) -> list[dict[str, Any]]:
    """Entries sorted most uncertain first (ties: by input order), each with its 1-based `rank` and `score`."""
    ordered = sorted(enumerate(entries), key=lambda item: (-item[1][score], item[0]))
    return [
        {"rank": position, "score": entry[score], **entry}
        for position, (_, entry) in enumerate(ordered, start=1)
    ]


def run_suggest(job, sink, token) -> dict[str, Any]:
    """Score every input and rank them; returns {"outputs": {"ranking": [...]}, "metrics": {...}}."""
    from tcurlora.device import describe_device, resolve_device, resolve_threads
    from tcurlora.segmentation import check_input_volumes, load_segmentation_model, recorded_inference_options

    inputs = [
        [Path(p) for p in item] if isinstance(item, (list, tuple)) else [Path(item)] for item in job.inputs
    ]
    check_input_volumes(inputs)
    device = resolve_device(job.device, warn=lambda m: sink.log("warning", m))
    threads, why = resolve_threads(getattr(job, "threads", "auto"), device)
    model, spec, names, config = load_segmentation_model(job.base_model, job.adapter)
    flip_axes = recorded_inference_options(config, job)["flip_axes"]
    model.to(device)
    sink.started(command="suggest", device=describe_device(device), total=len(inputs), parameters=None)
    sink.log("info", f"torch CPU threads: {threads} ({why}); score: {job.score}")
    entries, started = [], time.monotonic()
    for index, channels in enumerate(inputs, start=1):
        token.raise_if_cancelled()
        values = volume_uncertainty(
            model,
            channels,
            spec,
            device=device,
            overlap=job.overlap,
            flips=job.score == "flips",
            amp=device.type == "cuda",
            flip_axes=flip_axes,
        )
        entries.append(
            {"volume": str(channels[0]) if len(channels) == 1 else [str(c) for c in channels], **values}
        )
        elapsed = time.monotonic() - started
        eta = elapsed / index * (len(inputs) - index)
        sink.progress(
            iteration=index,
            total=len(inputs),
            loss=None,
            val_dice=None,
            eta_s=eta,
            lr=None,
            message=f"scored {channels[0].name}: {job.score} {values[job.score]:.4f}",
        )
    ranking = rank(entries, job.score)
    if job.top is not None:
        ranking = ranking[: job.top]
    return {
        "outputs": {"ranking": ranking},
        "metrics": {
            "schema": RANKING_SCHEMA,
            "score": job.score,
            "label_names": names,
            "volumes": len(inputs),
            "seconds": time.monotonic() - started,
            "device": describe_device(device),
        },
    }
