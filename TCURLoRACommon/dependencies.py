"""Install what the backend needs into Slicer's Python: torch via PyTorchUtils, the rest via pip, once.

The requirement and version logic here is plain Python (tested headless); only `ensure_dependencies`
talks to Slicer. Installs run with a constraint that pins the torch already installed, so that a package
that wants a newer torch (MONAI 1.6 wants torch >= 2.8) cannot replace the PyTorch extension's build.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import re
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

REQUIREMENTS_FILE = Path(__file__).with_name("requirements.txt")
TORCH_REQUIREMENT = ">=2.1"

_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9_.-]*)\s*(.*)$")
_SPECIFIER = re.compile(r"^(~=|==|!=|<=|>=|<|>)\s*(\S+)$")
_VERSION = re.compile(
    r"^v?(?:\d+!)?(?P<release>\d+(?:\.\d+)*)"
    r"(?:[-_.]?(?P<pre>a|b|c|rc|alpha|beta|pre|preview)[-_.]?(?P<pre_n>\d*))?"
    r"(?:(?:-(?P<post_implicit>\d+))|(?:[-_.]?(?:post|rev|r)[-_.]?(?P<post_n>\d*)))?"
    r"(?:[-_.]?dev[-_.]?(?P<dev_n>\d*))?"
    r"(?:\+[a-z0-9]+(?:[-_.][a-z0-9]+)*)?$",
    re.IGNORECASE,
)
_PRE_ORDER = {"a": 0, "alpha": 0, "b": 1, "beta": 1, "c": 2, "rc": 2, "pre": 2, "preview": 2}


class DependencyError(RuntimeError):
    """A dependency could not be installed or is unusable; the message says what to do."""


def parse_version(text: str) -> tuple:
    """A sort key for a PEP 440 version: 1.4.dev0 < 1.4a1 < 1.4rc1 < 1.4 < 1.4.post1 (local part ignored)."""
    match = _VERSION.match(text.strip())
    if not match:
        raise ValueError(f"not a version: {text!r}")
    release = tuple(int(p) for p in match["release"].split("."))
    while len(release) > 1 and release[-1] == 0:
        release = release[:-1]
    post = match["post_n"] if match["post_n"] is not None else match["post_implicit"]
    if match["pre"]:
        pre: tuple = (0, _PRE_ORDER[match["pre"].lower()], int(match["pre_n"] or 0))
    elif match["dev_n"] is not None and post is None:
        pre = (-1,)  # 1.4.dev0 sorts before 1.4a1
    else:
        pre = (1,)
    post_key = (-1,) if post is None else (int(post or 0),)
    dev_key = (1,) if match["dev_n"] is None else (0, int(match["dev_n"] or 0))
    return (release, pre, post_key, dev_key)


def _release(text: str) -> tuple[int, ...]:
    """The release numbers as written (1.4.0 -> (1, 4, 0)), for the prefix match of `~=`."""
    match = _VERSION.match(text.strip())
    if not match:
        raise ValueError(f"not a version: {text!r}")
    return tuple(int(p) for p in match["release"].split("."))


def satisfies(version: str, operator: str, wanted: str) -> bool:
    """Whether `version` meets one specifier such as (">=", "1.4"); pre-releases meet `>=` only at the same release."""
    have, want = parse_version(version), parse_version(wanted)
    if operator == "==":
        return have == want
    if operator == "!=":
        return have != want
    if operator == ">=":
        return have >= want
    if operator == "<=":
        return have <= want
    if operator == ">":
        return have > want
    if operator == "<":
        return have < want
    if operator == "~=":  # ~=1.4.2 means >=1.4.2 and ==1.4.*
        prefix = _release(wanted)[:-1] or _release(wanted)
        padded = _release(version) + (0,) * len(prefix)  # 1.4 counts as 1.4.0
        return have >= want and padded[: len(prefix)] == prefix
    raise ValueError(f"unsupported version operator {operator!r}")


def parse_requirement(text: str) -> tuple[str, list[tuple[str, str]]]:
    """("monai", [(">=", "1.4")]) for "monai>=1.4"; several comma-separated specifiers are allowed."""
    line = text.split("#", 1)[0].strip()
    match = _NAME.match(line)
    if not match or ";" in line or "[" in line or "@" in line:
        raise ValueError(f"unsupported requirement syntax: {text!r}")
    name, rest = match.groups()
    specifiers = []
    for part in filter(None, (p.strip() for p in rest.split(","))):
        spec = _SPECIFIER.match(part)
        if not spec:
            raise ValueError(f"unsupported requirement syntax: {text!r}")
        parse_version(spec.group(2))  # a bad version is a syntax error too
        specifiers.append((spec.group(1), spec.group(2)))
    return name, specifiers


def requirements(path: Path = REQUIREMENTS_FILE) -> list[str]:
    """The requirement lines of a requirements file (comments and blank lines dropped)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    return [line.split("#", 1)[0].strip() for line in lines if line.split("#", 1)[0].strip()]


