"""Adapter folders: save -> load round trips, the JSON record, atomic writes and every broken-file error."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from monai.networks.nets import UNETR
from safetensors.torch import load_file
from torch import nn

from tcurlora.adapter_integrity import seal
from tcurlora.adapters.config import AdapterConfig
from tcurlora.adapters.io import load_adapter, read_adapter_config, save_adapter
from tcurlora.adapters.methods.registry import METHODS
from tcurlora.adapters.model import apply_adapter
from tcurlora.errors import ConfigError, FingerprintMismatchError, InputError, OutputExistsError
from tcurlora.filenames import ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE, TRAINING_LOG_FILE
from tcurlora.models.fingerprint import state_dict_fingerprint


def small_unetr(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = UNETR(
        in_channels=1,
        out_channels=3,
        img_size=(32, 32, 32),
        feature_size=8,
        hidden_size=48,
        mlp_dim=96,
        num_heads=4,
    )
    return model.double().eval()


@pytest.fixture(scope="module")
def base() -> nn.Module:
    return small_unetr()


@pytest.fixture(scope="module")
def batch() -> torch.Tensor:
    return torch.randn(1, 1, 32, 32, 32, generator=torch.Generator().manual_seed(4), dtype=torch.float64)


def trained(base: nn.Module, method: str, **kwargs):
    """An adapter with nonzero trained weights (random values stand in for training)."""
    config = AdapterConfig(
        method=method,
        rank=4,
        num_classes=2,
        label_names=["hippocampus"],
        base_model_id="tiny",
        selection="inverse",
        seed=3,
        **kwargs,
    )
    adapted = apply_adapter(copy.deepcopy(base), config)
    gen = torch.Generator().manual_seed(9)
    with torch.no_grad():
        for p in adapted.trainable_parameters():
            p.copy_(0.1 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return adapted.eval()


@pytest.fixture(scope="module")
def saved_tcur(base, tmp_path_factory) -> tuple[Path, torch.Tensor]:
    folder = tmp_path_factory.mktemp("lib") / "tcur_adapter"
    adapted = trained(base, "tcur", conv_target_modules=[r"decoder2\.conv_block\.conv1\.conv"])
    save_adapter(
        folder, adapted, extra={"metrics": {"dice": 0.8}}, extra_files={TRAINING_LOG_FILE: '{"loss": 1}\n'}
    )
    return folder, adapted


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)  # every registered method
def test_round_trip_gives_identical_outputs(base, batch, tmp_path, method):
    adapted = trained(base, method)
    with torch.no_grad():
        expected = adapted(batch)
    save_adapter(tmp_path / "a", adapted)
    loaded = load_adapter(tmp_path / "a", copy.deepcopy(base))
    assert loaded.config.to_dict() == adapted.config.to_dict()
    with torch.no_grad():
        torch.testing.assert_close(loaded(batch), expected, atol=1e-12, rtol=0)
    state = adapted.adapter_state_dict()
    assert all(torch.equal(loaded.adapter_state_dict()[k], v) for k, v in state.items())
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == [
        ADAPTER_WEIGHTS_FILE,
        ADAPTER_CONFIG_FILE,
    ]
    assert not list(tmp_path.glob(".*"))  # no temp folders left behind


def test_saved_record_describes_the_adapter(base, saved_tcur):
    folder, adapted = saved_tcur
    record = read_adapter_config(folder)
    assert record["method"] == "tcur" and record["rank"] == 4 and record["alpha"] == 1.0
    assert record["selection"] == "inverse" and record["seed"] == 3
    assert record["label_names"] == ["hippocampus"] and record["num_classes"] == 2
    assert record["base_model_id"] == "tiny"
    assert record["base_fingerprint"] == state_dict_fingerprint(base)  # of the base BEFORE adapting
    assert (
        "vit.blocks.0.attn.qkv" in record["targets"] and "decoder2.conv_block.conv1.conv" in record["targets"]
    )
    assert record["metrics"] == {"dice": 0.8}
    assert set(record["versions"]) >= {"tcurlora", "torch", "monai", "peft"}
    assert record["parameter_counts"] == adapted.parameter_counts().to_dict()
    assert record["parameter_counts"]["head"] == 8 * 2 + 2
    weights = load_file(str(folder / ADAPTER_WEIGHTS_FILE))
    assert set(weights) == set(adapted.adapter_state_dict())
    assert weights["tcur.groups.linear_48x48.dU"].shape == (4, 4, 48)
    assert weights["tcur.groups.linear_48x48.rows"].dtype == torch.int64
    assert (folder / TRAINING_LOG_FILE).read_text() == '{"loss": 1}\n'


def test_wrong_base_model_is_a_fingerprint_error(saved_tcur):
    folder, _ = saved_tcur
    other = small_unetr(seed=1)
    with pytest.raises(FingerprintMismatchError) as info:
        load_adapter(folder, other)
    record = read_adapter_config(folder)
    message = str(info.value)
    assert record["base_fingerprint"] in message and state_dict_fingerprint(other) in message
    assert str(folder / ADAPTER_CONFIG_FILE) in message


def test_wrong_shapes_name_the_key_and_file(base, saved_tcur, tmp_path):
    folder, _ = saved_tcur
    broken = tmp_path / "broken"
    broken.mkdir()
    record = read_adapter_config(folder)
    record["rank"] = 6  # config says rank 6, the weights hold rank-4 cores (re-sealed: a consistent config)
    (broken / ADAPTER_CONFIG_FILE).write_text(json.dumps(seal(record)))
    (broken / ADAPTER_WEIGHTS_FILE).write_bytes((folder / ADAPTER_WEIGHTS_FILE).read_bytes())
    with pytest.raises(ConfigError) as info:
        load_adapter(broken, copy.deepcopy(base))
    message = str(info.value)
    assert "adapter weight tcur.groups." in message and "has shape (4" in message and "needs (6" in message
    assert info.value.path == str(broken / ADAPTER_WEIGHTS_FILE)
    adapted = trained(base, "tcur")
    state = adapted.adapter_state_dict()
    state.pop("tcur.groups.linear_48x48.dU")
    with pytest.raises(ConfigError, match=r"missing \['tcur.groups.linear_48x48.dU'\]"):
        adapted.load_adapter_state_dict(state)
    state = adapted.adapter_state_dict()
    state["tcur.groups.linear_48x48.rows"] = torch.tensor([0, 1, 2, 48])
    with pytest.raises(ConfigError, match="rows holds indices outside 0..47"):
        adapted.load_adapter_state_dict(state)


def copy_adapter(source: Path, target: Path) -> Path:
    target.mkdir()
    for name in (ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE):
        (target / name).write_bytes((source / name).read_bytes())
    return target


def test_missing_corrupt_and_truncated_files(base, saved_tcur, tmp_path):
    folder, _ = saved_tcur
    with pytest.raises(InputError, match="no such adapter folder") as info:
        load_adapter(tmp_path / "nowhere", copy.deepcopy(base))
    assert info.value.path == str(tmp_path / "nowhere")
    no_weights = copy_adapter(folder, tmp_path / "no_weights")
    (no_weights / ADAPTER_WEIGHTS_FILE).unlink()
    with pytest.raises(InputError, match="adapter.safetensors is missing") as info:
        load_adapter(no_weights, copy.deepcopy(base))
    assert info.value.path == str(no_weights / ADAPTER_WEIGHTS_FILE)
    no_config = copy_adapter(folder, tmp_path / "no_config")
    (no_config / ADAPTER_CONFIG_FILE).unlink()
    with pytest.raises(InputError, match="adapter_config.json is missing"):
        load_adapter(no_config, copy.deepcopy(base))
    bad_json = copy_adapter(folder, tmp_path / "bad_json")
    (bad_json / ADAPTER_CONFIG_FILE).write_text('{"method": "tcur", "rank": ')
    with pytest.raises(InputError, match="corrupt adapter config") as info:
        load_adapter(bad_json, copy.deepcopy(base))
    assert info.value.path == str(bad_json / ADAPTER_CONFIG_FILE)
    bad_config = copy_adapter(folder, tmp_path / "bad_config")
    record = read_adapter_config(folder)
    record["method"] = "dora"
    (bad_config / ADAPTER_CONFIG_FILE).write_text(json.dumps(seal(record)))
    with pytest.raises(
        ConfigError, match="adapter config key 'method': must be one of .*; got 'dora'"
    ) as info:
        load_adapter(bad_config, copy.deepcopy(base))
    assert info.value.path == str(bad_config / ADAPTER_CONFIG_FILE)
    truncated = copy_adapter(folder, tmp_path / "truncated")
    data = (truncated / ADAPTER_WEIGHTS_FILE).read_bytes()
    (truncated / ADAPTER_WEIGHTS_FILE).write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="corrupt or truncated adapter weights") as info:
        load_adapter(truncated, copy.deepcopy(base))
    assert info.value.path == str(truncated / ADAPTER_WEIGHTS_FILE)


def test_no_overwrite_without_force_and_atomic_replace(base, batch, tmp_path):
    first, second = trained(base, "lora"), trained(base, "head")
    folder = save_adapter(tmp_path / "adapter", first)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    with pytest.raises(OutputExistsError) as info:
        save_adapter(folder, second)
    assert info.value.path == str(folder) and info.value.exit_code == 3
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    # A failure while writing leaves the old folder as it was and no temp folder behind.
    with pytest.raises(TypeError):
        save_adapter(folder, second, force=True, extra_files={"notes.txt": object()})
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["adapter"]
    with pytest.raises(ConfigError, match="not a plain, free file name"):
        save_adapter(tmp_path / "other", second, extra_files={"../escape.txt": "x"})
    assert not (tmp_path / "other").exists()
    save_adapter(folder, second, force=True)
    assert read_adapter_config(folder)["method"] == "head"
    assert [p.name for p in tmp_path.iterdir()] == ["adapter"]
    with torch.no_grad():
        expected = second(batch)
        torch.testing.assert_close(
            load_adapter(folder, copy.deepcopy(base))(batch), expected, atol=1e-12, rtol=0
        )
