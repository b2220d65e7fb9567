"""The extension factory's ctest runs the modules' self-tests in a Slicer without torch or MONAI
(ensure_dependencies installs nothing in testing mode): there they run only the bodies that need no
backend worker, and say which they skipped. Checked here in a child interpreter where the backend
packages cannot be imported, on real MRML (slicer-core) and generated cases."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from TCURFineTuneLib import testing as finetune_bodies
from TCURSegmenterLib import testing as segmenter_bodies

from TCURLoRACommon.testdata import BACKEND_PACKAGES, missing_backend, select_bodies, skipped_text

ROOT = Path(__file__).resolve().parents[2]
WORKER_BODIES = {
    "test_finetune_end_to_end",
    "test_cancel_leaves_nothing",
    "test_resume_after_cancel",
    "test_segment_volumes_end_to_end",
}

CHILD = r"""
import importlib.abc, json, sys, tempfile
from pathlib import Path

BLOCKED, SEARCH = json.loads(sys.argv[1])

class NoBackend(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r} (the factory has none)", name=name)
        return None

sys.meta_path.insert(0, NoBackend())
sys.path[:0] = SEARCH
from conftest import start_slicer_core
from TCURFineTuneLib import testing as finetune
from TCURSegmenterLib import testing as segmenter
from TCURLoRACommon.testdata import run_self_tests

app = start_slicer_core()
result = {"ran": [], "skipped": [], "text": []}
for module in (finetune, segmenter):
    missing = []
    for name in BLOCKED:
        try:
            __import__(name)
        except ModuleNotFoundError:
            missing.append(name)
    said = []
    ran, skipped = run_self_tests(module.ALL_TESTS, lambda: app.scene.Clear(0), said.append, missing)
    result["ran"] += ran
    result["skipped"] += skipped
    result["text"].append(said[0])
result["loaded"] = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
print("RESULT " + json.dumps(result))
"""


def test_selection_with_and_without_the_backend() -> None:
    bodies = [*finetune_bodies.ALL_TESTS, *segmenter_bodies.ALL_TESTS]
    assert select_bodies(bodies, []) == (bodies, [])
    run, skipped = select_bodies(bodies, ["torch"])
    assert {b.__name__ for b in skipped} == WORKER_BODIES
    assert run and not {b.__name__ for b in run} & WORKER_BODIES and len(run) + len(skipped) == len(bodies)
    assert "torch not installed" in skipped_text(skipped, ["torch"]) and skipped_text([], ["torch"]) == ""
    assert missing_backend() == [], "this test environment has the backend: every body runs here"


@pytest.mark.slow
def test_no_backend_bodies_pass_without_the_backend(tmp_path: Path) -> None:
    search = [
        str(ROOT),
        str(ROOT / "TCURFineTune"),
        str(ROOT / "TCURSegmenter"),
        str(ROOT / "Testing" / "slicer"),
    ]
    env = {k: v for k, v in os.environ.items() if k != "TCURLORA_DATA"}  # generated cases, as on the factory
    env["TCURLORA_HOME"] = str(tmp_path / "home")
    done = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps([list(BACKEND_PACKAGES), search])],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert done.returncode == 0 and lines, (
        f"exit {done.returncode}\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    )
    result = json.loads(lines[-1][len("RESULT ") :])
    assert set(result["skipped"]) == WORKER_BODIES
    expected = [b.__name__ for b in (*finetune_bodies.ALL_TESTS, *segmenter_bodies.ALL_TESTS)]
    assert result["ran"] == [n for n in expected if n not in WORKER_BODIES]
    assert result["loaded"] == [], f"a no-backend body imported {result['loaded']}"
    assert all("not installed in this Slicer" in t for t in result["text"])
