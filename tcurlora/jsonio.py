"""Read a JSON object from a file, with an error that names the file and the problem."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tcurlora.errors import InputError


def read_json_object(path: str | Path, what: str) -> dict[str, Any]:
    """The JSON object in `path`; InputError("<what> ...", path) when missing, unreadable or not an object."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what} not found", path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(f"corrupt {what} (not valid JSON: {error})", path) from error
    if not isinstance(data, dict):
        raise InputError(f"corrupt {what}: not a JSON object", path)
    return data
