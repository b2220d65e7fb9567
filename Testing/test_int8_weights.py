"""Int8 model weights: what is stored, what loading gives back, what a malformed file gets, and the
conversion script (real MONAI UNETR, real safetensors files)."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from tcurlora.errors import InputError
from tcurlora.filenames import INT8_SCALE_SUFFIX, INT8_WEIGHTS_FORMAT, MODEL_SPEC_FILE, WEIGHTS_FORMAT_KEY
from tcurlora.filenames import MODEL_WEIGHTS_FILE as WEIGHTS_FILE
from tcurlora.models.fingerprint import state_dict_fingerprint
from tcurlora.models.int8_weights import (
    MIN_QUANTIZED_ELEMENTS,
    dequantize_tensor,
    quantize_tensor,
    read_model_weights,
    relative_errors,
)
from tcurlora.models.registry import load_base_model, save_model_folder

ROOT = Path(__file__).resolve().parents[1]


def load_script():
    spec = importlib.util.spec_from_file_location("quantize_base", ROOT / "scripts" / "quantize_base.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """A tiny UNETR model folder (fp32) and its int8 conversion by the script, with the script's report."""
    root = tmp_path_factory.mktemp("int8")
    base = load_base_model("preset:unetr-tiny")
    source = save_model_folder(root / "fp32", base.model, base.spec, card=None)
    script = load_script()
    code = script.main([str(source), "-o", str(root / "int8"), "--json", str(root / "quantize.json")])
    assert code == 0
    return source, root / "int8", json.loads((root / "quantize.json").read_text()), script


def test_quantize_is_per_output_channel_and_within_half_a_step():
    channel_scales = torch.tensor([1e-3, 1.0, 10.0, 0.0, 2.0, 5.0]).reshape(6, 1, 1, 1, 1)
    weight = torch.randn(6, 3, 3, 3, 3) * channel_scales
    values, scale = quantize_tensor(weight)
    assert values.dtype == torch.int8 and scale.dtype == torch.float32 and scale.shape == (6,)
    assert scale[3] == 1.0 and not values[3].any()  # an all-zero channel is stored exactly
    restored = dequantize_tensor(values, scale)
    step = scale.reshape(6, 1, 1, 1, 1)
    assert ((restored - weight).abs() <= step / 2 + 1e-7).all()
    assert values.abs().amax(dim=(1, 2, 3, 4)).tolist() == [127, 127, 127, 0, 127, 127]


def test_the_file_holds_int8_large_tensors_fp16_small_ones_and_the_tag(converted):
    source, int8, report, _ = converted
    path = int8 / WEIGHTS_FILE
    with safe_open(str(path), "pt") as handle:
        assert handle.metadata() == {WEIGHTS_FORMAT_KEY: INT8_WEIGHTS_FORMAT}
        stored = {name: handle.get_tensor(name) for name in handle.keys()}
    original = load_file(str(source / WEIGHTS_FILE))
    for name, tensor in original.items():
        large = tensor.dim() >= 2 and tensor.numel() >= MIN_QUANTIZED_ELEMENTS
        assert stored[name].dtype == (torch.int8 if large else torch.float16), name
        assert (name + INT8_SCALE_SUFFIX in stored) == large
    assert set(stored) - set(original) == {n for n in stored if n.endswith(INT8_SCALE_SUFFIX)}
    assert report["bytes"] == path.stat().st_size < 0.4 * (source / WEIGHTS_FILE).stat().st_size
    assert 0 < report["mean_relative_error"] <= report["max_relative_error"] < 0.02


