"""The shape of the `tcurlora` package: no import circles, no import that runs back up the layers, no module
over 500 lines. A newcomer finds a name by going down the layers; a circle or an import that runs back up
means a module cannot be read, tested or moved without the ones above it, and a long module mixes jobs.

The graph is read with `ast`, not by importing: every `import` and `from ... import` counts, at module level
and inside functions (a function-level import is still a dependency, only a late one), relative imports
resolved. `from pkg import name` points at the module `pkg.name` when there is one, else at `pkg`. Importing
`a.b.c` also runs the `__init__` of `a` and `a.b`, so those packages count as imported too, except the
importer's own packages (Python has already run them) unless it names one itself; a package `__init__` is a
module like any other.

The layers, lowest first, are what the code says (a module may import its own layer and those below):

0. base: the torch-free or algebra-only utilities every layer uses (errors, file names, JSON, atomic
   writes, settings declarations, name patterns, output checks, locks, torchrun's environment, devices,
   the t-product algebra, Dice).
1. models: the model spec (and the voxel spacings it bounds), architectures, the registry, MONAI bundles.
2. data: cases, image reading and checking, MONAI transforms and the patch loader (they follow the spec).
3. protocol: the worker protocol's light parts, used by the layers above to check and report (job field
   bounds and parsers, CLI converters, the event schema, sinks, cancel, the runner).
4. adapters: the adaptation methods and their files.
5. training: the training step and loop, fine-tuning, pretraining, inference, segmentation, evaluation,
   suggestion, and the torchrun primitives they call.
6. jobs: the job classes and their JSON Schemas, and what starts a run (torchrun ranks, `--remote`).
7. apps: the commands, the benchmarks, federated adaptation and the demo.
8. cli: the command line that dispatches to the commands.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "tcurlora"
MAX_LINES = 500

# Each entry names a module, or a package and everything under it; the longest matching name decides, so
# `tcurlora.jobs.schema` (jobs) overrides `tcurlora.jobs` (protocol). The root package matches itself only.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    (
        "base",
        (
            "tcurlora",
            "tcurlora.errors",
            "tcurlora.filenames",
            "tcurlora.jsonio",
            "tcurlora.fsutil",
            "tcurlora.namepatterns",
            "tcurlora.settings",
            "tcurlora.outputs",
            "tcurlora.output_lock",
            "tcurlora.adapter_integrity",
            "tcurlora.torchrun_env",
            "tcurlora.device",
            "tcurlora.tensor_algebra",
            "tcurlora.dice",
            "tcurlora.library",
            "tcurlora.synthetic",
        ),
    ),
    ("models", ("tcurlora.models",)),
    ("data", ("tcurlora.data",)),
    ("protocol", ("tcurlora.jobs",)),
    ("adapters", ("tcurlora.adapters",)),
    (
        "training",
        (
            "tcurlora.training",
            "tcurlora.mean_teacher",
            "tcurlora.distributed",
            "tcurlora.finetuning_setup",
            "tcurlora.finetuning",
            "tcurlora.pretraining",
            "tcurlora.infer",
            "tcurlora.segmentation",
            "tcurlora.evaluate",
            "tcurlora.suggest",
        ),
    ),
    (
        "jobs",
        (
            "tcurlora.jobs.schema",
            "tcurlora.jobs.finetune_job",
            "tcurlora.jobs.segment_job",
            "tcurlora.jobs.job_reading",
            "tcurlora.jobs.schema_export",
            "tcurlora.distributed_runs",
            "tcurlora.remote",
        ),
    ),
    ("apps", ("tcurlora.bench", "tcurlora.federated", "tcurlora.demo", "tcurlora.commands")),
    ("cli", ("tcurlora.cli", "tcurlora.__main__")),
]


def module_files(package: Path = PACKAGE) -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its own name, for its __init__.py)."""
    modules = {}
    for path in sorted(package.rglob("*.py")):
        parts = path.relative_to(package.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def _imported_names(node: ast.Import | ast.ImportFrom, module: str, is_package: bool) -> list[str]:
    """The dotted names one import statement asks for, relative imports resolved against `module`."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:
        parts = module.split(".") if is_package else module.split(".")[:-1]
        parts = parts[: len(parts) - (node.level - 1)]
        base = ".".join([*parts, base] if base else parts)
    return [f"{base}.{alias.name}" for alias in node.names] + [base]


def _owning_module(name: str, modules: dict[str, Path]) -> str | None:
    """The module a dotted name lives in: the longest prefix that is a module."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def _ancestors(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """module -> the tcurlora modules it imports, anywhere in its file (see the module docstring)."""
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        is_package = path.name == "__init__.py"
        own = set(_ancestors(module))
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            names = _imported_names(node, module, is_package)
            if isinstance(
                node, ast.ImportFrom
            ):  # `from pkg import mod` is mod when mod is a module, else pkg
                named = [n for n in names[:-1] if n in modules]
                names = named if len(named) == len(names) - 1 else [*named, names[-1]]
            for name in names:
                target = _owning_module(name, modules) if name.split(".")[0] == "tcurlora" else None
                if target is not None:
                    targets.add(target)
                    targets.update(a for a in _ancestors(target) if a not in own)
        targets.discard(module)
        graph[module] = targets
    return graph


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components with more than one module (each one an import circle)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 10 * len(graph) + 100))
    try:
        for node in sorted(graph):
            if node not in index:
                visit(node)
    finally:
        sys.setrecursionlimit(limit)
    return circles


def layer_of(module: str) -> int | None:
    """The index in LAYERS of the longest entry naming `module` or a package above it; None when none does."""
    best: tuple[int, int] | None = None
    for number, (_name, entries) in enumerate(LAYERS):
        for entry in entries:
            matches = module == entry or (entry != "tcurlora" and module.startswith(entry + "."))
            if matches and (best is None or len(entry) > best[0]):
                best = (len(entry), number)
    return None if best is None else best[1]


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """Each import from a module to one in a higher layer, as a readable line."""
    found = []
    for module, targets in sorted(graph.items()):
        for target in sorted(targets):
            low, high = layer_of(module), layer_of(target)
            if low is not None and high is not None and high > low:
                found.append(f"{module} ({LAYERS[low][0]}) imports {target} ({LAYERS[high][0]})")
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph(module_files())


def test_every_module_has_a_layer(graph) -> None:
    missing = sorted(m for m in graph if layer_of(m) is None)
    assert not missing, f"modules in no layer of LAYERS (add each to the layer it belongs to): {missing}"


def test_no_import_circles(graph) -> None:
    circles = strongly_connected(graph)
    assert not circles, "import circles (each list imports itself round): " + "; ".join(map(str, circles))


def test_no_import_runs_back_up_the_layers(graph) -> None:
    upward = upward_imports(graph)
    assert not upward, "imports that run back up the layers:\n" + "\n".join(upward)


def test_no_module_over_500_lines() -> None:
    long = {
        str(path.relative_to(ROOT)): len(path.read_text(encoding="utf-8").splitlines())
        for path in module_files().values()
    }
    over = {name: lines for name, lines in long.items() if lines > MAX_LINES}
    assert not over, f"modules over {MAX_LINES} lines (split them by job): {over}"


def test_the_checks_find_what_they_look_for(tmp_path: Path) -> None:
    """On a made-up package: a circle through a function-level relative import, an import that runs up the
    layers, and the implicit import of a package's __init__ are all found."""
    package = tmp_path / "tcurlora"
    (package / "models").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "errors.py").write_text("def f():\n    from .models import registry\n")
    (package / "models" / "__init__.py").write_text("from tcurlora.models.registry import load\n")
    (package / "models" / "registry.py").write_text("from ..errors import f\nload = f\n")
    (package / "models" / "counts.py").write_text("def g():\n    from tcurlora.models import load\n")
    (package / "cli.py").write_text("import tcurlora.models.registry\n")
    modules = module_files(package)
    found = import_graph(modules)
    assert found["tcurlora.errors"] == {"tcurlora.models.registry", "tcurlora.models"}
    assert found["tcurlora.models.registry"] == {"tcurlora.errors"}
    assert found["tcurlora.cli"] == {"tcurlora.models.registry", "tcurlora.models"}
    assert found["tcurlora.models.counts"] == {"tcurlora.models"}  # its own package, named: counted
    assert strongly_connected(found) == [["tcurlora.errors", "tcurlora.models", "tcurlora.models.registry"]]
    assert "tcurlora.errors (base) imports tcurlora.models.registry (models)" in upward_imports(found)
    assert not [line for line in upward_imports(found) if line.startswith("tcurlora.cli")]
