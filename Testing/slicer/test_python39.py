"""Slicer 5.8 runs Python 3.9: the panels and TCURLoRACommon must load there far enough to tell the user
that TCURLoRA needs Slicer 5.10 (the backend needs Python 3.10). ruff checks their syntax at py39
(pyproject.toml, per-file-target-version); this checks what ruff does not: Python 3.10 features that fail
only at run time, and compiles the files with a real Python 3.9 when one is installed."""

from __future__ import annotations

import ast
import glob
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# ... and the settings declaration they derive their defaults from and the file names they read (standard
# library only)
PANEL_FILES = sorted(
    p for folder in ("TCURFineTune", "TCURSegmenter", "TCURLoRACommon") for p in (ROOT / folder).rglob("*.py")
) + [ROOT / "tcurlora" / "settings.py", ROOT / "tcurlora" / "filenames.py"]


def _is_union(node: ast.AST) -> bool:
    return isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr)


def _type_like(node: ast.AST) -> bool:
    """A name, attribute, subscript or None: what `X | Y` is made of when it means a type union."""
    if _is_union(node):
        return _type_like(node.left) and _type_like(node.right)
    return isinstance(node, (ast.Name, ast.Attribute, ast.Subscript)) or (
        isinstance(node, ast.Constant) and node.value is None
    )


def python310_runtime_features(source: str) -> list[str]:
    """Python 3.10+ features that parse on 3.9 but fail when the line runs there."""
    tree = ast.parse(source)
    future = any(
        isinstance(n, ast.ImportFrom)
        and n.module == "__future__"
        and any(a.name == "annotations" for a in n.names)
        for n in tree.body
    )
    problems = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            if node.func.id == "zip" and any(k.arg == "strict" for k in node.keywords):
                problems.append(f"line {node.lineno}: zip(strict=) needs Python 3.10")
            if (
                node.func.id in ("isinstance", "issubclass")
                and len(node.args) == 2
                and _is_union(node.args[1])
            ):
                problems.append(f"line {node.lineno}: {node.func.id}() with X | Y needs Python 3.10")
            if node.func.id == "dataclass" and any(k.arg in ("slots", "kw_only") for k in node.keywords):
                problems.append(f"line {node.lineno}: dataclass(slots/kw_only) needs Python 3.10")
        if isinstance(node, ast.ClassDef) and any(
            getattr(d, "id", None) == "parameterNodeWrapper" for d in node.decorator_list
        ):  # the wrapper evaluates its annotations, even under `from __future__ import annotations`
            for item in node.body:
                if isinstance(item, ast.AnnAssign) and any(_is_union(n) for n in ast.walk(item.annotation)):
                    problems.append(f"line {item.lineno}: X | Y in a parameter node field needs Python 3.10")
        annotations = []
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            annotations = [a.annotation for a in (*node.args.args, *node.args.kwonlyargs) if a.annotation]
            annotations += [node.returns] if node.returns else []
        elif isinstance(node, ast.AnnAssign):
            annotations = [node.annotation]
        if not future and any(_is_union(n) for a in annotations for n in ast.walk(a)):
            problems.append(
                f"line {node.lineno}: X | Y annotation without `from __future__ import annotations`"
            )
    for node in tree.body:  # module-level aliases such as `Job = A | B` run at import
        if isinstance(node, ast.Assign) and _is_union(node.value) and _type_like(node.value):
            problems.append(f"line {node.lineno}: module-level X | Y alias needs Python 3.10")
    return problems


@pytest.mark.parametrize("path", PANEL_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_panel_code_has_no_python310_features(path: Path) -> None:
    source = path.read_text(encoding="utf-8")
    ast.parse(source, feature_version=(3, 9))
    assert python310_runtime_features(source) == []


def test_the_feature_check_can_fail() -> None:
    bad = (
        "import dataclasses\n"
        "Alias = int | None\n"
        "def f(a: int | None, b):\n"
        "    return list(zip(a, b, strict=True)), isinstance(a, int | float)\n"
        "@parameterNodeWrapper\nclass P:\n    x: str | None = None\n"
    )
    found = python310_runtime_features(bad)
    lines = sorted(int(p.split(":")[0].split()[1]) for p in found)
    assert lines == [2, 3, 4, 4, 7, 7], found
    assert (
        python310_runtime_features("from __future__ import annotations\ndef f(a: int | None): pass\n") == []
    )
    assert python310_runtime_features("FLAGS = 1 | 2\n") == []  # numbers are not a type alias


def python39() -> str | None:
    """A working Python 3.9: $TCURLORA_PYTHON39, one installed by pyenv, or python3.9 on PATH."""
    candidates = [os.environ.get("TCURLORA_PYTHON39")]
    candidates += sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.9*/bin/python3.9")))
    candidates.append(shutil.which("python3.9"))
    for candidate in filter(None, candidates):
        try:
            version = subprocess.run(
                [candidate, "-c", "import sys; print(sys.version_info[:2])"],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            ).stdout.strip()
        except OSError:
            continue
        if version == "(3, 9)":
            return candidate
    return None


def test_real_python39_compiles_the_panels_and_shows_the_message() -> None:
    interpreter = python39()
    if interpreter is None:
        pytest.skip("no Python 3.9 installed (set TCURLORA_PYTHON39); the AST checks above still ran")
    files = [str(p) for p in PANEL_FILES]
    script = (
        "import sys, py_compile\n"
        "assert sys.version_info[:2] == (3, 9), sys.version\n"
        "for f in sys.argv[1:]:\n"
        "    py_compile.compile(f, cfile=f + '.py39check', doraise=True)\n"
        "sys.path.insert(0, '.')\n"
        "import TCURLoRACommon.jobs  # the parameter nodes' defaults, imported when Slicer loads the module\n"
        "import TCURLoRACommon.lifecycle  # imported with the shared panel lifecycle, before the check\n"
        "from TCURLoRACommon.compat import unsupported_message\n"
        "print(unsupported_message())\n"
    )
    completed = subprocess.run(
        [interpreter, "-c", script, *files],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    for f in files:
        Path(f + ".py39check").unlink(missing_ok=True)
    assert completed.returncode == 0, completed.stderr[-3000:]
    message = completed.stdout.strip()
    assert "needs 3D Slicer 5.10 or newer" in message and "Python 3.9." in message, message


def test_message_only_below_python_310() -> None:
    from TCURLoRACommon.compat import MIN_SLICER, unsupported_message

    assert MIN_SLICER == "5.10"
    assert unsupported_message((3, 12, 10)) is None and unsupported_message((3, 10, 0)) is None
    message = unsupported_message((3, 9, 10))
    assert message is not None and "Slicer 5.10 or newer" in message and "Python 3.9.10" in message
