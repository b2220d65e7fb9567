"""Requirements parsed and compared by packaging (PEP 440 order), requirements.txt in step with
pyproject.toml, installs pinned to the installed torch, and every install failure turned into a message
(a declined install is not an error)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

try:
    import tomllib
except ImportError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

from TCURLoRACommon import dependencies as deps

ROOT = Path(__file__).resolve().parents[2]
# pyproject dependencies that Slicer does not install from requirements.txt, and why
NOT_PIP_INSTALLED_IN_SLICER = {
    "torch": "comes from the PyTorch extension (the right CUDA build)",
    "matplotlib": "only `tcurlora bench` and `tcurlora demo` draw plots; the worker never imports it",
}


@pytest.mark.parametrize(
    "ordered",
    [
        ["1.4.dev0", "1.4a1", "1.4b2", "1.4rc1", "1.4", "1.4.post1", "1.4.1", "1.10"],
        ["2.1.0+cu121", "2.2.0", "2.10.0"],
        ["0.9", "0.13.0", "0.13.2"],
        ["2.0", "2.1", "2.1.post1", "1!0.5", "1!1.0"],  # an epoch outranks every release without one
    ],
)
def test_version_order(ordered: list[str]) -> None:
    keys = [deps.parse_version(v) for v in ordered]
    assert keys == sorted(keys) and len(set(keys)) == len(keys)
    assert deps.parse_version("1.4") == deps.parse_version("1.4.0") == deps.parse_version("v1.4.0")


def test_packaging_does_the_comparing() -> None:
    """The hand-written PEP 440 parser is gone: versions are packaging's (shipped with Slicer 5.8+)."""
    from packaging.version import Version

    assert isinstance(deps.parse_version("1!1.0"), Version)
    source = Path(deps.__file__).read_text(encoding="utf-8")
    assert "_VERSION" not in source and "_PRE_ORDER" not in source and "import re" not in source


@pytest.mark.parametrize(
    ("version", "requirement", "ok"),
    [
        ("1.4rc1", ">=1.4", False),  # the old parser said yes
        ("1.4.0", ">=1.4", True),
        ("1.3.9", ">=1.4", False),
        ("2.5.1+cu121", ">=2.1", True),
        ("1.5.2", ">=1.4,<1.6", True),
        ("1.6.0", ">=1.4,<1.6", False),
        ("1.4.2", "~=1.4.0", True),
        ("1.5.0", "~=1.4.0", False),
        ("2.0", "==2.0.0", True),
        ("2.0.1", "!=2.0.1", False),
        ("0.13", ">0.12", True),
        ("0.12", "<=0.12", True),
        ("1!1.0", ">=2.0", True),  # epochs: the old parser said no
        ("1!1.0", "<2.0", False),
        ("2.1.post1", ">2.1", False),  # >V excludes V's post-releases (PEP 440); the old parser said yes
        ("2.1.post1", ">=2.1", True),
        ("2.1.1", ">2.1", True),
        ("2.2rc1", ">=2.1", True),  # an installed pre-release is judged as a version
        ("2.1.0+cu121", "==2.1.0", True),
        ("1.4.7", "==1.4.*", True),
        ("1.5.0", "==1.4.*", False),
    ],
)
def test_requirement_checks(version: str, requirement: str, ok: bool) -> None:
    name, specifiers = deps.parse_requirement(f"pkg{requirement}")
    assert name == "pkg" and specifiers
    assert deps.missing_requirements([f"pkg{requirement}"], lambda _: version) == (
        [] if ok else [f"pkg{requirement}"]
    )


def test_missing_and_unreadable() -> None:
    assert deps.missing_requirements(["absent>=1", "plain"], lambda _: None) == ["absent>=1", "plain"]
    assert deps.missing_requirements(["weird>=1"], lambda _: "not-a-version") == ["weird>=1"]
    for bad in ("pkg>>1", "pkg[extra]>=1", "pkg>=1 ; python_version<'3.10'", "pkg>=abc", ">=1"):
        with pytest.raises(ValueError, match="unsupported requirement syntax|not a version"):
            deps.parse_requirement(bad)


def test_requirements_file_follows_pyproject() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    wanted = {deps.parse_requirement(r)[0].lower(): r.replace(" ", "") for r in project}
    shipped = {
        deps.parse_requirement(r)[0].lower(): r.replace(" ", "") for r in deps.needed_requirements(lora=True)
    }
    for name in NOT_PIP_INSTALLED_IN_SLICER:
        assert name in wanted, f"{name} is no longer a dependency: drop it from the exceptions"
        assert name not in shipped
        wanted.pop(name)
    assert shipped == wanted
    assert (
        deps.TORCH_REQUIREMENT == project[[deps.parse_requirement(r)[0] for r in project].index("torch")][5:]
    )


def test_torch_is_checked_and_pinned(tmp_path: Path) -> None:
    assert deps.torch_problem("2.5.1+cu121") is None
    problem = deps.torch_problem("1.13.1")
    assert (
        problem
        and "needs PyTorch >=2.1" in problem
        and "torch 1.13.1" in problem
        and "PyTorch Utils" in problem
    )
    assert "not installed" in deps.torch_problem(None)
    path = deps.write_constraints("2.5.1+cu121", tmp_path)
    assert path.read_text() == "torch==2.5.1+cu121\n"
    assert deps.write_constraints(None, tmp_path / "x") is None


