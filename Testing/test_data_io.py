"""Cases from real Decathlon folders; exact-geometry read/write of NIfTI, NRRD, MetaImage and .seg.nrrd."""

from __future__ import annotations

from pathlib import Path

import nrrd
import numpy as np
import pytest
import SimpleITK as sitk

from tcurlora.data.cases import Case, cases_from_decathlon, cases_from_list, dataset_label_names
from tcurlora.data.io import check_output_free, read_channels, read_image, read_label, write_labelmap
from tcurlora.errors import InputError, OutputExistsError

# A proper rotation (det +1) that is neither axis-aligned nor symmetric.
OBLIQUE = np.array(
    [[0.8660254, -0.5, 0.0], [0.35355339, 0.61237244, -0.70710678], [0.35355339, 0.61237244, 0.70710678]]
)


def hippocampus_volume(folder: Path, index: int = 0) -> tuple[sitk.Image, sitk.Image]:
    case = cases_from_decathlon(folder, num_cases=index + 1)[index]
    return sitk.ReadImage(str(case.images[0])), sitk.ReadImage(str(case.label))


def reposition(image: sitk.Image) -> sitk.Image:
    """The same voxels with an oblique direction, a non-zero origin and anisotropic spacing."""
    moved = sitk.Image(image)
    moved.SetDirection(tuple(OBLIQUE.ravel()))
    moved.SetOrigin((12.25, -40.5, 7.125))
    moved.SetSpacing((0.8, 1.3, 1.7))
    return moved


def assert_same_grid(a: sitk.Image, b: sitk.Image, tolerance: float = 1e-6) -> None:
    assert a.GetSize() == b.GetSize()
    np.testing.assert_allclose(a.GetSpacing(), b.GetSpacing(), rtol=0, atol=tolerance)
    np.testing.assert_allclose(a.GetOrigin(), b.GetOrigin(), rtol=0, atol=tolerance * 10)
    np.testing.assert_allclose(a.GetDirection(), b.GetDirection(), rtol=0, atol=tolerance)


def test_hippocampus_cases_resolve_to_existing_files(hippocampus_dir):
    cases = cases_from_decathlon(hippocampus_dir, num_cases=3)
    assert [case.id for case in cases] == ["hippocampus_001", "hippocampus_003", "hippocampus_006"]
    for case in cases:
        assert len(case.images) == 1 and case.images[0].is_file() and case.images[0].is_absolute()
        assert case.label is not None and case.label.is_file()
    assert dataset_label_names(hippocampus_dir) == ["Anterior", "Posterior"]
    chosen = cases_from_decathlon(hippocampus_dir, case_ids=["hippocampus_006", "hippocampus_001"])
    assert [case.id for case in chosen] == ["hippocampus_006", "hippocampus_001"]
    with pytest.raises(InputError, match="case ids not found: nope"):
        cases_from_decathlon(hippocampus_dir, case_ids=["nope"])


def test_brats_cases_have_two_channels(brats_dir):
    cases = cases_from_decathlon(brats_dir)
    assert len(cases) == 6
    for case in cases:
        assert len(case.images) == 2 and all(path.is_file() for path in case.images)
        assert case.images[0].name.endswith("_0000.nii.gz") and case.images[1].name.endswith("_0001.nii.gz")
    channels = read_channels(cases[0].images)
    assert len(channels) == 2 and channels[0].GetSize() == channels[1].GetSize() == (240, 240, 155)
    assert dataset_label_names(brats_dir)[0] == "necrosis" and len(dataset_label_names(brats_dir)) == 4


def test_cases_from_list_resolves_relative_paths(tmp_path, hippocampus_dir):
    case = cases_from_decathlon(hippocampus_dir, num_cases=1)[0]
    items = [{"id": "a", "image": str(case.images[0]), "label": str(case.label)}, {"image": "x/b.nrrd"}]
    cases = cases_from_list(items, tmp_path)
    assert cases[0] == Case("a", [case.images[0]], case.label)
    assert cases[1].id == "b" and cases[1].images == [tmp_path / "x" / "b.nrrd"] and cases[1].label is None
    with pytest.raises(InputError, match="case list is empty"):
        cases_from_list([], tmp_path)
    with pytest.raises(InputError, match="dataset.json not found"):
        cases_from_decathlon(tmp_path)


def test_4d_file_splits_into_channels(tmp_path, hippocampus_dir):
    image, _ = hippocampus_volume(hippocampus_dir)
    image = reposition(image)
    joined = sitk.JoinSeries([image, sitk.InvertIntensity(image, 255)])
    path = tmp_path / "two.nii.gz"
    sitk.WriteImage(joined, str(path))
    channels = read_channels(path)
    assert len(channels) == 2
    assert_same_grid(channels[0], image)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(channels[0]), sitk.GetArrayFromImage(image))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(channels[1]), 255 - sitk.GetArrayFromImage(image))


@pytest.mark.parametrize("extension", [".nii.gz", ".nii", ".nrrd", ".mha"])
def test_labelmap_round_trip_keeps_geometry(tmp_path, hippocampus_dir, extension):
    image, label = hippocampus_volume(hippocampus_dir)
    image, label = reposition(image), reposition(label)
    image_path = tmp_path / f"image{extension}"
    sitk.WriteImage(image, str(image_path))
    reference = read_image(image_path)
    assert_same_grid(reference, image)
    out = write_labelmap(sitk.GetArrayFromImage(label), reference, tmp_path / f"seg{extension}")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([image_path.name, out.name])  # no temp left
    written, names = read_label(out)
    assert names == {}
    # Bit-exact up to the file format's decimal text (NRRD stores spacing x direction): 1e-12.
    assert_same_grid(written, reference, tolerance=1e-12)
    assert written.GetPixelID() == sitk.sitkUInt8
    np.testing.assert_array_equal(sitk.GetArrayFromImage(written), sitk.GetArrayFromImage(label))


