"""Before round 1: every site must train the same model on the same grid, or averaging means nothing.

Sites are compared on what makes their tensors compatible: the base model's fingerprint (C and R of
tCURLoRA are taken from its weights), the label names (the head's classes) and the working spacing (the
grid the adapter is trained and applied on)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tcurlora.errors import ConfigError, FingerprintMismatchError, InputError


@dataclass
class Site:
    """One site of a federation as the coordinator sees it before round 1."""

    name: str
    data: Path
    cases: int
    label_names: list[str]
    spacing: tuple[float, float, float]


def site_names(count: int) -> list[str]:
    """FLARE client names of `count` sites: site-1, site-2, ..."""
    return [f"site-{i}" for i in range(1, count + 1)]


def inspect_site(
    name: str,
    data: Path,
    spacing_request: Any,
    base_spacing: Sequence[float],
    patch: Sequence[int],
    num_cases: int | None = None,
) -> Site:
    """Read a site's Decathlon folder (labels, cases, working spacing); InputError naming the site."""
    from tcurlora.data.cases import cases_from_decathlon, dataset_label_names
    from tcurlora.data.spacing import resolve_working_spacing

    try:
        cases = cases_from_decathlon(data, num_cases=num_cases)
        names = dataset_label_names(data)
        if not cases:
            raise InputError("no labeled case in dataset.json", Path(data) / "dataset.json")
        spacing = resolve_working_spacing(spacing_request, cases, base_spacing, patch)
    except InputError as error:
        raise InputError(f"{name} ({data}): {error.problem}", error.path) from error
    return Site(name, Path(data), len(cases), names, tuple(round(float(s), 3) for s in spacing))


def check_sites(sites: list[Site], label_names: list[str] | None) -> tuple[list[str], tuple[float, ...]]:
    """The label names and working spacing all sites share; ConfigError naming the first site that differs
    (from `label_names` when given, else from the first site)."""
    names = list(label_names) if label_names else sites[0].label_names
    for site in sites:
        if site.label_names != names:
            raise ConfigError(
                f"{site.name} ({site.data}) has labels {site.label_names}, the federation "
                f"{names}: every site must label the same structures with the same names"
            )
    spacing = sites[0].spacing
    for site in sites[1:]:
        if site.spacing != spacing:
            raise ConfigError(
                f"{site.name} ({site.data}) works at spacing {list(site.spacing)} mm, "
                f"{sites[0].name} at {list(spacing)} mm: give one --spacing for all sites"
            )
    return names, spacing


def identity(
    fingerprint: str, label_names: list[str], spacing: Sequence[float], method: str, rank: int
) -> dict[str, Any]:
    """What the server sends with the global adapter and each site compares with its own."""
    return {
        "base_fingerprint": fingerprint,
        "label_names": list(label_names),
        "spacing": [round(float(s), 3) for s in spacing],
        "method": method,
        "rank": int(rank),
    }


def check_identity(site: str, local: dict[str, Any], remote: dict[str, Any]) -> None:
    """Refuse to train when this site's model differs from the federation's (message names the site)."""
    if local["base_fingerprint"] != remote.get("base_fingerprint"):
        raise FingerprintMismatchError(
            f"{site}: its base model (fingerprint {local['base_fingerprint'][:12]}) is not the federation's "
            f"({str(remote.get('base_fingerprint'))[:12]}); every site must hold the same base model"
        )
    for key, what in (
        ("label_names", "label names"),
        ("spacing", "working spacing"),
        ("method", "method"),
        ("rank", "rank"),
    ):
        if local[key] != remote.get(key):
            raise ConfigError(
                f"{site}: its {what} {local[key]} differ from the federation's {remote.get(key)}"
            )