def test_loading_dequantizes_to_float32_and_the_fingerprint_is_of_those_weights(converted):
    source, int8, report, _ = converted
    fp32, quantized = load_base_model(source), load_base_model(int8)
    state = quantized.model.state_dict()
    assert {t.dtype for t in state.values()} == {torch.float32}
    assert quantized.fingerprint == state_dict_fingerprint(read_model_weights(int8 / WEIGHTS_FILE))
    assert quantized.fingerprint == report["fingerprint"] != fp32.fingerprint == report["source_fingerprint"]
    errors = relative_errors(fp32.model.state_dict(), state)
    assert max(errors.values()) == pytest.approx(report["max_relative_error"])
    image = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        a, b = fp32.model(image), quantized.model(image)
    assert float((a - b).norm() / a.norm()) < 0.05
    assert (int8 / MODEL_SPEC_FILE).read_text() == (
        source / MODEL_SPEC_FILE
    ).read_text()  # no card to record it in


def malformed(folder: Path, tmp_path: Path, change) -> Path:
    """A copy of an int8 model folder whose weights file was rewritten by `change(tensors)`."""
    target = tmp_path / "bad"
    target.mkdir()
    (target / MODEL_SPEC_FILE).write_bytes((folder / MODEL_SPEC_FILE).read_bytes())
    tensors = load_file(str(folder / WEIGHTS_FILE))
    metadata = change(tensors)
    metadata = metadata or {WEIGHTS_FORMAT_KEY: INT8_WEIGHTS_FORMAT}
    save_file(tensors, str(target / WEIGHTS_FILE), metadata=metadata)
    return target


def first_int8(tensors: dict) -> str:
    return sorted(n for n, t in tensors.items() if t.dtype == torch.int8)[0]


def drop_scale(tensors: dict) -> None:
    del tensors[first_int8(tensors) + INT8_SCALE_SUFFIX]


def wrong_scale_shape(tensors: dict) -> None:
    tensors[first_int8(tensors) + INT8_SCALE_SUFFIX] = torch.ones(3)


def nan_scale(tensors: dict) -> None:
    tensors[first_int8(tensors) + INT8_SCALE_SUFFIX][0] = math.nan


def negative_scale(tensors: dict) -> None:
    tensors[first_int8(tensors) + INT8_SCALE_SUFFIX][0] = -1.0


def orphan_scale(tensors: dict) -> None:
    tensors["nothing" + INT8_SCALE_SUFFIX] = torch.ones(1)


def unknown_tag(tensors: dict) -> dict:
    return {WEIGHTS_FORMAT_KEY: "tcurlora.int4/9"}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (drop_scale, "has no scale tensor"),
        (wrong_scale_shape, "has shape (3,)"),
        (nan_scale, "not finite and positive"),
        (negative_scale, "not finite and positive"),
        (orphan_scale, "scale tensor nothing.int8_scale has no tensor nothing"),
        (unknown_tag, "unknown weights storage 'tcurlora.int4/9'"),
    ],
    ids=["missing-scale", "scale-shape", "nan-scale", "negative-scale", "orphan-scale", "unknown-tag"],
)
def test_a_malformed_int8_file_is_refused_naming_the_file(converted, tmp_path, change, message):
    folder = malformed(converted[1], tmp_path, change)
    with pytest.raises(InputError, match="malformed int8 weights|unknown weights storage") as error:
        load_base_model(folder)
    assert message in error.value.problem and error.value.path == str(folder / WEIGHTS_FILE)


def test_the_script_refuses_a_bad_folder_with_2_and_an_existing_output_with_3(converted, tmp_path, capsys):
    source, int8, _, script = converted
    assert script.main([str(tmp_path / "absent")]) == 2
    assert str(tmp_path / "absent") in capsys.readouterr().err
    before = (int8 / WEIGHTS_FILE).read_bytes()
    assert script.main([str(source), "-o", str(int8)]) == 3
    assert "output model folder exists" in capsys.readouterr().err
    assert (int8 / WEIGHTS_FILE).read_bytes() == before


def test_a_truncated_weights_file_is_refused_naming_the_file(converted, tmp_path):
    folder = malformed(converted[1], tmp_path, lambda tensors: None)
    data = (folder / WEIGHTS_FILE).read_bytes()
    (folder / WEIGHTS_FILE).write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="corrupt or unreadable safetensors file") as error:
        load_base_model(folder)
    assert error.value.path == str(folder / WEIGHTS_FILE)
