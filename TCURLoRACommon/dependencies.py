"""Install what the backend needs into Slicer's Python: torch via PyTorchUtils, the rest via pip, once.

The requirement and version logic here is plain Python (tested headless); only `ensure_dependencies`
talks to Slicer. Installs run with a constraint that pins the torch already installed, so that a package
that wants a newer torch (MONAI 1.6 wants torch >= 2.8) cannot replace the PyTorch extension's build.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement  # shipped with Slicer 5.8+
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import InvalidVersion, Version

REQUIREMENTS_FILE = Path(__file__).with_name("requirements.txt")
# PEFT (with transformers, tokenizers, accelerate, huggingface_hub: ~150 MB) only for LoRA.
LORA_REQUIREMENTS_FILE = Path(__file__).with_name("requirements-lora.txt")
TORCH_REQUIREMENT = ">=2.1"


class DependencyError(RuntimeError):
    """A dependency could not be installed or is unusable; the message says what to do."""


def parse_version(text: str) -> Version:
    """A PEP 440 version (packaging: epochs, pre-, post-, dev- and local parts); ValueError when it is none."""
    try:
        return Version(text)
    except InvalidVersion:
        raise ValueError(f"not a version: {text!r}") from None


def satisfies(version: str, operator: str, wanted: str) -> bool:
    """Whether `version` meets one specifier such as (">=", "1.4"), by PEP 440 (packaging.specifiers).

    An installed pre-release is judged like any version (1.4rc1 does not meet >=1.4, 2.2rc1 meets >=2.1).
    """
    try:
        specifier = SpecifierSet(f"{operator}{wanted}", prereleases=True)
    except InvalidSpecifier:
        raise ValueError(f"unsupported version specifier {operator}{wanted!r}") from None
    return parse_version(version) in specifier


def parse_requirement(text: str) -> tuple[str, list[tuple[str, str]]]:
    """("monai", [(">=", "1.4")]) for "monai>=1.4"; several comma-separated specifiers are allowed.

    Extras, markers and URLs are refused: requirements.txt lists plain version ranges only.
    """
    line = text.split("#", 1)[0].strip()
    try:
        requirement = Requirement(line)
    except InvalidRequirement:
        raise ValueError(f"unsupported requirement syntax: {text!r}") from None
    if requirement.extras or requirement.marker or requirement.url:
        raise ValueError(f"unsupported requirement syntax: {text!r}")
    specifiers = []
    for spec in requirement.specifier:
        if spec.operator == "===":
            raise ValueError(f"unsupported requirement syntax: {text!r}")
        parse_version(spec.version.replace(".*", ""))  # a wildcard ==1.4.* keeps its version part checked
        specifiers.append((spec.operator, spec.version))
    return requirement.name, sorted(specifiers)


def requirements(path: Path = REQUIREMENTS_FILE) -> list[str]:
    """The requirement lines of a requirements file (comments and blank lines dropped)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    return [line.split("#", 1)[0].strip() for line in lines if line.split("#", 1)[0].strip()]


def needed_requirements(lora: bool = False) -> list[str]:
    """What a run needs: the backend's packages, plus PEFT when it trains or applies a LoRA adapter."""
    return requirements() + (requirements(LORA_REQUIREMENTS_FILE) if lora else [])


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


class InstallCancelled(RuntimeError):
    """The user pressed Cancel in the installation's progress dialog."""


def is_declined(error: BaseException) -> bool:
    """True when the user said no: slicer.packaging.pip_ensure's "declined", or Cancel during the install."""
    return isinstance(error, InstallCancelled) or (
        isinstance(error, RuntimeError) and "declined" in str(error).lower()
    )


def run_pip(
    arguments: Sequence[str],
    report: Callable[[str], bool],
    command: Sequence[str] | None = None,
    poll_s: float = 0.05,
) -> None:
    """Run `python -m pip <arguments>` in the background, handing each output line to `report` (a progress
    dialog), so a long install is seen line by line instead of under a frozen wait cursor.

    `report` returns False to cancel (the process tree is stopped; InstallCancelled). A non-zero exit raises
    subprocess.CalledProcessError with pip's last lines. `command` replaces `python -m pip` (tests).
    """
    import subprocess
    import time

    from TCURLoRACommon.worker import WorkerProcess, python_executable

    args = [*(command or [python_executable(), "-m", "pip"]), *arguments]
    process = WorkerProcess("pip", "", args=args)
    process.start()
    cancelled = False
    while not process.finished:
        for event in process.poll():
            if event["event"] == "log" and not report(str(event.get("message") or "")) and not cancelled:
                cancelled = True
                process.cancel(grace=2.0)
        if not process.finished:
            if not cancelled and not report(""):
                cancelled = True
                process.cancel(grace=2.0)
            time.sleep(poll_s)
    if cancelled:
        raise InstallCancelled("installation cancelled by the user")
    if process.returncode != 0:
        raise subprocess.CalledProcessError(process.returncode, args, output="\n".join(process.tail[-10:]))


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


def ensure_dependencies(requester: str = "TCURLoRA", lora: bool = False) -> bool:
    """Make torch and the backend packages importable in Slicer (PEFT too when `lora`); False when the user
    declined. On Slicer 5.12+ pip_ensure shows its own progress dialog; on 5.10 `run_pip` feeds ours.

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
    wanted = needed_requirements(lora)
    missing = missing_requirements(wanted)
    if not missing:
        return True
    packaging = _slicer_packaging()
    installed = install_requirements(
        missing,
        write_constraints(installed_version("torch")),
        getattr(packaging, "pip_ensure", None),
        lambda arguments: _pip_install_with_progress(arguments, requester),
        slicer.util.confirmOkCancelDisplay,
        requester,
    )
    if not installed:
        return False
    importlib.invalidate_caches()
    still = missing_requirements(wanted)
    if still:
        raise DependencyError(
            "These packages are still missing after the installation: "
            + ", ".join(still)
            + ". Restart Slicer and try again."
        )
    return True


def needs_lora(method: str | None) -> bool:
    """Whether a run of adapter `method` needs PEFT (LoRA only: tCURLoRA is ours)."""
    return method == "lora"


def ensure_for_method(method: str | None, requester: str = "TCURLoRA") -> bool:
    """`ensure_dependencies` for a run of adapter `method` (None: no adapter chosen): PEFT only for LoRA."""
    return ensure_dependencies(requester, lora=needs_lora(method))


def _pip_install_with_progress(arguments: list[str], requester: str) -> None:
    """`pip install <arguments>` with a progress dialog showing pip's latest line, and Cancel (Slicer 5.10)."""
    import slicer

    dialog = slicer.util.createProgressDialog(
        windowTitle=f"{requester}: installing Python packages", labelText="Starting pip...", maximum=0
    )

    def report(line: str) -> bool:
        if line:
            dialog.labelText = (
                f"Installing the Python packages {requester} needs (about 200 MB)...\n{line[:120]}"
            )
        slicer.app.processEvents()
        return not dialog.wasCanceled

    try:
        run_pip(["install", *arguments], report)
    finally:
        dialog.close()


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
