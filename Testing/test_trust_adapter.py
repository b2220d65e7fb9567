"""adapter_config.json records the SHA-256 of adapter.safetensors; a changed file is refused everywhere."""

from __future__ import annotations

import hashlib
import json
import random
import shutil

from trust_testing import TINY, hippo_case, run


def test_the_weights_digest_is_recorded(tiny_adapter):
    record = json.loads((tiny_adapter / "adapter_config.json").read_text())
    data = (tiny_adapter / "adapter.safetensors").read_bytes()
    assert record["weights_sha256"] == hashlib.sha256(data).hexdigest()


def test_a_tampered_adapter_is_refused_by_segment_and_info(tmp_path, capsys, hippocampus_dir, tiny_adapter):
    tampered = shutil.copytree(tiny_adapter, tmp_path / "tampered")
    weights = tampered / "adapter.safetensors"
    data = bytearray(weights.read_bytes())
    header = 8 + int.from_bytes(data[:8], "little")  # flip tensor bytes only: the file still parses
    for index in random.Random(0).sample(range(header, len(data)), 1000):
        data[index] ^= 0xFF
    weights.write_bytes(bytes(data))
    image = hippo_case(hippocampus_dir)["image"]
    output = tmp_path / "seg.nii.gz"
    code, events, _, _ = run(capsys, "segment", image, "--base-model", TINY, "--adapter", tampered, "-o", output,
                             "--events")  # fmt: skip
    assert code == 2 and events[-1]["kind"] == "input_error", events[-1]
    assert "recorded in adapter_config.json" in events[-1]["message"] and events[-1]["path"] == str(weights)
    assert not output.exists()
    code, _, out, err = run(capsys, "info", tampered)
    assert code == 2 and "recorded in adapter_config.json" in err and out == ""
    assert run(capsys, "info", tiny_adapter)[0] == 0


def test_info_refuses_an_empty_weights_file(tmp_path, capsys, tiny_adapter):
    empty = shutil.copytree(tiny_adapter, tmp_path / "empty")
    (empty / "adapter.safetensors").write_bytes(b"")
    code, _, out, err = run(capsys, "info", empty, "--json")
    assert code == 2 and "the adapter weights file is empty" in err and out == ""
