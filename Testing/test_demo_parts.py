"""The demo's scoring, figure and summary, on small volumes written here (the slow test_demo runs the whole
demo; these keep demo.py in the fast loop)."""

from __future__ import annotations

import json
import types

import matplotlib.image
import numpy as np
import SimpleITK as sitk

from tcurlora.demo import class_dice, read_array, summary_text, to_json, write_figure


def write_volume(path, array: np.ndarray):
    sitk.WriteImage(sitk.GetImageFromArray(array), str(path))
    return path


def test_class_dice_names_each_class():
    reference = np.zeros((4, 4, 4), np.uint8)
    reference[:2] = 1
    reference[2:] = 2
    prediction = reference.copy()
    prediction[3] = 0  # half of class 2 missed
    assert class_dice(prediction, reference, ["organ", "lesion"]) == {"organ": 1.0, "lesion": 2 / 3}


def test_figure_shows_each_case_and_the_loss_and_leaves_no_temporary(tmp_path):
    rng = np.random.default_rng(0)
    image = write_volume(tmp_path / "image.nii.gz", rng.random((8, 16, 16)).astype(np.float32))
    reference = np.zeros((8, 16, 16), np.uint8)
    reference[3:5, 4:9, 4:9] = 1
    result = write_volume(tmp_path / "result.nii.gz", reference)
    assert np.array_equal(read_array(result), reference)
    case = types.SimpleNamespace(id="case_1", images=[str(image)])
    figure = write_figure(tmp_path / "demo.png", [case], [reference], [result], [1.0, 0.7, 0.5], ["organ"])
    pixels = matplotlib.image.imread(figure)
    assert min(pixels.shape[:2]) > 400 and pixels.std() > 0.01  # two rows: the case, the loss
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo.png", "image.nii.gz", "result.nii.gz"]


def test_summary_prints_dice_before_and_after_per_class_and_serialises():
    summary = {
        "label_names": ["organ"],
        "dice_before": {"organ": 0.1},
        "dice_after": {"organ": 0.8},
        "mean_dice_before": 0.1,
        "mean_dice_after": 0.8,
        "adapter": "out/adapter",
        "figure": "out/demo.png",
        "wall_time_s": 12.5,
    }
    lines = summary_text(summary).splitlines()
    assert lines[1].split() == ["organ", "0.100", "0.800"] and lines[2].split() == ["mean", "0.100", "0.800"]
    assert lines[3:] == ["adapter: out/adapter", "figure: out/demo.png", "wall time 12.5 s"]
    assert json.loads(to_json(summary)) == summary
