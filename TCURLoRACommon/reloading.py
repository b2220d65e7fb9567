""" "Reload" in the Developer section re-imports the module file only; these packages are imported lazily
by the panels, so forgetting them makes the next use load the edited code."""

from __future__ import annotations

import sys
from collections.abc import Sequence

PACKAGES = ("TCURFineTuneLib", "TCURSegmenterLib", "TCURLoRACommon", "tcurlora")


def forget_packages(packages: Sequence[str] = PACKAGES) -> list[str]:
    """Remove the packages and their submodules from sys.modules; returns the names removed."""
    names = [n for n in sys.modules if any(n == p or n.startswith(p + ".") for p in packages)]
    for name in names:
        del sys.modules[name]
    return sorted(names)
