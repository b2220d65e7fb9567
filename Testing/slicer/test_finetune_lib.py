"""TCURFineTuneTest's bodies, headless against real MRML and the real hippocampus data."""

from __future__ import annotations

from pathlib import Path

import pytest
from TCURFineTuneLib import testing as bodies


def test_pair_by_study(mrml, hippocampus_dir: Path, tmp_path: Path) -> None:
    bodies.test_pair_by_study(hippocampus_dir, tmp_path)


def test_export_keeps_geometry_and_labels(mrml, hippocampus_dir: Path, tmp_path: Path) -> None:
    bodies.test_export_keeps_geometry_and_labels(hippocampus_dir, tmp_path)


def test_bad_scene_inputs(mrml, hippocampus_dir: Path, tmp_path: Path) -> None:
    bodies.test_bad_scene_inputs(hippocampus_dir, tmp_path)


def test_segmentation_on_other_grid_is_resampled(mrml, hippocampus_dir: Path, tmp_path: Path) -> None:
    bodies.test_segmentation_on_other_grid_is_resampled(hippocampus_dir, tmp_path)


@pytest.mark.slow
def test_finetune_end_to_end(mrml, hippocampus_dir: Path, tmp_path: Path) -> None:
    bodies.test_finetune_end_to_end(hippocampus_dir, tmp_path)


@pytest.mark.slow
def test_cancel_leaves_nothing(mrml, hippocampus_dir: Path, tmp_path: Path) -> None:
    bodies.test_cancel_leaves_nothing(hippocampus_dir, tmp_path)


@pytest.mark.slow
def test_resume_after_cancel(mrml, hippocampus_dir: Path, tmp_path: Path) -> None:
    bodies.test_resume_after_cancel(hippocampus_dir, tmp_path)


def test_unlabeled_scene_volumes_join_the_job(mrml, hippocampus_dir: Path, tmp_path: Path) -> None:
    bodies.test_unlabeled_scene_volumes_join_the_job(hippocampus_dir, tmp_path)
