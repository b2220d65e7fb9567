"""Hostile MONAI bundles are refused before anything they name runs; real zoo configs still build."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from zoo_testing import shared_bundle

from tcurlora.errors import InputError
from tcurlora.models.bundle import build_bundle_network, load_bundle, read_bundle_configs
from tcurlora.models.registry import load_base_model

UNET = {"_target_": "UNet", "spatial_dims": 3, "in_channels": 1, "out_channels": 2,
        "channels": [4, 8], "strides": [2], "num_res_units": 0}  # fmt: skip


def _bundle(folder: Path, config: dict, weights: dict | None = None) -> Path:
    (folder / "configs").mkdir(parents=True)
    (folder / "models").mkdir()
    (folder / "configs" / "inference.json").write_text(json.dumps(config))
    (folder / "configs" / "metadata.json").write_text(json.dumps({"name": "hostile", "version": "1.0"}))
    if weights is not None:
        save_file(weights, str(folder / "models" / "model.safetensors"))
    return folder


def _unet_weights() -> dict:
    from monai.networks.nets import UNet

    params = {k: v for k, v in UNET.items() if k != "_target_"}
    return {k: v.contiguous() for k, v in UNet(**params).state_dict().items()}


@pytest.mark.parametrize(
    "evil",
    [
        lambda mark: {"_target_": "os.makedirs", "name": str(mark)},
        lambda mark: {"_target_": "subprocess.run", "args": ["mkdir", str(mark)]},
        lambda mark: {"_target_": "builtins.exec", "source": f"import os; os.makedirs({str(mark)!r})"},
        lambda mark: {"_target_": "pathlib.Path.mkdir", "self": str(mark)},
        lambda mark: {"_target_": "monai.networks.nets.os.makedirs", "name": str(mark)},
    ],
    ids=["os", "subprocess", "builtins", "pathlib", "disguised"],
)
def test_a_target_outside_the_allow_list_is_refused_before_it_runs(tmp_path, evil):
    mark = tmp_path / "pwned"
    direct = _bundle(tmp_path / "direct", {"network_def": evil(mark)}, _unet_weights())
    # The evil item nested as an argument of an allowed network, reached through an @ reference chain.
    nested = _bundle(
        tmp_path / "nested",
        {
            "network_def": {**UNET, "act": "@helpers::act"},
            "helpers": {"act": "@payload"},
            "payload": evil(mark),
        },
        _unet_weights(),
    )
    for folder in (direct, nested):
        with pytest.raises(InputError, match="refused _target_") as info:
            load_base_model(folder)
        assert repr(evil(mark)["_target_"]) in str(info.value)
        assert str(folder / "configs" / "inference.json") in str(info.value)
        assert not mark.exists(), "the refused target ran"


def test_expressions_macros_requires_and_cycles_are_refused(tmp_path):
    mark = tmp_path / "pwned"
    code = f"$__import__('os').makedirs({str(mark)!r})"
    cases = {
        "expr": ({"network_def": {**UNET, "out_channels": "@n"}, "n": code}, "config expression"),
        "macro": ({"network_def": {**UNET, "channels": "%/etc/passwd::x"}}, "config macro"),
        "requires": ({"network_def": {**UNET, "_requires_": "@side"}, "side": code}, "_requires_"),
        "mode": ({"network_def": {**UNET, "_mode_": "callable"}}, "_mode_ 'callable'"),
        "cycle": ({"network_def": {**UNET, "act": "@a"}, "a": {"x": "@b"}, "b": "@a"}, "circular reference"),
        "dangling": ({"network_def": {**UNET, "act": "@nowhere"}}, "points to no config item"),
        "download": (
            {
                "network_def": {
                    "_target_": "DenseNet121",
                    "spatial_dims": 3,
                    "in_channels": 1,
                    "out_channels": 2,
                    "pretrained": True,
                }
            },
            r"argument 'pretrained' = True \(set in the config; it would download",
        ),
    }
    for name, (config, message) in cases.items():
        folder = _bundle(tmp_path / name, config, _unet_weights())
        with pytest.raises(InputError, match=message):
            load_bundle(folder)
        assert not mark.exists()


def test_a_reference_to_an_allowed_class_still_builds(tmp_path):
    config = {
        "network_def": {**UNET, "out_channels": "@classes"},
        "classes": 2,
        "device": "$torch.device('cpu')",
    }
    base = load_bundle(_bundle(tmp_path / "ok", config, _unet_weights()))
    assert base.spec.arch == "UNet" and base.spec.arch_params["out_channels"] == 2


def test_pickle_in_model_pt_is_refused_and_never_runs(tmp_path):
    mark = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.makedirs, (str(mark),))

    folder = _bundle(tmp_path / "pickle", {"network_def": UNET})
    torch.save({"state_dict": _unet_weights(), "x": Payload()}, str(folder / "models" / "model.pt"))
    with pytest.raises(InputError, match="refused: the file is not a plain weights file"):
        load_bundle(folder)
    assert not mark.exists()


def test_symlinked_and_oversized_weight_files_are_refused(tmp_path, monkeypatch):
    elsewhere = tmp_path / "elsewhere.safetensors"
    save_file(_unet_weights(), str(elsewhere))
    linked = _bundle(tmp_path / "linked", {"network_def": UNET})
    (linked / "models" / "model.safetensors").symlink_to(elsewhere)
    with pytest.raises(InputError, match="symbolic link") as info:
        load_bundle(linked)
    assert str(linked / "models" / "model.safetensors") in str(info.value)

    outside = tmp_path / "outside"
    (outside / "models").mkdir(parents=True)
    shutil.copy(elsewhere, outside / "models" / "model.safetensors")
    linked_folder = _bundle(tmp_path / "linked_folder", {"network_def": UNET})
    (linked_folder / "models").rmdir()
    (linked_folder / "models").symlink_to(outside / "models")
    with pytest.raises(InputError, match="outside"):
        load_bundle(linked_folder)

    huge = _bundle(tmp_path / "huge", {"network_def": UNET})
    with open(huge / "models" / "model.safetensors", "wb") as handle:
        handle.truncate(4 * 1024**3 + 1)  # sparse: no disk used, never read
    with pytest.raises(InputError, match="more than the limit of 4,294,967,296"):
        load_bundle(huge)
    monkeypatch.setenv("TCURLORA_MAX_WEIGHT_BYTES", "1000")
    small = _bundle(tmp_path / "small", {"network_def": UNET}, _unet_weights())
    with pytest.raises(InputError, match="TCURLORA_MAX_WEIGHT_BYTES"):
        load_bundle(small)


def _zoo(name: str, tmp_path: Path) -> Path:
    source = shared_bundle(name)
    copy = tmp_path / name
    shutil.copytree(source, copy)
    return copy


@pytest.mark.parametrize(
    ("name", "arch", "in_channels", "out_channels"),
    [
        ("spleen_ct_segmentation", "UNet", 1, 2),
        ("brats_mri_segmentation", "SegResNet", 4, 3),
        ("swin_unetr_btcv_segmentation", "SwinUNETR", 1, 14),
    ],
)
def test_real_zoo_configs_build_without_evaluating_expressions(
    tmp_path, name, arch, in_channels, out_channels
):
    folder = _zoo(name, tmp_path)
    path = folder / "configs" / "inference.json"
    config = json.loads(path.read_text())
    assert any(str(v).startswith("$") for v in config["imports"]), "the zoo config should use expressions"
    mark = tmp_path / "evaluated"
    config["imports"].append(f"$__import__('os').makedirs({str(mark)!r})")
    config["device"] = f"$__import__('os').makedirs({str(mark)!r})"
    path.write_text(json.dumps(config))
    config, _, config_path = read_bundle_configs(folder)
    network = build_bundle_network(config, config_path)
    assert type(network).__name__ == arch
    convs = [m for m in network.modules() if isinstance(m, torch.nn.Conv3d)]
    assert convs[0].in_channels == in_channels and convs[-1].out_channels == out_channels
    assert not mark.exists()


def test_real_zoo_bundle_loads_with_random_weights(tmp_path):
    folder = _zoo("spleen_ct_segmentation", tmp_path)
    config, _, config_path = read_bundle_configs(folder)
    weights = {k: v.contiguous() for k, v in build_bundle_network(config, config_path).state_dict().items()}
    (folder / "models").mkdir()
    save_file(weights, str(folder / "models" / "model.safetensors"))
    base = load_base_model(folder)
    assert base.spec.arch == "UNet" and base.spec.out_channels == 2
    assert base.spec.labels == {1: "spleen"} and base.spec.spacing == (1.5, 1.5, 2.0)


def test_bundle_code_in_scripts_is_never_imported(tmp_path):
    folder = _zoo("wholeBrainSeg_Large_UNEST_segmentation", tmp_path)
    script = (
        "import sys; from pathlib import Path; from tcurlora.models.bundle import load_bundle\n"
        f"folder = Path({str(folder)!r}); sys.path.insert(0, str(folder))\n"
        "try:\n    load_bundle(folder)\nexcept Exception as error:\n    print(type(error).__name__, error)\n"
        "print('imported' if any(m.startswith('scripts') for m in sys.modules) else 'not imported')\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                            cwd=Path(__file__).resolve().parents[1])  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "InputError" in result.stdout and "'scripts.networks.unest_base_patch_4.UNesT'" in result.stdout
    assert result.stdout.strip().endswith("not imported")


def test_export_force_replaces_only_a_bundle_tcurlora_exported(tmp_path):
    from tcurlora.errors import OutputExistsError
    from tcurlora.models.bundle import export_bundle

    base = load_base_model("preset:unetr-tiny")
    users = tmp_path / "users"
    users.mkdir()
    (users / "data.csv").write_text("1,2")
    with pytest.raises(OutputExistsError, match="not a bundle exported by tcurlora"):
        export_bundle(base, users, force=True)
    assert (users / "data.csv").read_text() == "1,2"
    ours = export_bundle(base, tmp_path / "ours")
    assert export_bundle(base, ours, force=True) == ours
