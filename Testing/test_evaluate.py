"""Dice and HD95 against an independent brute-force computation on real hippocampus labels."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from scipy.spatial.distance import cdist

from tcurlora.errors import InputError
from tcurlora.evaluate import (
    directed_surface_distances,
    evaluate_pairs,
    hd95,
    match_folders,
    surface,
    to_json_text,
    to_markdown,
)

SPACING = (0.7, 1.3, 2.5)  # (x, y, z) mm: strongly anisotropic on purpose


def write_labels(array: np.ndarray, path: Path, spacing=SPACING, origin=(-10.0, 5.0, 2.0)) -> Path:
    image = sitk.GetImageFromArray(array.astype(np.uint8))
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    sitk.WriteImage(image, str(path))
    return path


def brute_surface_mm(mask: np.ndarray, spacing_xyz) -> np.ndarray:
    """Coordinates in mm of mask voxels having a face neighbour outside the mask (explicit loop)."""
    padded = np.pad(mask, 1)
    points = []
    for z, y, x in zip(*np.nonzero(mask)):
        pz, py, px = z + 1, y + 1, x + 1
        neighbours = [
            padded[pz - 1, py, px],
            padded[pz + 1, py, px],
            padded[pz, py - 1, px],
            padded[pz, py + 1, px],
            padded[pz, py, px - 1],
            padded[pz, py, px + 1],
        ]
        if not all(neighbours):
            points.append((z * spacing_xyz[2], y * spacing_xyz[1], x * spacing_xyz[0]))
    return np.array(points)


def brute_metrics(pred: np.ndarray, ref: np.ndarray, spacing_xyz) -> tuple[float, float]:
    dice = 2.0 * np.logical_and(pred, ref).sum() / (pred.sum() + ref.sum())
    sp, sr = brute_surface_mm(pred, spacing_xyz), brute_surface_mm(ref, spacing_xyz)
    distances = cdist(sp, sr)
    pooled = np.concatenate([distances.min(axis=1), distances.min(axis=0)])
    return float(dice), float(np.percentile(pooled, 95))


@pytest.fixture
def hippo_pair(hippocampus_dir, tmp_path):
    """A real label volume at anisotropic spacing, and a copy shifted by (1, 2, 0) voxels (z, y, x)."""
    source = hippocampus_dir / "labelsTr" / "hippocampus_001.nii.gz"
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(source))).astype(np.uint8)
    assert set(np.unique(labels)) == {0, 1, 2}
    shifted = np.zeros_like(labels)
    shifted[1:, 2:, :] = labels[:-1, :-2, :]
    (tmp_path / "ref").mkdir()
    (tmp_path / "pred").mkdir()
    ref = write_labels(labels, tmp_path / "ref" / "hippocampus_001.nii.gz")
    pred = write_labels(shifted, tmp_path / "pred" / "hippocampus_001_seg.nii.gz")
    return pred, ref, shifted, labels


def test_dice_and_hd95_match_brute_force(hippo_pair):
    pred_path, ref_path, pred, ref = hippo_pair
    result = evaluate_pairs([(pred_path, ref_path)], ["Anterior", "Posterior"])
    case = result["cases"][0]
    assert case["spacing"] == pytest.approx(list(SPACING))
    for value, name in ((1, "Anterior"), (2, "Posterior")):
        dice, hd = brute_metrics(pred == value, ref == value, SPACING)
        got = case["classes"][name]
        assert got["dice"] == pytest.approx(dice, rel=1e-12)
        assert got["hd95"] == pytest.approx(hd, rel=1e-6)  # NIfTI stores spacing as float32
        assert got["reference_voxels"] == int((ref == value).sum())
        assert 0.3 < got["dice"] < 0.95  # the shift is visible
        assert got["hd95"] >= 1.3  # at least one shifted voxel in y, in mm
        assert result["mean"][name]["dice"] == got["dice"]


def uncropped_hd95(pred: np.ndarray, ref: np.ndarray, spacing_zyx) -> float:
    """HD95 with the distance transforms over the whole volume (before the foreground-box crop)."""
    sp, sr = surface(pred), surface(ref)
    pooled = np.concatenate(
        [directed_surface_distances(sp, sr, spacing_zyx), directed_surface_distances(sr, sp, spacing_zyx)]
    )
    return float(np.percentile(pooled, 95))


def test_hd95_cropped_to_the_foreground_box_is_identical(hippo_pair):
    _, _, pred, ref = hippo_pair
    spacing_zyx = SPACING[::-1]
    edge = np.zeros_like(ref)
    edge[0, :4, -3:] = 1  # touches three faces of the volume
    edge[-2:, -1, 0] = 1
    cases = [(pred == 1, ref == 1), (pred == 2, ref == 2), (pred > 0, ref == 2), (edge == 1, ref == 1)]
    for p, r in cases:
        assert hd95(p, r, spacing_zyx) == uncropped_hd95(p, r, spacing_zyx)  # bit for bit


def test_identical_and_empty_masks(hippo_pair, tmp_path):
    _, ref_path, _, ref = hippo_pair
    result = evaluate_pairs([(ref_path, ref_path)])
    assert result["classes"] == {"1": "label_1", "2": "label_2"}
    for name in ("label_1", "label_2"):
        assert result["cases"][0]["classes"][name]["dice"] == 1.0
        assert result["cases"][0]["classes"][name]["hd95"] == 0.0

    only_anterior = write_labels(np.where(ref == 1, 1, 0), tmp_path / "only1.nii.gz")
    result = evaluate_pairs(
        [(only_anterior, ref_path), (only_anterior, only_anterior)], ["Anterior", "Posterior"]
    )
    posterior = [c["classes"]["Posterior"] for c in result["cases"]]
    assert posterior[0]["dice"] == 0.0 and math.isinf(posterior[0]["hd95"])  # prediction empty
    assert posterior[1]["dice"] == 1.0 and math.isnan(posterior[1]["hd95"])  # both empty
    assert result["mean"]["Posterior"] == {
        "dice": 0.5,
        "hd95": pytest.approx(float("nan"), nan_ok=True),
        "hd95_cases": 0,
        "hd95_infinite": 1,
    }
    text = to_json_text(result)
    assert ": NaN" not in text and "Infinity" not in text
    assert json.loads(text)["cases"][0]["classes"]["Posterior"]["hd95"] is None
    table = to_markdown(result)
    assert "| 0.0000 | inf |" in table and "| 1.0000 | n/a |" in table


def test_geometry_mismatch_names_both_files(hippo_pair, tmp_path):
    pred_path, ref_path, pred, _ = hippo_pair
    other = write_labels(pred, tmp_path / "iso.nii.gz", spacing=(1.0, 1.0, 1.0))
    with pytest.raises(InputError) as info:
        evaluate_pairs([(other, ref_path)])
    assert info.value.path == str(other)
    assert (
        str(ref_path) in info.value.problem
        and "spacing (1.0, 1.0, 1.0) vs (0.7, 1.3, 2.5)" in info.value.problem
    )
    cropped = write_labels(pred[:, :, :-1], tmp_path / "crop.nii.gz")
    with pytest.raises(InputError, match="different geometry: size"):
        evaluate_pairs([(cropped, ref_path)])


def test_folder_matching(hippo_pair, tmp_path):
    pred_path, ref_path, pred, _ = hippo_pair
    write_labels(pred, ref_path.parent / "hippocampus_999.nii.gz")  # a reference without prediction: skipped
    assert match_folders(pred_path.parent, ref_path.parent) == [(pred_path, ref_path)]
    write_labels(pred, pred_path.parent / "stray.nii.gz")
    with pytest.raises(InputError, match="stray.nii.gz: no reference with the same name"):
        match_folders(pred_path.parent, ref_path.parent)


def test_float_labels_must_be_integers(tmp_path, hippo_pair):
    _, ref_path, _, ref = hippo_pair
    bad = tmp_path / "half.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(ref.astype(np.float32) * 0.5), str(bad))
    with pytest.raises(InputError, match="half.nii.gz: label volume has non-integer values"):
        evaluate_pairs([(bad, ref_path)])


def test_cli_evaluate_writes_json_and_markdown(hippo_pair, tmp_path, capsys):
    from tcurlora.commands import evaluate as evaluate_cmd

    pred_path, ref_path, pred, ref = hippo_pair
    parser = __import__("argparse").ArgumentParser(prog="tcurlora")
    evaluate_cmd.register(parser.add_subparsers(dest="command"))
    out_json, out_md = tmp_path / "res" / "eval.json", tmp_path / "res" / "eval.md"
    argv = [
        "evaluate",
        str(pred_path.parent),
        str(ref_path.parent),
        "--labels",
        "Anterior",
        "Posterior",
        "--json",
        str(out_json),
        "--markdown",
        str(out_md),
    ]
    args = parser.parse_args(argv)
    assert args.func(args) == 0
    data = json.loads(out_json.read_text())
    table = out_md.read_text()
    assert capsys.readouterr().out == table
    for value, name in ((1, "Anterior"), (2, "Posterior")):
        dice, hd = brute_metrics(pred == value, ref == value, SPACING)
        assert data["cases"][0]["classes"][name]["dice"] == pytest.approx(dice, rel=1e-12)
        assert data["mean"][name]["hd95"] == pytest.approx(hd, rel=1e-6)  # NIfTI stores spacing as float32
        assert f"{dice:.4f} | {hd:.2f}" in table
    assert (
        table.splitlines()[0]
        == "| case | Anterior Dice | Anterior HD95 (mm) | Posterior Dice | Posterior HD95 (mm) |"
    )
    assert not list(out_json.parent.glob(".*.tmp"))
    from tcurlora.errors import OutputExistsError

    with pytest.raises(OutputExistsError, match="use --force"):
        args.func(parser.parse_args(argv))
    assert args.func(parser.parse_args([*argv, "--force"])) == 0
