"""Where the built-in base models live; torch-free, so a GUI can list them before dependencies load."""

from __future__ import annotations

import os
from pathlib import Path

from tcurlora.filenames import MODEL_SPEC_FILE


def builtin_models_dir() -> Path:
    """Resources/Models of the extension (the repository root when installed from source)."""
    override = os.environ.get("TCURLORA_BUILTIN_MODELS")
    return Path(override) if override else Path(__file__).resolve().parents[2] / "Resources" / "Models"


def list_builtin_models() -> list[str]:
    """Names of the models shipped in Resources/Models."""
    root = builtin_models_dir()
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / MODEL_SPEC_FILE).is_file())
