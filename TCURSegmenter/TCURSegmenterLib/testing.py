"""Bodies of TCURSegmenterTest, Qt-free: run by Slicer's self-test and headless by pytest (slicer-core)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import slicer

from tcurlora.errors import InputError
from tcurlora.library import AdapterEntry
from TCURLoRACommon import scene
from TCURLoRACommon.runs import DONE
from TCURLoRACommon.testdata import (
    check_events,
    decathlon_cases,
    load_case,
    needs_backend,
    set_oblique_geometry,
    train_test_adapter,
    vtk_matrix,
)
from TCURSegmenterLib.logic import adapter_summary, start_segmentation, volumes_to_segment


def _segments(segmentation: slicer.vtkMRMLSegmentationNode) -> list[tuple[str, tuple[float, ...]]]:
    seg = segmentation.GetSegmentation()
    return [
        (seg.GetNthSegment(i).GetName(), tuple(round(c, 4) for c in seg.GetNthSegment(i).GetColor()))
        for i in range(seg.GetNumberOfSegments())
    ]


def _check_on_volume_grid(segmentation, volume, names, workdir: Path) -> np.ndarray:
    """The segmentation on the volume's grid; its exported file has exactly the volume file's geometry."""
    import SimpleITK as sitk

    role = slicer.vtkMRMLSegmentationNode.GetReferenceImageGeometryReferenceRole()
    assert segmentation.GetNodeReference(role) is volume, "the segmentation must reference the input volume"
    assert scene.study_of(segmentation) == scene.study_of(volume), (
        "the segmentation must be in the volume's study"
    )
    values = scene.labelmap_array(segmentation, volume, names)
    image = sitk.ReadImage(str(scene.write_volume(volume, workdir / "check_volume.nrrd")))
    scene.export_labelmap(segmentation, volume, names, workdir / "check_label.nrrd")
    label = sitk.ReadImage(str(workdir / "check_label.nrrd"))
    assert label.GetSize() == image.GetSize()
    np.testing.assert_allclose(label.GetOrigin(), image.GetOrigin(), atol=1e-5)
    np.testing.assert_allclose(label.GetSpacing(), image.GetSpacing(), atol=1e-6)
    np.testing.assert_allclose(label.GetDirection(), image.GetDirection(), atol=1e-6)
    # the files carry the scene's IJK-to-RAS (LPS on disk): index (0,0,0) and the axes map to the same mm
    matrix = scene.ijk_to_ras(volume)
    lps = np.diag([-1.0, -1.0, 1.0])
    np.testing.assert_allclose(label.GetOrigin(), lps @ matrix[:3, 3], atol=1e-4)
    direction = np.array(label.GetDirection()).reshape(3, 3) * np.array(label.GetSpacing())
    np.testing.assert_allclose(direction, lps @ matrix[:3, :3], atol=1e-4)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(label), values)
    return values


def test_import_keeps_oblique_geometry(data_dir: Path, workdir: Path) -> None:
    cases, names = decathlon_cases(data_dir)
    volume, _ = load_case(cases[3][0], None, names)
    matrix = set_oblique_geometry(volume)
    truth = scene.read_volume(cases[3][1], "vtkMRMLLabelMapVolumeNode", "truth")
    truth.SetIJKToRASMatrix(vtk_matrix(matrix))
    label_file = scene.write_volume(truth, workdir / "prediction.nrrd")
    colors = [[0.1, 0.2, 0.3], [0.7, 0.6, 0.5]]
    segmentation = scene.import_labelmap(label_file, volume, names, colors)
    assert _segments(segmentation) == [(n, tuple(c)) for n, c in zip(names, colors)]
    exported = _check_on_volume_grid(segmentation, volume, names, workdir)
    np.testing.assert_array_equal(exported, slicer.util.arrayFromVolume(truth))
    assert set(np.unique(exported)) == {0, 1, 2}
    np.testing.assert_allclose(scene.ijk_to_ras(volume), matrix)
    # into an existing segmentation: same-name segments replaced, others kept, every class present
    keep = segmentation.GetSegmentation().AddEmptySegment("Keep me", "Keep me")
    slicer.util.updateVolumeFromArray(truth, (slicer.util.arrayFromVolume(truth) == 1).astype(np.uint8))
    scene.import_labelmap(
        scene.write_volume(truth, workdir / "only_anterior.nrrd"), volume, names, colors, segmentation
    )
    assert [n for n, _ in _segments(segmentation)] == ["Keep me", *names]
    assert segmentation.GetSegmentation().GetSegment(keep) is not None
    replaced = scene.labelmap_array(segmentation, volume, names)
    np.testing.assert_array_equal(replaced, (exported == 1).astype(np.uint8))


def test_rejects_unusable_adapter(data_dir: Path, workdir: Path) -> None:
    cases, names = decathlon_cases(data_dir)
    volume, _ = load_case(cases[3][0], None, names)
    nameless = AdapterEntry(name="x", path=workdir, label_names=[], base_model_id="preset:unetr-tiny")
    for volumes, adapter, fragment in (
        ([], nameless, "no input volume"),
        ([volume], AdapterEntry(name="x", path=workdir, label_names=names), "does not name its base model"),
        ([volume], nameless, "does not name its classes"),
    ):
        try:
            start_segmentation(volumes, adapter, "cpu")
        except InputError as error:
            assert fragment in str(error), str(error)
        else:
            raise AssertionError(f"no InputError for {fragment!r}")


@needs_backend
def test_segment_volumes_end_to_end(data_dir: Path, workdir: Path) -> None:
    adapter = train_test_adapter(data_dir, workdir / "train")
    cases, names = decathlon_cases(data_dir)
    assert f"Classes: {', '.join(names)}" in adapter_summary(adapter)
    fourth, _ = load_case(cases[3][0], None, names)
    matrix = set_oblique_geometry(fourth)
    fifth, _ = load_case(cases[4][0], None, names)
    existing = scene.new_label_segmentation(fifth, ["Other"])
    assert [v.GetID() for v in volumes_to_segment()] == [fourth.GetID(), fifth.GetID()]
    run = start_segmentation(volumes_to_segment(), adapter, "cpu", targets=[None, existing])
    try:
        run.wait(timeout=600)
    finally:
        run.remove_workdir()  # the exported volumes: "Reload and Test" must leave no tcurlora-segment-* behind
    assert not run.workdir.exists()
    assert run.state == DONE, f"run {run.state}: {run.error_text()}\n" + "\n".join(run.worker.tail)
    check_events(run.events)
    assert run.events[0]["event"] == "started" and run.events[-1]["event"] == "done"
    first, second = run.segmentations
    assert second is existing and [n for n, _ in _segments(existing)] == ["Other", *names]
    expected = [(n, tuple(round(c, 4) for c in color)) for n, color in zip(names, adapter.label_colors)]
    assert _segments(first) == expected
    for segmentation, volume in ((first, fourth), (second, fifth)):
        labels = _check_on_volume_grid(segmentation, volume, names, workdir)
        assert set(np.unique(labels)) <= {0, 1, 2}
    np.testing.assert_allclose(scene.ijk_to_ras(fourth), matrix)


ALL_TESTS = (
    test_import_keeps_oblique_geometry,
    test_rejects_unusable_adapter,
    test_segment_volumes_end_to_end,
)
