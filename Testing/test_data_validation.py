"""validate_case on real hippocampus volumes made wrong in one way each: the error names file and problem."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from tcurlora.data.cases import Case, cases_from_decathlon
from tcurlora.data.geometry import geometry_difference
from tcurlora.data.validate import check_output_free, validate_case
from tcurlora.errors import InputError, OutputExistsError


@pytest.fixture
def real_case(hippocampus_dir) -> Case:
    return cases_from_decathlon(hippocampus_dir, num_cases=1)[0]


def write(image: sitk.Image, path: Path) -> Path:
    sitk.WriteImage(image, str(path))
    return path


def label_from(real_case: Case, array: np.ndarray, path: Path, pixel=None) -> Path:
    reference = sitk.ReadImage(str(real_case.label))
    image = sitk.GetImageFromArray(array if pixel is None else array.astype(pixel))
    image.CopyInformation(reference)
    return write(image, path)


def label_array(real_case: Case) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(real_case.label)))


def expect_error(case: Case, num_classes: int, path: Path, problem: str) -> None:
    with pytest.raises(InputError, match=problem) as error:
        validate_case(case, num_classes)
    assert error.value.path == str(path)
    assert path.name in str(error.value)


def test_real_case_is_valid(real_case):
    validate_case(real_case, 3)  # raises nothing
    mapped = Case(real_case.id, real_case.images, real_case.label, label_map={2: 1})
    validate_case(mapped, 2)  # value 1 -> background, 2 -> class 1


def test_label_with_other_geometry(tmp_path, real_case):
    for what, change in [
        ("spacing", lambda im: im.SetSpacing((1.0, 1.0, 1.01))),
        ("origin", lambda im: im.SetOrigin((5.0, -1.0, 1.0))),
        ("direction", lambda im: im.SetDirection((1.0, 0, 0, 0, -1.0, 0, 0, 0, 1.0))),
    ]:
        moved = sitk.ReadImage(str(real_case.label))
        change(moved)
        label = write(moved, tmp_path / f"label_{what}.nii.gz")
        case = Case(real_case.id, real_case.images, label)
        expect_error(case, 3, label, f"label geometry differs from image hippocampus_001.nii.gz: {what}")
    cropped = write(sitk.ReadImage(str(real_case.label))[:, :, :-1], tmp_path / "label_size.nii.gz")
    expect_error(
        Case("c", real_case.images, cropped),
        3,
        cropped,
        r"size \(35, 51, 35\) in the image vs \(35, 51, 34\) in the label",
    )


def test_tolerance_is_relative_1e_4():
    a = sitk.Image(8, 8, 8, sitk.sitkUInt8)
    b = sitk.Image(a)
    b.SetSpacing((1.0 + 5e-5, 1.0, 1.0))
    assert geometry_difference(a, b) is None
    b.SetSpacing((1.0 + 5e-4, 1.0, 1.0))
    assert geometry_difference(a, b).startswith("spacing")


def test_channels_with_other_geometry(tmp_path, real_case):
    second = sitk.ReadImage(str(real_case.images[0]))
    second.SetOrigin((0.0, 0.0, 0.0))
    path = write(second, tmp_path / "t2.nii.gz")
    case = Case("c", [real_case.images[0], path], real_case.label)
    expect_error(case, 3, path, "channels have different geometry than hippocampus_001.nii.gz: origin")


def test_non_integer_label(tmp_path, real_case):
    array = label_array(real_case).astype(np.float32)
    array[array == 2] = 1.5
    path = label_from(real_case, array, tmp_path / "float.nii.gz")
    expect_error(Case("c", real_case.images, path), 3, path, r"non-integer values \(e.g. 1.5\)")


def test_label_value_out_of_range(tmp_path, real_case):
    array = label_array(real_case)
    array[0, 0, 0] = 7
    path = label_from(real_case, array, tmp_path / "seven.nrrd")
    expect_error(Case("c", real_case.images, path), 3, path, r"label values \[7\] out of range 0..2")


def test_empty_label(tmp_path, real_case):
    path = label_from(real_case, np.zeros_like(label_array(real_case)), tmp_path / "empty.nii.gz")
    expect_error(Case("c", real_case.images, path), 3, path, "label is empty: all background")
    mapped = Case("c", real_case.images, real_case.label, label_map={5: 1})
    expect_error(mapped, 2, real_case.label, r"after its label_map \{5: 1\} the label is all background")


def test_nan_voxel(tmp_path, real_case):
    image = sitk.Cast(sitk.ReadImage(str(real_case.images[0])), sitk.sitkFloat32)
    array = sitk.GetArrayFromImage(image)
    array[10, 20, 15] = np.nan
    path = label_from(real_case, array, tmp_path / "nan.nii.gz")
    expect_error(Case("c", [path], real_case.label), 3, path, "image has 1 NaN or infinite voxels")


def test_missing_and_corrupt_inputs(tmp_path, real_case):
    missing = tmp_path / "gone.nii.gz"
    expect_error(Case("c", [missing], real_case.label), 3, missing, "image file not found")
    corrupt = tmp_path / "cut.nii.gz"
    data = real_case.label.read_bytes()
    corrupt.write_bytes(data[: len(data) // 2])
    expect_error(Case("c", real_case.images, corrupt), 3, corrupt, "cannot read label .*truncated")


def test_output_exists(tmp_path):
    path = tmp_path / "out.nii.gz"
    assert check_output_free(path, force=False) == path
    path.write_bytes(b"x")
    with pytest.raises(OutputExistsError, match="out.nii.gz: output exists"):
        check_output_free(path, force=False)
    assert check_output_free(path, force=True) == path
