"""MONAI bundles as base models: export/load round trip, foreign bundles, refused payloads, offline download."""

from __future__ import annotations

import functools
import json
import os
import time

import pytest
import torch

from tcurlora.errors import ConfigError, InputError, OutputExistsError
from tcurlora.filenames import BUNDLE_SAFETENSORS_FILE
from tcurlora.models.bundle import export_bundle, load_bundle
from tcurlora.models.download import download_bundle, resolve_release
from tcurlora.models.registry import list_builtin_models, load_base_model

BUILTIN = "unetr-small-acdc-brats"


@pytest.fixture(scope="module")
def base():
    """Our built-in base (the tiny preset when the model folder is absent)."""
    return load_base_model(BUILTIN if BUILTIN in list_builtin_models() else "preset:unetr-tiny")


@pytest.mark.slow
@pytest.mark.parametrize("weights_format", ["safetensors", "pt"])
def test_export_then_load_gives_identical_outputs(base, tmp_path, weights_format):
    folder = export_bundle(base, tmp_path / "bundle", weights_format=weights_format)
    assert (folder / "configs" / "inference.json").is_file()
    assert (folder / "models" / f"model.{weights_format}").is_file()
    loaded = load_base_model(folder)  # the registry dispatches a folder with configs/ to load_bundle
    assert loaded.fingerprint == base.fingerprint
    assert loaded.spec == base.spec and loaded.model_id == base.model_id
    x = torch.randn(1, 1, *base.spec.patch_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(base.model(x), loaded.model(x))


def test_export_refuses_overwrite(base, tmp_path):
    export_bundle(base, tmp_path / "b")
    with pytest.raises(OutputExistsError):
        export_bundle(base, tmp_path / "b")
    export_bundle(base, tmp_path / "b", force=True)


def _foreign_bundle(folder, state, network_def=None):
    """A bundle as the Model Zoo writes one: short `_target_` name, Spacingd, channel_def, model.pt."""
    (folder / "configs").mkdir(parents=True)
    (folder / "models").mkdir()
    network_def = network_def or {
        "_target_": "UNet",
        "spatial_dims": 3,
        "in_channels": 1,
        "out_channels": 3,
        "channels": [4, 8, 16],
        "strides": [2, 2],
        "num_res_units": 1,
    }
    config = {
        "network_def": network_def,
        "preprocessing": {
            "_target_": "Compose",
            "transforms": [{"_target_": "Spacingd", "keys": "image", "pixdim": [1.5, 1.5, 2.0]}],
        },
        "inferer": {"_target_": "SlidingWindowInferer", "roi_size": [32, 32, 32], "sw_batch_size": 1},
    }
    meta = {
        "name": "toy_seg",
        "version": "0.2.0",
        "network_data_format": {
            "outputs": {
                "pred": {"num_channels": 3, "channel_def": {"0": "background", "1": "liver", "2": "tumor"}}
            }
        },
    }
    (folder / "configs" / "inference.json").write_text(json.dumps(config))
    (folder / "configs" / "metadata.json").write_text(json.dumps(meta))
    torch.save(state, str(folder / "models" / "model.pt"))
    return folder


def test_foreign_bundle_loads_with_monai_parser_and_reads_its_metadata(tmp_path):
    from monai.networks.nets import UNet

    torch.manual_seed(0)
    net = UNet(
        spatial_dims=3, in_channels=1, out_channels=3, channels=[4, 8, 16], strides=[2, 2], num_res_units=1
    )
    folder = _foreign_bundle(
        tmp_path / "toy", {"model": {f"module.{k}": v for k, v in net.state_dict().items()}}
    )
    loaded = load_bundle(folder)
    assert loaded.model_id == "toy_seg@0.2.0"
    assert loaded.spec.arch == "UNet" and loaded.spec.labels == {1: "liver", 2: "tumor"}
    assert loaded.spec.spacing == (1.5, 1.5, 2.0) and loaded.spec.patch_size == (32, 32, 32)
    assert loaded.spec.head_module and loaded.spec.out_channels == 3
    head = dict(loaded.model.named_modules())[loaded.spec.head_module]
    assert head.out_channels == 3
    x = torch.randn(1, 1, 16, 16, 16)
    net.eval()
    with torch.no_grad():
        assert torch.equal(net(x), loaded.model(x))


class _Payload:
    """Any object other than tensors: unpickling it would run code of the file's choosing."""

    def __reduce__(self):
        return (functools.partial(os.system, "echo pwned"), ())


def test_pickled_non_weights_payload_is_refused(tmp_path):
    folder = _foreign_bundle(tmp_path / "evil", {"state_dict": {}, "hook": _Payload()})
    with pytest.raises(InputError, match="refused: the file is not a plain weights file") as info:
        load_base_model(folder)
    assert str(folder / "models" / "model.pt") in str(info.value)


def test_config_expressions_are_not_evaluated(tmp_path):
    network_def = {
        "_target_": "UNet",
        "spatial_dims": "$__import__('os').getpid() and 3",
        "in_channels": 1,
        "out_channels": 3,
        "channels": [4, 8],
        "strides": [2],
    }
    folder = _foreign_bundle(tmp_path / "expr", {}, network_def=network_def)
    with pytest.raises(InputError, match="config expressions"):
        load_bundle(folder)


def test_missing_weights_and_config_are_clear_errors(base, tmp_path):
    folder = export_bundle(base, tmp_path / "b")
    (folder / BUNDLE_SAFETENSORS_FILE).unlink()
    with pytest.raises(InputError, match="without weights"):
        load_bundle(folder)
    (folder / "configs" / "inference.json").unlink()
    with pytest.raises(InputError, match="without a network config"):
        load_bundle(folder)


def test_download_needs_a_recorded_or_given_checksum():
    with pytest.raises(ConfigError, match="no recorded checksum"):
        resolve_release("some_unknown_bundle", "1.0.0", None, None)
    with pytest.raises(ConfigError, match="64 hex digits"):
        resolve_release("x", "1.0.0", "abc", None)
    version, url, digest, kind = resolve_release("spleen_ct_segmentation", None, None, None)
    assert version == "0.3.3" and url.endswith("spleen_ct_segmentation_v0.3.3.zip") and kind == "sha1"
    assert len(digest) == 40


def test_download_offline_fails_fast_with_a_clear_message(tmp_path):
    started = time.monotonic()
    with pytest.raises(InputError, match="not reachable") as info:
        download_bundle(
            "toy", tmp_path, version="1.0", sha256="0" * 64, url="http://127.0.0.1:9/toy.zip", timeout=2
        )
    assert "offline" in str(info.value) and time.monotonic() - started < 30
    assert not (tmp_path / "toy").exists()
