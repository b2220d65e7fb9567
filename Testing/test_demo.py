"""`tcurlora demo` end to end at the CI size: generated cases, the built-in base, tCURLoRA, Dice before/after."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import SimpleITK as sitk

from tcurlora.errors import ConfigError, OutputExistsError
from tcurlora.filenames import ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE, DEMO_SUMMARY_FILE
from tcurlora.synthetic import LABEL_NAMES, make_case, write_dataset


def demo_parser() -> argparse.ArgumentParser:
    from tcurlora.commands import demo

    parser = argparse.ArgumentParser(prog="tcurlora")
    demo.register(parser.add_subparsers(dest="command"))
    return parser


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """One `tcurlora demo --quick` run through the command's own parser and handler."""
    output = tmp_path_factory.mktemp("demo") / "out"
    args = demo_parser().parse_args(["demo", "--quick", "--output", str(output), "--device", "cpu"])
    assert args.func(args) == 0
    return output, json.loads((output / DEMO_SUMMARY_FILE).read_text())


@pytest.mark.slow
def test_demo_adaptation_raises_dice(demo_run):
    output, summary = demo_run
    assert summary["base_model"] == "unetr-small-acdc-brats" and summary["synthetic"] is True
    assert summary["label_names"] == list(LABEL_NAMES)
    assert summary["mean_dice_after"] > summary["mean_dice_before"] + 0.2, summary
    assert summary["dice_after"]["organ"] > 0.5, summary
    counts = summary["parameter_counts"]
    assert 0 < counts["trainable"] < 0.01 * counts["total"]


@pytest.mark.slow
def test_demo_writes_adapter_segmentations_and_figure(demo_run):
    output, summary = demo_run
    assert (output / "adapter" / ADAPTER_CONFIG_FILE).is_file()
    assert (output / "adapter" / ADAPTER_WEIGHTS_FILE).is_file()
    png = (output / "demo.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    for case_id, path in zip(summary["test_cases"], summary["segmentations"]):
        written = sitk.ReadImage(path)
        source = sitk.ReadImage(str(output / "data" / "imagesTr" / f"{case_id}.nii.gz"))
        assert written.GetSize() == source.GetSize() and written.GetSpacing() == source.GetSpacing()
        assert set(np.unique(sitk.GetArrayFromImage(written)).tolist()) <= {0, 1, 2}
    assert set(summary["train_cases"]).isdisjoint(summary["test_cases"])


@pytest.mark.slow
def test_demo_refuses_a_used_output_folder_without_force(demo_run):
    output, _ = demo_run
    args = demo_parser().parse_args(["demo", "--quick", "--output", str(output)])
    with pytest.raises(OutputExistsError):
        args.func(args)
    args = demo_parser().parse_args(["demo", "--output", str(output), "--iterations", "0"])
    with pytest.raises(ConfigError, match="must be positive"):
        args.func(args)


def test_synthetic_cases_have_both_classes_and_distinct_intensities(tmp_path):
    case = make_case(np.random.default_rng(3))
    assert case.image.shape == case.label.shape == (48, 56, 56)
    organ, lesion = case.image[case.label == 1], case.image[case.label == 2]
    tissue = case.image[(case.label == 0) & (case.image > 0)]
    assert organ.size > 1000 and lesion.size > 200
    assert organ.mean() > tissue.mean() > lesion.mean()
    folder = write_dataset(tmp_path / "d", 2, seed=5)
    data = json.loads((folder / "dataset.json").read_text())
    assert data["labels"] == {"0": "background", "1": "organ", "2": "lesion"} and len(data["training"]) == 2
    image = sitk.ReadImage(str(folder / "imagesTr" / "synthetic_001.nii.gz"))
    assert image.GetSpacing() == (1.5, 1.5, 1.5)
    with pytest.raises(OutputExistsError):
        write_dataset(folder, 2)
