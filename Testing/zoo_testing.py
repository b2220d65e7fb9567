"""Where the real MONAI Model Zoo configs live for the bundle tests (a module: `conftest` is ambiguous
between Testing/ and Testing/slicer/ in a whole-suite run)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_bundle(name: str) -> Path:
    """The real MONAI Model Zoo config folder `name` under ../shared/bundles; skip (or fail in CI) when absent."""
    folder = REPO_ROOT.parent / "shared" / "bundles" / name
    if not (folder / "configs" / "inference.json").is_file():
        message = f"real zoo bundle {folder} not found"
        if os.environ.get("TCURLORA_REQUIRE_DATA") == "1":
            pytest.fail(message + "; TCURLORA_REQUIRE_DATA=1 requires it")
        pytest.skip(message)
    return folder
