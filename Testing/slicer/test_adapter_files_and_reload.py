"""Adapter import/export as one file, and "Reload" forgetting the lazily imported packages."""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path

import pytest

from tcurlora import library
from tcurlora.adapter_integrity import seal
from tcurlora.errors import InputError
from tcurlora.filenames import (
    ADAPTER_ARCHIVE_SUFFIX,
    ADAPTER_CONFIG_FILE,
    ADAPTER_WEIGHTS_FILE,
    TRAINING_LOG_FILE,
)
from TCURLoRACommon.adapters import export_adapter, import_adapter
from TCURLoRACommon.reloading import PACKAGES, forget_packages


def make_adapter(folder: Path, names=("liver", "tumour")) -> library.AdapterEntry:
    """An adapter folder as the worker writes it (sealed config JSON + weights file)."""
    folder.mkdir(parents=True)
    weights = bytes(range(256)) * 40
    config = {
        "method": "tcur",
        "rank": 4,
        "label_names": list(names),
        "base_model_id": "preset:unetr-tiny",
        "base_fingerprint": "f" * 16,
        "weights_sha256": hashlib.sha256(weights).hexdigest(),
    }
    (folder / ADAPTER_CONFIG_FILE).write_text(json.dumps(seal(config)))
    (folder / ADAPTER_WEIGHTS_FILE).write_bytes(weights)
    (folder / TRAINING_LOG_FILE).write_text('{"iteration": 1}\n')
    return library.read_adapter(folder)


