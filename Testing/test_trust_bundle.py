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
from tcurlora.filenames import BUNDLE_SAFETENSORS_FILE, MODEL_SPEC_FILE
from tcurlora.models.bundle import build_bundle_network, load_bundle, read_bundle_configs
from tcurlora.models.registry import load_base_model

UNET = {
    "_target_": "UNet",
    "spatial_dims": 3,
    "in_channels": 1,
    "out_channels": 2,
    "channels": [4, 8],
    "strides": [2],
    "num_res_units": 0,
}


def _bundle(folder: Path, config: dict, weights: dict | None = None) -> Path:
    (folder / "configs").mkdir(parents=True)
    (folder / "models").mkdir()
    (folder / "configs" / "inference.json").write_text(json.dumps(config))
    (folder / "configs" / "metadata.json").write_text(json.dumps({"name": "hostile", "version": "1.0"}))
    if weights is not None:
        save_file(weights, str(folder / BUNDLE_SAFETENSORS_FILE))
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
    (linked / BUNDLE_SAFETENSORS_FILE).symlink_to(elsewhere)
    with pytest.raises(InputError, match="symbolic link") as info:
        load_bundle(linked)
    assert str(linked / BUNDLE_SAFETENSORS_FILE) in str(info.value)

    outside = tmp_path / "outside"
    (outside / "models").mkdir(parents=True)
    shutil.copy(elsewhere, outside / BUNDLE_SAFETENSORS_FILE)
    linked_folder = _bundle(tmp_path / "linked_folder", {"network_def": UNET})
    (linked_folder / "models").rmdir()
    (linked_folder / "models").symlink_to(outside / "models")
    with pytest.raises(InputError, match="outside"):
        load_bundle(linked_folder)

    huge = _bundle(tmp_path / "huge", {"network_def": UNET})
    with open(huge / BUNDLE_SAFETENSORS_FILE, "wb") as handle:
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
    save_file(weights, str(folder / BUNDLE_SAFETENSORS_FILE))
    base = load_base_model(folder)
    assert base.spec.arch == "UNet" and base.spec.out_channels == 2
    assert base.spec.labels == {1: "spleen"} and base.spec.spacing == (1.5, 1.5, 2.0)


@pytest.mark.slow
def test_bundle_code_in_scripts_is_never_imported(tmp_path):
    folder = _zoo("wholeBrainSeg_Large_UNEST_segmentation", tmp_path)
    script = (
        "import sys; from pathlib import Path; from tcurlora.models.bundle import load_bundle\n"
        f"folder = Path({str(folder)!r}); sys.path.insert(0, str(folder))\n"
        "try:\n    load_bundle(folder)\nexcept Exception as error:\n    print(type(error).__name__, error)\n"
        "print('imported' if any(m.startswith('scripts') for m in sys.modules) else 'not imported')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[1],
    )
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


# --- What a bundle's classes do by default, what its config file expands to, and how large it builds ---


@pytest.fixture
def offline(tmp_path, monkeypatch) -> list:
    """Fresh TORCH_HOME / HF_HOME under tmp_path and a tripwire on socket connections (the list of tries)."""
    import socket

    tries: list = []

    def connect(self, address):
        tries.append(address)
        raise OSError("network use in a test")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setattr(socket.socket, "connect", connect)
    return tries


@pytest.mark.parametrize(
    ("network", "message"),
    [
        (
            {
                "_target_": "EfficientNetBN",
                "model_name": "efficientnet-b0",
                "spatial_dims": 3,
                "in_channels": 1,
                "num_classes": 2,
            },
            "argument 'pretrained' = True (EfficientNetBN's default, not set in the config",
        ),
        (
            {
                "_target_": "monai.networks.nets.resnet.ResNetFeatures",
                "model_name": "resnet10",
                "spatial_dims": 3,
                "in_channels": 1,
            },
            "argument 'pretrained' = True (monai.networks.nets.resnet.ResNetFeatures's default",
        ),
        (
            {
                "_target_": "Transchex",
                "in_channels": 1,
                "img_size": [32, 32],
                "num_classes": 2,
                "patch_size": [16, 16],
                "num_language_layers": 1,
                "num_vision_layers": 1,
                "num_mixed_layers": 1,
                "path_or_repo_id": "OTHER",
            },
            "network class 'Transchex' (it loads BERT weights from Hugging Face or a folder",
        ),
        ({**UNET, "act": {"_target_": "torch.nn.Identity", "cache_dir": "OTHER"}}, "argument 'cache_dir' = "),
    ],
    ids=["efficientnet-default", "resnetfeatures-default", "transchex-folder", "nested-cache-dir"],
)
def test_classes_whose_defaults_fetch_are_refused_before_anything_is_built(
    tmp_path, offline, network, message
):
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text("{}")
    network = json.loads(json.dumps(network).replace("OTHER", str(other)))
    folder = _bundle(tmp_path / "fetching", {"network_def": network}, _unet_weights())
    with pytest.raises(InputError) as info:
        load_bundle(folder)
    assert message in str(info.value) and "refused for safety, nothing was run" in str(info.value)
    assert str(folder / "configs" / "inference.json") in str(info.value)
    assert offline == [], "a socket connection was tried"
    assert not (tmp_path / "torch_home").exists() and not (tmp_path / "hf_home").exists()


