"""Sliding-window inference that returns the segmentation on the input's exact voxel grid.

The network sees the volume in RAS at spec.spacing; its class probabilities are resampled back
through the two affines onto the input grid (same size, spacing, origin, direction) and only then
turned into labels, so a bright structure is segmented on the same voxels where the user sees it.
"""

from __future__ import annotations

import itertools
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch
from monai.data import MetaTensor
from monai.inferers import sliding_window_inference
from monai.transforms import SpatialResample
from scipy import ndimage

from tcurlora.data.components import CONNECTIVITY_26
from tcurlora.data.io import check_labelmap_output, reference_image, write_labelmap
from tcurlora.data.transforms import TRAINING_FLIP_AXES, inference_transforms, ras_affine
from tcurlora.device import resolve_device
from tcurlora.errors import ConfigError, DeviceOutOfMemoryError
from tcurlora.models.spec import ModelSpec
from tcurlora.training.step import autocast_context

ImagePaths = str | Path | Sequence[str | Path]
# What to do when segmenting runs out of memory (segment has no patch or batch size to lower).
SEGMENT_OOM_ADVICE = {
    "cpu": "close other programs, or segment on a machine with more memory",
    "accelerator": 'segment on the CPU (--device cpu, or "device": "cpu"), or close other programs using the GPU',
}


def _sliding_window(
    model: torch.nn.Module,
    image: torch.Tensor,
    spec: ModelSpec,
    device: torch.device,
    overlap: float,
    sw_batch_size: int,
    amp: bool,
) -> torch.Tensor:
    """Softmax probabilities (K, X, Y, Z) on the CPU; on CUDA OOM retry once with less memory."""
    attempts = [(sw_batch_size, device)]
    if device.type == "cuda":
        attempts.append((1, torch.device("cpu")))  # one window at a time, stitched on the CPU
    for index, (batch, stitch_device) in enumerate(attempts):
        try:
            with torch.no_grad(), autocast_context(device, amp and device.type == "cuda"):  # as training
                logits = sliding_window_inference(
                    image[None].to(device),
                    roi_size=tuple(int(s) for s in spec.patch_size),
                    sw_batch_size=batch,
                    predictor=model,
                    overlap=overlap,
                    mode="gaussian",
                    sw_device=device,
                    device=stitch_device,
                )
            return torch.softmax(torch.as_tensor(logits).float(), dim=1)[0].cpu()
        except torch.cuda.OutOfMemoryError as error:
            torch.cuda.empty_cache()
            if index == len(attempts) - 1:
                raise DeviceOutOfMemoryError(
                    f"{device} ran out of memory during sliding-window inference with patch {spec.patch_size}, "
                    "even one window at a time; run on the CPU (device cpu) or close other programs using it"
                ) from error
    raise AssertionError("unreachable")


def keep_largest_components(labels: np.ndarray, classes: Collection[int] | None = None) -> np.ndarray:
    """Keep, for each class > 0 (or each of `classes`), only its largest 26-connected component (the
    rest becomes 0)."""
    out = labels.copy()
    for value in np.unique(labels):
        if value == 0 or (classes is not None and int(value) not in classes):
            continue
        components, count = ndimage.label(labels == value, structure=CONNECTIVITY_26)
        if count > 1:
            sizes = np.bincount(components.ravel())
            sizes[0] = 0
            out[(components > 0) & (components != int(np.argmax(sizes)))] = 0
    return out


def flip_combinations(flip_axes: Sequence[int]) -> list[tuple[int, ...]]:
    """Every subset of the spatial `flip_axes`, the empty one (the original) first."""
    axes = sorted({int(a) for a in flip_axes})
    return [combo for r in range(len(axes) + 1) for combo in itertools.combinations(axes, r)]


def mirrored_probabilities(
    model: torch.nn.Module,
    image: torch.Tensor,
    spec: ModelSpec,
    device: torch.device,
    overlap: float,
    sw_batch_size: int,
    amp: bool,
    flip_axes: Sequence[int] = (),
) -> torch.Tensor:
    """Softmax probabilities (K, X, Y, Z) averaged over the original and each flip combination of the
    spatial `flip_axes` (mirror test-time augmentation), each flipped back; () is one plain pass.

    Only the flips the network was trained with help: others are inputs it has never seen.
    """
    total: torch.Tensor | None = None
    combos = flip_combinations(flip_axes)
    for combo in combos:
        dims = [axis + 1 for axis in combo]  # spatial axis a is dim a + 1 of (C, X, Y, Z) and (K, X, Y, Z)
        source = torch.flip(image, dims=dims) if dims else image
        probabilities = _sliding_window(model, source, spec, device, overlap, sw_batch_size, amp)
        if dims:
            probabilities = torch.flip(probabilities, dims=dims)
        total = probabilities if total is None else total + probabilities
    assert total is not None
    return total / len(combos)


