"""Headless Slicer: a real MRML scene and real module logics from the slicer-core wheel, set up the way
the Slicer application does at startup (`slicer.mrmlScene`, `slicer.modules.<name>.logic()`), so the
modules' Qt-free <Module>Lib code and self-test bodies run in CI without the application."""

from __future__ import annotations

import sys
import types
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
# In Slicer these folders are on sys.path as the scripted-modules folder; here, the source tree.
for folder in (REPO_ROOT, REPO_ROOT / "TCURFineTune", REPO_ROOT / "TCURSegmenter"):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

slicer = pytest.importorskip("slicer", reason="the slicer-core wheel is not installed")

# name in slicer.modules -> (logic class, name the application logic registers it under)
MODULE_LOGICS = {
    "colors": ("vtkMRMLColorLogic", "Colors"),
    "volumes": ("vtkSlicerVolumesLogic", "Volumes"),
    "segmentations": ("vtkSlicerSegmentationsModuleLogic", "Segmentations"),
    "subjecthierarchy": ("vtkSlicerSubjectHierarchyModuleLogic", "SubjectHierarchy"),
    "plots": ("vtkSlicerPlotsLogic", "Plots"),
    "tables": ("vtkSlicerTablesLogic", "Tables"),
}


def start_slicer_core() -> types.SimpleNamespace:
    """One scene + application logic + module logics, exposed as Slicer exposes them (also used by child
    interpreters of the tests)."""
    scene = slicer.vtkMRMLScene()
    app_logic = slicer.vtkSlicerApplicationLogic()
    app_logic.SetMRMLScene(scene)
    modules = types.SimpleNamespace()
    for name, (class_name, registered) in MODULE_LOGICS.items():
        logic = getattr(slicer, class_name)()
        logic.SetMRMLScene(scene)
        logic.SetMRMLApplicationLogic(app_logic)
        app_logic.SetModuleLogic(registered, logic)
        setattr(modules, name, types.SimpleNamespace(logic=lambda logic=logic: logic))
    slicer.mrmlScene = scene
    slicer.modules = modules
    return types.SimpleNamespace(scene=scene, app_logic=app_logic, modules=modules)


@pytest.fixture(scope="session")
def slicer_app() -> Iterator[types.SimpleNamespace]:
    """One scene + application logic + module logics for the session, exposed as Slicer exposes them."""
    yield start_slicer_core()
    del slicer.mrmlScene, slicer.modules


@pytest.fixture
def mrml(slicer_app: types.SimpleNamespace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A cleared scene (as ScriptedLoadableModuleTest.setUp does) and a private model library."""
    slicer_app.scene.Clear(0)
    monkeypatch.setenv("TCURLORA_HOME", str(tmp_path / "library"))
    yield slicer_app.scene
    slicer_app.scene.Clear(0)
