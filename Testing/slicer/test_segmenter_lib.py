"""TCURSegmenterTest's bodies, headless against real MRML and the real hippocampus data."""

from __future__ import annotations

from pathlib import Path

from TCURSegmenterLib import testing as bodies


def test_import_keeps_oblique_geometry(mrml, hippocampus_dir: Path, tmp_path: Path) -> None:
    bodies.test_import_keeps_oblique_geometry(hippocampus_dir, tmp_path)


def test_rejects_unusable_adapter(mrml, hippocampus_dir: Path, tmp_path: Path) -> None:
    bodies.test_rejects_unusable_adapter(hippocampus_dir, tmp_path)


def test_segment_volumes_end_to_end(mrml, hippocampus_dir: Path, tmp_path: Path) -> None:
    bodies.test_segment_volumes_end_to_end(hippocampus_dir, tmp_path)
