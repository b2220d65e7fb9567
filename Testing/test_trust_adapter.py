"""adapter_config.json records the SHA-256 of adapter.safetensors and of itself; a changed file, a
missing integrity key or a crafted pattern is refused everywhere, quickly."""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import signal
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
from trust_testing import TINY, hippo_case, run, tiny_job, write_job

from tcurlora.adapter_integrity import config_digest, seal
from tcurlora.adapters.config import AdapterConfig
from tcurlora.errors import ConfigError
from tcurlora.filenames import ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE


def test_the_weights_digest_is_recorded(tiny_adapter):
    record = json.loads((tiny_adapter / ADAPTER_CONFIG_FILE).read_text())
    data = (tiny_adapter / ADAPTER_WEIGHTS_FILE).read_bytes()
    assert record["weights_sha256"] == hashlib.sha256(data).hexdigest()


def test_a_tampered_adapter_is_refused_by_segment_and_info(tmp_path, capsys, hippocampus_dir, tiny_adapter):
    tampered = shutil.copytree(tiny_adapter, tmp_path / "tampered")
    weights = tampered / ADAPTER_WEIGHTS_FILE
    data = bytearray(weights.read_bytes())
    header = 8 + int.from_bytes(data[:8], "little")  # flip tensor bytes only: the file still parses
    for index in random.Random(0).sample(range(header, len(data)), 1000):
        data[index] ^= 0xFF
    weights.write_bytes(bytes(data))
    image = hippo_case(hippocampus_dir)["image"]
    output = tmp_path / "seg.nii.gz"
    code, events, _, _ = run(
        capsys, "segment", image, "--base-model", TINY, "--adapter", tampered, "-o", output, "--events"
    )
    assert code == 2 and events[-1]["kind"] == "input_error", events[-1]
    assert "recorded in adapter_config.json" in events[-1]["message"] and events[-1]["path"] == str(weights)
    assert not output.exists()
    code, _, out, err = run(capsys, "info", tampered)
    assert code == 2 and "recorded in adapter_config.json" in err and out == ""
    assert run(capsys, "info", tiny_adapter)[0] == 0


def test_info_refuses_an_empty_weights_file(tmp_path, capsys, tiny_adapter):
    empty = shutil.copytree(tiny_adapter, tmp_path / "empty")
    (empty / ADAPTER_WEIGHTS_FILE).write_bytes(b"")
    code, _, out, err = run(capsys, "info", empty, "--json")
    assert code == 2 and "the adapter weights file is empty" in err and out == ""


def edited_copy(source: Path, target: Path, reseal: bool = True, **changes) -> Path:
    """A copy of an adapter folder with `changes` in its config (None deletes a key); re-sealed unless told."""
    folder = shutil.copytree(source, target)
    record = json.loads((folder / ADAPTER_CONFIG_FILE).read_text())
    for key, value in changes.items():
        if value is None:
            record.pop(key, None)
        else:
            record[key] = value
    (folder / ADAPTER_CONFIG_FILE).write_text(json.dumps(seal(record) if reseal else record))
    return folder


@contextmanager
def time_limit(seconds: float):
    """Fail (TimeoutError) instead of hanging: Python's re checks signals while it backtracks."""

    def expire(signum, frame):
        raise TimeoutError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def test_a_crafted_pattern_cannot_hang_segment(tmp_path, capsys, hippocampus_dir, tiny_adapter):
    crafted = edited_copy(
        tiny_adapter, tmp_path / "crafted", train_modules=["(.|.)*(.|.)*Z"], target_modules=["(.|.)*(.|.)*Z"]
    )
    output = tmp_path / "seg.nii.gz"
    image = hippo_case(hippocampus_dir)["image"]
    started = time.monotonic()
    with time_limit(60):
        code, events, _, _ = run(
            capsys, "segment", image, "--base-model", TINY, "--adapter", crafted, "-o", output, "--events"
        )
    assert time.monotonic() - started < 30
    assert code == 2 and events[-1]["kind"] == "config_error", events[-1]
    assert "'(.|.)*(.|.)*Z' matches no module" in events[-1]["message"]
    assert not output.exists()
    job = tiny_job(hippocampus_dir, tmp_path / "adapter", train_modules=["(.|.)*(.|.)*Z"])
    with time_limit(60):
        code, events, _, _ = run(
            capsys, "finetune", "--job", write_job(tmp_path / "job.json", job), "--events"
        )
    assert code == 2 and "'(.|.)*(.|.)*Z' matches no module" in events[-1]["message"], events[-1]
    assert not (tmp_path / "adapter").exists()


def test_the_config_is_under_the_digest(tmp_path, capsys, tiny_adapter):
    record = json.loads((tiny_adapter / ADAPTER_CONFIG_FILE).read_text())
    assert record["config_sha256"] == config_digest(record) and len(record["config_sha256"]) == 64
    edited = edited_copy(tiny_adapter, tmp_path / "edited", reseal=False, label_names=["Left", "Right"])
    code, _, out, err = run(capsys, "info", edited)
    assert code == 2 and out == "" and "adapter_config.json was changed after training" in err
    assert str(edited / ADAPTER_CONFIG_FILE) in err
    # Layout and key order are not content: a re-indented config still loads.
    relaid = shutil.copytree(tiny_adapter, tmp_path / "relaid")
    text = json.dumps(dict(reversed(list(record.items()))), indent=7)
    (relaid / ADAPTER_CONFIG_FILE).write_text(text)
    assert run(capsys, "info", relaid)[0] == 0


@pytest.mark.parametrize("key", ["weights_sha256", "base_fingerprint", "config_sha256"])
def test_a_missing_integrity_key_is_an_error(tmp_path, capsys, hippocampus_dir, tiny_adapter, key):
    stripped = edited_copy(tiny_adapter, tmp_path / "stripped", reseal=key != "config_sha256", **{key: None})
    weights = stripped / ADAPTER_WEIGHTS_FILE
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # also tampered: nothing may fall back to "unchecked"
    weights.write_bytes(bytes(data))
    code, _, out, err = run(capsys, "info", stripped)
    assert code == 2 and out == "" and f"adapter_config.json has no {key}" in err, err
    output = tmp_path / "seg.nii.gz"
    code, events, _, _ = run(
        capsys,
        "segment",
        hippo_case(hippocampus_dir)["image"],
        "--base-model",
        TINY,
        "--adapter",
        stripped,
        "-o",
        output,
        "--events",
    )
    assert code == 2 and f"has no {key}" in events[-1]["message"]
    assert events[-1]["path"] == str(stripped / ADAPTER_CONFIG_FILE) and not output.exists()


def test_patterns_a_linear_matcher_cannot_run_are_refused_naming_the_key():
    with pytest.raises(
        ConfigError,
        match=r"key 'train_modules\[1\]': module-name pattern '\(a\)\\\\1' refused: uses a backreference",
    ):
        AdapterConfig(train_modules=["decoder2", r"(a)\1"])
    with pytest.raises(ConfigError, match=r"key 'target_modules\[0\]'.*lookbehind"):
        AdapterConfig(target_modules=[r"(?<=vit)\.x"])
    with pytest.raises(ConfigError, match="more than 500"):
        AdapterConfig(decoder_modules=["a" * 501])
    with pytest.raises(ConfigError, match="more than 100"):
        AdapterConfig(conv_target_modules=[f"layer{i}" for i in range(101)])