def test_export_then_import_on_another_computer(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("TCURLORA_HOME", str(tmp_path / "mine"))
    entry = library.install_adapter(make_adapter(tmp_path / "staged").path, "liver model")
    shared = export_adapter(entry, tmp_path / "outbox" / "liver")
    assert shared.name == "liver" + ADAPTER_ARCHIVE_SUFFIX and shared.is_file()
    monkeypatch.setenv("TCURLORA_HOME", str(tmp_path / "colleague"))
    imported = import_adapter(shared)
    assert imported.name == "liver" and imported.path.parent == library.adapters_dir()
    assert imported.label_names == ["liver", "tumour"] and imported.rank == 4 and imported.method == "tcur"
    for name in (ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE, TRAINING_LOG_FILE):
        assert (imported.path / name).read_bytes() == (entry.path / name).read_bytes()
    again = import_adapter(shared)  # same name again: a second entry, nothing overwritten
    assert again.name == "liver_2" and [e.name for e in library.list_adapters()] == ["liver", "liver_2"]


def test_import_refuses_bad_files(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("TCURLORA_HOME", str(tmp_path / "home"))
    evil = tmp_path / f"evil{ADAPTER_ARCHIVE_SUFFIX}"
    with zipfile.ZipFile(evil, "w") as archive:
        archive.writestr(ADAPTER_CONFIG_FILE, "{}")
        archive.writestr("../../outside.txt", "x")
    with pytest.raises(InputError, match="unsafe file name"):
        import_adapter(evil)
    assert not (tmp_path / "outside.txt").exists()
    incomplete = tmp_path / f"incomplete{ADAPTER_ARCHIVE_SUFFIX}"
    with zipfile.ZipFile(incomplete, "w") as archive:
        archive.writestr(ADAPTER_CONFIG_FILE, json.dumps({"method": "tcur"}))
    with pytest.raises(InputError, match="not a complete adapter file: adapter.safetensors is missing"):
        import_adapter(incomplete)
    text = tmp_path / f"text{ADAPTER_ARCHIVE_SUFFIX}"
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


def zipped(path: Path, entries: list[tuple[str, bytes]]) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate names written on purpose
        with zipfile.ZipFile(path, "w") as archive:
            for name, data in entries:
                archive.writestr(name, data)
    return path


def assert_library_untouched() -> None:
    root = library.adapters_dir()
    assert library.list_adapters() == [] and (not root.exists() or list(root.iterdir()) == [])


def own_files(folder: Path) -> list[tuple[str, bytes]]:
    return [(p.name, p.read_bytes()) for p in sorted(folder.iterdir())]


def test_import_takes_only_a_checked_adapter(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("TCURLORA_HOME", str(tmp_path / "home"))
    good = own_files(make_adapter(tmp_path / "good").path)
    record = json.loads(dict(good)[ADAPTER_CONFIG_FILE])
    config, weights = ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE
    other_labels = json.dumps(seal({**record, "label_names": ["a", "b"]})).encode()
    tampered = bytearray(dict(good)[weights])
    tampered[7] ^= 0xFF
    unsealed = dict(record, label_names=["a", "b"])
    cases = {
        "twice": good[:2] + [(config, other_labels)],
        "not part of an adapter": good[:2] + [("model.pt", b"\x80\x04pickle")],
        "'.hidden/run.sh', which is not part": good[:2] + [(".hidden/run.sh", b"rm -rf ~")],
        "holds 20000 entries": good + [(f"f{i}.txt", b"") for i in range(19997)],
        "differs from the": [(n, bytes(tampered) if n == weights else d) for n, d in good],
        "adapter_config.json was changed after training": [
            (n, json.dumps(unsealed).encode() if n == config else d) for n, d in good
        ],
        "has no weights_sha256": [
            (n, json.dumps(dict(record, weights_sha256=None)).encode() if n == config else d) for n, d in good
        ],
    }
    for expected, entries in cases.items():
        with pytest.raises(InputError, match=expected) as info:
            import_adapter(zipped(tmp_path / f"bad{ADAPTER_ARCHIVE_SUFFIX}", entries))
        assert info.value.path == str(tmp_path / f"bad{ADAPTER_ARCHIVE_SUFFIX}")
        assert_library_untouched()
    monkeypatch.setenv("TCURLORA_MAX_WEIGHT_BYTES", "1000")
    with pytest.raises(InputError, match=r"unpacks to 10,240 bytes, more than the limit of 1,000"):
        import_adapter(zipped(tmp_path / f"big{ADAPTER_ARCHIVE_SUFFIX}", good))
    assert_library_untouched()
    monkeypatch.delenv("TCURLORA_MAX_WEIGHT_BYTES")
    entry = import_adapter(zipped(tmp_path / f"good{ADAPTER_ARCHIVE_SUFFIX}", good))
    assert sorted(p.name for p in entry.path.iterdir()) == [weights, config, TRAINING_LOG_FILE]


def test_export_writes_only_the_adapter_files_of_an_intact_adapter(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("TCURLORA_HOME", str(tmp_path / "home"))
    entry = library.install_adapter(make_adapter(tmp_path / "staged").path, "liver")
    (entry.path / "notes.txt").write_text("mine")
    shared = export_adapter(entry, tmp_path / "liver")
    with zipfile.ZipFile(shared) as archive:
        assert sorted(archive.namelist()) == [ADAPTER_WEIGHTS_FILE, ADAPTER_CONFIG_FILE, TRAINING_LOG_FILE]
    (entry.path / ADAPTER_WEIGHTS_FILE).write_bytes(b"x" * 10240)
    with pytest.raises(InputError, match="differs from the"):
        export_adapter(entry, tmp_path / "damaged")
    assert not (tmp_path / f"damaged{ADAPTER_ARCHIVE_SUFFIX}").exists()


FULL_DISK = """
import resource, signal, sys
from TCURLoRACommon.adapters import import_adapter
from tcurlora.errors import OutputNotWritableError
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG, as on a full disk
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
try:
    import_adapter(sys.argv[1])
except OutputNotWritableError as error:
    print(error)
    sys.exit(2)
"""


def test_a_full_disk_leaves_nothing_in_the_library(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("TCURLORA_HOME", str(tmp_path / "home"))
    shared = zipped(
        tmp_path / f"liver{ADAPTER_ARCHIVE_SUFFIX}", own_files(make_adapter(tmp_path / "liver").path)
    )
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run(
        [sys.executable, "-c", FULL_DISK, str(shared)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root), "PYTHONDONTWRITEBYTECODE": "1"},
    )
    assert result.returncode == 2, result.stderr
    assert "cannot write the adapter into the model library: File too large" in result.stdout
    assert_library_untouched()
