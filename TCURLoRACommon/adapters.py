"""One file per adapter to share it: a zip of the adapter folder (JSON config + safetensors weights, never a
pickle), exported from and imported into the model library."""

from __future__ import annotations

import shutil
import tempfile
import zipfile
from pathlib import Path, PurePosixPath

from tcurlora import library
from tcurlora.errors import InputError
from tcurlora.fsutil import atomic_file

SUFFIX = ".tcuradapter.zip"
MAX_UNPACKED_BYTES = 4 * 1024**3  # refuse zip bombs


def export_adapter(entry: library.AdapterEntry, path: str | Path) -> Path:
    """Write the adapter folder as one zip file (`SUFFIX` added when missing); returns its path."""
    path = Path(path)
    if not path.name.endswith(SUFFIX):
        path = path.with_name(path.name.removesuffix(".zip") + SUFFIX)
    folder = Path(entry.path)
    library.read_adapter(folder)  # complete and readable, or InputError
    with atomic_file(path, suffix=".partial") as temp:
        with zipfile.ZipFile(temp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for file in sorted(p for p in folder.rglob("*") if p.is_file()):
                archive.write(file, file.relative_to(folder).as_posix())
    return path


def _safe_members(archive: zipfile.ZipFile, source: Path) -> list[zipfile.ZipInfo]:
    members, total = [], 0
    for info in archive.infolist():
        name = PurePosixPath(info.filename)
        if name.is_absolute() or ".." in name.parts or "\\" in info.filename or ":" in info.filename:
            raise InputError(f"unsafe file name in the adapter file: {info.filename!r}", source)
        total += info.file_size
        if total > MAX_UNPACKED_BYTES:
            raise InputError("the adapter file unpacks to more than 4 GB", source)
        if not info.is_dir():
            members.append(info)
    return members


def import_adapter(path: str | Path, name: str | None = None) -> library.AdapterEntry:
    """Add an exported adapter file to the model library (named after the file unless `name`)."""
    source = Path(path)
    if not source.is_file():
        raise InputError("file not found", source)
    name = name or source.name.removesuffix(SUFFIX).removesuffix(".zip")
    staging = Path(tempfile.mkdtemp(prefix="tcurlora-import-"))
    try:
        try:
            with zipfile.ZipFile(source) as archive:
                for info in _safe_members(archive, source):
                    target = staging / PurePosixPath(info.filename)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with archive.open(info) as reader, open(target, "wb") as writer:
                        shutil.copyfileobj(reader, writer)
        except zipfile.BadZipFile as error:
            raise InputError(f"not an adapter file (not a zip archive: {error})", source) from error
        library.read_adapter(staging)  # the config and weights are there, or InputError
        return library.install_adapter(staging, name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
