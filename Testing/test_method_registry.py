"""The registry of adaptation methods: what it lists, how an unknown name is refused, that adapter folders
keep the layout the code before the registry wrote, and that every method merges, unmerges and unloads."""

from __future__ import annotations

import copy
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from adapter_testing import CONV_TARGETS, small_unetr
from safetensors import safe_open
from torch import nn

from tcurlora.adapters.config import AdapterConfig
from tcurlora.adapters.io import save_adapter
from tcurlora.adapters.methods.base import AdaptationMethod
from tcurlora.adapters.methods.registry import METHODS, REGISTRY, get_method, method_info
from tcurlora.adapters.model import apply_adapter
from tcurlora.cli import build_parser
from tcurlora.errors import ConfigError
from tcurlora.filenames import ADAPTER_CONFIG_FILE, ADAPTER_FORMAT, ADAPTER_WEIGHTS_FILE

UNKNOWN = "adapter config key 'method': must be one of tcur, lora, decoder, full, head, scratch; got 'dora'"
# Written by the code before the registry (same network, config and seed): the number of tensors in
# adapter.safetensors, a SHA-256 prefix of their sorted "name:dtype:shape" lines, and of the whole file.
LAYOUTS = {
    "tcur": (77, "00b5a4f828a4eaa8", "f8602ca006824293"),
    "lora": (101, "a8345eb596df0882", "2314243d57d2c430"),
    "decoder": (33, "c22349698763e756", "eb1982d1720dad89"),
    "full": (194, "32925b792b97a338", "3e34a2fc723f9f9d"),
    "head": (2, "1456595966bced8b", "e6bdae1b07eeedda"),
    "scratch": (194, "32925b792b97a338", "3e34a2fc723f9f9d"),
}
RECORD_KEYS = [
    "alpha",
    "base_fingerprint",
    "base_model_id",
    "config_sha256",
    "conv_target_modules",
    "decoder_modules",
    "format",
    "fused_splits",
    "head_module",
    "initialisation",
    "label_colors",
    "label_names",
    "method",
    "new_head",
    "num_classes",
    "parameter_counts",
    "rank",
    "seed",
    "selection",
    "target_modules",
    "targets",
    "train_modules",
    "versions",
    "weights_sha256",
]


@pytest.fixture(scope="module")
def base() -> nn.Module:
    return small_unetr(torch.float32)


def config_for(method: str) -> AdapterConfig:
    """The config the layouts above were written with."""
    return AdapterConfig(
        method=method,
        rank=2,
        num_classes=3,
        new_head=True,
        conv_target_modules=CONV_TARGETS if method == "tcur" else [],
        train_modules=["encoder1"] if method in ("tcur", "lora") else [],
    )


def test_the_registry_lists_every_method_with_its_facts():
    assert METHODS == ("tcur", "lora", "decoder", "full", "head", "scratch")
    for name in METHODS:
        assert isinstance(get_method(name), AdaptationMethod), name
    assert [m for m in METHODS if method_info(m).ranked] == ["tcur", "lora"]
    assert [m for m in METHODS if method_info(m).random_init] == ["scratch"]
    assert [m for m in METHODS if method_info(m).trains_head] == ["head"]
    assert {m: REGISTRY[m].learning_rate for m in METHODS} == {
        "tcur": 1e-2,
        "lora": 2e-3,
        "decoder": 1e-3,
        "full": 2e-4,
        "head": 5e-3,
        "scratch": 1e-3,
    }
    assert AdapterConfig(method="lora", rank=4).resolved_alpha == 4.0
    assert AdapterConfig(method="tcur", rank=4).resolved_alpha == 1.0


def test_an_unknown_method_is_refused_with_the_same_words_everywhere(capsys):
    for refuse in (
        lambda: AdapterConfig(method="dora"),
        lambda: method_info("dora"),
        lambda: get_method("dora"),
    ):
        with pytest.raises(ConfigError) as info:
            refuse()
        assert str(info.value) == UNKNOWN
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["finetune", "--method", "dora"])
    assert exit_info.value.code == 2
    assert (
        "argument --method: invalid choice: 'dora' (choose from 'tcur', 'lora', 'decoder', 'full', 'head', "
        "'scratch')"
    ) in capsys.readouterr().err


def test_the_registry_and_the_job_schema_need_no_torch():
    code = (
        "import sys, tcurlora.jobs.schema, tcurlora.adapters.methods.registry as r; "
        "assert 'torch' not in sys.modules, 'torch imported'; print(','.join(r.METHODS))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "tcur,lora,decoder,full,head,scratch"


@pytest.mark.parametrize("method", METHODS)
def test_adapter_folders_keep_their_layout(base, tmp_path: Path, method: str):
    if method == "lora":
        pytest.importorskip("peft")
    folder = save_adapter(tmp_path / method, apply_adapter(copy.deepcopy(base), config_for(method)))
    record = json.loads((folder / ADAPTER_CONFIG_FILE).read_text())
    assert sorted(record) == sorted(RECORD_KEYS + (["effective_ranks"] if method in ("tcur", "lora") else []))
    assert record["initialisation"] == ("random" if method == "scratch" else "base")
    with safe_open(str(folder / ADAPTER_WEIGHTS_FILE), "pt") as weights:
        assert weights.metadata() == {"format": ADAPTER_FORMAT}
        lines = sorted(
            f"{k}:{weights.get_slice(k).get_dtype()}:{weights.get_slice(k).get_shape()}"
            for k in weights.keys()
        )
    digest = hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]
    assert (len(lines), digest, record["weights_sha256"][:16]) == LAYOUTS[method]


@pytest.mark.parametrize("method", METHODS)
def test_every_method_merges_unmerges_and_unloads(base, method: str):
    if method == "lora":
        pytest.importorskip("peft")
    adapted = apply_adapter(copy.deepcopy(base), config_for(method))
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for parameter in adapted.trainable_parameters():  # trained weights stand in for training
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype))
    adapted.eval()
    batch = torch.randn(1, 1, 32, 32, 32, generator=generator, dtype=torch.float32)
    with torch.no_grad():
        unmerged = adapted(batch)
        adapted.merge()
        assert adapted.merged
        torch.testing.assert_close(adapted(batch), unmerged, atol=1e-5, rtol=0)
        adapted.unmerge()
        torch.testing.assert_close(adapted(batch), unmerged, atol=1e-5, rtol=0)
        plain = adapted.merge_and_unload()
        torch.testing.assert_close(plain(batch), unmerged, atol=1e-5, rtol=0)
    assert type(plain) is type(base)
    wrappers = [
        n for n, m in plain.named_modules() if hasattr(m, "lora_A") or type(m).__name__.startswith("TCUR")
    ]
    assert wrappers == []