def inference_options(
    config: Mapping[str, Any] | None, *, tta: bool = True, largest_component: bool | str = "auto"
) -> dict[str, Any]:
    """predict_volume's `flip_axes` and `largest_component` for an adapter record (None: a base model
    alone, about whose training nothing is known: no flips, no cleanup under "auto").

    Flips: the axes the adapter was trained flipping (`training.flip_axes`; older adapters: the training
    default). Components: True / False for every class / none; "auto" for the classes recorded as one
    piece in every training label (`single_piece_classes`; older adapters: none).
    """
    flip_axes: tuple[int, ...] = ()
    classes: list[int] = []
    if config is not None:
        recorded = (config.get("training") or {}).get("flip_axes", list(TRAINING_FLIP_AXES))
        if not (isinstance(recorded, list) and all(isinstance(a, int) and 0 <= a <= 2 for a in recorded)):
            raise ConfigError(f"training.flip_axes must be a list of spatial axes 0..2, got {recorded!r}")
        flip_axes = tuple(recorded)
        pieces = config.get("single_piece_classes", [])
        if not (isinstance(pieces, list) and all(isinstance(c, int) and c > 0 for c in pieces)):
            raise ConfigError(f"single_piece_classes must be a list of class indices >= 1, got {pieces!r}")
        classes = list(pieces)
    if largest_component == "auto":
        chosen: bool | list[int] = classes
    else:
        chosen = bool(largest_component)
    return {"flip_axes": flip_axes if tta else (), "largest_component": chosen}


def predict_volume(
    model: torch.nn.Module,
    image_paths: ImagePaths,
    spec: ModelSpec,
    *,
    device: str | torch.device = "cpu",
    overlap: float = 0.5,
    sw_batch_size: int = 2,
    amp: bool = False,
    largest_component: bool | Collection[int] = False,
    flip_axes: Sequence[int] = (),
) -> tuple[np.ndarray, sitk.Image]:
    """Segment one volume; returns (labels as a z, y, x uint8/uint16 array on the input grid, input grid image).

    Sliding windows of spec.patch_size with gaussian blending, averaged over the mirrorings along
    `flip_axes` (mirrored_probabilities); class probabilities are resampled (trilinear) from the
    network grid back onto the input grid, then argmax. `largest_component`: True keeps only the
    largest 26-connected component of every class, a collection of class indices of those classes.
    (`inference_options` gives both as `segment` uses them.)
    """
    paths = [image_paths] if isinstance(image_paths, (str, Path)) else list(image_paths)
    reference = reference_image(paths)
    image = inference_transforms(spec)({"image": paths})["image"]
    torch_device = resolve_device(str(device))
    was_training = model.training
    model = model.to(torch_device).eval()
    try:
        probabilities = mirrored_probabilities(
            model, image.as_tensor(), spec, torch_device, overlap, sw_batch_size, amp, flip_axes
        )
    finally:
        model.train(was_training)
    on_network_grid = MetaTensor(probabilities, affine=image.affine.clone())
    target_affine = torch.from_numpy(ras_affine(reference))
    target_size = tuple(int(s) for s in reference.GetSize())
    on_input_grid = SpatialResample(mode="bilinear", padding_mode="border", dtype=torch.float32)(
        on_network_grid, dst_affine=target_affine, spatial_size=target_size
    )
    labels = torch.argmax(torch.as_tensor(on_input_grid), dim=0, keepdim=True)
    num_classes = probabilities.shape[0]
    dtype = np.uint8 if num_classes <= 256 else np.uint16
    array_xyz = labels[0].cpu().numpy().astype(dtype)
    if largest_component is True:
        array_xyz = keep_largest_components(array_xyz)
    elif largest_component:
        array_xyz = keep_largest_components(array_xyz, set(largest_component))
    array_zyx = np.ascontiguousarray(np.transpose(array_xyz, (2, 1, 0)))
    if array_zyx.shape != tuple(reversed(target_size)):
        raise AssertionError(f"segmentation grid {array_zyx.shape} differs from the input grid {target_size}")
    return array_zyx, reference


def segment_file(
    model: torch.nn.Module,
    image_paths: ImagePaths,
    output_path: str | Path,
    spec: ModelSpec,
    *,
    force: bool = False,
    names: Mapping[int, str] | None = None,
    colors: Mapping[int, Sequence[float]] | None = None,
    **kwargs: object,
) -> Path:
    """Segment one volume and write the labelmap on its grid (atomic; OutputExistsError without force).

    `names`/`colors` label the segments when writing a Slicer .seg.nrrd; other keywords go to
    predict_volume.
    """
    check_labelmap_output(output_path, force)
    try:
        labels, reference = predict_volume(model, image_paths, spec, **kwargs)  # type: ignore[arg-type]
    except Exception as error:
        from tcurlora.jobs.runner import as_user_error

        if not isinstance(as_user_error(error), DeviceOutOfMemoryError):
            raise
        first = image_paths if isinstance(image_paths, (str, Path)) else image_paths[0]
        where = "cpu" if str(kwargs.get("device", "cpu")) == "cpu" else "accelerator"
        raise DeviceOutOfMemoryError(  # segment has no patch or batch size to lower: no train-time advice
            f"out of memory while segmenting this volume on {kwargs.get('device', 'cpu')}: {SEGMENT_OOM_ADVICE[where]}",
            first,
        ) from error
    return write_labelmap(labels, reference, output_path, force=force, names=names, colors=colors)
