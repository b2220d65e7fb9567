"""PEFT (and the transformers / accelerate / huggingface_hub it pulls in, ~150 MB in Slicer's Python) is
needed only for LoRA: every other method saves and loads adapters where PEFT cannot be imported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]

# Runs in a child interpreter with peft made unimportable before anything else is imported.
CHILD = r"""
import copy, importlib.abc, json, sys
from pathlib import Path

class NoPeft(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "peft":
            raise ModuleNotFoundError(f"No module named {name!r} (blocked)", name=name)
        return None

sys.meta_path.insert(0, NoPeft())
import torch
from monai.networks.nets import UNETR
from tcurlora.adapters.config import AdapterConfig
from tcurlora.adapters.model import apply_adapter
from tcurlora.adapters.io import load_adapter, read_adapter_config, save_adapter
from tcurlora.errors import ConfigError

folder = Path(sys.argv[1])
torch.manual_seed(0)
base = UNETR(in_channels=1, out_channels=3, img_size=(16, 16, 16), feature_size=8, hidden_size=24,
             mlp_dim=48, num_heads=2).double().eval()
batch = torch.randn(1, 1, 16, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
result = {"methods": {}}
for method in ("tcur", "decoder", "full", "head", "scratch"):
    config = AdapterConfig(method=method, rank=2, num_classes=2, label_names=["a"], base_model_id="tiny", seed=3)
    adapted = apply_adapter(copy.deepcopy(base), config)
    with torch.no_grad():
        for p in adapted.trainable_parameters():
            p.add_(0.01)
        expected = adapted.eval()(batch)
    save_adapter(folder / method, adapted)
    loaded = load_adapter(folder / method, copy.deepcopy(base))
    with torch.no_grad():
        same = bool(torch.equal(loaded(batch), expected))
    result["methods"][method] = {"same": same, "versions": sorted(read_adapter_config(folder / method)["versions"])}
try:
    apply_adapter(copy.deepcopy(base), AdapterConfig(method="lora", rank=2, num_classes=2, label_names=["a"]))
    result["lora"] = "no error"
except ConfigError as error:
    result["lora"] = str(error)
result["peft_imported"] = any(m.split(".")[0] == "peft" for m in sys.modules)
print("RESULT " + json.dumps(result))
"""


def test_adapters_save_and_load_without_peft(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(tmp_path)], capture_output=True, text=True, env=env, timeout=300
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert done.returncode == 0 and lines, (
        f"exit {done.returncode}\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    )
    result = json.loads(lines[0][len("RESULT ") :])
    for method, outcome in result["methods"].items():
        assert outcome["same"], f"{method}: the loaded adapter computes something else"
        assert "torch" in outcome["versions"], outcome  # peft's version comes from its metadata, unimported
    assert sorted(result["methods"]) == ["decoder", "full", "head", "scratch", "tcur"]
    assert "method 'lora' needs PEFT" in result["lora"] and "pip install" in result["lora"], result["lora"]
    assert result["peft_imported"] is False