def test_a_fetching_default_switched_off_in_the_config_is_allowed(tmp_path, offline):
    from tcurlora.models.safe_config import plan_item

    network = {
        "_target_": "EfficientNetBN",
        "model_name": "efficientnet-b0",
        "spatial_dims": 3,
        "in_channels": 1,
        "num_classes": 2,
        "pretrained": False,
    }
    plan = plan_item({"network_def": network}, "network_def", tmp_path / "inference.json")
    assert plan.cls.__name__ == "EfficientNetBN" and plan.kwargs["pretrained"] is False
    assert offline == []


def _imported() -> None:
    """Import what `info` imports first, so that the timed part measures the refusal, not the imports
    (seconds on a busy 2-core machine)."""
    import monai.networks.nets  # noqa: F401

    import tcurlora.adapters  # noqa: F401
    import tcurlora.models.bundle  # noqa: F401


def _yaml_bundle(folder: Path, text: str) -> Path:
    (folder / "configs").mkdir(parents=True)
    (folder / "configs" / "inference.yaml").write_text(text)
    return folder


def _billion_laughs() -> str:
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for previous, name in zip("abcdefgh", "bcdefghi"):
        lines.append(f"{name}: &{name} [{','.join(['*' + previous] * 9)}]")
    return "\n".join(lines) + "\nnetwork_def: {_target_: UNet, channels: *i}\n"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (_billion_laughs(), "line 2: YAML alias *a refused"),
        ("network_def: &net {_target_: UNet, act: *net}\n", "line 1: YAML alias *net refused"),
        (
            "network_def: {_target_: UNet}\npad: '" + "x" * (1024**2) + "'\n",
            "more than the limit of 1,048,576",
        ),
        ("network_def: " + "[" * 200 + "]" * 200 + "\n", "nests deeper than 64 levels"),
    ],
    ids=["billion-laughs", "recursive-anchor", "oversized", "deep"],
)
def test_hostile_yaml_configs_exit_2_quickly_naming_the_file(capsys, tmp_path, text, message):
    import time

    from trust_testing import run

    folder = _yaml_bundle(tmp_path / "yaml", text)
    _imported()
    start = time.monotonic()
    code, _, _, err = run(capsys, "info", str(folder))
    assert time.monotonic() - start < 10
    assert code == 2, err
    assert message in err and str(folder / "configs" / "inference.yaml") in err


def test_a_json_config_nested_100k_levels_exits_2(capsys, tmp_path):
    from trust_testing import run

    folder = _bundle(tmp_path / "deep", {"network_def": UNET}, _unet_weights())
    (folder / "configs" / "inference.json").write_text(
        '{"network_def": ' + "[" * 100_000 + "]" * 100_000 + "}"
    )
    code, _, _, err = run(capsys, "info", str(folder))
    assert code == 2 and "nests deeper than 64 levels" in err and "inference.json" in err


def test_plain_yaml_without_aliases_still_builds(tmp_path):
    text = (
        "network_def:\n  _target_: UNet\n  spatial_dims: 3\n  in_channels: 1\n  out_channels: 2\n"
        "  channels: [4, 8]\n  strides: [2]\n  num_res_units: 0\n"
    )
    folder = _yaml_bundle(tmp_path / "plain", text)
    (folder / "models").mkdir()
    save_file(_unet_weights(), str(folder / BUNDLE_SAFETENSORS_FILE))
    assert load_bundle(folder).spec.arch_params["channels"] == [4, 8]


