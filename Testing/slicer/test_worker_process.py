"""The worker seen from the GUI: cancel never blocks, a worker that ignores SIGTERM is
killed after its grace time, closing Slicer stops it within seconds, undecodable output does not kill the
reader, and a long run keeps a bounded history. Real child processes, no mocks."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import slicer

from tcurlora.errors import InputError
from TCURLoRACommon import scene
from TCURLoRACommon.runs import CANCELLED, EVENT_HISTORY, FAILED, WorkerRun
from TCURLoRACommon.segment_run import SegmentVolumesRun
from TCURLoRACommon.worker import CANCEL_EXIT_CODES, EXIT_CANCELLED, WorkerProcess

pytestmark = pytest.mark.skipif(os.name == "nt", reason="POSIX signals")

STUBBORN = (
    "import signal, sys, time\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "print('ready', flush=True)\n"
    "time.sleep(120)\n"
)


def child(code: str) -> WorkerProcess:
    return WorkerProcess("segment", "unused.json", args=[sys.executable, "-c", code])


def wait_until(predicate, timeout: float, poll=None) -> float:
    start = time.monotonic()
    while not predicate():
        if poll:
            poll()
        assert time.monotonic() - start < timeout, "timed out"
        time.sleep(0.02)
    return time.monotonic() - start


@pytest.mark.slow
def test_cancel_returns_at_once_and_kills_after_the_grace_time() -> None:
    worker = child(STUBBORN)
    worker.start()
    lines: list[dict] = []
    wait_until(lambda: any(e["message"] == "ready" for e in lines), 30, lambda: lines.extend(worker.poll()))
    started = time.monotonic()
    worker.cancel(grace=1.0)
    assert time.monotonic() - started < 0.5, "cancel blocked the GUI thread"
    assert worker.running, "the worker ignores SIGTERM: it must still run until the grace time is over"
    waited = wait_until(lambda: worker.finished, 30, lambda: lines.extend(worker.poll()))
    assert 0.5 < waited < 10
    assert worker.returncode == -signal.SIGKILL
    assert lines[-1]["event"] == "error" and lines[-1]["kind"] == "cancelled"


def test_a_cooperative_worker_exits_with_a_cancel_code() -> None:
    code = (
        "import signal, sys, time\n"
        "signal.signal(signal.SIGTERM, lambda *a: sys.exit(130))\n"
        "print('ready', flush=True)\n"
        "time.sleep(120)\n"
    )
    worker = child(code)
    worker.start()
    lines: list[dict] = []
    wait_until(lambda: any(e["message"] == "ready" for e in lines), 30, lambda: lines.extend(worker.poll()))
    worker.cancel(grace=30)
    wait_until(lambda: worker.finished, 10, lambda: lines.extend(worker.poll()))
    assert worker.returncode == EXIT_CANCELLED and EXIT_CANCELLED in CANCEL_EXIT_CODES
    assert -signal.SIGTERM in CANCEL_EXIT_CODES  # what PythonSlicer's launcher reports on POSIX


@pytest.mark.slow
def test_shutdown_is_bounded() -> None:
    worker = child(STUBBORN)
    worker.start()
    wait_until(lambda: bool(worker.tail), 30, worker.poll)
    started = time.monotonic()
    worker.shutdown(timeout=1.0)
    assert time.monotonic() - started < 5
    assert not worker.running and worker.returncode == -signal.SIGKILL


def test_undecodable_output_does_not_stop_the_reader() -> None:
    code = (
        "import sys\n"
        "sys.stdout.buffer.write(b'bad bytes \\xff\\xfe here\\n')\n"
        'sys.stdout.buffer.write(b\'{"event": "log", "time": 1.0, "level": "info", "message": "after"}\\n\')\n'
    )
    worker = child(code)
    worker.start()
    events: list[dict] = []
    wait_until(lambda: worker.finished, 30, lambda: events.extend(worker.poll()))
    assert [e["message"] for e in events] == ["bad bytes \ufffd\ufffd here", "after"]
    assert worker.returncode == 0


def test_history_is_bounded(tmp_path: Path) -> None:
    count = EVENT_HISTORY + 500
    code = (
        "import json\n"
        f"for i in range({count}):\n"
        "    print(json.dumps({'event': 'log', 'time': 1.0, 'level': 'info', 'message': f'line {i}'}))\n"
    )
    run = WorkerRun({"command": "segment", "device": "cpu"}, tmp_path)
    run.worker = child(code)
    run.start().wait(timeout=60)
    assert run.event_count == count
    assert len(run.events) == EVENT_HISTORY and run.first_event["message"] == "line 0"
    assert run.events[-1]["message"] == f"line {count - 1}"
    assert run.state == FAILED and run.error_text().startswith(
        "the worker ended without a result (exit code 0)"
    )
    assert run.error_text().endswith(f"line {count - 1}")
    assert len(run.worker.tail) <= 40


def test_scene_closed_before_the_segmentation_arrives(mrml, tmp_path: Path) -> None:
    """A scene closed mid-run: the run fails with a message instead of raising in the panel's timer."""
    node = mrml.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "head")
    slicer.util.updateVolumeFromArray(node, np.zeros((6, 7, 8), np.int16))
    run = SegmentVolumesRun([node], "preset:unetr-tiny", None, ["a"], workdir=tmp_path / "work")
    label = mrml.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "label")
    slicer.util.updateVolumeFromArray(label, np.ones((6, 7, 8), np.uint8))
    scene.write_volume(label, run.outputs[0])
    done = json.dumps({"event": "done", "time": 1.0, "outputs": {}, "metrics": {}})
    run.worker = child(f"print({done!r})")
    mrml.Clear(0)  # the user closes the scene while the worker runs
    with pytest.raises(InputError, match="'head' was removed from the scene"):
        run.on_done({})
    run.start().wait(timeout=60)
    assert run.state == FAILED and "removed from the scene" in run.error_text()
    assert slicer.util.getNodesByClass("vtkMRMLSegmentationNode") == []


