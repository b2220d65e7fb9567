"""Opt-in download of a MONAI Model Zoo bundle by name, checked against a recorded or given digest.

Nothing is downloaded unless asked for. The archive is fetched with MONAI's `download_url` (which
verifies the digest before anything is extracted) and unpacked with MONAI's `extractall`. Without
network the call fails quickly with a clear InputError instead of hanging.
"""

from __future__ import annotations

import socket
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from tcurlora.errors import ConfigError, InputError, OutputExistsError
from tcurlora.filenames import DOWNLOAD_RECORD_FILE
from tcurlora.fsutil import atomic_write_json, replace_dir, temp_sibling_dir

ZOO_URL = (
    "https://github.com/Project-MONAI/model-zoo/releases/download/hosting_storage_v1/{name}_v{version}.zip"
)


@dataclass(frozen=True)
class KnownBundle:
    """A Model Zoo bundle release with its published digest (model-zoo models/model_info.json)."""

    version: str
    digest: str
    hash_type: str


# Digests as published by the MONAI Model Zoo (models/model_info.json "checksum", SHA-1).
KNOWN_BUNDLES: dict[str, KnownBundle] = {
    "spleen_ct_segmentation": KnownBundle("0.3.3", "97daba75d2372ec5ca9a0d16087248d5de6bc671", "sha1"),
    "brats_mri_segmentation": KnownBundle("0.3.1", "36c14ba59084ca344dd7dfec6d2e8f1026fa3249", "sha1"),
}


def check_reachable(url: str, timeout: float) -> None:
    """InputError naming the host when a TCP connection to it cannot be made within `timeout` seconds."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return
    except OSError as error:
        raise InputError(
            f"cannot download the bundle: {host}:{port} is not reachable ({error or 'timed out'}); this machine "
            "looks offline. Download it elsewhere and pass the unpacked bundle folder as the base model."
        ) from error


def resolve_release(
    name: str, version: str | None, sha256: str | None, url: str | None
) -> tuple[str, str, str, str]:
    """(version, url, digest, hash_type) for `name`: the recorded release, or the given version and SHA-256."""
    known = KNOWN_BUNDLES.get(name)
    if sha256:
        digest, hash_type = sha256.lower(), "sha256"
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise ConfigError(f"--sha256 must be 64 hex digits, got {sha256!r}")
    elif known is not None and version in (None, known.version) and url is None:
        digest, hash_type = known.digest, known.hash_type
    else:
        raise ConfigError(
            f"no recorded checksum for bundle {name!r}"
            + (f" version {version}" if version else "")
            + f"; give its SHA-256 with --sha256 (recorded: {', '.join(sorted(KNOWN_BUNDLES))})"
        )
    version = version or (known.version if known else None)
    if version is None and url is None:
        raise ConfigError(f"bundle {name!r} is not recorded: give --bundle-version (or a URL) and --sha256")
    return version or "", url or ZOO_URL.format(name=name, version=version), digest, hash_type


def download_bundle(
    name: str,
    dest: str | Path,
    *,
    version: str | None = None,
    sha256: str | None = None,
    url: str | None = None,
    timeout: float = 10.0,
    force: bool = False,
) -> Path:
    """Download and unpack bundle `name` into `dest`/<name> after checking its digest; returns the folder."""
    from monai.apps.utils import download_url, extractall

    version, url, digest, hash_type = resolve_release(name, version, sha256, url)
    final = Path(dest) / name
    if final.exists() and not force:
        raise OutputExistsError("bundle folder exists (use --force to replace it)", final)
    check_reachable(url, timeout)
    socket.setdefaulttimeout(timeout)
    temp = temp_sibling_dir(final)
    archive = temp / f"{name}_v{version}.zip"
    try:
        download_url(url=url, filepath=archive, hash_val=digest, hash_type=hash_type, progress=False)
    except (OSError, RuntimeError, ValueError) as error:
        import shutil

        shutil.rmtree(temp, ignore_errors=True)
        raise InputError(f"download or checksum check failed for {url}: {error}") from error
    finally:
        socket.setdefaulttimeout(None)
    extractall(filepath=archive, output_dir=temp, has_base=True)
    unpacked = next((p for p in temp.iterdir() if p.is_dir() and (p / "configs").is_dir()), None)
    if unpacked is None:
        raise InputError("the downloaded archive holds no bundle folder with configs/", archive)
    atomic_write_json(
        unpacked / DOWNLOAD_RECORD_FILE,
        {"name": name, "version": version, "url": url, "hash_type": hash_type, "digest": digest},
    )
    replace_dir(unpacked, final)
    archive.unlink(missing_ok=True)
    import shutil

    shutil.rmtree(temp, ignore_errors=True)
    return final
