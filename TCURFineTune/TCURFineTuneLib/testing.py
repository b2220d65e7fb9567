"""Bodies of TCURFineTuneTest, Qt-free: run by Slicer's self-test and headless by pytest (slicer-core)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import slicer

from TCURFineTuneLib.cases import TrainingPair, class_names, export_cases, pair_by_study, unlabeled_for_job
from TCURFineTuneLib.run import FineTuneRun, can_resume, discard_interrupted
from tcurlora import library
from tcurlora.errors import InputError
from tcurlora.filenames import CHECKPOINT_FILE
from tcurlora.fsutil import atomic_write_json
from TCURLoRACommon import scene
from TCURLoRACommon.jobs import FineTuneSettings, finetune_job
from TCURLoRACommon.runs import CANCELLED, DONE
from TCURLoRACommon.testdata import (
    TEST_BASE_MODEL,
    TEST_PATCH,
    check_events,
    decathlon_cases,
    library_leftovers,
    load_case,
    needs_backend,
    run_until,
)
from TCURLoRACommon.worker import CANCEL_EXIT_CODES


def fast_settings(iterations: int = 3) -> FineTuneSettings:
    """Tiny, fast, CPU-only settings for the self-tests."""
    return FineTuneSettings(
        base_model=TEST_BASE_MODEL,
        iterations=iterations,
        patch_size=TEST_PATCH,
        batch_size=1,
        device="cpu",
        checkpoint_every=0,
        amp=False,
    )


def load_training_scene(data_dir: Path, count: int = 3) -> tuple[list[TrainingPair], list[str]]:
    """`count` labeled cases of a Decathlon folder, each volume + segmentation in its own study."""
    cases, names = decathlon_cases(data_dir)
    pairs = [TrainingPair(*load_case(image, label, names)) for image, label in cases[:count]]
    return pairs, names


def _expect_error(pairs: list[TrainingPair], workdir: Path, *fragments: str) -> None:
    try:
        FineTuneRun(pairs, fast_settings(), "bad", workdir, curves=False)
    except InputError as error:
        for fragment in fragments:
            assert fragment in str(error), f"{fragment!r} not in {str(error)!r}"
    else:
        raise AssertionError(f"no InputError for a scene that should fail with {fragments}")
    assert library_leftovers() == [], library_leftovers()


def test_pair_by_study(data_dir: Path, workdir: Path) -> None:
    pairs, names = load_training_scene(data_dir, 3)
    cases, _ = decathlon_cases(data_dir)
    load_case(cases[3][0], None, names)  # an unlabeled volume in its own study: not paired
    stray = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "no study")  # top level: not paired
    role = slicer.vtkMRMLSegmentationNode.GetReferenceImageGeometryReferenceRole()
    pairs[1].segmentation.RemoveNodeReferenceIDs(role)  # paired by its study alone
    assert (
        scene.study_of(pairs[1].segmentation)
        == scene.study_of(pairs[1].volume)
        != scene.study_of(pairs[0].volume)
    )
    found = pair_by_study()
    assert [(p.volume.GetID(), p.segmentation.GetID()) for p in found] == [
        (p.volume.GetID(), p.segmentation.GetID()) for p in pairs
    ]
    assert stray.GetID() not in {p.volume.GetID() for p in found}
    assert class_names(found) == names and len(names) == 2


def test_export_keeps_geometry_and_labels(data_dir: Path, workdir: Path) -> None:
    pairs, names = load_training_scene(data_dir, 3)
    cases, _ = decathlon_cases(data_dir)
    exported, exported_names = export_cases(pairs, workdir / "cases")
    assert exported_names == names and len(exported) == 3
    assert len({c["id"] for c in exported}) == 3
    for case, pair, (_, label_file) in zip(exported, pairs, cases):
        image = scene.read_volume(case["image"])
        assert scene.same_geometry(image, pair.volume)
        np.testing.assert_array_equal(
            slicer.util.arrayFromVolume(image), slicer.util.arrayFromVolume(pair.volume)
        )
        label = scene.read_volume(case["label"], "vtkMRMLLabelMapVolumeNode")
        original = scene.read_volume(label_file, "vtkMRMLLabelMapVolumeNode")
        assert scene.same_geometry(label, pair.volume)
        np.testing.assert_array_equal(
            slicer.util.arrayFromVolume(label), slicer.util.arrayFromVolume(original)
        )
    job = finetune_job(fast_settings(), exported, names, [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], workdir / "out")
    from tcurlora.jobs.schema import FinetuneJob

    parsed = FinetuneJob.from_file(atomic_write_json(workdir / "job.json", job))
    assert parsed.label_names == names and parsed.method == "tcur" and parsed.iterations == 3
    assert [c.id for c in parsed.cases] == [c["id"] for c in exported]
    assert parsed.patch_size == list(TEST_PATCH) and parsed.device == "cpu"


def test_bad_scene_inputs(data_dir: Path, workdir: Path) -> None:
    pairs, names = load_training_scene(data_dir, 3)
    _expect_error([], workdir / "a", "no training cases")
    _expect_error(
        [pairs[0], TrainingPair(pairs[1].volume, None)],
        workdir / "b",
        f"'{pairs[1].volume.GetName()}'",
        "has no segmentation",
    )
    _expect_error(
        [pairs[0], TrainingPair(pairs[0].volume, pairs[1].segmentation)], workdir / "c", "used by two"
    )
    renamed = pairs[2].segmentation.GetSegmentation()
    renamed.GetSegment(renamed.GetSegmentIdBySegmentName(names[1])).SetName("Tail")
    _expect_error(pairs, workdir / "d", "segment names differ", f"missing: {names[1]}", "unexpected: Tail")
    renamed.GetSegment(renamed.GetSegmentIdBySegmentName("Tail")).SetName(names[1])
    segmentation = pairs[1].segmentation
    first = segmentation.GetSegmentation().GetSegmentIdBySegmentName(names[0])
    empty = np.zeros(slicer.util.arrayFromVolume(pairs[1].volume).shape, np.uint8)
    slicer.util.updateSegmentBinaryLabelmapFromArray(empty, segmentation, first, pairs[1].volume)
    _expect_error(pairs, workdir / "e", f"segment '{names[0]}'", f"'{segmentation.GetName()}' is empty")


def test_segmentation_on_other_grid_is_resampled(data_dir: Path, workdir: Path) -> None:
    cases, names = decathlon_cases(data_dir)
    volume, _ = load_case(cases[0][0], None, names)
    coarse = scene.read_volume(cases[0][1], "vtkMRMLLabelMapVolumeNode", "coarse label")
    values = slicer.util.arrayFromVolume(coarse)[::2, ::2, ::2].copy()  # every other voxel: a 2 mm grid
    spacing = np.array(coarse.GetSpacing()) * 2
    slicer.util.updateVolumeFromArray(coarse, values)
    coarse.SetSpacing(*spacing)
    segmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "coarse segmentation")
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(coarse)
    slicer.modules.segmentations.logic().ImportLabelmapToSegmentationNode(coarse, segmentation)
    seg = segmentation.GetSegmentation()
    for index, name in enumerate(names):
        seg.GetNthSegment(index).SetName(name)
    exported, _ = export_cases([TrainingPair(volume, segmentation)], workdir / "cases")
    label = scene.read_volume(exported[0]["label"], "vtkMRMLLabelMapVolumeNode")
    assert scene.same_geometry(label, volume), "the labelmap must be on the volume's grid"
    resampled = slicer.util.arrayFromVolume(label)
    assert set(np.unique(resampled)) == {0, 1, 2}
    expected = np.repeat(np.repeat(np.repeat(values, 2, 0), 2, 1), 2, 2)[
        tuple(slice(0, s) for s in resampled.shape)
    ]
    agreement = (resampled == expected).mean()
    assert agreement > 0.97, f"resampled labels agree with the coarse ones on only {agreement:.1%} of voxels"


@needs_backend
def test_finetune_end_to_end(data_dir: Path, workdir: Path) -> library.AdapterEntry:
    pairs, names = load_training_scene(data_dir, 3)
    run = FineTuneRun(pairs, fast_settings(3), "hippocampus test", workdir).start()
    run.wait(timeout=600)
    assert run.state == DONE, f"run {run.state}: {run.error_text()}\n" + "\n".join(run.worker.tail)
    check_events(run.events)
    kinds = [e["event"] for e in run.events]
    assert kinds[0] == "started" and kinds[-1] == "done", kinds
    progress = [e for e in run.events if e["event"] == "progress"]
    assert progress and progress[-1]["iteration"] == progress[-1]["total"] == 3
    assert len(run.curves.rows()) == len(progress)
    assert [row[0] for row in run.curves.rows()] == [float(e["iteration"]) for e in progress]
    assert run.fraction() == 1.0
    entries = library.list_adapters()
    assert [e.name for e in entries] == ["hippocampus_test"], entries
    assert run.adapter == entries[0] and entries[0].label_names == names
    assert entries[0].method == "tcur" and entries[0].rank == 8
    assert library_leftovers() == ["hippocampus_test"]
    return entries[0]


@needs_backend
def test_cancel_leaves_nothing(data_dir: Path, workdir: Path) -> None:
    pairs, _ = load_training_scene(data_dir, 2)
    run = FineTuneRun(pairs, fast_settings(100000), "cancelled", workdir, curves=False).start()
    deadline = time.monotonic() + 300
    while not any(e["event"] in ("progress", "checkpoint") for e in run.events):
        run.update()
        assert not run.finished, f"run ended before it could be cancelled: {run.error_text()}"
        assert time.monotonic() < deadline, "no progress event within 300 s"
        time.sleep(0.1)
    run.cancel()
    run.wait(timeout=60)
    assert run.state == CANCELLED
    assert run.worker.returncode in CANCEL_EXIT_CODES, run.worker.returncode
    assert library.list_adapters() == [] and library_leftovers() == []


@needs_backend
def test_resume_after_cancel(data_dir: Path, workdir: Path) -> None:
    pairs, _ = load_training_scene(data_dir, 2)
    settings = fast_settings(100000)
    settings.checkpoint_every = 2
    run = FineTuneRun(pairs, settings, "resumed", workdir, curves=False).start()
    run_until(run, "checkpoint")
    run.cancel()
    run.wait(timeout=60)
    assert run.state == CANCELLED and run.resumable() and can_resume(run.job_path)
    assert library.list_adapters() == [], "a cancelled run must not add an adapter"
    saved = json.loads((run.checkpoint / CHECKPOINT_FILE).read_text())["iteration"]
    assert saved >= 2 and saved % 2 == 0
    resumed = FineTuneRun.resume(run.job_path, curves=False).start()
    assert resumed.job["resume"] is True and resumed.staging == run.staging
    run_until(resumed, "progress")
    first = next(e for e in resumed.events if e["event"] == "progress")
    assert first["iteration"] == saved + 1, (first["iteration"], saved)
    assert any("resumed from" in (e.get("message") or "") for e in resumed.events)
    resumed.cancel()
    resumed.wait(timeout=60)
    discard_interrupted(resumed.job_path)
    assert not can_resume(resumed.job_path) and not resumed.workdir.exists()
    assert library.list_adapters() == [] and library_leftovers() == []


def test_unlabeled_scene_volumes_join_the_job(data_dir: Path, workdir: Path) -> None:
    """Two labeled cases and one volume without a segmentation: with "Also learn from unlabeled volumes"
    on, the job's `unlabeled` lists exactly that volume's exported file (same voxels); off, no `unlabeled`."""
    from tcurlora.jobs.schema import FinetuneJob

    pairs, names = load_training_scene(data_dir, 2)
    cases, _ = decathlon_cases(data_dir)
    extra, _ = load_case(cases[2][0], None, names)
    role = slicer.vtkMRMLSegmentationNode.GetReferenceImageGeometryReferenceRole()
    pairs[1].segmentation.RemoveNodeReferenceIDs(role)  # labeled through the table alone
    for enabled in (True, False):
        folder = workdir / ("on" if enabled else "off")
        unlabeled = unlabeled_for_job(pairs, enabled)
        run = FineTuneRun(pairs, fast_settings(), "semi", folder, curves=False, unlabeled=unlabeled)
        job = json.loads(Path(run.job_path).read_text())
        if not enabled:
            assert unlabeled == [] and "unlabeled" not in job, job.get("unlabeled")
            assert FinetuneJob.from_file(run.job_path).unlabeled is None
            continue
        assert [v.GetID() for v in unlabeled] == [extra.GetID()]
        expected = folder / "cases" / "unlabeled" / f"{extra.GetName()}.nrrd"
        assert job["unlabeled"] == [str(expected)], job["unlabeled"]
        assert not {c["image"] for c in job["cases"]} & set(job["unlabeled"])
        written = scene.read_volume(expected)
        assert scene.same_geometry(written, extra)
        np.testing.assert_array_equal(
            slicer.util.arrayFromVolume(written), slicer.util.arrayFromVolume(extra)
        )
        slicer.mrmlScene.RemoveNode(written)
        assert FinetuneJob.from_file(run.job_path).unlabeled == [expected]
    assert library_leftovers() == [], library_leftovers()


ALL_TESTS = (
    test_pair_by_study,
    test_export_keeps_geometry_and_labels,
    test_bad_scene_inputs,
    test_segmentation_on_other_grid_is_resampled,
    test_finetune_end_to_end,
    test_cancel_leaves_nothing,
    test_resume_after_cancel,
    test_unlabeled_scene_volumes_join_the_job,
)
