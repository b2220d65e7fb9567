"""One file per adapter to share it: a zip of the adapter's own files (JSON config, safetensors weights,
training log; never a pickle), exported from and imported into the model library.

An adapter file may come from anyone, so import trusts nothing in it: only the adapter's own file names,
each once, at the top level (anything else is refused, naming the entry); at most one entry per known
file; sizes bounded per file and counted while unpacking; the config's integrity keys and the weights'
SHA-256 verified before the adapter is installed (tcurlora.adapter_integrity); the hidden staging
folder inside the library removed on every failure, a full disk included.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import zipfile
import zlib
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from tcurlora import library
from tcurlora.adapter_integrity import check_record, check_weights_digest, file_sha256
from tcurlora.errors import InputError, OutputNotWritableError
from tcurlora.filenames import (
    ADAPTER_ARCHIVE_SUFFIX,
    ADAPTER_CONFIG_FILE,
    ADAPTER_FILES,
    ADAPTER_WEIGHTS_FILE,
)
from tcurlora.fsutil import atomic_file
from tcurlora.models.weight_files import max_weight_bytes

REQUIRED_FILES = (ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE)
MAX_CONFIG_BYTES = 16 * 1024**2
MAX_LOG_BYTES = 256 * 1024**2
_CHUNK = 1 << 20


def _limit(name: str) -> int:
    """The most bytes the file `name` may unpack to (the weights: the weight-file limit, 4 GiB by default)."""
    if name == ADAPTER_WEIGHTS_FILE:
        return max_weight_bytes()
    return MAX_CONFIG_BYTES if name == ADAPTER_CONFIG_FILE else MAX_LOG_BYTES


def export_adapter(entry: library.AdapterEntry, path: str | Path) -> Path:
    """Write the adapter's own files as one zip file (".tcuradapter.zip" added when missing); returns its path.
    A damaged adapter (config or weights not matching their recorded SHA-256) is not exported."""
    path = Path(path)
    if not path.name.endswith(ADAPTER_ARCHIVE_SUFFIX):
        path = path.with_name(path.name.removesuffix(".zip") + ADAPTER_ARCHIVE_SUFFIX)
    folder = Path(entry.path)
    library.read_adapter(folder)  # complete and readable, or InputError
    config = folder / ADAPTER_CONFIG_FILE
    record = json.loads(config.read_text(encoding="utf-8"))
    check_record(record, config)
    check_weights_digest(file_sha256(folder / ADAPTER_WEIGHTS_FILE), record, folder / ADAPTER_WEIGHTS_FILE)
    with atomic_file(path, suffix=".partial") as temp:
        with zipfile.ZipFile(temp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for name in ADAPTER_FILES:
                if (folder / name).is_file():
                    archive.write(folder / name, name)
    return path


def _checked_members(archive: zipfile.ZipFile, source: Path) -> list[zipfile.ZipInfo]:
    """The archive's entries, each one of the adapter's own files, once, within its size limit."""
    infos = archive.infolist()
    if len(infos) > len(ADAPTER_FILES):
        raise InputError(
            f"the adapter file holds {len(infos)} entries; an adapter has at most {len(ADAPTER_FILES)} "
            f"({', '.join(ADAPTER_FILES)})",
            source,
        )
    seen: set[str] = set()
    for info in infos:
        name = PurePosixPath(info.filename)
        if name.is_absolute() or ".." in name.parts or "\\" in info.filename or ":" in info.filename:
            raise InputError(f"unsafe file name in the adapter file: {info.filename!r}", source)
        if info.filename not in ADAPTER_FILES:
            raise InputError(
                f"the adapter file holds {info.filename!r}, which is not part of an adapter "
                f"(only {', '.join(ADAPTER_FILES)} are imported)",
                source,
            )
        if info.filename in seen:
            raise InputError(f"the adapter file holds {info.filename!r} twice", source)
        seen.add(info.filename)
        if info.flag_bits & 0x1:
            raise InputError(f"{info.filename!r} in the adapter file is encrypted", source)
        if info.file_size > _limit(info.filename):
            raise InputError(
                f"{info.filename!r} in the adapter file unpacks to {info.file_size:,} bytes, more than the "
                f"limit of {_limit(info.filename):,}",
                source,
            )
    for required in REQUIRED_FILES:
        if required not in seen:
            raise InputError(f"not a complete adapter file: {required} is missing", source)
    return infos


def _copy(reader: BinaryIO, writer: BinaryIO, info: zipfile.ZipInfo, source: Path) -> str:
    """Copy one entry, never more bytes than it declares; returns the SHA-256 of what was copied."""
    digest, total = hashlib.sha256(), 0
    while chunk := reader.read(_CHUNK):
        total += len(chunk)
        if total > info.file_size:
            raise InputError(f"{info.filename!r} in the adapter file is longer than it declares", source)
        digest.update(chunk)
        writer.write(chunk)
    return digest.hexdigest()


def _unpack(source: Path, staging: Path) -> dict[str, str]:
    """Unpack the checked entries into `staging`; returns {file name: SHA-256}. InputError for a bad or
    damaged zip, OutputNotWritableError when the library cannot be written (a full disk)."""
    digests: dict[str, str] = {}
    try:
        with zipfile.ZipFile(source) as archive:
            for info in _checked_members(archive, source):
                with archive.open(info) as reader, open(staging / info.filename, "xb") as writer:
                    digests[info.filename] = _copy(reader, writer, info, source)
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as error:
        raise InputError(
            f"not an adapter file (not a zip archive, or a damaged one: {error})", source
        ) from error
    except OSError as error:
        raise OutputNotWritableError(
            f"cannot write the adapter into the model library: {error.strerror or error}", staging.parent
        ) from error
    return digests


def import_adapter(path: str | Path, name: str | None = None) -> library.AdapterEntry:
    """Add an exported adapter file to the model library (named after the file unless `name`), after
    checking it; nothing is left in the library when it is refused or cannot be written."""
    source = Path(path)
    if not source.is_file():
        raise InputError("file not found", source)
    name = name or source.name.removesuffix(ADAPTER_ARCHIVE_SUFFIX).removesuffix(".zip")
    staging = library.staging_path(name)
    try:
        try:
            staging.mkdir(parents=True)
        except OSError as error:
            raise OutputNotWritableError(
                f"cannot write in the model library: {error.strerror or error}", staging.parent
            ) from error
        digests = _unpack(source, staging)
        config = staging / ADAPTER_CONFIG_FILE
        try:  # errors name the adapter file, not the staging folder that is about to go
            library.read_adapter(staging)  # the config is a JSON object
            record = json.loads(config.read_text(encoding="utf-8"))
            check_record(record, config)
            check_weights_digest(digests[ADAPTER_WEIGHTS_FILE], record, config)
        except InputError as error:
            raise InputError(error.problem, source) from error
        try:
            return library.install_adapter(staging, name)
        except OSError as error:
            raise OutputNotWritableError(
                f"cannot write the adapter into the model library: {error.strerror or error}", staging.parent
            ) from error
    finally:
        shutil.rmtree(staging, ignore_errors=True)
