"""The working spacing of a fine-tune: "auto" follows the cases' RAS spacing within bounds of the base's."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from tcurlora.data.spacing import auto_spacing, ras_spacing, resolve_working_spacing
from tcurlora.models.spec import ModelSpec


def write_volume(path, spacing, direction=None) -> str:
    image = sitk.GetImageFromArray(np.zeros((4, 5, 6), dtype=np.uint8))
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


def test_auto_spacing_clamps_to_the_base():
    base = (1.5, 1.5, 1.5)
    assert auto_spacing((1.0, 1.0, 1.0), base) == (1.0, 1.0, 1.0)  # hippocampus: native 1 mm
    assert auto_spacing((0.625, 0.625, 0.625), base) == (1.0, 1.0, 1.0)  # left atrium: never below 2/3
    assert auto_spacing((1.2, 1.2, 10.0), base) == (1.2, 1.2, 1.5)  # thick slices: never above the base


def test_resolve_working_spacing(tmp_path):
    paths = [write_volume(tmp_path / f"{i}.nii.gz", (s, s, s)) for i, s in enumerate((1.1, 1.2, 1.3))]
    base = (1.5, 1.5, 1.5)
    assert resolve_working_spacing(None, paths, base) == (1.2, 1.2, 1.2)  # the median
    assert resolve_working_spacing("auto", paths, base) == (1.2, 1.2, 1.2)
    assert resolve_working_spacing("base", paths, base) == base
    assert resolve_working_spacing([0.5, 0.5, 2.0], paths, base) == (0.5, 0.5, 2.0)


def test_spec_at_spacing():
    spec = ModelSpec(name="m", spacing=(1.5, 1.5, 1.5))
    assert spec.at_spacing(None) is spec
    assert spec.at_spacing([1, 1, 1]).spacing == (1.0, 1.0, 1.0) and spec.spacing == (1.5, 1.5, 1.5)
