"""Static checks of the Slicer extension that fail on real packaging mistakes (no Slicer needed)."""

from __future__ import annotations

import ast
import json
import re
import struct
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MODULES = ("TCURFineTune", "TCURSegmenter")
MIXIN = ROOT / "TCURLoRACommon" / "panelwidget.py"  # RunPanelMixin: the lifecycle both widgets share
PACKAGED_FOLDERS = (*MODULES, "TCURLoRACommon")


def cmake_list(cmake: Path, variable: str) -> list[str]:
    """Items of `set(<variable> ...)` in a CMakeLists.txt, with ${MODULE_NAME} expanded."""
    text = cmake.read_text()
    module = re.search(r"set\(MODULE_NAME\s+(\w+)\)", text)
    block = re.search(rf"set\({variable}\s+(.*?)\)", text, re.S)
    assert block, f"{cmake}: no set({variable} ...)"
    items = block.group(1).split()
    return [i.replace("${MODULE_NAME}", module.group(1)) if module else i for i in items]


def cmake_value(text: str, name: str) -> str:
    match = re.search(rf'set\({name}\s+"([^"]*)"\)', text)
    assert match, f"CMakeLists.txt: {name} not set"
    return match.group(1)


def unlisted_files(folder: Path) -> tuple[list[str], list[str]]:
    """(files in the folder not listed in its CMakeLists, listed files that do not exist)."""
    cmake = folder / "CMakeLists.txt"
    text = cmake.read_text()
    prefix = "MODULE" if "MODULE_PYTHON_SCRIPTS" in text else "COMMON"
    listed = set(cmake_list(cmake, f"{prefix}_PYTHON_SCRIPTS")) | set(
        cmake_list(cmake, f"{prefix}_PYTHON_RESOURCES")
    )
    present = {
        p.relative_to(folder).as_posix()
        for p in folder.rglob("*")
        if p.is_file() and p.name != "CMakeLists.txt" and "__pycache__" not in p.parts and p.suffix != ".pyc"
    }
    return sorted(present - listed), sorted(listed - present)


def ui_names(ui: Path) -> set[str]:
    return {w.get("name") for w in ET.parse(ui).iter("widget")}


def used_ui_names(script: Path) -> set[str]:
    """Every `self.ui.<name>` in a module script."""
    names = set()
    for node in ast.walk(ast.parse(script.read_text())):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Attribute)
            and node.value.attr == "ui"
            and isinstance(node.value.value, ast.Name)
            and node.value.value.id == "self"
        ):
            names.add(node.attr)
    return names


def parameter_fields(script: Path) -> set[str]:
    """Annotated fields of the @parameterNodeWrapper class of a module script."""
    for node in ast.walk(ast.parse(script.read_text())):
        if isinstance(node, ast.ClassDef) and any(
            getattr(d, "id", None) == "parameterNodeWrapper" for d in node.decorator_list
        ):
            return {s.target.id for s in node.body if isinstance(s, ast.AnnAssign)}
    raise AssertionError(f"{script}: no @parameterNodeWrapper class")


@pytest.mark.parametrize("folder", PACKAGED_FOLDERS)
def test_every_file_is_listed_in_cmake(folder: str) -> None:
    unlisted, missing = unlisted_files(ROOT / folder)
    assert unlisted == [], f"{folder}: files not in CMakeLists.txt (not shipped): {unlisted}"
    assert missing == [], f"{folder}: CMakeLists.txt lists missing files (build fails): {missing}"


def test_unlisted_file_check_can_fail(tmp_path: Path) -> None:
    (tmp_path / "CMakeLists.txt").write_text(
        "set(MODULE_NAME Foo)\nset(MODULE_PYTHON_SCRIPTS\n  ${MODULE_NAME}.py\n  Gone.py\n)\nset(MODULE_PYTHON_RESOURCES\n)\n"
    )
    (tmp_path / "Foo.py").write_text("")
    (tmp_path / "FooLib").mkdir()
    (tmp_path / "FooLib" / "extra.py").write_text("")
    assert unlisted_files(tmp_path) == (["FooLib/extra.py"], ["Gone.py"])


