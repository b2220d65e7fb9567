"""Which Slicer can run TCURLoRA, checked before anything else is imported (Python 3.9 safe, stdlib only).

The panels and TCURLoRACommon are kept Python 3.9 compatible so that Slicer 5.8 (Python 3.9) can open
them and tell the user what to do; the backend (`tcurlora`, run by the worker process with Slicer's own
Python) needs Python 3.10 or newer, which Slicer ships from 5.10 on.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

MIN_PYTHON = (3, 10)
MIN_SLICER = "5.10"


def unsupported_message(version_info: Sequence[int] = tuple(sys.version_info[:3])) -> str | None:
    """Why this Slicer cannot run TCURLoRA (its Python is too old), or None when it can."""
    if tuple(version_info[:2]) >= MIN_PYTHON:
        return None
    found = ".".join(str(v) for v in version_info[:3])
    needed = ".".join(str(v) for v in MIN_PYTHON)
    return (
        f"TCURLoRA needs 3D Slicer {MIN_SLICER} or newer (Python {needed}+); this Slicer runs Python {found}. "
        f"Install the current Slicer release from https://download.slicer.org and install the TCURLoRA "
        f"extension there."
    )
