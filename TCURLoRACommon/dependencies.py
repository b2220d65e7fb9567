"""Install what the backend needs into Slicer's Python: torch via PyTorchUtils, the rest via pip, once."""

from __future__ import annotations

import importlib
import importlib.metadata
import re
from pathlib import Path

REQUIREMENTS_FILE = Path(__file__).with_name("requirements.txt")
TORCH_REQUIREMENT = ">=2.1"
_REQUIREMENT = re.compile(r"^([A-Za-z0-9_.-]+)\s*(?:>=\s*([0-9][0-9.]*))?\s*$")


def requirements() -> list[str]:
    """The pinned minimum requirements, one 'name>=version' per entry."""
    lines = REQUIREMENTS_FILE.read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


def missing_requirements(required: list[str] | None = None) -> list[str]:
    """Requirements not installed, or installed older than their minimum."""
    missing = []
    for requirement in requirements() if required is None else required:
        match = _REQUIREMENT.match(requirement)
        if not match:
            raise ValueError(f"unsupported requirement syntax: {requirement!r}")
        name, minimum = match.groups()
        try:
            installed = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            missing.append(requirement)
            continue
        if minimum and _version_tuple(installed) < _version_tuple(minimum):
            missing.append(requirement)
    return missing


def ensure_dependencies(requester: str = "TCURLoRA") -> bool:
    """Make torch and the backend packages importable in Slicer; False when the user declined.

    Skipped in testing mode (the test environment provides the packages).
    """
    import slicer

    if slicer.app.testingEnabled():
        return True
    if not _ensure_torch():
        return False
    missing = missing_requirements()
    if not missing:
        return True
    pydeps = _pydeps()
    if pydeps is not None:  # Slicer >= 5.11: one dialog, shared with other extensions
        pydeps.pip_ensure(pydeps.load_requirements(str(REQUIREMENTS_FILE)), requester=requester)
    else:
        message = (
            f"{requester} needs these Python packages, about 200 MB:\n"
            + "\n".join(missing)
            + "\n\nInstall them now?"
        )
        if not slicer.util.confirmOkCancelDisplay(message):
            return False
        slicer.util.pip_install(missing)
    importlib.invalidate_caches()
    return not missing_requirements()


def _ensure_torch() -> bool:
    """torch only from the PyTorch extension, which picks the right CUDA build for this computer."""
    try:
        import PyTorchUtils
    except ImportError:
        import slicer

        slicer.util.errorDisplay(
            "TCURLoRA needs the PyTorch extension. Install it from the Extensions Manager and restart."
        )
        return False
    logic = PyTorchUtils.PyTorchUtilsLogic()
    if logic.torchInstalled():
        return True
    return logic.installTorch(askConfirmation=True, torchVersionRequirement=TORCH_REQUIREMENT) is not None


def _pydeps():
    """slicer.pydeps (Slicer >= 5.11; some builds name it slicer.packaging), or None."""
    for name in ("slicer.pydeps", "slicer.packaging"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        if hasattr(module, "pip_ensure") and hasattr(module, "load_requirements"):
            return module
    return None
