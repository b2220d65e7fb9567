"""Adapter import/export as one file, and "Reload" forgetting the lazily imported packages."""

from __future__ import annotations

import importlib
import json
import sys
import zipfile
from pathlib import Path

import pytest

from tcurlora import library
from tcurlora.errors import InputError
from TCURLoRACommon.adapters import SUFFIX, export_adapter, import_adapter
from TCURLoRACommon.reloading import PACKAGES, forget_packages


def make_adapter(folder: Path, names=("liver", "tumour")) -> library.AdapterEntry:
    """An adapter folder as the worker writes it (config JSON + weights file)."""
    folder.mkdir(parents=True)
    config = {"method": "tcur", "rank": 4, "label_names": list(names), "base_model_id": "preset:unetr-tiny"}
    (folder / library.ADAPTER_CONFIG).write_text(json.dumps(config))
    (folder / library.ADAPTER_WEIGHTS).write_bytes(bytes(range(256)) * 40)
    (folder / "training_log.jsonl").write_text('{"iteration": 1}\n')
    return library.read_adapter(folder)


def test_export_then_import_on_another_computer(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("TCURLORA_HOME", str(tmp_path / "mine"))
    entry = library.install_adapter(make_adapter(tmp_path / "staged").path, "liver model")
    shared = export_adapter(entry, tmp_path / "outbox" / "liver")
    assert shared.name == "liver" + SUFFIX and shared.is_file()
    monkeypatch.setenv("TCURLORA_HOME", str(tmp_path / "colleague"))
    imported = import_adapter(shared)
    assert imported.name == "liver" and imported.path.parent == library.adapters_dir()
    assert imported.label_names == ["liver", "tumour"] and imported.rank == 4 and imported.method == "tcur"
    for name in (library.ADAPTER_CONFIG, library.ADAPTER_WEIGHTS, "training_log.jsonl"):
        assert (imported.path / name).read_bytes() == (entry.path / name).read_bytes()
    again = import_adapter(shared)  # same name again: a second entry, nothing overwritten
    assert again.name == "liver_2" and [e.name for e in library.list_adapters()] == ["liver", "liver_2"]


def test_import_refuses_bad_files(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("TCURLORA_HOME", str(tmp_path / "home"))
    evil = tmp_path / f"evil{SUFFIX}"
    with zipfile.ZipFile(evil, "w") as archive:
        archive.writestr(library.ADAPTER_CONFIG, "{}")
        archive.writestr("../../outside.txt", "x")
    with pytest.raises(InputError, match="unsafe file name"):
        import_adapter(evil)
    assert not (tmp_path / "outside.txt").exists()
    incomplete = tmp_path / f"incomplete{SUFFIX}"
    with zipfile.ZipFile(incomplete, "w") as archive:
        archive.writestr(library.ADAPTER_CONFIG, json.dumps({"method": "tcur"}))
    with pytest.raises(InputError, match="adapter.safetensors is missing"):
        import_adapter(incomplete)
    text = tmp_path / f"text{SUFFIX}"
    text.write_text("not a zip")
    with pytest.raises(InputError, match="not a zip archive"):
        import_adapter(text)
    assert library.list_adapters() == [] and not any(
        p.name.startswith(".") for p in library.adapters_dir().glob("*")
    )


def test_forget_packages_makes_the_next_import_load_edited_code(tmp_path: Path, monkeypatch) -> None:
    package = tmp_path / "tcurreloadpkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "logic.py").write_text("VALUE = 1\n")
    (tmp_path / "tcurreloadpkgother.py").write_text("VALUE = 'kept'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    first = importlib.import_module("tcurreloadpkg.logic")
    importlib.import_module("tcurreloadpkgother")
    assert first.VALUE == 1
    (package / "logic.py").write_text("VALUE = 22\n")  # another size: a stale .pyc cannot match
    assert forget_packages(("tcurreloadpkg",)) == ["tcurreloadpkg", "tcurreloadpkg.logic"]
    assert "tcurreloadpkgother" in sys.modules  # same prefix, another package: kept
    importlib.invalidate_caches()
    assert importlib.import_module("tcurreloadpkg.logic").VALUE == 22
    forget_packages(("tcurreloadpkg", "tcurreloadpkgother"))
    assert set(PACKAGES) == {"TCURFineTuneLib", "TCURSegmenterLib", "TCURLoRACommon", "tcurlora"}
