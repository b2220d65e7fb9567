"""What an image's voxels and grid must be before tcurlora computes with them (in float32): real numbers,
finite, within float32's range, on a grid whose spacing a scan can have. Each problem is an InputError
naming the file, found before any work: otherwise numpy drops an imaginary part with a warning, and
values near 1e300 become infinities that segment turns into an all-background mask."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from tcurlora.data.io import count_nonfinite, read_image
from tcurlora.errors import InputError
from tcurlora.models.spec import MAX_SPACING_MM, MIN_SPACING_MM

FLOAT32_MAX = float(np.finfo(np.float32).max)
_COMPLEX = {sitk.sitkComplexFloat32, sitk.sitkComplexFloat64}


def check_image_values(path: str | Path, image: sitk.Image | None = None) -> sitk.Image:
    """The image at `path` (read unless given), or InputError: complex voxels, NaN or infinite voxels,
    values beyond float32, a spacing outside MIN_SPACING_MM..MAX_SPACING_MM."""
    path = Path(path)
    image = read_image(path) if image is None else image
    if image.GetPixelID() in _COMPLEX:
        raise InputError(
            f"image has complex voxels ({image.GetPixelIDTypeAsString()}); tcurlora needs real intensities "
            "(save the magnitude image)",
            path,
        )
    spacing = [float(s) for s in image.GetSpacing()[:3]]
    if not all(MIN_SPACING_MM <= s <= MAX_SPACING_MM for s in spacing):
        raise InputError(
            f"image spacing {spacing} mm is outside {MIN_SPACING_MM:g}..{MAX_SPACING_MM:g} mm (a wrong header?)",
            path,
        )
    count = count_nonfinite(path)
    if count:
        raise InputError(f"image has {count} NaN or infinite voxels", path)
    values = sitk.GetArrayViewFromImage(image)
    if values.dtype == np.float64 and values.size:
        largest = float(np.abs(values).max())
        if largest > FLOAT32_MAX:
            raise InputError(
                f"image has values up to {largest:.3g}, beyond the float32 range (±{FLOAT32_MAX:.3g}) tcurlora "
                "computes in (rescale the intensities)",
                path,
            )
    return image


def check_not_constant(path: str | Path, channel: sitk.Image) -> None:
    """InputError naming the file when every voxel of a training image has one value: nothing to learn."""
    values = sitk.GetArrayViewFromImage(channel)
    if values.size and float(values.max()) == float(values.min()):
        raise InputError(
            f"image is constant (every voxel is {float(values.min()):g}): there is nothing to learn from it "
            "(a blank or wrongly exported scan?)",
            path,
        )