@pytest.mark.parametrize("module", MODULES)
def test_ui_names_used_in_code_exist(module: str) -> None:
    ui = ROOT / module / "Resources" / "UI" / f"{module}.ui"
    script = ROOT / module / f"{module}.py"
    used, defined = used_ui_names(script) | used_ui_names(MIXIN), ui_names(ui)
    assert used, "the check found no self.ui.<name> at all"
    assert used - defined == set(), (
        f"{script.name} uses widgets missing from {ui.name}: {sorted(used - defined)}"
    )
    root = ET.parse(ui).getroot().find("widget")
    assert root.get("class") == "qMRMLWidget" and root.get("name") == module
    assert f'resourcePath("UI/{module}.ui")' in script.read_text()


@pytest.mark.parametrize("module", MODULES)
def test_parameter_names_match_parameter_node(module: str) -> None:
    ui = ROOT / module / "Resources" / "UI" / f"{module}.ui"
    bound = {
        p.findtext("string") for p in ET.parse(ui).iter("property") if p.get("name") == "SlicerParameterName"
    }
    fields = parameter_fields(ROOT / module / f"{module}.py")
    assert bound and bound - fields == set(), f"{ui.name} binds unknown parameters: {sorted(bound - fields)}"


def test_ui_check_can_fail(tmp_path: Path) -> None:
    script = tmp_path / "M.py"
    script.write_text(
        "class W:\n    def f(self):\n        self.ui.applyButton.enabled = self.ui.typoButton\n"
    )
    assert used_ui_names(script) == {"applyButton", "typoButton"}


# The first line of Slicer's extension template (Utilities/Templates/Extensions/Default/CMakeLists.txt) in
# the newest release read against (v5.12.x, unchanged on main); Slicer <= 5.8 had 3.16.3...3.19.7.
TEMPLATE_CMAKE_MINIMUM = "cmake_minimum_required(VERSION 3.28.0...3.28.0 FATAL_ERROR)"


def test_cmake_minimum_follows_the_current_template() -> None:
    first = (ROOT / "CMakeLists.txt").read_text().splitlines()[0]
    assert first == TEMPLATE_CMAKE_MINIMUM, (
        f"CMakeLists.txt line 1 is {first!r}, the template has {TEMPLATE_CMAKE_MINIMUM!r}"
    )
    others = [p for p in ROOT.glob("*/CMakeLists.txt") if "cmake_minimum_required" in p.read_text()]
    assert others == [], f"only the top-level CMakeLists.txt sets the CMake range: {others}"


def test_extension_metadata_is_consistent() -> None:
    text = (ROOT / "CMakeLists.txt").read_text()
    project = re.search(r"^project\((\w+)\)", text, re.M).group(1)
    assert (ROOT / f"{project}.json").is_file(), f"the ExtensionsIndex entry must be named {project}.json"
    entry = json.loads((ROOT / f"{project}.json").read_text())
    assert cmake_value(text, "EXTENSION_DEPENDS").split() == entry["build_dependencies"] == ["PyTorch"]
    assert cmake_value(text, "EXTENSION_CATEGORY") == entry["category"] == "Segmentation"
    assert "slicer-extension-catalog-entry-schema-v1.0.1" in entry["$schema"]
    assert Path(entry["scm_url"]).stem.startswith("Slicer") and entry["tier"] in (1, 3, 5)
    for key in ("EXTENSION_HOMEPAGE", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION", "EXTENSION_ICONURL"):
        assert cmake_value(text, key)
    for url in cmake_value(text, "EXTENSION_SCREENSHOTURLS").split() + [
        cmake_value(text, "EXTENSION_ICONURL")
    ]:
        relative = url.split("/main/", 1)[1]
        assert (ROOT / relative).is_file(), f"{url} points to a file missing from the repository"
    subdirs = re.findall(r"add_subdirectory\((\w+)\)", text)
    assert sorted(subdirs) == sorted(PACKAGED_FOLDERS)
    for line in (
        "find_package(Slicer REQUIRED)",
        "include(${Slicer_USE_FILE})",
        "include(${Slicer_EXTENSION_GENERATE_CONFIG})",
        "include(${Slicer_EXTENSION_CPACK})",
    ):
        assert line in text
    assert (ROOT / "LICENSE").is_file()


@pytest.mark.parametrize("module", MODULES)
def test_module_cmake_registers_its_test(module: str) -> None:
    text = (ROOT / module / "CMakeLists.txt").read_text()
    assert "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)" in text
    assert "WITH_GENERIC_TESTS" in text
    tree = ast.parse((ROOT / module / f"{module}.py").read_text())
    classes = {
        n.name: [b.id for b in n.bases if isinstance(b, ast.Name)]
        for n in tree.body
        if isinstance(n, ast.ClassDef)
    }
    assert classes[f"{module}Test"] == ["ScriptedLoadableModuleTest"]
    for suffix in ("", "Widget", "Logic"):
        assert f"{module}{suffix}" in classes


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()[:24]
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


@pytest.mark.parametrize(
    "icon", ["Resources/Icons/TCURLoRA.png", *(f"{m}/Resources/Icons/{m}.png" for m in MODULES)]
)
def test_icons_are_128_png(icon: str) -> None:
    assert png_size(ROOT / icon) == (128, 128)


def test_modules_import_no_heavy_packages_at_import_time() -> None:
    """torch/monai only lazily (after the dependency check): never at the top of a module file."""
    for folder in PACKAGED_FOLDERS:
        for script in (ROOT / folder).rglob("*.py"):
            for node in ast.parse(script.read_text()).body:
                names = []
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom):
                    names = [node.module or ""]
                heavy = [
                    n
                    for n in names
                    if n.split(".")[0] in ("torch", "monai", "qt")
                    and folder == "TCURLoRACommon"
                    or n.split(".")[0] in ("torch", "monai")
                ]
                assert not heavy, f"{script.relative_to(ROOT)} imports {heavy} at import time"