def installed_version(name: str) -> str | None:
    """The installed version of a distribution, or None."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def missing_requirements(
    required: Sequence[str] | None = None,
    version_of: Callable[[str], str | None] = installed_version,
) -> list[str]:
    """Requirements not installed, or installed in a version that does not meet them."""
    missing = []
    for requirement in requirements() if required is None else required:
        name, specifiers = parse_requirement(requirement)
        version = version_of(name)
        if version is None:
            missing.append(requirement)
            continue
        try:
            ok = all(satisfies(version, op, wanted) for op, wanted in specifiers)
        except ValueError:  # an installed version we cannot read: let pip decide
            ok = False
        if not ok:
            missing.append(requirement)
    return missing


def torch_problem(version: str | None, requirement: str = TORCH_REQUIREMENT) -> str | None:
    """Why the installed torch cannot be used (missing, too old), in words for the user; None when fine."""
    _, specifiers = parse_requirement(f"torch{requirement}")
    if version is None:
        return "PyTorch is not installed. Install it in the PyTorch Utils module (PyTorch extension)."
    if not all(satisfies(version, op, wanted) for op, wanted in specifiers):
        return (
            f"TCURLoRA needs PyTorch {requirement}, but this Slicer has torch {version}. Open the PyTorch "
            f"Utils module, uninstall torch, install it again with version requirement '{requirement}', "
            "and restart Slicer."
        )
    return None


def torch_constraint(version: str) -> str:
    """A pip constraints-file line that keeps the installed torch (its local build tag included)."""
    return f"torch=={version}\n"


def write_constraints(version: str | None, folder: str | Path | None = None) -> Path | None:
    """A constraints file pinning torch at `version`, or None when torch is not installed."""
    if version is None:
        return None
    folder = Path(folder or tempfile.mkdtemp(prefix="tcurlora-pip-"))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "constraints.txt"
    path.write_text(torch_constraint(version), encoding="utf-8")
    return path


def install_failure_message(error: BaseException, packages: Sequence[str]) -> str:
    """What to tell the user when pip failed."""
    code = getattr(error, "returncode", None)
    how = f"pip exited with code {code}" if code is not None else str(error) or type(error).__name__
    return (
        f"Installing the Python packages TCURLoRA needs failed ({how}). The Python console shows pip's "
        "output. Check the network connection (or proxy settings) and try again, or install them from "
        f"the Python console with slicer.util.pip_install: {' '.join(packages)}"
    )


def is_declined(error: BaseException) -> bool:
    """True for the exception slicer.packaging.pip_ensure raises when the user says no."""
    return isinstance(error, RuntimeError) and "declined" in str(error).lower()


def install_requirements(
    missing: Sequence[str],
    constraints: Path | None,
    pip_ensure: Callable[..., object] | None,
    pip_install: Callable[[list[str]], object],
    confirm: Callable[[str], bool],
    requester: str = "TCURLoRA",
) -> bool:
    """Install `missing` after asking once; False when the user declined, DependencyError when pip failed.

    `pip_ensure` is slicer.packaging.pip_ensure where Slicer has it (5.12+: its own dialog), else None and
    `pip_install` (slicer.util.pip_install) runs after `confirm`.
    """
    try:
        if pip_ensure is not None:
            pip_ensure(
                list(missing), constraints=str(constraints) if constraints else None, requester=requester
            )
        else:
            message = (
                f"{requester} needs these Python packages, about 200 MB:\n"
                + "\n".join(missing)
                + "\n\nInstall them now?"
            )
            if not confirm(message):
                return False
            pip_install([*(["-c", str(constraints)] if constraints else []), *missing])
    except Exception as error:  # noqa: BLE001 - every failure becomes a message the user can act on
        if is_declined(error):
            return False
        raise DependencyError(install_failure_message(error, missing)) from error
    return True


def ensure_dependencies(requester: str = "TCURLoRA") -> bool:
    """Make torch and the backend packages importable in Slicer; False when the user declined.

    Raises DependencyError with a message for the user when something cannot be installed or used.
    Skipped in testing mode (the test environment provides the packages).
    """
    import slicer

    if slicer.app.testingEnabled():
        return True
    if not _ensure_torch():
        return False
    problem = torch_problem(installed_version("torch"))
    if problem:
        raise DependencyError(problem)
    missing = missing_requirements()
    if not missing:
        return True
    packaging = _slicer_packaging()
    installed = install_requirements(
        missing,
        write_constraints(installed_version("torch")),
        getattr(packaging, "pip_ensure", None),
        slicer.util.pip_install,
        slicer.util.confirmOkCancelDisplay,
        requester,
    )
    if not installed:
        return False
    importlib.invalidate_caches()
    still = missing_requirements()
    if still:
        raise DependencyError(
            "These packages are still missing after the installation: "
            + ", ".join(still)
            + ". Restart Slicer and try again."
        )
    return True


def _ensure_torch() -> bool:
    """torch only from the PyTorch extension, which picks the right CUDA build for this computer."""
    try:
        import PyTorchUtils
    except ImportError as error:
        raise DependencyError(
            "TCURLoRA needs the PyTorch extension. Install it from the Extensions Manager and restart."
        ) from error
    logic = PyTorchUtils.PyTorchUtilsLogic()
    if logic.torchInstalled():
        return True
    return logic.installTorch(askConfirmation=True, torchVersionRequirement=TORCH_REQUIREMENT) is not None


def _slicer_packaging():
    """slicer.packaging with pip_ensure (Slicer >= 5.12), or None."""
    try:
        module = importlib.import_module("slicer.packaging")
    except ImportError:
        return None
    return module if hasattr(module, "pip_ensure") else None
