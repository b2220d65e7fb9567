"""The model library: adapter folders under $TCURLORA_HOME/adapters, listed, named and removed safely."""

from __future__ import annotations

import os
import re
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tcurlora.errors import InputError
from tcurlora.filenames import ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE
from tcurlora.jsonio import read_json_object

_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class AdapterEntry:
    """One complete adapter folder of the library, with what a user picks it by."""

    name: str
    path: Path
    label_names: list[str] = field(default_factory=list)
    label_colors: list[list[float]] | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    base_model_id: str | None = None
    method: str | None = None
    rank: int | None = None


def library_root() -> Path:
    """$TCURLORA_HOME, or ~/.tcurlora when it is unset or empty."""
    return Path(os.environ.get("TCURLORA_HOME") or "~/.tcurlora").expanduser()


def adapters_dir() -> Path:
    """The folder that holds one sub-folder per adapter."""
    return library_root() / "adapters"


def safe_name(name: str) -> str:
    """`name` reduced to letters, digits, '.', '_' and '-', never hidden, never empty."""
    cleaned = _NAME_UNSAFE.sub("_", name.strip()).strip("._")
    return cleaned or "adapter"


def read_adapter(path: str | Path) -> AdapterEntry:
    """The entry of one adapter folder; InputError when a file is missing or the config is unreadable."""
    folder = Path(path)
    config_path = folder / ADAPTER_CONFIG_FILE
    for required in (config_path, folder / ADAPTER_WEIGHTS_FILE):
        if not required.is_file():
            raise InputError(f"incomplete adapter folder: {required.name} is missing", folder)
    config = read_json_object(config_path, "adapter config")
    rank = config.get("rank")
    return AdapterEntry(
        name=folder.name,
        path=folder,
        label_names=[str(n) for n in config.get("label_names") or []],
        label_colors=config.get("label_colors"),
        metrics=dict(config.get("metrics") or {}),
        base_model_id=config.get("base_model_id"),
        method=config.get("method"),
        rank=int(rank) if isinstance(rank, (int, float)) else None,
    )


def list_adapters() -> list[AdapterEntry]:
    """Every complete adapter of the library, by name; hidden (staging) and broken folders are skipped."""
    folder = adapters_dir()
    if not folder.is_dir():
        return []
    entries = []
    for child in sorted(folder.iterdir()):
        if child.name.startswith(".") or not child.is_dir():
            continue
        try:
            entries.append(read_adapter(child))
        except InputError:
            continue
    return entries


def unique_adapter_path(name: str) -> Path:
    """A not yet existing folder path in the library for `name` (made safe; `_2`, `_3`... on clashes)."""
    base = safe_name(name)
    candidate = adapters_dir() / base
    number = 2
    while candidate.exists():
        candidate = adapters_dir() / f"{base}_{number}"
        number += 1
    return candidate


def staging_path(name: str) -> Path:
    """A hidden folder path inside the library, never listed, for an adapter still being written."""
    return adapters_dir() / f".staging-{safe_name(name)}-{uuid.uuid4().hex[:8]}"


def install_adapter(staged: str | Path, name: str) -> AdapterEntry:
    """Move a finished adapter folder into the library under a unique name, in one rename."""
    entry = read_adapter(staged)
    target = unique_adapter_path(name)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(entry.path, target)
    except OSError:  # another file system: copy to a hidden sibling first, then rename
        hidden = staging_path(name)
        try:
            shutil.copytree(entry.path, hidden)
            os.replace(hidden, target)
        except BaseException:  # a full disk: no partial copy left in the library
            shutil.rmtree(hidden, ignore_errors=True)
            raise
        shutil.rmtree(entry.path, ignore_errors=True)
    return read_adapter(target)


def remove_adapter(name: str) -> None:
    """Delete the adapter `name`: hidden by one rename first, so no half-removed folder is ever listed."""
    if not name or name != Path(name).name or name.startswith("."):
        raise InputError(f"not an adapter name: {name!r}")
    folder = adapters_dir() / name
    if not folder.is_dir():
        raise InputError("no such adapter in the model library", folder)
    hidden = folder.with_name(f".removing-{name}-{uuid.uuid4().hex[:8]}")
    os.replace(folder, hidden)
    shutil.rmtree(hidden)
