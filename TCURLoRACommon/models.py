"""Base models a user can pick (built-in, model library, added bundle folders), and finding the loadable
reference of the base model an adapter names (torch-free: the panels use it before dependencies load)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from tcurlora.errors import InputError
from tcurlora.filenames import MODEL_FOLDERS_FILE, MODEL_SPEC_FILE


def builtin_models() -> list[str]:
    """Names of the models shipped with the extension."""
    from tcurlora.models.builtin import list_builtin_models

    return list_builtin_models()


def library_models() -> list[Path]:
    """Model folders (model.json) and MONAI bundles (configs/) in $TCURLORA_HOME/models."""
    from tcurlora.library import library_root

    folder = library_root() / "models"
    if not folder.is_dir():
        return []
    return [
        p for p in sorted(folder.iterdir()) if (p / MODEL_SPEC_FILE).is_file() or (p / "configs").is_dir()
    ]


def added_model_folders() -> list[Path]:
    """Base-model folders the user added with "Add MONAI bundle folder..." that still hold a model."""
    from tcurlora.library import library_root

    data = _read_json(library_root() / MODEL_FOLDERS_FILE)
    folders = [Path(p) for p in data.get("folders", []) if isinstance(p, str)]
    return [p for p in folders if model_id_of_folder(p) is not None]


def remember_model_folder(folder: str | Path) -> Path:
    """Check a base-model folder and remember it in the library, so both panels find it later."""
    from tcurlora.fsutil import atomic_write_json
    from tcurlora.library import library_root

    path = check_model_folder(folder).resolve()
    known = [str(p) for p in added_model_folders()]
    if str(path) not in known:
        library_root().mkdir(parents=True, exist_ok=True)
        atomic_write_json(library_root() / MODEL_FOLDERS_FILE, {"folders": [*known, str(path)]})
    return path


def base_model_choices(extra: Sequence[str] = ()) -> list[tuple[str, str]]:
    """(label, reference) pairs for the base-model combo box, built-in first."""
    choices = [(f"{name} (built-in)", name) for name in builtin_models()]
    choices += [(f"{p.name} (library)", str(p)) for p in library_models()]
    folders = [str(p) for p in added_model_folders()] + [r for r in extra if r]
    known = {reference for _, reference in choices}
    for reference in dict.fromkeys(folders):
        if reference not in known:
            choices.append((f"{Path(reference).name} (folder)", reference))
    return choices


def choose_base_model(choices: Sequence[tuple[str, str]], current: str) -> str:
    """The reference the combo box selects: `current` when it is offered, else the first choice ("" if none)."""
    references = [reference for _, reference in choices]
    if current in references:
        return current
    return references[0] if references else ""


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def model_id_of_folder(folder: Path) -> str | None:
    """The id a base-model folder gives the adapters trained on it, as the backend computes it.

    Model folder: model.json "id" (else its spec name). MONAI bundle (tcurlora.models.bundle.load_bundle):
    metadata "tcurlora_model_id", else "<name>@<version>", else the name (metadata "name" or folder name).
    """
    folder = Path(folder)
    if (folder / MODEL_SPEC_FILE).is_file():
        data = _read_json(folder / MODEL_SPEC_FILE)
        spec = data.get("spec") if isinstance(data.get("spec"), dict) else {}
        found = data.get("id") or spec.get("name")
        return str(found) if found else None
    if (folder / "configs").is_dir():
        meta = _read_json(folder / "configs" / "metadata.json")
        if meta.get("tcurlora_model_id"):
            return str(meta["tcurlora_model_id"])
        name = str(meta.get("name") or folder.name)
        return f"{name}@{meta['version']}" if meta.get("version") else name
    return None


def check_model_folder(folder: str | Path) -> Path:
    """`folder` when it holds a base model (model.json, or a MONAI bundle's configs/), else InputError."""
    path = Path(folder)
    if model_id_of_folder(path) is None:
        raise InputError(
            "not a base model folder: expected a MONAI bundle (configs/ and models/) or a model.json", path
        )
    return path


def resolve_base_model(model_id: str | None, extra: Sequence[str] = ()) -> str:
    """A reference the worker can load for the base model an adapter names (its `base_model_id`).

    A preset or an existing folder is used as it is; otherwise the built-in models, the library's models
    and the `extra` folders (bundles the user added) are searched for one whose id is `model_id`.
    """
    if not model_id:
        raise InputError("the adapter does not name its base model")
    if model_id.startswith("preset:"):
        return model_id
    from tcurlora.models.builtin import builtin_models_dir

    candidates = [builtin_models_dir() / name for name in builtin_models()]
    candidates += library_models() + added_model_folders() + [Path(e) for e in extra if e]
    for folder in candidates:
        if model_id_of_folder(folder) == model_id:
            return folder.name if folder.parent == builtin_models_dir() else str(folder)
    if Path(model_id).is_dir() and model_id_of_folder(Path(model_id)) is not None:
        return model_id
    from tcurlora.library import library_root

    raise InputError(
        f"the adapter was trained on base model '{model_id}', which is neither built in nor in the model "
        f"library. Add its folder in TCUR Fine-Tune (Add MONAI bundle folder...), or copy it into "
        f"{library_root() / 'models'}, and try again."
    )
