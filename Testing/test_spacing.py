"""The working spacing of a fine-tune: "auto" follows the cases' RAS spacing within bounds of the base's."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from tcurlora.data.cases import Case
from tcurlora.data.spacing import auto_spacing, label_extent_mm, ras_spacing, resolve_working_spacing
from tcurlora.models.spec import ModelSpec


def write_volume(path, spacing, direction=None, array=None) -> str:
    image = sitk.GetImageFromArray(np.zeros((4, 5, 6), dtype=np.uint8) if array is None else array)
    image.SetSpacing(spacing)
    if direction is not None:
        image.SetDirection(direction)
    sitk.WriteImage(image, str(path))
    return str(path)


def test_ras_spacing_follows_the_direction_matrix(tmp_path):
    plain = write_volume(tmp_path / "a.nii.gz", (0.5, 0.8, 3.0))
    assert ras_spacing(plain) == pytest.approx((0.5, 0.8, 3.0))
    # ITK's direction is row-major (world axis x index axis): index axes (i, j, k) run along (A, S, R)
    permuted = write_volume(tmp_path / "b.nii.gz", (0.5, 0.8, 3.0), (0, 0, 1, 1, 0, 0, 0, 1, 0))
    assert ras_spacing(permuted) == pytest.approx((3.0, 0.5, 0.8))


def test_auto_spacing_clamps_to_the_base_and_fits_the_structure():
    base, patch = (1.5, 1.5, 1.5), (48, 48, 48)
    assert auto_spacing((1.0, 1.0, 1.0), base, 37.0, patch) == (1.0, 1.0, 1.0)  # hippocampus: 37 mm at 1 mm
    assert auto_spacing((0.625,) * 3, base, 40.0, patch) == (1.0, 1.0, 1.0)  # never below 2/3 of the base
    assert auto_spacing((0.625,) * 3, base, 96.0, patch) == (1.5, 1.5, 1.5)  # left atrium: 96 mm must fit
    assert auto_spacing((0.625,) * 3, base, 60.0, patch) == (1.25, 1.25, 1.25)  # in between
    assert auto_spacing((1.2, 1.2, 10.0), base) == (1.2, 1.2, 1.5)  # thick slices: never above the base


def test_label_extent(tmp_path):
    array = np.zeros((10, 20, 30), dtype=np.uint8)
    array[2:5, 3:13, 4:6] = 2  # z 3 slices, y 10 rows, x 2 columns
    path = write_volume(tmp_path / "l.nii.gz", (0.5, 1.0, 2.0), array=array)
    assert label_extent_mm(path) == pytest.approx(max(2 * 0.5, 10 * 1.0, 3 * 2.0))
    assert label_extent_mm(write_volume(tmp_path / "e.nii.gz", (1, 1, 1))) == 0.0


def test_resolve_working_spacing(tmp_path):
    array = np.zeros((4, 5, 6), dtype=np.uint8)
    array[1, 1, 1:5] = 1  # 4 voxels along x
    cases = []
    for i, s in enumerate((1.1, 1.2, 1.3)):
        image = write_volume(tmp_path / f"{i}.nii.gz", (s, s, s))
        cases.append(
            Case(
                id=str(i),
                images=[image],
                label=write_volume(tmp_path / f"l{i}.nii.gz", (s, s, s), array=array),
            )
        )
    base = (1.5, 1.5, 1.5)
    assert resolve_working_spacing(None, cases, base, (48, 48, 48)) == (1.2, 1.2, 1.2)  # the median
    assert resolve_working_spacing("auto", cases, base, (48, 48, 48)) == (1.2, 1.2, 1.2)
    assert resolve_working_spacing("auto", cases, base, (3, 3, 3)) == (1.5, 1.5, 1.5)  # 4.8 mm in 3 voxels
    assert resolve_working_spacing("base", cases, base, (48, 48, 48)) == base
    assert resolve_working_spacing([0.5, 0.5, 2.0], cases, base, (48, 48, 48)) == (0.5, 0.5, 2.0)


def test_spec_at_spacing():
    spec = ModelSpec(name="m", spacing=(1.5, 1.5, 1.5))
    assert spec.at_spacing(None) is spec
    assert spec.at_spacing([1, 1, 1]).spacing == (1.0, 1.0, 1.0) and spec.spacing == (1.5, 1.5, 1.5)