def _class_methods(node: ast.ClassDef) -> dict[str, ast.FunctionDef]:
    return {n.name: n for n in node.body if isinstance(n, ast.FunctionDef)}


def _methods(script: Path) -> dict[str, ast.FunctionDef]:
    """The widget's methods, with those it takes from RunPanelMixin (its own win, as in Python)."""
    tree = ast.parse(script.read_text())
    widget = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name.endswith("Widget"))
    if "RunPanelMixin" not in [getattr(b, "id", "") for b in widget.bases]:
        return _class_methods(widget)
    mixin = next(
        n
        for n in ast.parse(MIXIN.read_text()).body
        if isinstance(n, ast.ClassDef) and n.name == "RunPanelMixin"
    )
    return {**_class_methods(mixin), **_class_methods(widget)}


def _calls(function: ast.FunctionDef) -> list[str]:
    """Names of the functions and methods a function calls, in source order."""
    calls = sorted(
        (c for c in ast.walk(function) if isinstance(c, ast.Call)), key=lambda c: (c.lineno, c.col_offset)
    )
    return [c.func.attr if isinstance(c.func, ast.Attribute) else getattr(c.func, "id", "") for c in calls]


def _reached(methods: dict[str, ast.FunctionDef], name: str, seen: frozenset = frozenset()) -> list[str]:
    """`_calls` of a method with each call of another widget method followed into it, in source order."""
    found = []
    for called in _calls(methods[name]):
        found.append(called)
        if called in methods and called not in seen | {name}:
            found += _reached(methods, called, seen | {name})
    return found


@pytest.mark.parametrize("module", MODULES)
def test_widget_wiring_rules(module: str) -> None:
    """Version check before anything else, bounded log, errors of Start/Apply and of the timer shown."""
    methods = _methods(ROOT / module / f"{module}.py")
    setup = _reached(methods, "setup")
    assert "unsupported_message" in setup and setup.index("unsupported_message") < setup.index("loadUI")
    assert "setMaximumBlockCount" in setup
    start_slot = "onStartOrCancel" if module == "TCURFineTune" else "onApplyOrCancel"
    for slot in (start_slot, "onTimer"):
        assert "tryWithErrorDisplay" in _reached(methods, slot), f"{slot} must show its errors"
    assert "onReload" in methods and "forget_packages" in _reached(methods, "onReload")
    assert "shutdown_active" in _reached(methods, "cleanup"), "closing Slicer must not wait for the worker"


def test_reached_calls_follow_the_mixin(tmp_path: Path) -> None:
    script = tmp_path / "M.py"
    script.write_text("class MWidget(RunPanelMixin):\n    def setup(self):\n        self.setupPanel('x')\n")
    methods = _methods(script)
    assert "setupPanel" in methods and "enter" in methods, "the mixin's methods must count as the widget's"
    reached = _reached(methods, "setup")
    assert reached[0] == "setupPanel" and reached.index("unsupported_message") < reached.index("loadUI")


