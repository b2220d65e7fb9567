"""Parameter counts at the paper's size (UNETR-base) and the `tcurlora info` command."""

from __future__ import annotations

import copy
import json
import re

import pytest
import torch
from monai.networks.nets import UNETR
from torch import nn

from tcurlora.adapters.config import CONV_TARGETS, AdapterConfig
from tcurlora.adapters.io import save_adapter
from tcurlora.adapters.model import apply_adapter
from tcurlora.cli import main
from tcurlora.filenames import ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE


@pytest.fixture(scope="module")
def unetr_base() -> nn.Module:
    """MONAI UNETR as in the paper: img 128^3, patch 16, hidden 768, MLP 3072, 12 heads, feature 16."""
    torch.manual_seed(0)
    return UNETR(
        in_channels=1,
        out_channels=2,
        img_size=(128, 128, 128),
        feature_size=16,
        hidden_size=768,
        mlp_dim=3072,
        num_heads=12,
        proj_type="conv",
        norm_name="instance",
        res_block=True,
    )


@pytest.mark.slow
def test_tcur_rank8_trains_4608_parameters_in_unetr_base(unetr_base):
    plain_total = sum(p.numel() for p in unetr_base.parameters())
    adapted = apply_adapter(
        unetr_base, AdapterConfig(method="tcur", rank=8, base_fingerprint="not needed here")
    )
    groups = {k: (g.n1, g.n2, g.m) for k, g in adapted.tcur.groups.items()}
    assert groups == {
        "linear_768x768": (768, 768, 48),
        "linear_3072x768": (3072, 768, 12),
        "linear_768x3072": (768, 3072, 12),
    }
    counts = adapted.parameter_counts()
    assert counts.trainable == counts.adapter == 64 * 48 + 64 * 12 + 64 * 12 == 4608
    assert counts.head == 0
    assert counts.total == plain_total + 4608
    assert counts.trainable_percent == pytest.approx(100 * 4608 / (plain_total + 4608))
    assert counts.trainable_percent < 0.1  # the paper's "under 0.1%"


@pytest.mark.slow
def test_info_unetr_base_json(capsys):
    assert (
        main(
            [
                "info",
                "unetr-base",
                "--method",
                "tcur",
                "--rank",
                "8",
                "--no-conv-targets",
                "--no-train-modules",
                "--json",
            ]
        )
        == 0
    )
    data = json.loads(capsys.readouterr().out)
    assert data["method"] == "tcur" and data["rank"] == 8
    assert data["trainable"] == data["adapter"] == 4608 and data["head"] == 0
    assert data["trainable_percent"] == pytest.approx(100 * 4608 / data["total"])
    assert data["total"] > 90_000_000


@pytest.mark.slow
def test_info_table_matches_apply_adapter(capsys):
    assert main(["info", "unetr-tiny", "--table", "--num-classes", "4", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["method"], r["rank"]) for r in rows] == [
        ("tcur", 4),
        ("tcur", 8),
        ("tcur", 16),
        ("lora", 4),
        ("lora", 8),
        ("lora", 16),
        ("decoder", None),
        ("full", None),
        ("head", None),
        ("scratch", None),
    ]
    from tcurlora.models.architectures import build_preset

    model, _ = build_preset("unetr-tiny")
    for row in rows:
        config = AdapterConfig(
            method=row["method"], rank=row["rank"] or 8, num_classes=4, base_fingerprint="x"
        )
        if row["method"] == "tcur":  # finetune's default for tcur: the Conv3d kernels and full-res blocks too
            config.conv_target_modules = list(CONV_TARGETS)
            config.train_modules = ["encoder1", "decoder2"]
        counts = apply_adapter(copy.deepcopy(model), config).parameter_counts()
        assert {k: row[k] for k in ("total", "trainable", "adapter", "head")} == {
            "total": counts.total,
            "trainable": counts.trainable,
            "adapter": counts.adapter,
            "head": counts.head,
        }
        assert row["head"] == 8 * 4 + 4
    assert main(["info", "unetr-tiny", "--table", "--no-conv-targets", "--no-train-modules"]) == 0
    text = capsys.readouterr().out
    lines = text.splitlines()
    assert lines[0] == "preset:unetr-tiny" and lines[1].split() == [
        "method",
        "rank",
        "total",
        "trainable",
        "trainable",
        "%",
        "adapter",
        "core",
        "train",
        "modules",
        "head",
    ]
    tcur8 = next(line for line in lines if line.split()[:2] == ["tcur", "8"])
    assert tcur8.split()[3] == "4,608"