def test_a_network_larger_than_its_weights_is_refused_before_it_is_allocated(capsys, tmp_path):
    import time

    from trust_testing import run

    huge = {"_target_": "torch.nn.Linear", "in_features": 20000, "out_features": 20000}
    folder = _bundle(tmp_path / "huge", {"network_def": huge}, {"weight": torch.zeros(4)})
    _imported()
    start = time.monotonic()
    code, _, _, err = run(capsys, "info", str(folder))
    assert time.monotonic() - start < 10
    assert code == 2, err
    from tcurlora.models.build_budget import network_budget

    limit = network_budget((folder / BUNDLE_SAFETENSORS_FILE).stat().st_size)
    assert f"refused: building network_def (torch.nn.Linear) would need more than {limit:,} bytes" in err
    assert "nothing that large was allocated" in err and str(folder / "configs" / "inference.json") in err
    # Without any weights, nothing is built at all.
    (folder / BUNDLE_SAFETENSORS_FILE).unlink()
    code, _, _, err = run(capsys, "info", str(folder))
    assert code == 2 and "MONAI bundle without weights" in err


def test_a_model_spec_larger_than_its_weights_is_refused_before_it_is_allocated(tmp_path):
    import time

    from tcurlora.models.registry import save_model_folder

    base = load_base_model("preset:unetr-tiny")
    folder = save_model_folder(tmp_path / "model", base.model, base.spec)
    record = json.loads((folder / MODEL_SPEC_FILE).read_text())
    record["spec"]["arch_params"].update(hidden_size=24000, mlp_dim=96000)
    (folder / MODEL_SPEC_FILE).write_text(json.dumps(record))
    _imported()
    start = time.monotonic()
    with pytest.raises(
        InputError, match="refused: building the UNETR of the spec would need more than"
    ) as info:
        load_base_model(folder)
    assert time.monotonic() - start < 10 and str(folder / MODEL_SPEC_FILE) in str(info.value)


def test_the_build_budget_counts_before_allocating():
    from tcurlora.models.build_budget import BuildBudgetExceeded, build_budget, network_budget

    with build_budget(10_000, "a test"):
        torch.zeros(100, 10)  # 4,000 bytes
        torch.nn.Linear(10, 10)  # 440 bytes
        with pytest.raises(
            BuildBudgetExceeded, match=r"more than 10,000 bytes of tensors \(at least 4,004,440\)"
        ):
            torch.empty((1000, 1000))
    with (
        build_budget(1_000_000, "a test"),
        pytest.raises(BuildBudgetExceeded, match="stopped at the first tensor"),
    ):
        torch.arange(1000).reshape(1000, 1).expand(1000, 1000).contiguous()  # 8 MB from a non-constructor
    torch.empty((1000, 1000))  # outside: no budget
    assert network_budget(1000) == 4000 + 64 * 1024**2
    assert network_budget(10 * 1024**3) == 4 * 1024**3


def test_a_unet_bundle_ending_in_a_transposed_conv_gets_info_and_a_new_head(capsys, tmp_path):
    from trust_testing import run

    from tcurlora.adapters.config import AdapterConfig
    from tcurlora.adapters.model import apply_adapter

    folder = _bundle(
        tmp_path / "transposed", {"network_def": UNET}, _unet_weights()
    )  # no num_channels in metadata
    base = load_bundle(folder)
    assert base.spec.head_module == "model.2.conv" and base.spec.out_channels == 2
    assert isinstance(base.model.get_submodule("model.2.conv"), torch.nn.ConvTranspose3d)
    code, _, out, err = run(capsys, "info", str(folder), "--table", "--json", "--num-classes", "3")
    assert code == 0, err
    rows = json.loads(out)
    head_row = next(row for row in rows if row["method"] == "head")
    assert head_row["head"] == head_row["trainable"] == 12 * 3 * 27 + 3  # ConvTranspose3d(4 + 8 -> 3, k 3)
    adapted = apply_adapter(
        base.model, AdapterConfig(method="head", num_classes=3, head_module="model.2.conv")
    )
    new = adapted.model.get_submodule("model.2.conv")
    assert isinstance(new, torch.nn.ConvTranspose3d) and new.out_channels == 3 and new.stride == (2, 2, 2)
    assert adapted(torch.zeros(1, 1, 16, 16, 16)).shape == (1, 3, 16, 16, 16)


def test_info_on_a_base_no_method_applies_to_exits_2(capsys, tmp_path):
    from trust_testing import run

    weights = {k: v.contiguous() for k, v in torch.nn.Linear(4, 3).state_dict().items()}
    linear = {"_target_": "torch.nn.Linear", "in_features": 4, "out_features": 3}
    folder = _bundle(tmp_path / "linear", {"network_def": linear}, weights)
    code, _, _, err = run(capsys, "info", str(folder), "--table")
    assert code == 2, err
    assert "no adaptation method applies to this base model" in err and str(folder) in err
