"""Sliding-window inference lands on the input's exact grid, whatever its direction, origin and spacing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from monai.networks.nets import UNETR
from scipy import ndimage

from tcurlora.data.cases import cases_from_decathlon
from tcurlora.data.io import read_image, read_label
from tcurlora.errors import InputError, OutputExistsError
from tcurlora.infer import predict_volume, segment_file
from tcurlora.models.spec import IntensitySpec, ModelSpec

OBLIQUE = np.array(
    [[0.8660254, -0.5, 0.0], [0.35355339, 0.61237244, -0.70710678], [0.35355339, 0.61237244, 0.70710678]]
)
PERMUTED = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0, -1.0, 0.0, 0.0)  # axes swapped and flipped, det +1
THRESHOLD = 100.5  # grey value; no voxel sits exactly on it (the images are integer-valued)
RANGE_SPEC = ModelSpec(
    name="threshold",
    spacing=(1.0, 1.0, 1.0),
    patch_size=(16, 16, 16),
    intensity=IntensitySpec(kind="range", a_min=0.0, a_max=200.0),
)


def threshold_model(channels: int = 1) -> torch.nn.Module:
    """A real 1x1x1 Conv3d whose class 1 wins exactly where the (first) channel is above THRESHOLD."""
    conv = torch.nn.Conv3d(channels, 2, kernel_size=1)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, 0], conv.weight[1, 0] = -50.0, 50.0
        cut = THRESHOLD / 200.0
        conv.bias.copy_(torch.tensor([50.0 * cut, -50.0 * cut]))
    return conv


def small_unetr() -> torch.nn.Module:
    torch.manual_seed(0)
    return UNETR(
        in_channels=1, out_channels=3, img_size=32, feature_size=8, hidden_size=48, mlp_dim=96, num_heads=4
    )


@pytest.fixture
def hippo_image(hippocampus_dir) -> Path:
    return cases_from_decathlon(hippocampus_dir, num_cases=1)[0].images[0]


def moved_copy(source: Path, target: Path, direction, origin, spacing=None) -> Path:
    image = sitk.ReadImage(str(source))
    image.SetDirection(tuple(float(v) for v in np.ravel(direction)))
    image.SetOrigin(origin)
    if spacing is not None:
        image.SetSpacing(spacing)
    sitk.WriteImage(image, str(target))
    return target


def assert_on_input_grid(labels: np.ndarray, reference: sitk.Image, path: Path) -> None:
    original = read_image(path)
    assert labels.shape == tuple(reversed(original.GetSize()))
    assert reference.GetSize() == original.GetSize()
    assert reference.GetSpacing() == original.GetSpacing()
    assert reference.GetOrigin() == original.GetOrigin()
    assert reference.GetDirection() == original.GetDirection()


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))


@pytest.mark.slow
def test_unetr_on_real_and_repositioned_volume(tmp_path, hippo_image):
    spec = ModelSpec(name="unetr", patch_size=(32, 32, 32), labels={1: "Anterior", 2: "Posterior"})
    model = small_unetr()
    oblique = moved_copy(
        hippo_image, tmp_path / "oblique.nii.gz", OBLIQUE, (12.25, -40.5, 7.125), (0.8, 1.3, 1.7)
    )
    for path in (hippo_image, oblique):
        labels, reference = predict_volume(model, path, spec, overlap=0.25)
        assert labels.dtype == np.uint8 and labels.max() <= 2
        assert_on_input_grid(labels, reference, path)
    out = segment_file(model, oblique, tmp_path / "out" / "seg.nii.gz", spec, overlap=0.25)
    written, _ = read_label(out)
    original = read_image(oblique)
    assert written.GetSize() == original.GetSize()
    np.testing.assert_allclose(written.GetSpacing(), original.GetSpacing(), atol=1e-6)
    np.testing.assert_allclose(written.GetOrigin(), original.GetOrigin(), atol=1e-5)
    np.testing.assert_allclose(written.GetDirection(), original.GetDirection(), atol=1e-6)


def test_axis_permuted_grid_gives_the_same_voxels(tmp_path, hippo_image):
    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(hippo_image))) > THRESHOLD
    assert 1000 < np.count_nonzero(truth) < truth.size // 4
    moved = moved_copy(hippo_image, tmp_path / "permuted.nrrd", PERMUTED, (-30.5, 12.0, 88.25))
    for path in (hippo_image, moved):
        labels, reference = predict_volume(threshold_model(), path, RANGE_SPEC)
        assert_on_input_grid(labels, reference, path)
        np.testing.assert_array_equal(labels.astype(bool), truth)


def test_oblique_anisotropic_grid_lands_on_the_bright_voxels(tmp_path, hippo_image):
    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(hippo_image))) > THRESHOLD
    moved = moved_copy(hippo_image, tmp_path / "oblique.mha", OBLIQUE, (12.25, -40.5, 7.125), (0.8, 1.3, 1.7))
    labels, reference = predict_volume(threshold_model(), moved, RANGE_SPEC)
    assert_on_input_grid(labels, reference, moved)
    found = labels.astype(bool)
    score = dice(found, truth)
    # Two trilinear resamplings (to 1 mm and back) blur the edges a little, nothing more:
    assert score > 0.78
    # and any one-voxel shift or a flip of the result fits clearly worse (orientation is right).
    for axis in range(3):
        assert dice(np.flip(found, axis), truth) < 0.3
        for step in (-1, 1):
            assert dice(np.roll(found, step, axis=axis), truth) < score - 0.1


def test_largest_component_keeps_one_blob_per_class(hippo_image):
    plain, _ = predict_volume(threshold_model(), hippo_image, RANGE_SPEC)
    cleaned, _ = predict_volume(threshold_model(), hippo_image, RANGE_SPEC, largest_component=True)
    full = np.ones((3, 3, 3), dtype=bool)  # 26-connectivity
    components, before = ndimage.label(plain == 1, structure=full)
    _, after = ndimage.label(cleaned == 1, structure=full)
    assert before > 1 and after == 1
    assert np.all(plain[cleaned == 1] == 1)  # a subset of the plain result
    sizes = np.bincount(components.ravel())[1:]
    assert np.count_nonzero(cleaned) == sizes.max()


def test_two_channel_input(tmp_path, brats_dir):
    case = cases_from_decathlon(brats_dir, num_cases=1)[0]
    paths = []
    for index, source in enumerate(case.images):
        crop = sitk.ReadImage(str(source))[80:140, 90:150, 60:100]
        paths.append(tmp_path / f"crop_{index:04d}.nii.gz")
        sitk.WriteImage(crop, str(paths[-1]))
    spec = ModelSpec(name="two", patch_size=(32, 32, 32), arch_params={"in_channels": 2})
    model = torch.nn.Conv3d(2, 5, kernel_size=1)
    labels, reference = predict_volume(model, paths, spec, sw_batch_size=4)
    assert_on_input_grid(labels, reference, paths[0])
    assert labels.max() <= 4


def test_existing_or_bad_output_is_refused_before_work(tmp_path, hippo_image):
    target = tmp_path / "seg.nii.gz"
    target.write_bytes(b"keep")
    with pytest.raises(OutputExistsError, match="seg.nii.gz: output exists"):
        segment_file(threshold_model(), hippo_image, target, RANGE_SPEC)
    assert target.read_bytes() == b"keep"
    with pytest.raises(InputError, match="unsupported file type '.png'"):
        segment_file(threshold_model(), hippo_image, tmp_path / "seg.png", RANGE_SPEC)
    with pytest.raises(InputError, match="image file not found") as error:
        segment_file(threshold_model(), tmp_path / "nothing.nii.gz", tmp_path / "new.nii.gz", RANGE_SPEC)
    assert "nothing.nii.gz" in str(error.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seg.nii.gz"]
    with pytest.raises(OutputExistsError, match="not a segmentation written by tcurlora"):
        segment_file(threshold_model(), hippo_image, target, RANGE_SPEC, force=True)
    assert target.read_bytes() == b"keep"
    target.unlink()
    segment_file(threshold_model(), hippo_image, target, RANGE_SPEC)
    out = segment_file(
        threshold_model(), hippo_image, target, RANGE_SPEC, force=True, names={1: "bright"}, colors=None
    )
    assert out == target and read_label(target)[0].GetSize() == read_image(hippo_image).GetSize()
    seg, names = read_label(
        segment_file(threshold_model(), hippo_image, tmp_path / "a.seg.nrrd", RANGE_SPEC, names={1: "bright"})
    )
    assert names == {1: "bright"} and seg.GetSize() == read_image(hippo_image).GetSize()
