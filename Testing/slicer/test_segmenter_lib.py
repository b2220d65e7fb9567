"""TCURSegmenterTest's bodies, headless against real MRML and the real hippocampus data."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from TCURSegmenterLib import testing as bodies


def test_import_keeps_oblique_geometry(mrml, hippocampus_dir: Path, tmp_path: Path) -> None:
    bodies.test_import_keeps_oblique_geometry(hippocampus_dir, tmp_path)


def test_rejects_unusable_adapter(mrml, hippocampus_dir: Path, tmp_path: Path) -> None:
    bodies.test_rejects_unusable_adapter(hippocampus_dir, tmp_path)


@pytest.mark.slow
def test_segment_volumes_end_to_end(mrml, hippocampus_dir: Path, tmp_path: Path, monkeypatch) -> None:
    """Also: the self-test removes the run's work folder (exported volumes, labelmaps) from the temp folder."""
    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))  # where runs.new_workdir makes its folders
    bodies.test_segment_volumes_end_to_end(hippocampus_dir, tmp_path)
    assert sorted(p.name for p in temp.iterdir()) == [], "the self-test left its work folder behind"
