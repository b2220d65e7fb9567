"""A disk cache of preprocessed pretraining volumes (oriented, resampled, normalised, padded), so a
restart or a resumed run does not load and resample every source volume again.

An entry is keyed by the source image and label files (resolved path, size, mtime) and by the
preprocessing (spacing, intensity, padding, channel, label offset, CACHE_VERSION): a changed file or
recipe gives another key. Entries are safetensors files holding the key, written atomically."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from tcurlora.fsutil import atomic_file
from tcurlora.models.spec import ModelSpec

CACHE_VERSION = 1  # bump when the preprocessing code changes what a volume holds


def default_cache_dir() -> Path:
    """$TCURLORA_CACHE_DIR, else $XDG_CACHE_HOME/tcurlora/volumes, else ~/.cache/tcurlora/volumes."""
    if os.environ.get("TCURLORA_CACHE_DIR"):
        return Path(os.environ["TCURLORA_CACHE_DIR"]).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "tcurlora" / "volumes"


def file_identity(path: Path) -> list[Any]:
    """[resolved path, size, mtime in ns]: a rewritten or touched file gets another identity."""
    stat = Path(path).stat()
    return [str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns]


def volume_key(image: Path, label: Path | None, channel: int, offset: int, spec: ModelSpec) -> dict[str, Any]:
    """What a cached volume depends on (label None: a self-supervised source's own intensity classes)."""
    preprocessing = {
        "spacing": list(spec.spacing),
        "intensity": spec.to_dict()["intensity"],
        "patch_size": list(spec.patch_size),
        "channel": channel,
        "label_offset": offset,
    }
    return {
        "version": CACHE_VERSION,
        "image": file_identity(image),
        "label": file_identity(label) if label is not None else "tissue-classes",
        "preprocessing": preprocessing,
    }


def key_digest(key: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def cached_volume(
    cache_dir: Path, key: dict[str, Any], compute: Callable[[], tuple[torch.Tensor, torch.Tensor]]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(image, label) of the entry for `key`, or `compute()` stored under it. An unreadable entry, or one
    holding another key, is computed again and replaced."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import save_file

    text = json.dumps(key, sort_keys=True)
    path = Path(cache_dir) / f"{key_digest(key)}.safetensors"
    if path.is_file():
        try:
            with safe_open(str(path), "pt") as handle:
                if (handle.metadata() or {}).get("key") == text:
                    return handle.get_tensor("image"), handle.get_tensor("label")
        except (SafetensorError, OSError, ValueError, RuntimeError):
            pass  # damaged: computed again below
    image, label = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as temp:
        save_file(
            {"image": image.contiguous(), "label": label.contiguous()}, str(temp), metadata={"key": text}
        )
    return image, label
