"""Command-line values of job fields: the argparse `type=` converters and the flag-to-field converters that
tcurlora.jobs.schema names in its setting declarations (tcurlora.settings builds the parsers from them).
"""

from __future__ import annotations

import argparse
from typing import Any

from tcurlora.filenames import case_id_from_path


def _triple(text: str, cast: type, what: str, kind: str) -> list:
    """ "v" -> [v, v, v]; "a,b,c" or "axbxc" -> [a, b, c], each cast and positive; else an argparse error."""
    parts = [p for p in text.lower().replace("x", ",").split(",") if p.strip()]
    try:
        values = [cast(p) for p in parts]
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"{what} must be {kind}s, got {text!r}") from error
    if len(values) == 1:
        values *= 3
    if len(values) != 3 or min(values) <= 0:
        raise argparse.ArgumentTypeError(f"{what} needs 1 or 3 positive {kind}s, got {text!r}")
    return values


def threads_arg(text: str) -> int | str:
    """ "auto" or a positive integer."""
    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f'expected a positive integer or "auto", got {text!r}')
    return value


def patch_size_arg(text: str) -> list[int]:
    """ "96" -> [96, 96, 96]; "96,96,64" or "96x96x64" -> [96, 96, 64]."""
    return _triple(text, int, "patch size", "integer")


def spacing_arg(text: str) -> list[float] | str:
    """ "1" -> [1.0, 1.0, 1.0]; "1,1,1.5" or "1x1x1.5" -> [1.0, 1.0, 1.5]; "auto" and "base" as they are."""
    return text if text in ("auto", "base") else _triple(text, float, "spacing", "number")


def _split_channels(text: str) -> str | list[str]:
    parts = [p for p in text.split(",") if p]
    return parts[0] if len(parts) == 1 else parts


def cases_from_flags(pairs: list[list[str]]) -> list[dict[str, Any]]:
    """--case IMAGE LABEL pairs -> job cases (IMAGE may list channel files separated by commas)."""
    return [
        {"id": case_id_from_path(image.split(",")[0]), "image": _split_channels(image), "label": label}
        for image, label in pairs
    ]


def names_from_flags(items: list[str]) -> list[str]:
    """--labels A B or --labels A,B -> [A, B]."""
    return [name for item in items for name in item.split(",") if name]
