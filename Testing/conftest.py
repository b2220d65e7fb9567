"""Shared pytest fixtures: where the real data lives, and how a missing data set is handled."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("TCURLORA_DATA", REPO_ROOT.parent / "shared" / "data"))


def pytest_collection_modifyitems(config, items) -> None:
    """Tests marked `cuda` are skipped where torch sees no CUDA device."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (scripts/gpu_check.sh runs these)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


def data_folder(name: str) -> Path:
    """The Decathlon folder `name` under ../shared/data; skip (or fail in CI) when it is absent."""
    folder = SHARED_DATA / name
    if not (folder / "dataset.json").is_file():
        message = f"real data set {name!r} not found at {folder} (set TCURLORA_DATA to its parent)"
        if os.environ.get("TCURLORA_REQUIRE_DATA") == "1":
            pytest.fail(message + "; TCURLORA_REQUIRE_DATA=1 requires it")
        pytest.skip(message)
    return folder


@pytest.fixture(scope="session")
def hippocampus_dir() -> Path:
    return data_folder("hippocampus")


@pytest.fixture(scope="session")
def left_atrium_dir() -> Path:
    return data_folder("left_atrium")


@pytest.fixture(scope="session")
def brats_dir() -> Path:
    return data_folder("brats2013")


@pytest.fixture(scope="session")
def acdc_dir() -> Path:
    return data_folder("acdc")


@pytest.fixture(scope="module")
def base64():
    """A small float64 UNETR (module-scoped: tests adapt deep copies of it)."""
    import torch
    from adapter_testing import small_unetr

    return small_unetr(torch.float64)


@pytest.fixture(scope="module")
def batch64():
    import torch

    return torch.randn(1, 1, 32, 32, 32, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


@pytest.fixture(scope="module")
def base_out(base64, batch64):
    import torch

    with torch.no_grad():
        return base64(batch64)


@pytest.fixture(scope="session")
def tiny_adapter(tmp_path_factory, hippocampus_dir) -> Path:
    """A real adapter of the tiny preset trained for 2 iterations on one hippocampus case (read-only:
    tests copy it before changing it)."""
    from trust_testing import tiny_job, write_job

    from tcurlora.cli import main

    work = tmp_path_factory.mktemp("tiny_adapter")
    output = work / "adapter"
    assert (
        main(["finetune", "--job", str(write_job(work / "job.json", tiny_job(hippocampus_dir, output)))]) == 0
    )
    return output
