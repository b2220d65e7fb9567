"""Run the fast tests (`pytest -m "not slow"`) under coverage and check that they reach every module.

The fast subset is the loop a developer runs after each change, so a module that only slow tests
exercise is a module whose breakage the loop cannot see. A module counts as reached when at least one
of its functions ran (a function's body, not just its `def` line at import); a module without
functions counts when it was imported. Exit 0 when every module is reached, 1 when some are not
(they are listed), 2 for bad arguments, and pytest's own code when the tests fail.

Usage: python scripts/fast_coverage.py [--source DIR ...] [--] [pytest arguments]
(defaults: the tcurlora package and the Slicer module folders, and `-q Testing`).
"""

from __future__ import annotations

import argparse
import ast
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SOURCES = ("tcurlora", "TCURLoRACommon", "TCURFineTune", "TCURSegmenter")
SKIP_PARTS = {"__pycache__", "Testing", "Resources"}
# Modules no test here can import, with the reason; everything they call lives in checked modules.
NOT_CHECKED = {
    "TCURFineTune/TCURFineTune.py": "the Qt panel: needs Slicer's GUI (its logic is TCURFineTuneLib)",
    "TCURSegmenter/TCURSegmenter.py": "the Qt panel: needs Slicer's GUI (its logic is TCURSegmenterLib)",
    "TCURLoRACommon/panelwidget.py": "the panels' Qt lifecycle: needs qt and slicer.i18n (its decisions are lifecycle.py)",
}


def function_bodies(path: Path) -> list[tuple[str, int, int]]:
    """(name, first body line, last line) of every function and method in `path`."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    bodies = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            bodies.append((node.name, node.body[0].lineno, node.end_lineno or node.body[0].lineno))
    return bodies


def module_files(source: Path) -> list[Path]:
    """The Python files of a package or module folder, without caches, tests and resources."""
    files = [source] if source.is_file() else sorted(source.rglob("*.py"))
    names = [(f, f.relative_to(source.parent)) for f in files]
    return [
        f
        for f, name in names
        if not SKIP_PARTS.intersection(name.parts) and name.as_posix() not in NOT_CHECKED
    ]


def unreached(sources: list[Path], executed: dict[str, set[int]]) -> list[str]:
    """The files of `sources` none of whose functions ran (or, without functions, never imported).

    `executed` maps an absolute file path to the line numbers that ran, as coverage records them."""
    missing = []
    for source in sources:
        for path in module_files(source):
            lines = executed.get(str(path.resolve()), set())
            bodies = function_bodies(path)
            if bodies:
                reached = any(lines.intersection(range(first, last + 1)) for _, first, last in bodies)
            else:
                reached = bool(lines) or not path.read_text(encoding="utf-8").strip()
            if not reached:
                missing.append(path.relative_to(source.parent).as_posix())
    return missing


def read_coverage(data_file: Path) -> dict[str, set[int]]:
    """Executed lines per file from a coverage data file (combined first when runs were parallel)."""
    import coverage

    data = coverage.CoverageData(basename=str(data_file))
    data.read()
    return {str(Path(f).resolve()): set(data.lines(f) or ()) for f in data.measured_files()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--source", action="append", type=Path, help="package or folder to check (repeatable)"
    )
    args, pytest_args = parser.parse_known_args(argv)
    pytest_args = [a for a in pytest_args if a != "--"] or ["-q", "Testing"]
    sources = [
        s if s.is_absolute() else ROOT / s for s in (args.source or [Path(s) for s in DEFAULT_SOURCES])
    ]
    for source in sources:
        if not source.exists():
            print(f"fast_coverage: source {source} does not exist", file=sys.stderr)
            return 2
    with tempfile.TemporaryDirectory(prefix="fast-coverage-") as tmp:
        data_file = Path(tmp) / ".coverage"
        source = ",".join(str(s) for s in sources)
        command = [sys.executable, "-m", "coverage", "run", f"--data-file={data_file}", f"--source={source}"]
        code = subprocess.run([*command, "-m", "pytest", "-m", "not slow", *pytest_args], cwd=ROOT).returncode
        if code != 0:
            print(f"fast_coverage: the fast tests failed (pytest exit code {code})", file=sys.stderr)
            return code
        missing = unreached(sources, read_coverage(data_file))
    if missing:
        print(
            f"fast_coverage: {len(missing)} module(s) not reached by any fast test (mark fewer tests slow, or add a fast one):"
        )
        for name in missing:
            print(f"  {name}")
        return 1
    print(f"fast_coverage: every module of {', '.join(s.name for s in sources)} is reached by a fast test")
    for name, reason in NOT_CHECKED.items():
        print(f"  not checked: {name} ({reason})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
