"""Sliding-window inference that returns the segmentation on the input's exact voxel grid.

The network sees the volume in RAS at spec.spacing; its class probabilities are resampled back
through the two affines onto the input grid (same size, spacing, origin, direction) and only then
turned into labels, so a bright structure is segmented on the same voxels where the user sees it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from monai.data import MetaTensor
from monai.inferers import sliding_window_inference
from monai.transforms import SpatialResample
from scipy import ndimage

from tcurlora.data.io import check_labelmap_output, reference_image, write_labelmap
from tcurlora.data.transforms import inference_transforms, ras_affine
from tcurlora.device import resolve_device
from tcurlora.errors import DeviceOutOfMemoryError
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


def keep_largest_components(labels: np.ndarray) -> np.ndarray:
    """Keep, for each class > 0, only its largest 26-connected component (the rest becomes 0)."""
    out = labels.copy()
    structure = np.ones((3, 3, 3), dtype=bool)
    for value in np.unique(labels):
        if value == 0:
            continue
        components, count = ndimage.label(labels == value, structure=structure)
        if count > 1:
            sizes = np.bincount(components.ravel())
            sizes[0] = 0
            out[(components > 0) & (components != int(np.argmax(sizes)))] = 0
    return out


def predict_volume(
    model: torch.nn.Module,
    image_paths: ImagePaths,
    spec: ModelSpec,
    *,
    device: str | torch.device = "cpu",
    overlap: float = 0.5,
    sw_batch_size: int = 2,
    amp: bool = False,
    largest_component: bool = False,
) -> tuple[np.ndarray, sitk.Image]:
    """Segment one volume; returns (labels as a z, y, x uint8/uint16 array on the input grid, input grid image).

    Sliding windows of spec.patch_size with gaussian blending; class probabilities are resampled
    (trilinear) from the network grid back onto the input grid, then argmax. With
    `largest_component`, each class keeps only its largest 26-connected component.
    """
    paths = [image_paths] if isinstance(image_paths, (str, Path)) else list(image_paths)
    reference = reference_image(paths)
    image = inference_transforms(spec)({"image": paths})["image"]
    torch_device = resolve_device(str(device))
    was_training = model.training
    model = model.to(torch_device).eval()
    try:
        probabilities = _sliding_window(
            model, image.as_tensor(), spec, torch_device, overlap, sw_batch_size, amp
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
    if largest_component:
        array_xyz = keep_largest_components(array_xyz)
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