class Recorder:
    """Stands in for slicer.util / slicer.packaging, which need the Slicer application."""

    def __init__(self, answer: bool = True, error: BaseException | None = None) -> None:
        self.calls: list[tuple] = []
        self.answer, self.error = answer, error

    def confirm(self, message: str) -> bool:
        self.calls.append(("confirm", message))
        return self.answer

    def install(self, *args, **kwargs):
        self.calls.append(("install", args, kwargs))
        if self.error:
            raise self.error


def test_install_on_slicer_510_asks_then_pins_torch(tmp_path: Path) -> None:
    constraints = deps.write_constraints("2.4.0", tmp_path)
    recorder = Recorder()
    assert deps.install_requirements(["monai>=1.4"], constraints, None, recorder.install, recorder.confirm)
    assert recorder.calls[0][0] == "confirm" and "monai>=1.4" in recorder.calls[0][1]
    assert recorder.calls[1] == ("install", (["-c", str(constraints), "monai>=1.4"],), {})
    declined = Recorder(answer=False)
    assert not deps.install_requirements(["monai>=1.4"], None, None, declined.install, declined.confirm)
    assert [c[0] for c in declined.calls] == ["confirm"]


def test_install_on_slicer_512_uses_pip_ensure_and_maps_errors(tmp_path: Path) -> None:
    constraints = deps.write_constraints("2.4.0", tmp_path)
    recorder = Recorder()
    assert deps.install_requirements(["peft>=0.13"], constraints, recorder.install, None, recorder.confirm)
    assert recorder.calls == [
        ("install", (["peft>=0.13"],), {"constraints": str(constraints), "requester": "TCURLoRA"})
    ]
    declined = Recorder(error=RuntimeError("User declined package installation"))
    assert not deps.install_requirements(["peft>=0.13"], None, declined.install, None, declined.confirm)
    failing = Recorder(error=subprocess.CalledProcessError(1, "pip install"))
    with pytest.raises(deps.DependencyError, match=r"failed \(pip exited with code 1\).*peft>=0.13"):
        deps.install_requirements(["peft>=0.13"], None, failing.install, None, failing.confirm)
    offline = Recorder(error=OSError("network unreachable"))
    with pytest.raises(deps.DependencyError, match="network unreachable"):
        deps.install_requirements(["peft>=0.13"], None, None, offline.install, offline.confirm)


def test_peft_only_for_lora() -> None:
    """PEFT and the ~150 MB it pulls in are installed only when a run uses LoRA."""
    names = {deps.parse_requirement(r)[0].lower() for r in deps.needed_requirements()}
    assert "peft" not in names and {"monai", "safetensors", "numpy"} <= names
    with_lora = [deps.parse_requirement(r)[0].lower() for r in deps.needed_requirements(lora=True)]
    assert with_lora == [*[deps.parse_requirement(r)[0].lower() for r in deps.needed_requirements()], "peft"]
    assert (
        deps.missing_requirements(deps.needed_requirements(), lambda n: None if n == "peft" else "99") == []
    )


@pytest.mark.parametrize("module", ["TCURFineTune", "TCURSegmenter"])
def test_panels_ask_for_peft_only_for_lora(module: str) -> None:
    """Every dependency check of a panel goes through ensure_for_method, with the run's adapter method."""
    import ast

    tree = ast.parse((ROOT / module / f"{module}.py").read_text(encoding="utf-8"))
    names = {"ensure_dependencies", "ensure_for_method"}
    calls = [
        c
        for c in ast.walk(tree)
        if isinstance(c, ast.Call) and getattr(c.func, "id", getattr(c.func, "attr", "")) in names
    ]
    assert calls and all(c.func.id == "ensure_for_method" and len(c.args) == 1 for c in calls), ast.dump(
        calls[0]
    )
    assert deps.needs_lora("lora") and not deps.needs_lora("tcur") and not deps.needs_lora(None)


def test_run_pip_reports_every_line() -> None:
    lines: list[str] = []
    deps.run_pip(["--version"], lambda line: lines.append(line) or True)
    assert any(line.startswith("pip ") for line in lines), lines


def test_run_pip_failure_is_a_message(tmp_path: Path) -> None:
    lines: list[str] = []
    with pytest.raises(subprocess.CalledProcessError) as raised:
        deps.run_pip(
            ["install", "--no-index", "--find-links", str(tmp_path), "tcurlora-no-such-package"],
            lambda line: lines.append(line) or True,
        )
    assert raised.value.returncode != 0 and "tcurlora-no-such-package" in raised.value.output
    assert "pip exited with code" in deps.install_failure_message(raised.value, ["x"])


def test_run_pip_cancel_stops_it() -> None:
    import sys
    import time

    start = time.monotonic()
    with pytest.raises(deps.InstallCancelled) as raised:
        deps.run_pip(
            [],
            lambda line: "started" not in line,
            command=[sys.executable, "-c", "import time; print('started', flush=True); time.sleep(60)"],
        )
    assert time.monotonic() - start < 20 and deps.is_declined(raised.value)
