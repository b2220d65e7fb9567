"""TCURFineTuneTest's bodies, headless against real MRML and the real hippocampus data."""

from __future__ import annotations

from pathlib import Path

from TCURFineTuneLib import testing as bodies


def test_pair_by_study(mrml, hippocampus_dir: Path, tmp_path: Path) -> None:
    bodies.test_pair_by_study(hippocampus_dir, tmp_path)


def test_export_keeps_geometry_and_labels(mrml, hippocampus_dir: Path, tmp_path: Path) -> None:
    bodies.test_export_keeps_geometry_and_labels(hippocampus_dir, tmp_path)


def test_bad_scene_inputs(mrml, hippocampus_dir: Path, tmp_path: Path) -> None:
    bodies.test_bad_scene_inputs(hippocampus_dir, tmp_path)


def test_segmentation_on_other_grid_is_resampled(mrml, hippocampus_dir: Path, tmp_path: Path) -> None:
    bodies.test_segmentation_on_other_grid_is_resampled(hippocampus_dir, tmp_path)


def test_finetune_end_to_end(mrml, hippocampus_dir: Path, tmp_path: Path) -> None:
    bodies.test_finetune_end_to_end(hippocampus_dir, tmp_path)


def test_cancel_leaves_nothing(mrml, hippocampus_dir: Path, tmp_path: Path) -> None:
    bodies.test_cancel_leaves_nothing(hippocampus_dir, tmp_path)


def test_resume_after_cancel(mrml, hippocampus_dir: Path, tmp_path: Path) -> None:
    bodies.test_resume_after_cancel(hippocampus_dir, tmp_path)


def test_self_test_bodies_run_on_generated_data(mrml, tmp_path: Path, monkeypatch) -> None:
    """Item 8: without $TCURLORA_DATA the self-tests use generated cases instead of skipping."""
    from TCURLoRACommon.testdata import decathlon_cases, self_test_data

    monkeypatch.delenv("TCURLORA_DATA", raising=False)
    data = self_test_data("hippocampus", tmp_path / "cache")
    cases, names = decathlon_cases(data)
    assert data == tmp_path / "cache" / "generated-data" and len(cases) == 5 and names == ["organ", "lesion"]
    bodies.test_pair_by_study(data, tmp_path / "a")
    bodies.test_bad_scene_inputs(data, tmp_path / "b")
