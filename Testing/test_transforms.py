"""MONAI transforms and batches on real volumes: shapes, label values, padding, seeding, normalisation."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from tcurlora.data.cases import Case, cases_from_decathlon
from tcurlora.data.loader import training_batches, validation_volumes
from tcurlora.data.transforms import inference_transforms, ras_affine, training_transforms
from tcurlora.errors import ConfigError, InputError
from tcurlora.models.spec import IntensitySpec, ModelSpec

SPEC = ModelSpec(name="test", spacing=(1.0, 1.0, 1.0), patch_size=(32, 32, 32))


@pytest.fixture
def hippo_cases(hippocampus_dir) -> list[Case]:
    return cases_from_decathlon(hippocampus_dir, num_cases=2)


def test_batches_have_patch_shape_and_valid_labels(hippo_cases):
    batches = training_batches(
        hippo_cases, SPEC, patch_size=(40, 24, 32), num_classes=3, batch_size=3, seed=0
    )
    seen = set()
    for _ in range(4):
        batch = next(batches)
        assert batch["image"].shape == (3, 1, 40, 24, 32) and batch["image"].dtype == torch.float32
        assert batch["label"].shape == (3, 1, 40, 24, 32) and batch["label"].dtype == torch.int64
        assert type(batch["image"]) is torch.Tensor and torch.isfinite(batch["image"]).all()
        seen |= set(batch["label"].unique().tolist())
    assert seen <= {0, 1, 2} and {1, 2} <= seen  # foreground-weighted sampling finds both classes


def test_same_seed_same_batches_other_seed_differs(hippo_cases):
    def first_two(seed: int) -> list[dict]:
        batches = training_batches(
            hippo_cases, SPEC, patch_size=(24, 24, 24), num_classes=3, batch_size=2, seed=seed
        )
        return [next(batches), next(batches)]

    a, b, c = first_two(7), first_two(7), first_two(8)
    for x, y in zip(a, b):
        assert torch.equal(x["image"], y["image"]) and torch.equal(x["label"], y["label"])
    assert not all(torch.equal(x["image"], z["image"]) for x, z in zip(a, c))


def test_volume_smaller_than_patch_is_padded(tmp_path, hippo_cases):
    case = hippo_cases[0]
    image = sitk.ReadImage(str(case.images[0]))[5:15, 10:22, 8:17]  # 10 x 12 x 9 voxels
    label = sitk.ReadImage(str(case.label))[5:15, 10:22, 8:17]
    sitk.WriteImage(image, str(tmp_path / "small.nii.gz"))
    sitk.WriteImage(label, str(tmp_path / "small_label.nii.gz"))
    small = Case("small", [tmp_path / "small.nii.gz"], tmp_path / "small_label.nii.gz")
    batch = next(
        training_batches(
            [small], SPEC, patch_size=(16, 16, 16), num_classes=3, batch_size=1, seed=1, augment=False
        )
    )
    assert batch["image"].shape == (1, 1, 16, 16, 16)
    # Every original voxel is in the padded patch: same foreground count, same label histogram.
    original = np.bincount(sitk.GetArrayFromImage(label).ravel(), minlength=3)
    padded = np.bincount(batch["label"].numpy().ravel(), minlength=3)
    assert padded[1:].tolist() == original[1:].tolist() and padded[0] == 16**3 - original[1:].sum()


def test_label_map_remaps_classes(hippo_cases):
    case = hippo_cases[0]
    merged = Case(case.id, case.images, case.label, label_map={1: 1, 2: 1})
    volume = validation_volumes([merged], SPEC)[0]
    original = sitk.GetArrayFromImage(sitk.ReadImage(str(case.label)))
    assert volume["label"].unique().tolist() == [0, 1]
    assert int(volume["label"].sum()) == int(np.count_nonzero(original))


def test_validation_volumes_keep_full_volume(hippo_cases):
    volumes = validation_volumes(hippo_cases, SPEC)
    assert [v["id"] for v in volumes] == ["hippocampus_001", "hippocampus_003"]
    first = volumes[0]
    assert first["image"].shape == (1, 35, 51, 35) and first["label"].shape == (1, 35, 51, 35)
    assert first["label"].dtype == torch.int64 and set(first["label"].unique().tolist()) == {0, 1, 2}
    # hippocampus_001 is stored RAS-aligned (LPS direction diag(-1, -1, 1)): array equals the file's.
    stored = np.transpose(sitk.GetArrayFromImage(sitk.ReadImage(str(hippo_cases[0].label))), (2, 1, 0))
    np.testing.assert_array_equal(first["label"][0].numpy(), stored)


def test_orientation_and_spacing_follow_the_affine(tmp_path, hippo_cases):
    image = sitk.ReadImage(str(hippo_cases[0].images[0]))
    flipped = sitk.Image(image)
    flipped.SetDirection((1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))  # LPS identity: x points left
    sitk.WriteImage(flipped, str(tmp_path / "lps.nii.gz"))
    spec = ModelSpec(
        name="coarse", spacing=(2.0, 1.0, 1.0), intensity=IntensitySpec(kind="range", a_max=255.0)
    )
    out = inference_transforms(spec)({"image": str(tmp_path / "lps.nii.gz")})["image"]
    assert out.shape == (1, 18, 51, 35)
    np.testing.assert_allclose(np.diag(out.affine.numpy())[:3], [2.0, 1.0, 1.0])
    raw = ras_affine(flipped)
    np.testing.assert_allclose(np.diag(raw)[:3], [-1.0, -1.0, 1.0])  # RAS of an LPS-identity grid
    # The y axis was flipped to point anterior: row 0 of the output is the file's last row.
    values = np.transpose(sitk.GetArrayFromImage(image), (2, 1, 0)) / 255.0
    np.testing.assert_allclose(out[0, :, 0, :].numpy().mean(), values[:, -1, :].mean(), atol=0.02)


def test_intensity_normalisations(hippo_cases):
    path = str(hippo_cases[0].images[0])
    raw = sitk.GetArrayFromImage(sitk.ReadImage(path)).astype(np.float64)
    zscore = inference_transforms(SPEC)({"image": path})["image"].numpy()
    inside = zscore[0][np.transpose(raw, (2, 1, 0)) != 0]
    assert abs(inside.mean()) < 1e-4 and abs(inside.std() - 1.0) < 1e-3
    percentile = ModelSpec(name="p", intensity=IntensitySpec(kind="percentile", lower=1.0, upper=99.0))
    scaled = inference_transforms(percentile)({"image": path})["image"].numpy()
    assert scaled.min() == 0.0 and scaled.max() == 1.0
    np.testing.assert_allclose((scaled > 0.999).mean(), 0.01, atol=0.01)
    fixed = ModelSpec(name="r", intensity=IntensitySpec(kind="range", a_min=0.0, a_max=100.0))
    ranged = inference_transforms(fixed)({"image": path})["image"].numpy()
    np.testing.assert_allclose(ranged[0], np.clip(np.transpose(raw, (2, 1, 0)) / 100.0, 0, 1), atol=1e-6)
    with pytest.raises(ConfigError, match="unknown intensity normalisation 'histogram'"):
        inference_transforms(ModelSpec(name="x", intensity=IntensitySpec(kind="histogram")))


@pytest.mark.slow
def test_two_channel_brats_batch(brats_dir):
    case = cases_from_decathlon(brats_dir, num_cases=1)[0]
    spec = ModelSpec(name="brats", arch_params={"in_channels": 2})
    batch = next(training_batches([case], spec, patch_size=(32, 32, 32), num_classes=5, batch_size=2, seed=0))
    assert batch["image"].shape == (2, 2, 32, 32, 32)
    assert set(batch["label"].unique().tolist()) <= {0, 1, 2, 3, 4}
    one_channel = ModelSpec(name="mono", arch_params={"in_channels": 1})
    with pytest.raises(InputError, match="2 image channel\\(s\\) given; the model needs 1") as error:
        inference_transforms(one_channel)({"image": [str(p) for p in case.images]})
    assert case.images[0].name in str(error.value)
    with pytest.raises(ConfigError, match="num_classes must be at least 2"):
        training_transforms(spec, patch_size=(32, 32, 32), num_classes=1)
