"""Checks on a weight file before a byte of it is read: a regular file, not a link, not too large."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from tcurlora.errors import InputError

# Larger than any 3D segmentation network we know of (UNETR-base is 0.4 GB); override for bigger ones.
DEFAULT_MAX_WEIGHT_BYTES = 4 * 1024**3
MAX_BYTES_VARIABLE = "TCURLORA_MAX_WEIGHT_BYTES"


def max_weight_bytes() -> int:
    """The size limit: $TCURLORA_MAX_WEIGHT_BYTES, else 4 GiB."""
    text = os.environ.get(MAX_BYTES_VARIABLE, "")
    try:
        return int(text) if text else DEFAULT_MAX_WEIGHT_BYTES
    except ValueError as error:
        raise InputError(f"{MAX_BYTES_VARIABLE} must be a number of bytes, got {text!r}") from error


def check_weight_file(path: Path, folder: Path) -> Path:
    """`path` itself, or InputError: a symlink, a link out of `folder`, not a regular file, or oversized."""
    path = Path(path)
    try:
        info = os.lstat(path)
    except OSError as error:
        raise InputError(f"cannot read weights file: {error.strerror or error}", path) from error
    if stat.S_ISLNK(info.st_mode):
        raise InputError("refused: the weights file is a symbolic link (copy the file itself)", path)
    if not stat.S_ISREG(info.st_mode):
        raise InputError("refused: the weights file is not a regular file", path)
    if not path.resolve().is_relative_to(Path(folder).resolve()):
        raise InputError(f"refused: the weights file lies outside {folder} (through a linked folder)", path)
    limit = max_weight_bytes()
    if info.st_size > limit:
        raise InputError(
            f"refused: the weights file has {info.st_size:,} bytes, more than the limit of {limit:,} "
            f"(set {MAX_BYTES_VARIABLE} to allow it)",
            path,
        )
    return path
