"""Base models a user can pick: the built-in ones, those in the model library, and added bundle folders."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


def builtin_models() -> list[str]:
    """Names of the models shipped with the extension (empty when the backend cannot be imported yet)."""
    try:
        from tcurlora.models.builtin import list_builtin_models
    except ImportError:  # torch not installed yet: the dependency check comes first
        return []
    return list_builtin_models()


def library_models() -> list[Path]:
    """Model folders (model.json) and MONAI bundles (configs/) in $TCURLORA_HOME/models."""
    from tcurlora.library import library_root

    folder = library_root() / "models"
    if not folder.is_dir():
        return []
    return [p for p in sorted(folder.iterdir()) if (p / "model.json").is_file() or (p / "configs").is_dir()]


def base_model_choices(extra: Sequence[str] = ()) -> list[tuple[str, str]]:
    """(label, reference) pairs for the base-model combo box, built-in first."""
    choices = [(f"{name} (built-in)", name) for name in builtin_models()]
    choices += [(f"{p.name} (library)", str(p)) for p in library_models()]
    known = {reference for _, reference in choices}
    choices += [(f"{Path(r).name} (folder)", r) for r in extra if r and r not in known]
    return choices
