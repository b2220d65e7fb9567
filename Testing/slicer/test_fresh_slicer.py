"""A fresh Slicer has numpy, SimpleITK and VTK but none of the backend's packages: everything the two
panels import (at setup and in their slots) must import, and setup's code paths must run, without them."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# The module scripts and the lifecycle they share (RunPanelMixin imports lazily too).
MODULE_SCRIPTS = [
    ROOT / "TCURFineTune" / "TCURFineTune.py",
    ROOT / "TCURSegmenter" / "TCURSegmenter.py",
    ROOT / "TCURLoRACommon" / "panelwidget.py",
]
OUR_PACKAGES = ("TCURFineTuneLib", "TCURSegmenterLib", "TCURLoRACommon", "tcurlora")
NOT_IN_FRESH_SLICER = ("torch", "monai", "nibabel", "peft", "safetensors", "scipy", "psutil", "matplotlib")
SEARCH_PATH = [str(ROOT), str(ROOT / "TCURFineTune"), str(ROOT / "TCURSegmenter")]

# Runs in a child interpreter: the packages are made unimportable before anything else is imported.
CHILD = r"""
import importlib, importlib.abc, json, sys

BLOCKED, SEARCH, NAMES = json.loads(sys.argv[1])

class FreshSlicer(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r} (not in a fresh Slicer)", name=name)
        return None

sys.meta_path.insert(0, FreshSlicer())
sys.path[:0] = SEARCH
result = {"failed": {}, "setup": None, "blocked_works": False}
try:
    import nibabel  # noqa: F401
except ModuleNotFoundError:
    result["blocked_works"] = True
for name in NAMES:
    try:
        importlib.import_module(name)
    except BaseException as error:
        result["failed"][name] = f"{type(error).__name__}: {error}"
try:  # what the panels' setup() runs before the first click
    from TCURLoRACommon.compat import unsupported_message
    from TCURLoRACommon.models import base_model_choices, choose_base_model
    from TCURLoRACommon.runs import LOG_MAX_LINES
    from TCURFineTuneLib.cases import classes_text
    from TCURSegmenterLib.logic import choose_adapter
    from TCURFineTuneLib.interrupted import resume_candidate, sweep_stale_staging
    from tcurlora import library
    (library.adapters_dir() / ".staging-old-0123abcd.checkpoint").mkdir(parents=True)  # a killed run's leftover
    swept = [p.name for p in sweep_stale_staging()]
    choices = base_model_choices()
    result["setup"] = {
        "unsupported": unsupported_message(),
        "base_model": choose_base_model(choices, ""),
        "adapters": choose_adapter(library.list_adapters(), ""),
        "classes": classes_text([]),
        "log_lines": LOG_MAX_LINES,
        "swept": swept,
        "resume": resume_candidate(""),
    }
except BaseException as error:
    result["setup"] = f"{type(error).__name__}: {error}"
result["loaded"] = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
print(json.dumps(result))
"""


def imported_modules(script: Path) -> set[str]:
    """Every module of our packages that a script imports, at the top or lazily inside a function."""
    names = set()
    for node in ast.walk(ast.parse(script.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            # "from TCURFineTuneLib import testing" imports a submodule
            names |= {f"{node.module}.{a.name}" for a in node.names if (ROOT / node.module).is_dir()}
    return {n for n in names if n.split(".")[0] in OUR_PACKAGES}


def panel_modules() -> list[str]:
    """What the panels import, plus every shipped module of the Lib and Common packages."""
    names = set().union(*(imported_modules(s) for s in MODULE_SCRIPTS))
    for package, folder in (
        ("TCURLoRACommon", ROOT / "TCURLoRACommon"),
        ("TCURFineTuneLib", ROOT / "TCURFineTune" / "TCURFineTuneLib"),
        ("TCURSegmenterLib", ROOT / "TCURSegmenter" / "TCURSegmenterLib"),
    ):
        names |= {f"{package}.{p.stem}" for p in folder.glob("*.py") if p.stem != "__init__"}
    return sorted(n for n in names if _is_module(n))


def _is_module(name: str) -> bool:
    """False for `from X import function` entries that the AST walk cannot tell from submodules."""
    parts = name.split(".")
    for base in (ROOT, ROOT / "TCURFineTune", ROOT / "TCURSegmenter"):
        path = base.joinpath(*parts)
        if path.with_suffix(".py").is_file() or (path / "__init__.py").is_file():
            return True
    return False


@pytest.fixture(scope="module")
def fresh_slicer(tmp_path_factory: pytest.TempPathFactory) -> dict:
    names = panel_modules()
    env = {"TCURLORA_HOME": str(tmp_path_factory.mktemp("library")), "PATH": "/usr/bin:/bin"}
    completed = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps([NOT_IN_FRESH_SLICER, SEARCH_PATH, names])],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return {"names": names, **json.loads(completed.stdout.strip().splitlines()[-1])}


@pytest.mark.slow
def test_the_check_covers_the_panels_imports(fresh_slicer: dict) -> None:
    names = fresh_slicer["names"]
    assert fresh_slicer["blocked_works"], "the child could still import nibabel: the check proves nothing"
    for expected in (
        "TCURLoRACommon.dependencies",
        "TCURLoRACommon.jobs",
        "TCURLoRACommon.segment_run",
        "TCURLoRACommon.lifecycle",
        "TCURLoRACommon.runon",
        "TCURFineTuneLib.run",
        "TCURFineTuneLib.panel",
        "TCURSegmenterLib.logic",
        "tcurlora.library",
    ):
        assert expected in names, f"{expected} is not among the modules checked: {names}"


@pytest.mark.slow
def test_panel_imports_need_no_backend_packages(fresh_slicer: dict) -> None:
    assert fresh_slicer["failed"] == {}, "\n".join(f"{k}: {v}" for k, v in fresh_slicer["failed"].items())
    assert fresh_slicer["loaded"] == []


@pytest.mark.slow
def test_setup_code_runs_on_a_fresh_slicer(fresh_slicer: dict) -> None:
    setup = fresh_slicer["setup"]
    assert isinstance(setup, dict), setup
    assert setup["unsupported"] is None  # this interpreter is >= 3.10
    assert setup["base_model"] == "unetr-small-acdc-brats", "the built-in model must be the default"
    assert setup["adapters"] == -1 and setup["classes"] == "Classes: none" and setup["log_lines"] > 100
    assert setup["swept"] == [".staging-old-0123abcd.checkpoint"] and setup["resume"] == ""


def test_import_collection_sees_lazy_imports(tmp_path: Path) -> None:
    script = tmp_path / "M.py"
    script.write_text(
        "import qt\nfrom TCURLoRACommon.jobs import x\n"
        "def f():\n    from tcurlora.library import read_adapter\n    import torch\n"
    )
    assert imported_modules(script) == {"TCURLoRACommon.jobs", "tcurlora.library"}
