"""What `segment` does by default beyond one network pass: mirror test-time augmentation along the axes
the adapter was trained flipping, and largest-component cleanup of the classes that were one piece in
every training label; both recorded at fine-tuning, both switchable per job."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from trust_testing import LABELS, TINY, run

from tcurlora.adapter_integrity import seal
from tcurlora.cli import main
from tcurlora.data.cases import Case, cases_from_decathlon
from tcurlora.data.components import class_pieces, combine_pieces, piece_counts, single_piece_classes
from tcurlora.data.transforms import TRAINING_FLIP_AXES, inference_transforms
from tcurlora.errors import ConfigError
from tcurlora.filenames import ADAPTER_CONFIG_FILE
from tcurlora.infer import (
    flip_combinations,
    inference_options,
    keep_largest_components,
    mirrored_probabilities,
    predict_volume,
)
from tcurlora.models.spec import IntensitySpec, ModelSpec
from tcurlora.suggest import score_probabilities, volume_uncertainty

SPEC = ModelSpec(
    name="one-window",
    spacing=(1.0, 1.0, 1.0),
    patch_size=(8, 8, 8),
    intensity=IntensitySpec(kind="range", a_min=0.0, a_max=200.0),
)


def lopsided_model() -> torch.nn.Module:
    """A real 3x3x3 Conv3d with seeded random weights: not symmetric, so a flip changes its output."""
    torch.manual_seed(3)
    return torch.nn.Conv3d(1, 3, kernel_size=3, padding=1).eval()


def softmax_of(model: torch.nn.Module, image: torch.Tensor, dims: list[int]) -> torch.Tensor:
    """By hand: softmax of the model on the image flipped along `dims`, flipped back."""
    with torch.no_grad():
        flipped = torch.flip(image, dims) if dims else image
        out = torch.softmax(model(flipped[None]), dim=1)[0]
    return torch.flip(out, dims) if dims else out


# --- mirror test-time augmentation ----------------------------------------------------------------
def test_mirrored_probabilities_are_the_mean_over_exactly_the_given_flips() -> None:
    model = lopsided_model()
    image = torch.rand(1, 8, 8, 8, generator=torch.Generator().manual_seed(0))  # one window: patch == image
    cpu = torch.device("cpu")
    plain = mirrored_probabilities(model, image, SPEC, cpu, 0.5, 1, False, ())
    assert torch.allclose(plain, softmax_of(model, image, []), atol=1e-5)
    assert (softmax_of(model, image, [1]) - plain).abs().max() > 1e-2, "the flip must change the output"
    along_0 = mirrored_probabilities(model, image, SPEC, cpu, 0.5, 1, False, (0,))
    expected = (softmax_of(model, image, []) + softmax_of(model, image, [1])) / 2
    assert torch.allclose(along_0, expected, atol=1e-5)
    assert (along_0 - plain).abs().max() > 1e-3
    along_0_2 = mirrored_probabilities(model, image, SPEC, cpu, 0.5, 1, False, (2, 0))
    four = [softmax_of(model, image, dims) for dims in ([], [1], [3], [1, 3])]
    assert torch.allclose(along_0_2, sum(four) / 4, atol=1e-5)
    assert torch.allclose(along_0_2.sum(0), torch.ones(8, 8, 8), atol=1e-5)  # still probabilities
    assert flip_combinations((2, 0, 2)) == [(), (0,), (2,), (0, 2)]


def test_inference_options_follow_the_adapter_record() -> None:
    record = {"training": {"flip_axes": [0, 2]}, "single_piece_classes": [2]}
    assert inference_options(record) == {"flip_axes": (0, 2), "largest_component": [2]}
    assert inference_options(record, tta=False, largest_component=True) == {
        "flip_axes": (),
        "largest_component": True,
    }
    assert inference_options(record, largest_component=False)["largest_component"] is False
    # an adapter written before these records: the training default flips, no cleanup under auto
    assert inference_options({"training": {"iterations": 5}}) == {
        "flip_axes": TRAINING_FLIP_AXES,
        "largest_component": [],
    }
    assert TRAINING_FLIP_AXES == (0,)
    # a base model alone: nothing is known about its training
    assert inference_options(None) == {"flip_axes": (), "largest_component": []}
    with pytest.raises(
        ConfigError, match=r"training.flip_axes must be a list of spatial axes 0..2, got \[3\]"
    ):
        inference_options({"training": {"flip_axes": [3]}})
    with pytest.raises(ConfigError, match="single_piece_classes must be a list of class indices >= 1"):
        inference_options({"single_piece_classes": [0]})


def test_suggest_scores_the_probabilities_segment_averages(hippocampus_dir) -> None:
    image = cases_from_decathlon(hippocampus_dir, num_cases=1)[0].images[0]
    spec = ModelSpec(
        name="one-window",
        spacing=(1.0, 1.0, 1.0),
        patch_size=(16, 16, 16),
        intensity=IntensitySpec(kind="range", a_min=0.0, a_max=200.0),
    )
    model, cpu = lopsided_model(), torch.device("cpu")
    plain = volume_uncertainty(model, [image], spec, device=cpu, overlap=0.5, flips=True)
    mirrored = volume_uncertainty(model, [image], spec, device=cpu, overlap=0.5, flips=True, flip_axes=(0,))
    volume = inference_transforms(spec)({"image": [str(image)]})["image"].as_tensor()
    by_hand = score_probabilities(mirrored_probabilities(model, volume, spec, cpu, 0.5, 2, False, (0,)))
    assert mirrored["entropy"] == pytest.approx(by_hand["entropy"], abs=1e-6)
    assert abs(mirrored["entropy"] - plain["entropy"]) > 1e-4, "the mirroring must change the score"
    assert mirrored["flips"] == pytest.approx(plain["flips"], abs=1e-6)  # flips: always of one plain pass
    alone = volume_uncertainty(model, [image], spec, device=cpu, overlap=0.5, flips=False, flip_axes=(0,))
    assert alone == {k: v for k, v in mirrored.items() if k != "flips"}  # the flips' passes reused exactly
    two = volume_uncertainty(model, [image], spec, device=cpu, overlap=0.5, flips=True, flip_axes=(0, 2))
    by_hand = score_probabilities(mirrored_probabilities(model, volume, spec, cpu, 0.5, 2, False, (0, 2)))
    assert two["entropy"] == pytest.approx(by_hand["entropy"], abs=1e-6)


# --- which classes are cleaned ----------------------------------------------------------------------
def with_island(source: Path, target: Path, value: int) -> Path:
    """A copy of a real label with one extra voxel of class `value` far from its structure."""
    image = sitk.ReadImage(str(source))
    array = sitk.GetArrayFromImage(image)
    assert array[0, 0, 0] == 0 and not np.any(array[:3, :3, :3])
    array[0, 0, 0] = value
    copy = sitk.GetImageFromArray(array)
    copy.CopyInformation(image)
    sitk.WriteImage(copy, str(target))
    return target


def test_a_class_in_two_pieces_in_any_training_label_is_never_cut(tmp_path, hippocampus_dir) -> None:
    cases = cases_from_decathlon(hippocampus_dir, num_cases=2)
    assert single_piece_classes(cases, 3) == [1, 2]  # both hippocampus parts are one piece in each label
    split = with_island(cases[1].label, tmp_path / "split.nii.gz", 2)
    assert piece_counts(sitk.GetArrayFromImage(sitk.ReadImage(str(split))), [1, 2]) == {1: 1, 2: 2}
    two_pieces = Case(id="split", images=cases[1].images, label=split)
    assert single_piece_classes([cases[0], two_pieces], 3) == [1]
    # the labels as training reads them: a label_map that merges both parts into class 1 (two pieces
    # that touch are one); a class no case has is not recorded
    merged = Case(id="merged", images=cases[0].images, label=cases[0].label, label_map={1: 1, 2: 1})
    assert single_piece_classes([merged], 3) == [1]
    unlabeled = Case(id="none", images=cases[0].images, label=None)
    assert single_piece_classes([unlabeled], 3) == []
    # federated: each site sends (present, split); the server keeps what no site has in pieces
    site_a, site_b = class_pieces(cases[:1], 3), class_pieces([two_pieces], 3)
    assert (site_a, site_b) == (([1, 2], []), ([1, 2], [2]))
    assert combine_pieces([site_a, site_b]) == [1] and combine_pieces([site_a]) == [1, 2]
    assert combine_pieces([([1], []), ([3], [])]) == [1, 3]  # a class only one site has still counts


def two_class_threshold_model(low: float = 80.5, high: float = 100.5) -> torch.nn.Module:
    """A real 1x1x1 Conv3d on grey / 200: class 1 above grey `low`, class 2 above `high`, else background."""
    conv = torch.nn.Conv3d(1, 3, kernel_size=1)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[1, 0], conv.weight[2, 0] = 100.0, 200.0
        conv.bias.copy_(torch.tensor([0.0, -100.0 * low / 200, -100.0 * (low + high) / 200]))
    return conv


def test_largest_component_cleans_exactly_the_chosen_classes(hippocampus_dir) -> None:
    image = cases_from_decathlon(hippocampus_dir, num_cases=1)[0].images[0]
    spec = ModelSpec(
        name="threshold",
        spacing=(1.0, 1.0, 1.0),
        patch_size=(16, 16, 16),
        intensity=IntensitySpec(kind="range", a_min=0.0, a_max=200.0),
    )
    model = two_class_threshold_model()
    plain, _ = predict_volume(model, image, spec)
    counts = piece_counts(plain, [1, 2])
    assert counts[1] > 1 and counts[2] > 1, "both classes must be in pieces for this test to mean anything"
    only_2, _ = predict_volume(model, image, spec, largest_component=[2])
    assert piece_counts(only_2, [1, 2]) == {1: counts[1], 2: 1}
    assert np.array_equal(only_2, keep_largest_components(plain, {2}))
    every, _ = predict_volume(model, image, spec, largest_component=True)
    assert piece_counts(every, [1, 2]) == {1: 1, 2: 1}
    none, _ = predict_volume(model, image, spec, largest_component=[])
    assert np.array_equal(none, plain)


# --- fine-tuning records, segment applies ---------------------------------------------------------
@pytest.mark.slow
def test_adapter_records_flips_and_one_piece_classes_and_segment_applies_them(
    tiny_adapter: Path, hippocampus_dir: Path, tmp_path: Path, capsys
) -> None:
    record = json.loads((tiny_adapter / ADAPTER_CONFIG_FILE).read_text())
    assert record["training"]["flip_axes"] == [0]
    assert record["single_piece_classes"] == [1, 2]  # hippocampus_001: each part one piece
    image = cases_from_decathlon(hippocampus_dir, num_cases=2)[1].images[0]  # not the training case
    base = ["segment", image, "--base-model", TINY, "--adapter", tiny_adapter, "--device", "cpu"]
    outputs = {}
    for name, flags in {
        "default": [],
        "plain": ["--no-tta", "--no-largest-component"],
        "mirrored": ["--no-largest-component"],
        "every": ["--largest-component"],
    }.items():
        out = tmp_path / f"{name}.nii.gz"
        code, _, _, err = run(capsys, *base, *flags, "-o", out)
        assert code == 0, err
        outputs[name] = sitk.GetArrayFromImage(sitk.ReadImage(str(out)))
    assert not np.array_equal(outputs["plain"], outputs["mirrored"]), "mirroring must change the labels"
    from tcurlora.segmentation import load_segmentation_model

    model, spec, _, _ = load_segmentation_model(TINY, str(tiny_adapter))
    by_hand, _ = predict_volume(model, image, spec, flip_axes=(0,))
    assert np.array_equal(outputs["mirrored"], by_hand)
    counts = piece_counts(outputs["mirrored"], [1, 2])
    assert max(counts.values()) > 1, (
        "the 2-iteration adapter must predict pieces for this test to mean anything"
    )
    assert np.array_equal(outputs["default"], keep_largest_components(outputs["mirrored"]))
    assert np.array_equal(outputs["every"], outputs["default"])  # auto = both recorded classes here

    # the bench evaluates exactly what segment writes by default
    from tcurlora.bench.single import evaluate_adapter
    from tcurlora.evaluate import evaluate_pair, read_labels

    case = cases_from_decathlon(hippocampus_dir, num_cases=2)[1]
    bench = evaluate_adapter(tiny_adapter, TINY, [case], LABELS, "cpu", 0.5, 0)
    written = evaluate_pair(
        read_labels(tmp_path / "default.nii.gz"), read_labels(case.label), {1: LABELS[0], 2: LABELS[1]}
    )
    assert bench["cases"][0]["classes"] == written
    # suggest scores what segment predicts: mirrored by default, one plain pass with --no-tta
    scores = {}
    for name, flags in {"mirrored": [], "plain": ["--no-tta"]}.items():
        capsys.readouterr()
        code = main([str(a) for a in ("suggest", image, *base[2:], *flags, "--json")])
        out, err = capsys.readouterr()  # the JSON document alone (run() reads events line by line)
        assert code == 0, err
        scores[name] = json.loads(out)["ranking"][0]["entropy"]
    assert abs(scores["mirrored"] - scores["plain"]) > 1e-6

    # an adapter written before the records (resealed): mirrored along (0,), no component filtering
    old = tmp_path / "old-adapter"
    shutil.copytree(tiny_adapter, old)
    stale = json.loads((old / ADAPTER_CONFIG_FILE).read_text())
    del stale["single_piece_classes"], stale["training"]["flip_axes"]
    (old / ADAPTER_CONFIG_FILE).write_text(json.dumps(seal(stale)))
    code, events, _, err = run(capsys, *base[:5], old, *base[6:], "--events", "-o", tmp_path / "old.nii.gz")
    assert code == 0, err
    logs = [e["message"] for e in events if e["event"] == "log"]
    assert any(
        "mirrored along axes [0] (2 passes); largest connected component only: no class" in m for m in logs
    )
    old_labels = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "old.nii.gz")))
    assert np.array_equal(old_labels, outputs["mirrored"])
