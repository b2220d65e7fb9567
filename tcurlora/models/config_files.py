"""Read a bundle's JSON or YAML config file within bounds, so that a crafted file cannot hang or crash us.

A "billion laughs" YAML (aliases of aliases) expands to gigabytes from a few hundred bytes, and a
recursive anchor recurses until Python gives up: YAML aliases (`*name`) are refused while the file is
parsed, before anything is expanded. Files larger than MAX_CONFIG_BYTES (real Model Zoo configs are a
few kilobytes) and structures nested deeper than MAX_CONFIG_DEPTH are refused too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from tcurlora.errors import InputError
from tcurlora.jsonio import JSONProblem, loads_strict

MAX_CONFIG_BYTES = 1024**2
MAX_CONFIG_DEPTH = 64


class _AliasRefused(ValueError):
    pass


class _NoAliasLoader(yaml.SafeLoader):
    """yaml.SafeLoader that stops at the first alias, before the node it names is reused."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise _AliasRefused(
                f"line {event.start_mark.line + 1}: YAML alias *{event.anchor} refused (aliases can expand a "
                "small file into gigabytes or recurse forever); write the values out instead"
            )
        return super().compose_node(parent, index)


def _check_depth(value: Any, path: Path) -> None:
    """InputError when `value` nests lists/objects deeper than MAX_CONFIG_DEPTH (checked without recursion)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_CONFIG_DEPTH:
            raise InputError(f"refused: the config nests deeper than {MAX_CONFIG_DEPTH} levels", path)
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
        stack.extend((child, depth + 1) for child in children)


def read_config_file(path: Path) -> Any:
    """The raw content of a JSON or YAML config file (nothing in it is evaluated); InputError naming the
    file when it is too large, not UTF-8, malformed, uses YAML aliases or nests too deeply."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise InputError(
                f"refused: the config file has {size:,} bytes, more than the limit of {MAX_CONFIG_BYTES:,}",
                path,
            )
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"unreadable bundle config: {error}", path) from error
    try:
        if path.suffix == ".json":
            value = loads_strict(text)
        else:
            value = yaml.load(text, Loader=_NoAliasLoader)  # noqa: S506 - a SafeLoader without aliases
    except _AliasRefused as error:
        raise InputError(str(error), path) from error
    except JSONProblem as error:
        raise InputError(f"refused: the config {error}", path) from error
    except RecursionError as error:
        raise InputError(f"refused: the config nests deeper than {MAX_CONFIG_DEPTH} levels", path) from error
    except (ValueError, yaml.YAMLError) as error:
        raise InputError(f"unreadable bundle config: {type(error).__name__}: {error}", path) from error
    _check_depth(value, path)
    return value
