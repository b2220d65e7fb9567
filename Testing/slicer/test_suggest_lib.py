""" "Suggest next case" of TCUR Fine-Tune, headless on real MRML and real hippocampus MRI: the scene's
volumes without a segmentation are exported, ranked by the worker (`tcurlora suggest`) with an adapter
trained here, and mapped back to their nodes with the scores the backend computes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import slicer
from TCURFineTuneLib.suggest import suggestion_candidates, suggestion_run
from TCURFineTuneLib.testing import fast_settings, load_training_scene

from tcurlora.errors import InputError
from TCURLoRACommon.runs import DONE, FAILED
from TCURLoRACommon.testdata import TEST_BASE_MODEL, decathlon_cases, load_case


def noisy_copy(image: Path, target: Path, sigma: float = 3.0) -> Path:
    """The image with Gaussian noise of `sigma` times its standard deviation (same grid)."""
    source = sitk.ReadImage(str(image))
    array = sitk.GetArrayFromImage(source).astype(np.float32)
    noisy = array + np.random.default_rng(0).normal(0.0, sigma * array.std(), array.shape).astype(np.float32)
    written = sitk.GetImageFromArray(noisy)
    written.CopyInformation(source)
    sitk.WriteImage(written, str(target))
    return target


@pytest.fixture(scope="module")
def tiny_adapter(hippocampus_dir: Path, tmp_path_factory) -> Path:
    """An adapter of the test base trained for 3 steps on two cases by the CLI, shared by the tests."""
    import subprocess
    import sys

    output = tmp_path_factory.mktemp("suggest-adapter") / "adapter"
    cases, names = decathlon_cases(hippocampus_dir)
    settings = fast_settings(3)
    pairs = [x for image, label in cases[:2] for x in ("--case", str(image), str(label))]
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "tcurlora",
            "finetune",
            "--base-model",
            TEST_BASE_MODEL,
            *pairs,
            "--labels",
            *names,
            "--iterations",
            str(settings.iterations),
            "--patch-size",
            ",".join(map(str, settings.patch_size)),
            "--batch-size",
            "1",
            "--device",
            "cpu",
            "--checkpoint-every",
            "0",
            "--threads",
            "1",
            "-o",
            str(output),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return output


@pytest.fixture
def scene_with_adapter(mrml, hippocampus_dir: Path, tmp_path: Path, tiny_adapter: Path):
    """Two labeled cases in the scene, the adapter, and two volumes without a segmentation (one noisy)."""
    pairs, names = load_training_scene(hippocampus_dir, 2)
    cases, _ = decathlon_cases(hippocampus_dir)
    clean, _ = load_case(cases[2][0], None, names)
    noisy, _ = load_case(noisy_copy(cases[2][0], tmp_path / "noisy.nii.gz"), None, names)
    return pairs, tiny_adapter, clean, noisy, cases[2][0], tmp_path / "noisy.nii.gz"


@pytest.mark.slow
def test_ranks_the_unlabeled_volumes_with_the_backends_scores(scene_with_adapter, tmp_path: Path) -> None:
    from tcurlora.segmentation import load_segmentation_model
    from tcurlora.suggest import volume_uncertainty

    pairs, adapter, clean, noisy, clean_file, noisy_file = scene_with_adapter
    run = suggestion_run(pairs, adapter, TEST_BASE_MODEL, "cpu", tmp_path / "suggest").start()
    run.wait(timeout=300)
    assert run.state == DONE, run.error_text()
    ranked = [volume.GetID() for volume, _ in run.ranking]
    assert sorted(ranked) == sorted([clean.GetID(), noisy.GetID()])  # never a labeled case
    scores = [score for _, score in run.ranking]
    assert scores == sorted(scores, reverse=True) and all(0.0 <= s <= 1.0 for s in scores)
    assert run.top is run.ranking[0][0]
    model, spec, _, config = load_segmentation_model(TEST_BASE_MODEL, str(adapter))  # what the CLI computes
    import torch

    from tcurlora.infer import inference_options

    flip_axes = inference_options(config)["flip_axes"]  # mirrored as the adapter was trained
    assert flip_axes == (0,)
    expected = {
        volume.GetID(): volume_uncertainty(
            model, [path], spec, device=torch.device("cpu"), overlap=0.5, flips=False, flip_axes=flip_axes
        )["entropy"]
        for volume, path in ((clean, clean_file), (noisy, noisy_file))
    }
    for volume, score in run.ranking:
        assert score == pytest.approx(expected[volume.GetID()], abs=1e-4), volume.GetName()
    lines = run.ranking_lines()
    assert lines[0] == f"1. {run.top.GetName()}: entropy {scores[0]:.4f}", lines
    assert not run.workdir.exists(), "the exported volumes must not be left behind"


@pytest.mark.slow
def test_volume_removed_while_ranking_fails_by_name(scene_with_adapter, tmp_path: Path) -> None:
    pairs, adapter, clean, _, _, _ = scene_with_adapter
    run = suggestion_run(pairs, adapter, TEST_BASE_MODEL, "cpu", tmp_path / "suggest").start()
    name = clean.GetName()
    slicer.mrmlScene.RemoveNode(clean)
    run.wait(timeout=300)
    assert run.state == FAILED and run.ranking == []
    assert f"volume '{name}' was removed from the scene" in run.error_text(), run.error_text()
    assert not run.workdir.exists()


def test_nothing_to_rank_or_no_adapter_is_said_before_any_work(
    mrml, hippocampus_dir: Path, tmp_path: Path
) -> None:
    pairs, _ = load_training_scene(hippocampus_dir, 2)
    with pytest.raises(InputError, match="every volume in the scene already has a segmentation"):
        suggestion_candidates(pairs)
    with pytest.raises(InputError, match="choose the adapter to ask"):
        suggestion_run(pairs, None, TEST_BASE_MODEL, "cpu", tmp_path / "suggest")
    with pytest.raises(InputError, match="every volume in the scene already has a segmentation"):
        suggestion_run(pairs, tmp_path / "no-adapter", TEST_BASE_MODEL, "cpu", tmp_path / "suggest")
    assert not (tmp_path / "suggest").exists()
