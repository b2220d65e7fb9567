"""Refuse a rank that no adapted layer can hold, and say which layers hold less than asked."""

from __future__ import annotations

from typing import Any

from tcurlora.errors import ConfigError


def layer_rank_limits(adapted: Any) -> dict[str, int]:
    """The largest rank each adapted weight group / layer can hold: min(rows, columns) (the method's answer)."""
    return adapted.method.rank_limits(adapted)


def effective_ranks(adapted: Any, rank: int) -> dict[str, int]:
    """Groups / layers that hold fewer than `rank` (their rank is min(rank, rows, columns))."""
    return {name: limit for name, limit in layer_rank_limits(adapted).items() if limit < rank}


def check_rank_fits(adapted: Any, rank: int, source: Any = None) -> None:
    """ConfigError when `rank` exceeds what every adapted layer can hold (the rank would be ignored)."""
    limits = layer_rank_limits(adapted)
    if limits and rank > max(limits.values()):
        raise ConfigError(
            f"key 'rank': {rank} is larger than any adapted layer allows (at most {max(limits.values())}: "
            "min(rows, columns) of the largest layer); choose a smaller rank",
            source,
        )
