"""What may be written where: writable locations, and `--force` replacing only what tcurlora wrote.

Every check here runs before any work starts, so a run never fails at its end because of its output.
"""

from __future__ import annotations

import errno
import os
import stat
import tempfile
import time
from pathlib import Path

from tcurlora.errors import OutputExistsError, OutputNotWritableError
from tcurlora.filenames import (
    ADAPTER_CONFIG_FILE,
    ADAPTER_FILES,
    ADAPTER_FORMAT,
    EVALUATION_SCHEMA,
    MODEL_FILES,
    MODEL_FORMAT,
    MODEL_SPEC_FILE,
)
from tcurlora.jsonio import loads_strict

# Written into each segmentation's header (NIfTI descrip, NRRD / MetaImage key) to recognise it.
SEGMENTATION_MARK = "tcurlora segmentation"
SEGMENTATION_MARK_KEYS = ("tcurlora", "ITK_FileNotes", "descrip")
MARKDOWN_HEAD = "| case |"
NOT_OURS = "--force replaces only what tcurlora wrote; move or delete it yourself, or choose another output"


def check_writable_folder(folder: str | Path) -> None:
    """OutputNotWritableError unless files can be created in `folder` (or where it would be created).

    A real probe (a temporary file created and removed), so ACLs, read-only mounts and a file in
    the way are all caught; nothing is left behind and no folder is created.
    """
    folder = Path(folder).absolute()
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise OutputNotWritableError(f"cannot create the output folder: {existing} is a file", folder)
    sweep_stale_probes(existing)
    try:
        _probe(existing)
    except OSError as error:
        raise OutputNotWritableError(
            f"cannot write in {existing}: {error.strerror or error}", folder
        ) from error


PROBE_PREFIX = ".tcurlora-probe-"
PROBE_STALE_S = 60.0  # a probe lives for microseconds; one this old was left by a killed run
_swept: set[Path] = set()


def _probe(folder: Path) -> None:
    """Create and remove a file in `folder` (OSError when that is not allowed). Linux: an unnamed
    O_TMPFILE, so a run killed right here leaves nothing; elsewhere a named temporary file."""
    if hasattr(os, "O_TMPFILE"):
        try:
            os.close(os.open(folder, os.O_TMPFILE | os.O_WRONLY, 0o600))
            return
        except OSError as error:
            if error.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL, errno.ENOENT):
                raise  # EACCES, EROFS, ENOSPC...: the answer; the rest: this file system has no O_TMPFILE
    fd, probe = tempfile.mkstemp(prefix=PROBE_PREFIX, dir=folder)
    os.close(fd)
    Path(probe).unlink(missing_ok=True)


def sweep_stale_probes(folder: Path) -> list[Path]:
    """Remove the probe files (`.tcurlora-probe-*`) that killed runs left in `folder` (once per process)."""
    if folder in _swept:
        return []
    _swept.add(folder)
    removed = []
    try:
        entries = [p for p in folder.iterdir() if p.name.startswith(PROBE_PREFIX)]
    except OSError:
        return []
    for path in entries:
        try:
            info = path.lstat()
            if stat.S_ISREG(info.st_mode) and time.time() - info.st_mtime > PROBE_STALE_S:
                path.unlink()
                removed.append(path)
        except OSError:
            continue
    return removed


