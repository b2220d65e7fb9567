"""The integrity record of an adapter folder, checked wherever an adapter is read or imported.

adapter_config.json carries three keys that every check needs, and a missing one is an error (not a
check switched off): `weights_sha256` (SHA-256 of adapter.safetensors), `base_fingerprint` (the base
model's weights) and `config_sha256` (SHA-256 of the config itself, every other key included, so the
weights' digest is covered too). Together they detect a damaged or edited adapter; they cannot tell a
deliberately re-sealed forgery, which is why every value a config holds is also bounded when it is read
(linear-time module-name patterns, JSON-only, safetensors-only).

Torch-free and Python 3.9-compatible: the Slicer panels import adapters with it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from tcurlora.errors import InputError

WEIGHTS_SHA256_KEY = "weights_sha256"
CONFIG_SHA256_KEY = "config_sha256"
FINGERPRINT_KEY = "base_fingerprint"
REQUIRED_KEYS = (WEIGHTS_SHA256_KEY, FINGERPRINT_KEY, CONFIG_SHA256_KEY)
_CHUNK = 1 << 20


def _canonical(record: dict[str, Any]) -> bytes:
    """The bytes the config digest is taken over: every key but config_sha256, sorted, compact."""
    body = {key: value for key, value in record.items() if key != CONFIG_SHA256_KEY}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def config_digest(record: dict[str, Any]) -> str:
    """SHA-256 (hex) of the record without its own digest; independent of key order and layout."""
    return hashlib.sha256(_canonical(record)).hexdigest()


def seal(record: dict[str, Any]) -> dict[str, Any]:
    """A copy of `record` as it will read back from JSON, with `config_sha256` set; written as is."""
    plain = json.loads(json.dumps(record, default=str))
    plain[CONFIG_SHA256_KEY] = config_digest(plain)
    return plain


def check_record(record: dict[str, Any], path: str | Path) -> None:
    """InputError naming adapter_config.json when an integrity key is missing or the config was changed."""
    missing = [key for key in REQUIRED_KEYS if not isinstance(record.get(key), str) or not record.get(key)]
    if missing:
        raise InputError(
            f"adapter_config.json has no {', '.join(missing)}: without it the adapter cannot be checked, so it "
            "is refused (it was removed, or the adapter was written by a tcurlora older than these checks; "
            "train it again)",
            path,
        )
    expected, actual = record[CONFIG_SHA256_KEY], config_digest(record)
    if actual != expected:
        raise InputError(
            f"adapter_config.json was changed after training: its content has SHA-256 {actual[:16]}..., "
            f"not the {expected[:16]}... recorded in its {CONFIG_SHA256_KEY}",
            path,
        )


def check_weights(data: bytes, record: dict[str, Any], path: str | Path) -> None:
    """InputError naming the weights file unless `data` has the SHA-256 the (checked) record holds."""
    if not data:
        raise InputError("the adapter weights file is empty", path)
    check_weights_digest(hashlib.sha256(data).hexdigest(), record, path)


def check_weights_digest(actual: str, record: dict[str, Any], path: str | Path) -> None:
    """InputError unless the hex SHA-256 `actual` is the one recorded under weights_sha256."""
    expected = record.get(WEIGHTS_SHA256_KEY)
    if not isinstance(expected, str) or not expected:
        raise InputError(
            f"adapter_config.json has no {WEIGHTS_SHA256_KEY}: the weights cannot be checked", path
        )
    if actual != expected:
        raise InputError(
            f"corrupt or truncated adapter weights: SHA-256 {actual[:16]}... differs from the "
            f"{expected[:16]}... recorded in adapter_config.json (the file was changed after training)",
            path,
        )


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