def test_cancelled_state(tmp_path: Path) -> None:
    run = WorkerRun({"command": "segment", "device": "cpu"}, tmp_path)
    run.worker = child(STUBBORN)
    run.start()
    wait_until(lambda: bool(run.worker.tail), 30, run.update)
    started = time.monotonic()
    run.cancel()
    assert time.monotonic() - started < 0.5
    run.worker.shutdown(timeout=0.5)
    run.wait(timeout=30)
    assert run.state == CANCELLED


def test_progress_bar_is_busy_until_the_first_progress(tmp_path: Path) -> None:
    started = json.dumps({"event": "started", "time": 1.0, "command": "segment", "device": "cpu", "total": 2})
    progress = json.dumps(
        {
            "event": "progress",
            "time": 2.0,
            "iteration": 1,
            "total": 2,
            "loss": None,
            "val_dice": None,
            "eta_s": None,
            "lr": None,
            "message": None,
        }
    )
    flag = tmp_path / "go"
    code = (
        "import os, time\n"
        f"print({started!r}, flush=True)\n"
        f"while not os.path.exists({str(flag)!r}): time.sleep(0.02)\n"  # until the test has looked
        f"print({progress!r}, flush=True)\n"
        "time.sleep(60)\n"
    )
    run = WorkerRun({"command": "segment", "device": "cpu"}, tmp_path)
    assert run.progress_bar() == (100, 0)  # not started
    run.worker = child(code)
    run.start()
    wait_until(lambda: run.first_event is not None, 30, run.update)
    assert run.progress_bar() == (0, 0), "started, no progress yet: busy indicator"
    flag.touch()
    wait_until(lambda: run.progress is not None, 30, run.update)
    assert run.progress_bar() == (100, 50)
    run.worker.shutdown(timeout=0.5)
    run.wait(timeout=30)
    assert run.state == CANCELLED and run.progress_bar() == (100, 50)
