"""The fast-subset coverage check (scripts/fast_coverage.py) names exactly the modules no fast test reaches."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "fast_coverage.py"


def load_script():
    spec = importlib.util.spec_from_file_location("fast_coverage", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_package(root: Path) -> Path:
    """A package with a used function, a function only a slow test calls, and two constant-only modules."""
    package = root / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "used.py").write_text("def f():\n    return 1\n")
    (package / "unused.py").write_text("def g():\n    return 2\n")
    (package / "consts.py").write_text("X = 1\n")
    (package / "never_imported.py").write_text("Y = 2\n")
    (root / "test_pkg.py").write_text(
        "import pytest\n"
        "from pkg import consts, unused, used\n\n"
        "def test_fast():\n    assert used.f() + consts.X == 2\n\n"
        "@pytest.mark.slow\n"
        "def test_slow():\n    assert unused.g() == 2\n"
    )
    return package


def test_unreached_counts_function_bodies_not_imports(tmp_path):
    fast_coverage = load_script()
    package = write_package(tmp_path)
    # Lines a run would record: the import-time lines of every module, and f's body.
    executed = {
        str((package / "used.py").resolve()): {1, 2},
        str((package / "unused.py").resolve()): {1},
        str((package / "consts.py").resolve()): {1},
    }
    assert fast_coverage.unreached([package], executed) == ["pkg/never_imported.py", "pkg/unused.py"]
    executed[str((package / "unused.py").resolve())].add(2)
    executed[str((package / "never_imported.py").resolve())] = {1}
    assert fast_coverage.unreached([package], executed) == []


@pytest.mark.slow  # a fresh interpreter running pytest under coverage
def test_script_fails_naming_the_module_only_a_slow_test_reaches(tmp_path):
    package = write_package(tmp_path)
    command = [
        sys.executable,
        str(SCRIPT),
        "--source",
        str(package),
        "--",
        "-q",
        "-p",
        "no:cacheprovider",
        str(tmp_path),
    ]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "1 passed, 1 deselected" in result.stdout
    assert "2 module(s) not reached by any fast test" in result.stdout
    listed = [line.strip() for line in result.stdout.splitlines() if line.startswith("  pkg/")]
    assert listed == ["pkg/never_imported.py", "pkg/unused.py"]


def test_a_missing_source_is_refused_with_exit_2(tmp_path, capsys):
    assert load_script().main(["--source", str(tmp_path / "nowhere")]) == 2
    assert f"source {tmp_path / 'nowhere'} does not exist" in capsys.readouterr().err