def test_seg_nrrd_single_layer_round_trip(tmp_path, hippocampus_dir):
    image, label = hippocampus_volume(hippocampus_dir)
    reference = reposition(image)
    path = write_labelmap(
        sitk.GetArrayFromImage(label),
        reference,
        tmp_path / "case.seg.nrrd",
        names={1: "Anterior", 2: "Posterior"},
        colors={1: (1.0, 0.0, 0.0), 2: (0.0, 0.5, 1.0)},
    )
    header = nrrd.read_header(str(path))
    assert header["Segment0_Name"] == "Anterior" and header["Segment1_LabelValue"] == "2"
    assert header["Segment1_Layer"] == "0" and header["Segment1_Color"] == "0 0.5 1"
    written, names = read_label(path)
    assert names == {1: "Anterior", 2: "Posterior"}
    assert_same_grid(written, reference)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(written), sitk.GetArrayFromImage(label))


def test_seg_nrrd_two_layers_are_flattened(tmp_path):
    layers = np.zeros((2, 10, 12, 14), np.uint8)  # (layer, i, j, k) as Slicer writes overlapping segments
    layers[0, 1:4, 1:4, 1:4] = 1
    layers[0, 8, 9, 10] = 3
    layers[1, 5:9, 5:9, 5:9] = 1
    header = {
        "type": "uint8",
        "dimension": 4,
        "space": "left-posterior-superior",
        "kinds": ["list", "domain", "domain", "domain"],
        "space directions": np.array([[np.nan] * 3, [0, 1.5, 0], [1.5, 0, 0], [0, 0, 2.0]]),
        "space origin": np.array([10.0, 20.0, 30.0]),
        "encoding": "gzip",
    }
    for number, (name, value, layer) in enumerate([("bone", 1, 0), ("tumour", 1, 1), ("dot", 3, 0)]):
        header[f"Segment{number}_Name"] = name
        header[f"Segment{number}_LabelValue"] = str(value)
        header[f"Segment{number}_Layer"] = str(layer)
    path = tmp_path / "layers.seg.nrrd"
    nrrd.write(str(path), layers, header)
    label, names = read_label(path)
    assert names == {1: "bone", 2: "tumour", 3: "dot"}
    assert label.GetSize() == (10, 12, 14)
    assert label.GetSpacing() == (1.5, 1.5, 2.0) and label.GetOrigin() == (10.0, 20.0, 30.0)
    assert label.GetDirection() == (0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0)
    flat = np.transpose(sitk.GetArrayFromImage(label), (2, 1, 0))  # back to (i, j, k)
    assert flat[2, 2, 2] == 1 and flat[6, 6, 6] == 2 and flat[8, 9, 10] == 3 and flat[0, 0, 0] == 0
    assert np.count_nonzero(flat == 1) == 27 and np.count_nonzero(flat == 2) == 64


def test_missing_corrupt_and_unsupported_files(tmp_path, hippocampus_dir):
    with pytest.raises(InputError, match="image file not found") as error:
        read_image(tmp_path / "absent.nii.gz")
    assert "absent.nii.gz" in str(error.value)
    source = cases_from_decathlon(hippocampus_dir, num_cases=1)[0].images[0].read_bytes()
    truncated = tmp_path / "cut.nii.gz"
    truncated.write_bytes(source[: len(source) // 2])
    with pytest.raises(InputError, match="truncated") as error:
        read_image(truncated)
    assert "cut.nii.gz" in str(error.value)
    junk = tmp_path / "junk.nrrd"
    junk.write_text("not an image")
    with pytest.raises(InputError, match="cannot read label .*corrupt") as error:
        read_label(junk)
    assert "junk.nrrd" in str(error.value)
    with pytest.raises(InputError, match="unsupported file type '.png'") as error:
        read_image(tmp_path / "photo.png")
    assert "photo.png" in str(error.value)


def test_existing_output_is_kept_without_force(tmp_path, hippocampus_dir):
    image, label = hippocampus_volume(hippocampus_dir)
    target = tmp_path / "seg.nii.gz"
    target.write_bytes(b"keep me")
    with pytest.raises(OutputExistsError, match="output exists") as error:
        write_labelmap(sitk.GetArrayFromImage(label), image, target)
    assert "seg.nii.gz" in str(error.value) and error.value.exit_code == 3
    assert target.read_bytes() == b"keep me" and len(list(tmp_path.iterdir())) == 1
    with pytest.raises(OutputExistsError):
        check_output_free(target, force=False)
    # --force replaces only a segmentation tcurlora wrote: the user's file is refused and kept.
    with pytest.raises(OutputExistsError, match="not a segmentation written by tcurlora"):
        write_labelmap(sitk.GetArrayFromImage(label), image, target, force=True)
    assert target.read_bytes() == b"keep me"
    ours = write_labelmap(np.zeros_like(sitk.GetArrayFromImage(label)), image, tmp_path / "ours.nii.gz")
    write_labelmap(sitk.GetArrayFromImage(label), image, ours, force=True)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(read_label(ours)[0]), sitk.GetArrayFromImage(label))
    with pytest.raises(InputError, match="detached-header"):
        write_labelmap(sitk.GetArrayFromImage(label), image, tmp_path / "seg.nhdr")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ours.nii.gz", "seg.nii.gz"]