def test_screenshots_are_not_renderings() -> None:
    """The catalog shows screenshots of a running Slicer only: no figure drawn by a script of the repository
    (the former wireframe renderings of the .ui files, captioned "not a Slicer screenshot", were not)."""
    urls = cmake_value((ROOT / "CMakeLists.txt").read_text(), "EXTENSION_SCREENSHOTURLS").split()
    scripts = [(ROOT / name).read_text(encoding="utf-8") for name in tree_files(ROOT) if name.endswith(".py")]
    for url in urls:
        name = url.rsplit("/", 1)[-1]
        assert "layout" not in name and not any(name in s for s in scripts), (
            f"{url} is a rendering, not a screenshot"
        )
    for text in (
        (ROOT / "README.md").read_text(encoding="utf-8"),
        (ROOT / "docs/slicer_extension.md").read_text(),
    ):
        assert "_layout.png" not in text, "the docs still show the wireframe renderings"


# Files in the tree may be at most 12 MB; base model weights belong in the model catalog (downloaded on first
# use, SHA-256 checked: docs/slicer_extension.md, "Base model weights"); a built-in base is stored in int8
# (scripts/quantize_base.py) to fit. A clone must stay under the Extensions Index's 100 MB.
MAX_TREE_FILE_BYTES = 12_000_000


def tree_files(root: Path) -> list[str]:
    """Files git tracks or would add (untracked, not ignored), relative; every file when `root` is no checkout."""
    import subprocess

    try:
        listed = subprocess.run(
            ["git", "-C", str(root), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            capture_output=True,
            check=True,
        ).stdout.decode("utf-8", "replace")
    except (OSError, subprocess.CalledProcessError):
        return sorted(
            p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and ".git" not in p.parts
        )
    return sorted(name for name in listed.split("\0") if name)


def large_files(root: Path, limit: int = MAX_TREE_FILE_BYTES) -> dict[str, int]:
    """Files of the tree over `limit` bytes, with their sizes."""
    sizes = {name: (root / name).stat().st_size for name in tree_files(root) if (root / name).is_file()}
    return {name: size for name, size in sizes.items() if size > limit}


def test_no_file_over_12_mb() -> None:
    found = large_files(ROOT)
    assert found == {}, (
        f"files over {MAX_TREE_FILE_BYTES / 1e6:.0f} MB in the tree: {found}; store a base's weights in int8 "
        "(scripts/quantize_base.py) or put them in the model catalog (docs/slicer_extension.md, 'Base model "
        "weights'), not in git"
    )


def test_large_file_check_can_fail(tmp_path: Path) -> None:
    (tmp_path / "weights").mkdir()
    with open(tmp_path / "weights" / "big.safetensors", "wb") as handle:
        handle.truncate(MAX_TREE_FILE_BYTES + 1)
    (tmp_path / "small.txt").write_text("x")
    assert large_files(tmp_path) == {"weights/big.safetensors": MAX_TREE_FILE_BYTES + 1}


@pytest.mark.parametrize("module", MODULES)
def test_remote_rows_follow_run_on(module: str) -> None:
    """The remote-host rows are hidden with "Run on: this computer" and shown with "remote host"."""
    from TCURLoRACommon.runon import REMOTE_ROW_WIDGETS, remote_row_visibility

    names = ui_names(ROOT / module / "Resources" / "UI" / f"{module}.ui")
    rows = {n for n in names if n.startswith(("remoteHost", "remoteCommand", "sshConfig"))}
    assert rows == set(REMOTE_ROW_WIDGETS), f"{module}.ui: remote rows {sorted(rows)} are not all toggled"
    assert remote_row_visibility("this computer") == dict.fromkeys(REMOTE_ROW_WIDGETS, False)
    assert remote_row_visibility("remote host") == dict.fromkeys(REMOTE_ROW_WIDGETS, True)
    assert not any(remote_row_visibility("").values())
    script = ROOT / module / f"{module}.py"
    methods = _methods(script)
    assert "remote_row_visibility" in _calls(methods["updateRemoteRows"])
    assert "updateRemoteRows" in _calls(methods["setParameterNode"]), "a loaded scene must set the rows too"
    assert "self.ui.runOnComboBox.currentTextChanged.connect(self.updateRemoteRows)" in MIXIN.read_text()
    assert "setupPanel" in _calls(methods["setup"]), (
        "setup must make that connection (RunPanelMixin.setupPanel)"
    )
