"""Atomic file and folder writes: a reader sees the old content or the new, never half of one.

Temporary siblings are named `.NAME.XXXXXXXX.tmp` (and `.NAME.old-PID` while a folder is swapped);
`sweep_stale` removes those a killed run left behind. Final files and folders get the modes the
user's umask gives (not tempfile's private 0600 / 0700).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tcurlora.errors import OutputWriteError
from tcurlora.filenames import IMAGE_EXTENSIONS

_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process umask, read without changing it where the OS allows (Linux), else set and restored."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def apply_umask(path: str | Path, directory: bool) -> None:
    """Give `path` the mode a plain mkdir / open would have given it (0777 / 0666 minus the umask)."""
    os.chmod(path, (0o777 if directory else 0o666) & ~current_umask())


def is_write_failure(error: BaseException) -> bool:
    """Whether `error` is the file system refusing a write (disk full, file too large, I/O error),
    raised by Python (OSError) or by safetensors' writer (SafetensorError "I/O error")."""
    if isinstance(error, OSError):
        return True
    safetensors = sys.modules.get("safetensors")
    error_class = getattr(safetensors, "SafetensorError", None)
    return error_class is not None and isinstance(error, error_class) and "I/O error" in str(error)


@contextmanager
def output_write_errors(path: str | Path, what: str = "the output") -> Iterator[None]:
    """Turn a write the file system refused (a full disk) into OutputWriteError naming `path` (exit 3),
    instead of an internal error; the caller removes what it half wrote."""
    try:
        yield
    except (OutputWriteError, KeyboardInterrupt):
        raise
    except Exception as error:
        if not is_write_failure(error):
            raise
        reason = getattr(error, "strerror", None) or str(error).strip().splitlines()[-1]
        raise OutputWriteError(
            f"cannot write {what}: {reason}; nothing was left in its place (free some space and run again)",
            path,
        ) from error


def fsync_file(path: str | Path) -> None:
    """Flush `path` to the disk: a full disk that the writer's buffered writes hid fails here (OSError)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temp_sibling_file(final: str | Path, suffix: str = ".tmp") -> Path:
    """A new empty file `.NAME.XXXXXXXX<suffix>` beside `final` (umask mode), to fill then os.replace."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=suffix, dir=final.parent)  # O_EXCL
    try:
        if hasattr(os, "fchmod"):
            os.fchmod(fd, 0o666 & ~current_umask())  # the file mkstemp made, never a path swapped in
        else:
            apply_umask(temp, directory=False)
    finally:
        os.close(fd)
    return Path(temp)


@contextmanager
def atomic_file(path: str | Path, suffix: str = ".tmp") -> Iterator[Path]:
    """A temp sibling of `path` (umask mode) to write; flushed to the disk and renamed onto `path` when
    the block ends without an exception, removed when it raises. A write the file system refuses (disk
    full) is OutputWriteError. The one atomic-file helper: JSON, labelmaps, figures."""
    with output_write_errors(path):
        temp = temp_sibling_file(path, suffix)
        try:
            yield temp
            fsync_file(temp)
            os.replace(temp, path)
        finally:
            temp.unlink(missing_ok=True)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write `data` to a temp file beside `path`, fsync it, then rename it into place."""
    with atomic_file(path) as temp, open(temp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    return Path(path)


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, data: Any) -> Path:
    return atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def write_torch_file(path: str | Path, state: Any) -> Path:
    """torch.save `state` (tensors and plain values) to `path` through a buffer: torch's own file writer
    reports a full disk as an unrelated RuntimeError ("unexpected pos"), a plain write as OSError."""
    import io

    import torch

    buffer = io.BytesIO()
    torch.save(state, buffer)
    Path(path).write_bytes(buffer.getbuffer())
    return Path(path)


def temp_sibling_dir(final: str | Path) -> Path:
    """A new empty folder beside `final`, to fill and then hand to `replace_dir`."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    temp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    apply_umask(temp, directory=True)
    return temp


@contextmanager
def atomic_dir(final: str | Path, what: str = "the output") -> Iterator[Path]:
    """A temp sibling folder to fill; it replaces `final` (replace_dir) when the block ends without an
    exception and is removed when it raises. A write the file system refuses (disk full, also inside
    safetensors) is OutputWriteError naming `final`, and no temporary folder is left."""
    final = Path(final)
    with output_write_errors(final, what):
        temp = temp_sibling_dir(final)
        try:
            yield temp
            replace_dir(temp, final)
        finally:
            if temp.exists():
                shutil.rmtree(temp, ignore_errors=True)


def stale_siblings(final: str | Path) -> list[Path]:
    """Temporary siblings of `final` that a killed writer left: `.NAME.XXXXXXXX*.tmp`, `.NAME.old-PID`.

    Only exact matches for this NAME (the output "a" never matches the temporaries of "a.b").
    """
    final = Path(final)
    name = re.escape(final.name)
    suffixes = "|".join(re.escape(suffix) for suffix in (".tmp", *IMAGE_EXTENSIONS))
    pattern = re.compile(rf"^\.{name}\.([a-z0-9_]{{8}}({suffixes})|old-\d+)$")
    if not final.parent.is_dir():
        return []
    return sorted(p for p in final.parent.iterdir() if pattern.match(p.name))


def sweep_stale(final: str | Path) -> list[Path]:
    """Remove the stale temporary siblings of `final` (call only while holding its lock); the removed.

    A run killed between the two renames of `replace_dir` left `final` missing and the previous
    content at `.NAME.old-PID`: that is moved back to `final`, not deleted.
    """
    final = Path(final)
    removed = []
    for path in stale_siblings(final):
        if path.name.startswith(f".{final.name}.old-") and not final.exists() and not final.is_symlink():
            os.replace(path, final)
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def replace_dir(temp: str | Path, final: str | Path) -> Path:
    """Move the completed folder `temp` to `final`, replacing any folder there with one rename."""
    temp, final = Path(temp), Path(final)
    for path in temp.rglob("*"):  # some writers (safetensors) create private 0600 files
        if not path.is_symlink():
            apply_umask(path, directory=path.is_dir())
            if path.is_file():
                fsync_file(path)  # a full disk is found before the old folder is replaced
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.replace(final, old)
    try:
        os.replace(temp, final)
    except BaseException:
        if old is not None:
            os.replace(old, final)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return final
