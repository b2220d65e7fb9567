"""Bases users bring: the real MONAI Model Zoo configs in ../shared/bundles, with random weights saved
beside a temporary copy, load with their own preprocessing, get the right adapter targets (tCURLoRA
on transformer layers, Conv3d kernels of a CNN, or a clear error naming the methods that apply),
fine-tune a few steps and segment through the CLI; `tcurlora info` works on each bundle folder."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from safetensors.torch import save_file
from trust_testing import hippo_case, run, write_job
from zoo_testing import shared_bundle

from tcurlora.adapters.config import AdapterConfig
from tcurlora.adapters.model import apply_adapter
from tcurlora.adapters.targets import configure_targets
from tcurlora.errors import ConfigError
from tcurlora.filenames import ADAPTER_CONFIG_FILE, BUNDLE_SAFETENSORS_FILE, JOB_SCHEMA
from tcurlora.models.bundle import build_bundle_network, read_bundle_configs
from tcurlora.models.registry import load_base_model


def zoo_copy(name: str, tmp_path: Path, weights: str = "safetensors", **network_changes) -> Path:
    """A copy of a zoo bundle with random weights in models/ (network_def changed as asked)."""
    source = shared_bundle(name)
    folder = tmp_path / name
    shutil.copytree(source, folder)
    if network_changes:
        path = folder / "configs" / "inference.json"
        config = json.loads(path.read_text())
        config["network_def"].update(network_changes)
        path.write_text(json.dumps(config))
    config, _, config_path = read_bundle_configs(folder)
    torch.manual_seed(0)
    state = {k: v.contiguous() for k, v in build_bundle_network(config, config_path).state_dict().items()}
    (folder / "models").mkdir()
    if weights == "safetensors":
        save_file(state, str(folder / BUNDLE_SAFETENSORS_FILE))
    else:  # a plain state dict in a torch file, read with weights_only=True
        torch.save({"model": state}, str(folder / "models" / "model.pt"))
    return folder


def finetune_and_segment(
    capsys,
    tmp_path: Path,
    folder: Path,
    case: dict,
    labels: list[str],
    patch: int,
    image: list[str] | str,
    iterations: int = 2,
) -> dict:
    """`tcurlora finetune` (tcur, a few iterations) then `tcurlora segment` with the adapter: the labelmap."""
    job = {
        "schema": JOB_SCHEMA,
        "command": "finetune",
        "base_model": str(folder),
        "cases": [case],
        "label_names": labels,
        "rank": 4,
        "iterations": iterations,
        "batch_size": 1,
        "device": "cpu",
        "patch_size": [patch] * 3,
        "output": str(tmp_path / "adapter"),
    }
    code, events, _, err = run(capsys, "finetune", "--job", str(write_job(tmp_path / "job.json", job)))
    assert code == 0, err
    record = json.loads((tmp_path / "adapter" / ADAPTER_CONFIG_FILE).read_text())
    output = tmp_path / "seg.nii.gz"
    inputs = ",".join(image) if isinstance(image, list) else image
    code, _, _, err = run(
        capsys,
        "segment",
        inputs,
        "--base-model",
        str(folder),
        "--adapter",
        str(tmp_path / "adapter"),
        "--device",
        "cpu",
        "-o",
        str(output),
    )
    assert code == 0, err
    seg = sitk.GetArrayFromImage(sitk.ReadImage(str(output)))
    reference = sitk.ReadImage(image[0] if isinstance(image, list) else image)
    assert seg.shape == sitk.GetArrayFromImage(reference).shape
    assert set(np.unique(seg)) <= set(range(len(labels) + 1))
    return {"record": record, "events": events, "stderr": err}


@pytest.mark.slow
def test_swin_unetr_bundle_for_an_older_monai_loads_adapts_and_segments(capsys, tmp_path, hippocampus_dir):
    # feature_size 12 instead of the zoo's 48 keeps this a CPU test; img_size (gone in MONAI >= 1.5) stays.
    folder = zoo_copy("swin_unetr_btcv_segmentation", tmp_path, feature_size=12)
    base = load_base_model(folder)
    assert base.spec.arch == "SwinUNETR" and "img_size" not in base.spec.arch_params
    assert len(base.notes) == 1 and "img_size=96 dropped" in base.notes[0] and "MONAI" in base.notes[0]
    intensity = base.spec.intensity
    assert (intensity.kind, intensity.a_min, intensity.a_max) == ("range", -175.0, 250.0)
    assert (
        base.spec.spacing == (1.5, 1.5, 2.0)
        and base.spec.labels[1] == "spleen"
        and len(base.spec.labels) == 13
    )
    config = configure_targets(
        AdapterConfig(method="tcur", rank=4, head_module=base.spec.head_module), base.model, None
    )
    adapted = apply_adapter(copy.deepcopy(base.model), config)
    assert "linear_12x12" in adapted.tcur.groups and "linear_96x384" in adapted.tcur.groups
    assert "swinViT.layers1.0.blocks.0.attn.qkv" in adapted.tcur.layers
    assert "decoder1.conv_block.conv1.conv" in adapted.tcur.layers  # conv targets on for tcur
    result = finetune_and_segment(
        capsys,
        tmp_path,
        folder,
        hippo_case(hippocampus_dir, 1),
        ["Anterior", "Posterior"],
        64,
        hippo_case(hippocampus_dir, 3)["image"],
        1,
    )
    assert result["record"]["train_modules"] == ["encoder1", "decoder1"]
    assert any("img_size=96 dropped" in json.dumps(e) for e in result["events"])  # logged by finetune


@pytest.mark.slow
def test_spleen_unet_bundle_adapts_its_conv_kernels(capsys, tmp_path, hippocampus_dir):
    folder = zoo_copy("spleen_ct_segmentation", tmp_path, weights="pt")
    base = load_base_model(folder)
    assert base.notes == [] and base.spec.labels == {1: "spleen"} and base.spec.output == "softmax"
    assert (base.spec.intensity.kind, base.spec.intensity.a_min, base.spec.intensity.a_max) == (
        "range",
        -57.0,
        164.0,
    )
    config = configure_targets(
        AdapterConfig(method="tcur", rank=4, head_module=base.spec.head_module), base.model, None
    )
    adapted = apply_adapter(copy.deepcopy(base.model), config)
    convs = [
        m
        for n, m in base.model.named_modules()
        if isinstance(m, torch.nn.Conv3d) and n != base.spec.head_module
    ]
    assert len(adapted.tcur.layers) == len(convs) == 18 and all(
        k.startswith("conv_") for k in adapted.tcur.groups
    )
    assert base.spec.head_module not in adapted.tcur.layers
    for method, conv, message in [
        ("decoder", None, "UNet names none"),
        ("tcur", False, "leaves nothing to adapt"),
    ]:
        with pytest.raises(ConfigError, match=message) as info:
            configure_targets(AdapterConfig(method=method), base.model, conv)
        assert "Methods for UNet: tcur (Conv3d kernels), lora (Conv3d kernels), head, full" in str(info.value)
    lora = configure_targets(
        AdapterConfig(method="lora", rank=2, head_module=base.spec.head_module), base.model, None
    )
    assert apply_adapter(copy.deepcopy(base.model), lora).parameter_counts().adapter > 0
    # Its head sits in a residual unit whose skip connection (an Identity) carries the base's 2 channels:
    # for 3 classes the skip connection is lifted with the head (a fresh 1x1 conv), and both train.
    head = apply_adapter(
        copy.deepcopy(base.model),
        AdapterConfig(method="head", num_classes=3, head_module=base.spec.head_module),
    )
    unit = head.model.get_submodule("model.2.1")
    assert base.spec.head_module == "model.2.1.conv.unit0.conv" and head.head_replaced
    assert isinstance(unit.residual, torch.nn.Conv3d) and unit.residual.kernel_size == (1, 1, 1)
    assert (unit.residual.in_channels, unit.residual.out_channels, unit.conv.unit0.conv.out_channels) == (
        2,
        3,
        3,
    )
    state = head.adapter_state_dict()
    assert {
        f"model.model.2.1.{k}" for k in ("residual.weight", "residual.bias", "conv.unit0.conv.weight")
    } <= set(state)
    counts = head.parameter_counts()
    assert counts.head == counts.trainable == 2 * 3 + 3 + 2 * 3 * 27 + 3
    assert head(torch.zeros(1, 1, 32, 32, 32)).shape == (1, 3, 32, 32, 32)
    tcur3 = configure_targets(
        AdapterConfig(method="tcur", rank=4, num_classes=3, head_module=base.spec.head_module),
        base.model,
        None,
    )
    assert "model.2.1.residual" not in apply_adapter(copy.deepcopy(base.model), tcur3).tcur.layers
    # ... and both hippocampus labels fine-tune and segment through the CLI.
    result = finetune_and_segment(
        capsys,
        tmp_path,
        folder,
        hippo_case(hippocampus_dir, 1),
        ["anterior", "posterior"],
        32,
        hippo_case(hippocampus_dir, 3)["image"],
    )
    assert result["record"]["conv_target_modules"] == [".+"] and result["record"]["train_modules"] == []
    assert result["record"]["new_head"] is True and result["record"]["num_classes"] == 3


def write_four_channel_case(folder: Path, seed: int) -> dict:
    """A small 4-channel MRI-like case (T1c, T1, T2, FLAIR) with a 2-class blob label, 1 mm."""
    rng = np.random.default_rng(seed)
    grid = np.mgrid[:24, :28, :24].astype(np.float32)
    blob = ((grid - np.array([12, 14, 12])[:, None, None, None]) ** 2).sum(0) < 36
    label = blob.astype(np.uint8) + (blob & (grid[0] > 12)).astype(np.uint8)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for channel in range(4):
        image = (rng.normal(100, 10, label.shape) + 40 * channel * label).astype(np.float32)
        paths.append(folder / f"case{seed}_{channel:04d}.nii.gz")
        sitk.WriteImage(sitk.GetImageFromArray(image), str(paths[-1]))
    sitk.WriteImage(sitk.GetImageFromArray(label), str(folder / f"case{seed}_label.nii.gz"))
    return {
        "id": f"case{seed}",
        "image": [str(p) for p in paths],
        "label": str(folder / f"case{seed}_label.nii.gz"),
    }


@pytest.mark.slow
def test_brats_segresnet_bundle_with_sigmoid_outputs(capsys, tmp_path):
    folder = zoo_copy("brats_mri_segmentation", tmp_path)
    base = load_base_model(folder)
    spec = base.spec
    assert spec.arch == "SegResNet" and spec.in_channels == 4 and spec.output == "sigmoid"
    assert (
        spec.labels == {1: "Tumor core", 2: "Whole tumor", 3: "Enhancing tumor"}
        and spec.intensity.kind == "zscore"
    )
    assert any("sigmoid" in note for note in base.notes) and any("Spacingd" in note for note in base.notes)
    decoder = configure_targets(AdapterConfig(method="decoder"), base.model, None)
    assert decoder.decoder_modules == ["up_layers", "up_samples", "conv_final"]
    case = write_four_channel_case(tmp_path / "data", 1)
    code, _, _, err = run(
        capsys,
        "segment",
        ",".join(case["image"]),
        "--base-model",
        str(folder),
        "--device",
        "cpu",
        "-o",
        str(tmp_path / "base_only.nii.gz"),
    )
    assert code == 2 and "sigmoid (multi-label) outputs" in err and "--adapter" in err
    result = finetune_and_segment(
        capsys,
        tmp_path,
        folder,
        case,
        ["core", "rim"],
        32,
        write_four_channel_case(tmp_path / "data", 2)["image"],
    )
    record = result["record"]
    assert record["new_head"] is True and record["num_classes"] == 3
    assert record["conv_target_modules"] == [".+"]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "changes", "expected"),
    [
        (
            "swin_unetr_btcv_segmentation",
            {"feature_size": 12},
            "note: SwinUNETR: argument img_size=96 dropped",
        ),
        ("spleen_ct_segmentation", {}, "note: decoder does not apply"),
        ("brats_mri_segmentation", {}, "note: sigmoid (multi-label) outputs"),
    ],
)
def test_info_on_each_zoo_bundle_folder(capsys, tmp_path, name, changes, expected):
    folder = zoo_copy(name, tmp_path, **changes)
    code, _, out, err = run(capsys, "info", str(folder), "--table", "--json")
    assert code == 0, err
    assert expected in err
    rows = json.loads(out)
    methods = [row["method"] for row in rows]
    assert methods[:3] == ["tcur"] * 3 and "head" in methods and "full" in methods
    assert all(row["trainable"] > 0 for row in rows)
    tcur8 = next(row for row in rows if row["method"] == "tcur" and row["rank"] == 8)
    assert 0 < tcur8["adapter"] < tcur8["total"] // 20


def test_a_removed_argument_a_class_still_needs_is_explained(tmp_path):
    """An argument this MONAI rejects that we do not know as removed: the versions are named."""
    folder = zoo_copy("spleen_ct_segmentation", tmp_path)
    path = folder / "configs" / "inference.json"
    config = json.loads(path.read_text())
    config["network_def"]["dimensions"] = 3  # UNet's old name for spatial_dims (removed in MONAI 1.3)
    path.write_text(json.dumps(config))
    meta = json.loads((folder / "configs" / "metadata.json").read_text())
    from tcurlora.errors import InputError

    with pytest.raises(
        InputError, match="written for MONAI " + meta["monai_version"].replace(".", r"\.")
    ) as info:
        load_base_model(folder)
    assert "unexpected keyword argument 'dimensions'" in str(info.value)