def is_tcurlora_adapter(folder: Path) -> bool:
    """A folder holding only the files of a tcurlora adapter, with a tcurlora adapter_config.json."""
    config = folder / ADAPTER_CONFIG_FILE
    if folder.is_symlink() or not folder.is_dir() or not config.is_file() or config.is_symlink():
        return False
    try:
        record = loads_strict(config.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(record, dict) and record.get("format") == ADAPTER_FORMAT


def check_adapter_output(folder: str | Path, force: bool) -> Path:
    """The adapter output `folder` is free, or (with force) an adapter folder tcurlora wrote, or empty."""
    folder = Path(folder)
    if not folder.exists() and not folder.is_symlink():
        check_writable_folder(folder.parent)
        return folder
    kind = "a file" if folder.is_file() else "a link" if folder.is_symlink() else "a folder"
    if not force:
        what = (
            "adapter folder exists" if kind == "a folder" else f"exists and is {kind}, not an adapter folder"
        )
        raise OutputExistsError(f"{what} (use --force to replace an adapter folder)", folder)
    if kind != "a folder":
        raise OutputExistsError(f"exists and is {kind}, not an adapter folder; {NOT_OURS}", folder)
    entries = sorted(p.name for p in folder.iterdir())
    if entries and not is_tcurlora_adapter(folder):
        raise OutputExistsError(f"this folder is not an adapter written by tcurlora; {NOT_OURS}", folder)
    foreign = [name for name in entries if name not in ADAPTER_FILES]
    if foreign:
        raise OutputExistsError(
            f"this adapter folder also holds {foreign[0]!r}, which tcurlora did not write; {NOT_OURS}", folder
        )
    check_writable_folder(folder.parent)
    return folder


def check_model_output(folder: str | Path, force: bool) -> Path:
    """A model folder output (`pretrain`) is free, or (with force) a model folder tcurlora wrote, or empty."""
    folder = Path(folder)
    if not folder.exists() and not folder.is_symlink():
        check_writable_folder(folder.parent)
        return folder
    if not force:
        raise OutputExistsError("output model folder exists (use --force to replace it)", folder)
    if folder.is_symlink() or not folder.is_dir():
        raise OutputExistsError(f"exists and is not a model folder; {NOT_OURS}", folder)
    entries = sorted(p.name for p in folder.iterdir())
    try:
        record = loads_strict((folder / MODEL_SPEC_FILE).read_text(encoding="utf-8")) if entries else {}
    except (OSError, ValueError):
        record = None
    ours = not entries or (isinstance(record, dict) and record.get("format") == MODEL_FORMAT)
    foreign = [name for name in entries if name not in MODEL_FILES]
    if not ours or foreign:
        what = f"also holds {foreign[0]!r}" if ours else "is not a model folder written by tcurlora"
        raise OutputExistsError(f"this folder {what}; {NOT_OURS}", folder)
    check_writable_folder(folder.parent)
    return folder


def is_tcurlora_segmentation(path: Path) -> bool:
    """A regular file whose image header carries the tcurlora segmentation mark."""
    import SimpleITK as sitk

    if path.is_symlink() or not path.is_file():
        return False
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return False
    keys = set(reader.GetMetaDataKeys())
    return any(SEGMENTATION_MARK in reader.GetMetaData(k) for k in SEGMENTATION_MARK_KEYS if k in keys)


def check_segmentation_output(path: str | Path, force: bool) -> Path:
    """A labelmap output file is free, or (with force) a segmentation tcurlora wrote; writable either way."""
    path = Path(path)
    if path.exists() or path.is_symlink():
        if path.is_dir():
            raise OutputExistsError("the output is a folder; give a file name", path)
        if not force:
            raise OutputExistsError('output exists; use --force (or "force": true) to overwrite', path)
        if not is_tcurlora_segmentation(path):
            raise OutputExistsError(f"this file is not a segmentation written by tcurlora; {NOT_OURS}", path)
    check_writable_folder(path.parent)
    return path


def check_report_output(path: str | Path, force: bool) -> Path:
    """An `evaluate --json/--markdown` file is free, or (with force) a report tcurlora wrote."""
    path = Path(path)
    if path.exists() or path.is_symlink():
        if not force:
            raise OutputExistsError("output exists (use --force to replace it)", path)
        if path.is_symlink() or not path.is_file() or not _is_report(path):
            raise OutputExistsError(f"this is not a report written by tcurlora evaluate; {NOT_OURS}", path)
    check_writable_folder(path.parent)
    return path


def _is_report(path: Path) -> bool:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, ValueError):
        return False
    if text.startswith(MARKDOWN_HEAD):
        return True
    try:
        data = loads_strict(text)
    except ValueError:
        return False
    return isinstance(data, dict) and data.get("schema") == EVALUATION_SCHEMA
