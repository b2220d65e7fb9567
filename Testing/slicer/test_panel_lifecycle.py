"""The panels' shared lifecycle: the Qt-free run decisions (TCURLoRACommon.lifecycle) on a real worker
process, and the rule that the two widgets keep only their own wiring (RunPanelMixin holds the rest)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from TCURLoRACommon.dependencies import needs_lora
from TCURLoRACommon.lifecycle import Tick, is_active, poll, shutdown_active
from TCURLoRACommon.runs import CANCELLED, DONE, WorkerRun
from TCURLoRACommon.worker import WorkerProcess

ROOT = Path(__file__).resolve().parents[2]
MODULES = ("TCURFineTune", "TCURSegmenter")
MIXIN = ROOT / "TCURLoRACommon" / "panelwidget.py"
# The lifecycle both widgets share: neither may define these again.
SHARED = (
    "cleanup",
    "enter",
    "exit",
    "onReload",
    "onSceneEndClose",
    "setParameterNode",
    "parameterNode",
    "updateRemoteRows",
    "startOrCancel",
    "startPolling",
    "onTimer",
    "pollRun",
)

# A worker that speaks the real event protocol (tcurlora.jobs.events): what a segmentation of two volumes sends.
TALKING_WORKER = (
    "import sys; from tcurlora.jobs.events import make_sink; s = make_sink(True, sys.stdout); "
    "s.started('segment', 'cpu', 2); s.log('info', 'Loading the model'); s.progress(1, 2); "
    "s.log('info', ''); s.progress(2, 2, message='Volume 2 of 2'); s.done({}, {})"
)


def worker_run(tmp_path: Path, code: str) -> WorkerRun:
    run = WorkerRun({"command": "segment", "device": "cpu"}, tmp_path / "work")
    run.worker = WorkerProcess("segment", run.job_path, args=[sys.executable, "-c", code])
    return run


def test_poll_shows_each_event_once_and_the_end(tmp_path: Path) -> None:
    (tmp_path / "work").mkdir()
    run = worker_run(tmp_path, TALKING_WORKER)
    assert not is_active(None)
    run.start()
    assert is_active(run)
    ticks: list[Tick] = []
    while not ticks or not ticks[-1].finished:
        ticks.append(poll(run))
        assert len(ticks) < 1200, "the worker did not finish within a minute"
        time.sleep(0.05)  # the panel's timer ticks every POLL_MS
    lines = [line for tick in ticks for line in tick.lines]
    assert lines == ["Running on cpu", "Loading the model", "Volume 2 of 2"], (
        lines
    )  # the empty log line is skipped
    assert ticks[-1].progress == (100, 100) and run.state == DONE and not is_active(run)
    assert all(not tick.finished for tick in ticks[:-1])


def test_shutdown_stops_only_working_runs(tmp_path: Path) -> None:
    (tmp_path / "work").mkdir()
    working = worker_run(tmp_path, "import time; time.sleep(60)").start()
    (tmp_path / "other").mkdir()
    done = WorkerRun({"command": "segment", "device": "cpu"}, tmp_path / "other")
    done.worker = WorkerProcess("segment", done.job_path, args=[sys.executable, "-c", TALKING_WORKER])
    done.start().wait(timeout=60)
    assert done.state == DONE
    assert shutdown_active([working, done, None]) == [working]
    assert not working.worker.running and not (tmp_path / "work").exists(), "shutdown forgets the run's files"
    assert (tmp_path / "other").exists(), "a finished run's files are its panel's to remove"
    working.update()
    assert working.state == CANCELLED and not is_active(working)


def test_peft_is_asked_for_only_for_lora() -> None:
    assert needs_lora("lora") and not needs_lora("tcur") and not needs_lora(None) and not needs_lora("")


def _classes(path: Path) -> dict[str, ast.ClassDef]:
    return {
        n.name: n for n in ast.parse(path.read_text(encoding="utf-8")).body if isinstance(n, ast.ClassDef)
    }


def _method_names(node: ast.ClassDef) -> set[str]:
    return {n.name for n in node.body if isinstance(n, ast.FunctionDef)}


@pytest.mark.parametrize("module", MODULES)
def test_widgets_keep_only_their_wiring(module: str) -> None:
    widget = _classes(ROOT / module / f"{module}.py")[f"{module}Widget"]
    bases = [getattr(b, "id", "") for b in widget.bases]
    assert bases[0] == "RunPanelMixin", (
        f"{module}Widget must list RunPanelMixin first (its cleanup/enter win): {bases}"
    )
    again = sorted(set(SHARED) & _method_names(widget) - {"cleanup"})
    assert again == [], f"{module}Widget defines the shared lifecycle again: {again}"
    mixin = _method_names(_classes(MIXIN)["RunPanelMixin"])
    assert set(SHARED) <= mixin, sorted(set(SHARED) - mixin)
    init = next(
        c for c in ast.walk(widget) if isinstance(c, ast.Call) and getattr(c.func, "attr", "") == "initPanel"
    )
    button = init.args[0].value
    ui = ET.parse(ROOT / module / "Resources" / "UI" / f"{module}.ui")
    assert button in {w.get("name") for w in ui.iter("widget")}, f"{module}.ui has no run button {button!r}"


def test_widget_check_can_fail(tmp_path: Path) -> None:
    script = tmp_path / "M.py"
    script.write_text("class MWidget(ScriptedLoadableModuleWidget):\n    def enter(self):\n        pass\n")
    widget = _classes(script)["MWidget"]
    assert [getattr(b, "id", "") for b in widget.bases] != ["RunPanelMixin"] and "enter" in _method_names(
        widget
    )


def test_what_the_module_scripts_import_first_needs_no_backend() -> None:
    """Slicer 5.8 (Python 3.9) imports the module scripts before the version check can speak: the shared
    lifecycle they import at the top loads neither the backend (tcurlora beyond the job defaults) nor Qt."""
    code = (
        "import json, sys\n"
        f"sys.path[:0] = {[str(ROOT)]!r}\n"
        "import TCURLoRACommon.panelwidget, TCURLoRACommon.lifecycle\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('tcurlora', 'qt', 'torch'))))\n"
    )
    completed = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert json.loads(completed.stdout.strip().splitlines()[-1]) == []