def test_info_counts_train_modules(capsys):
    """--train-modules adds the named blocks, counted apart from the adapter core and the head."""
    from tcurlora.models.architectures import build_preset

    model, _ = build_preset("unetr-tiny")
    decoder_blocks = sum(p.numel() for n, p in model.named_parameters() if re.match(r"decoder\d+\.", n))
    assert (
        main(
            [
                "info",
                "unetr-tiny",
                "--method",
                "tcur",
                "--no-conv-targets",
                "--train-modules",
                "decoder",
                "--json",
            ]
        )
        == 0
    )
    row = json.loads(capsys.readouterr().out)
    assert row["modules"] == decoder_blocks > 0
    assert row["trainable"] == row["adapter"] + row["modules"] + row["head"]
    assert row["adapter"] == 4608


def test_info_on_an_adapter_folder(tmp_path, capsys):
    from tcurlora.models.architectures import build_preset

    model, _ = build_preset("unetr-tiny")
    adapted = apply_adapter(
        model, AdapterConfig(method="tcur", rank=4, num_classes=2, label_names=["hippocampus"])
    )
    semi = {"unlabeled_loss": "pseudo_label", "weight": 1.0}
    extra = {
        "preprocessing": {"spacing": [1.0, 1.0, 1.5]},
        "single_piece_classes": [1],
        "training": {"flip_axes": [0], "semi_supervised": semi},
    }
    folder = save_adapter(tmp_path / "hippo", adapted, extra=extra)
    assert main(["info", str(folder), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    counts = adapted.parameter_counts()
    assert data["method"] == "tcur" and data["rank"] == 4 and data["label_names"] == ["hippocampus"]
    assert (data["trainable"], data["adapter"], data["head"]) == (counts.trainable, counts.adapter, 8 * 2 + 2)
    assert data["file_size"] == (folder / ADAPTER_WEIGHTS_FILE).stat().st_size
    assert (data["spacing"], data["flip_axes"], data["single_piece_classes"]) == ([1.0, 1.0, 1.5], [0], [1])
    assert data["semi_supervised"] == semi
    assert main(["info", str(folder)]) == 0
    out = capsys.readouterr().out
    assert "file size" in out and "flip axes: [0]" in out and "single piece classes: [1]" in out
    assert 'semi supervised: {"unlabeled_loss": "pseudo_label", "weight": 1.0}' in out
    # an adapter of an older tcurlora, without these records: "-" in the table, None in JSON
    bare = save_adapter(tmp_path / "old", adapted)
    assert main(["info", str(bare), "--json"]) == 0
    old = json.loads(capsys.readouterr().out)
    assert (old["flip_axes"], old["single_piece_classes"], old["semi_supervised"]) == (None, None, None)
    assert main(["info", str(bare)]) == 0
    assert "flip axes: -" in capsys.readouterr().out


def test_info_errors_name_the_problem(tmp_path, capsys):
    assert main(["info", str(tmp_path / "missing_model")]) == 2
    assert "missing_model" in capsys.readouterr().err
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / ADAPTER_CONFIG_FILE).write_text("{not json")
    (broken / ADAPTER_WEIGHTS_FILE).write_bytes(b"")
    assert main(["info", str(broken)]) == 2
    err = capsys.readouterr().err
    assert "corrupt adapter config" in err and str(broken / ADAPTER_CONFIG_FILE) in err


@pytest.mark.slow
def test_info_conv_flags_follow_finetune_for_every_method(capsys):
    def trainable(*flags: str) -> int:
        assert main(["info", "unetr-tiny", "--json", *flags]) == 0
        return json.loads(capsys.readouterr().out)["trainable"]

    assert trainable("--method", "tcur") == trainable("--method", "tcur", "--conv-targets")
    assert trainable("--method", "tcur") > trainable("--method", "tcur", "--no-conv-targets")
    assert trainable("--method", "lora") == trainable("--method", "lora", "--no-conv-targets")
    assert trainable("--method", "lora", "--conv-targets") > trainable("--method", "lora")
