"""Scene set-up for the modules' self-tests: real Decathlon cases as volumes + segmentations in studies."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import slicer
import vtk

from TCURLoRACommon import scene

TEST_BASE_MODEL = "preset:unetr-tiny"
TEST_PATCH = (32, 32, 32)
# What the worker imports beyond a fresh Slicer (numpy, SimpleITK, VTK): absent on the extension factory,
# where ensure_dependencies installs nothing in testing mode.
BACKEND_PACKAGES = ("torch", "monai", "safetensors", "einops", "nibabel", "scipy")


def needs_backend(body: Callable) -> Callable:
    """Mark a self-test body that runs the worker (training or segmenting): it needs BACKEND_PACKAGES."""
    body.needs_backend = True  # type: ignore[attr-defined]
    return body


def missing_backend() -> list[str]:
    """The backend packages this Python cannot import (found without importing them)."""
    import importlib.util

    return [name for name in BACKEND_PACKAGES if importlib.util.find_spec(name) is None]


def select_bodies(
    bodies: Sequence[Callable], missing: Sequence[str]
) -> tuple[list[Callable], list[Callable]]:
    """(bodies to run, bodies skipped): everything with the backend installed; without it (the extension
    factory's ctest) only the bodies that need no worker: scene pairing, export, geometry, input checks."""
    if not missing:
        return list(bodies), []
    return [b for b in bodies if not getattr(b, "needs_backend", False)], [
        b for b in bodies if getattr(b, "needs_backend", False)
    ]


def skipped_text(skipped: Sequence[Callable], missing: Sequence[str]) -> str:
    """The line the self-test shows for the bodies it skipped ('' when none)."""
    if not skipped:
        return ""
    return (
        f"Skipped {len(skipped)} test(s) that run the backend worker ({', '.join(b.__name__ for b in skipped)}): "
        f"{', '.join(missing)} not installed in this Slicer."
    )


def run_self_tests(
    bodies: Sequence[Callable],
    set_up: Callable[[], None],
    say: Callable[[str], None],
    missing: Sequence[str] | None = None,
) -> tuple[list[str], list[str]]:
    """Run a module's Qt-free self-test bodies as "Reload and Test" does: each on a fresh scene (`set_up`) and
    in its own library, on generated cases unless TCURLORA_DATA is set; without the backend (the extension
    factory's ctest) only those that need none, saying which were skipped. Returns (names run, names skipped)."""
    import logging
    import tempfile

    missing = missing_backend() if missing is None else list(missing)
    selected, skipped = select_bodies(bodies, missing)
    ran = []
    with tempfile.TemporaryDirectory() as cache:
        data = self_test_data("hippocampus", Path(cache))
        if skipped:
            logging.warning(skipped_text(skipped, missing))
            say(skipped_text(skipped, missing))
        for body in selected:
            set_up()
            say(body.__name__)
            with tempfile.TemporaryDirectory() as folder, isolated_library(Path(folder) / "library"):
                body(data, Path(folder) / "work")
            ran.append(body.__name__)
    return ran, [b.__name__ for b in skipped]


def find_data(name: str) -> Path | None:
    """The real Decathlon folder `name` under $TCURLORA_DATA, or None (no guessing at other folders)."""
    root = os.environ.get("TCURLORA_DATA")
    if root and (Path(root) / name / "dataset.json").is_file():
        return Path(root) / name
    return None


def generated_data(folder: Path, num_cases: int = 5, seed: int = 7) -> Path:
    """Small generated MRI-like cases (tcurlora.synthetic: an "organ" and a "lesion" class, 32x40x40
    voxels of 1.5 mm) in a Decathlon folder: what the self-tests use where the real data is absent."""
    from tcurlora.synthetic import write_dataset

    folder = Path(folder)
    if (folder / "dataset.json").is_file():
        return folder
    return write_dataset(folder, num_cases, seed=seed, shape=(32, 40, 40), spacing=1.5)


def self_test_data(name: str, workdir: Path) -> Path:
    """The real data set when $TCURLORA_DATA has it, else generated cases: the self-tests never skip."""
    return find_data(name) or generated_data(Path(workdir) / "generated-data")


def decathlon_cases(folder: Path) -> tuple[list[tuple[Path, Path]], list[str]]:
    """(image, label) paths of a Decathlon folder, and its class names (label 1..N)."""
    info = json.loads((folder / "dataset.json").read_text(encoding="utf-8"))
    labels = {int(k): v for k, v in info["labels"].items() if int(k) > 0}
    pairs = [((folder / e["image"]).resolve(), (folder / e["label"]).resolve()) for e in info["training"]]
    return pairs, [labels[k] for k in sorted(labels)]


def new_study(patient: str, study: str) -> int:
    """A patient + study subject-hierarchy item pair; returns the study item."""
    hierarchy = slicer.mrmlScene.GetSubjectHierarchyNode()
    patient_item = hierarchy.CreateSubjectItem(hierarchy.GetSceneItemID(), patient)
    return hierarchy.CreateStudyItem(patient_item, study)


def load_case(image: Path, label: Path | None, names: list[str], study: bool = True):
    """Load a case as a scalar volume and (when `label`) a segmentation with segments `names`."""
    volume = scene.read_volume(image, name=image.name.split(".")[0])
    hierarchy = slicer.mrmlScene.GetSubjectHierarchyNode()
    if study:
        study_item = new_study(f"patient {volume.GetName()}", "MR study")
        hierarchy.SetItemParent(scene.hierarchy_item(volume), study_item)
    if label is None:
        return volume, None
    return volume, scene.import_labelmap(label, volume, names, None, None, f"{volume.GetName()} labels")


def set_oblique_geometry(
    volume: slicer.vtkMRMLVolumeNode, degrees: float = 30.0, origin=(-12.5, 40.0, 7.25)
) -> np.ndarray:
    """Give a volume a rotated, anisotropic IJK-to-RAS with a non-zero origin; returns the matrix."""
    angle = np.deg2rad(degrees)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    rotation = rotation @ np.diag([-1.0, 1.0, 1.0])  # a flip too: LPS-like direction
    matrix = np.eye(4)
    matrix[:3, :3] = rotation @ np.diag([0.9, 1.1, 1.3])
    matrix[:3, 3] = origin
    volume.SetIJKToRASMatrix(vtk_matrix(matrix))
    return matrix


def vtk_matrix(matrix: np.ndarray) -> vtk.vtkMatrix4x4:
    """A 4x4 numpy array as a vtkMatrix4x4."""
    result = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            result.SetElement(r, c, float(matrix[r, c]))
    return result


class isolated_library:  # noqa: N801 - used as a context manager, reads like one
    """Point $TCURLORA_HOME at `folder` for the duration of a test, so tests never touch the user's library."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.previous: str | None = None

    def __enter__(self) -> Path:
        self.previous = os.environ.get("TCURLORA_HOME")
        os.environ["TCURLORA_HOME"] = str(self.folder)
        return self.folder

    def __exit__(self, *exc_info) -> None:
        if self.previous is None:
            os.environ.pop("TCURLORA_HOME", None)
        else:
            os.environ["TCURLORA_HOME"] = self.previous


def library_leftovers() -> list[str]:
    """Everything in the library's adapters folder (complete or not): what a failed run must not leave."""
    from tcurlora.library import adapters_dir

    folder = adapters_dir()
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def check_events(events: list[dict]) -> None:
    """Every event a run received validates against the shared schema."""
    from tcurlora.jobs.event_schema import validate_event

    for event in events:
        validate_event(event)


def train_test_adapter(data_dir: Path, workdir: Path, name: str = "segmenter test", num_cases: int = 2):
    """A tiny adapter trained by the real worker on the first `num_cases` cases of a Decathlon folder."""
    from tcurlora import library
    from tcurlora.filenames import JOB_SCHEMA
    from TCURLoRACommon.runs import DONE, WorkerRun

    staging = library.staging_path(name)
    job = {
        "schema": JOB_SCHEMA,
        "command": "finetune",
        "base_model": TEST_BASE_MODEL,
        "data": str(data_dir),
        "num_cases": num_cases,
        "label_names": decathlon_cases(data_dir)[1],
        "label_colors": [[0.2, 0.4, 0.6], [0.9, 0.1, 0.1]],
        "iterations": 2,
        "batch_size": 1,
        "patch_size": list(TEST_PATCH),
        "device": "cpu",
        "amp": False,
        "checkpoint_every": 0,
        "output": str(staging),
    }
    run = WorkerRun(job, workdir, [staging]).start().wait(timeout=600)
    assert run.state == DONE, f"training the test adapter {run.state}: {run.error_text()}"
    return library.install_adapter(staging, name)


def run_until(run, kind: str, timeout: float = 300) -> None:
    """Poll a run (as the panels' timers do) until an event of `kind` has arrived; AssertionError when the
    run ends first or `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while not any(e["event"] == kind for e in run.events):
        run.update()
        assert not run.finished, f"the run ended before a {kind} event: {run.error_text()}"
        assert time.monotonic() < deadline, f"no {kind} event within {timeout:.0f} s"
        time.sleep(0.05)
