"""A fine-tuning run's life beyond the happy path, headless on real MRML and the real worker: the scene
closed while it runs, a retry on the CPU, Slicer closing or reloading during training, and the sweep of
what killed runs leave in the library."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import slicer
from TCURFineTuneLib.interrupted import interrupted_runs, resume_candidate, sweep_stale_staging
from TCURFineTuneLib.run import (
    FineTuneRun,
    can_resume,
    closing_question,
    discard_interrupted,
    finish_run,
)
from TCURFineTuneLib.testing import fast_settings, load_training_scene

from tcurlora import library
from tcurlora.filenames import CHECKPOINT_FILE, RUN_INFO_FILE
from tcurlora.output_lock import OutputLock
from TCURLoRACommon.runs import CANCELLED, DONE, FAILED
from TCURLoRACommon.testdata import library_leftovers, run_until
from TCURLoRACommon.worker import WorkerProcess

# A worker that fails the way a GPU out of memory at iteration 0 does: the real error event and exit code
# (tcurlora.jobs.runner.report_error); this machine has no GPU to run out of memory on.
OOM_WORKER = (
    "import sys; from tcurlora.errors import DeviceOutOfMemoryError; from tcurlora.jobs.events import make_sink; "
    "from tcurlora.jobs.runner import CUDA_OOM_MESSAGE, report_error; "
    "sys.exit(report_error(make_sink(True, sys.stdout), DeviceOutOfMemoryError(CUDA_OOM_MESSAGE)))"
)


def no_question(question: str) -> bool:
    raise AssertionError(f"nothing should be asked here: {question}")


@pytest.mark.slow
def test_cpu_retry_after_scene_close_leaves_nothing(mrml, hippocampus_dir: Path, tmp_path: Path) -> None:
    """Out of memory on the GPU, the scene closed meanwhile: "retry on CPU" runs the same exported job
    (no scene node needed) and the work folder with every exported case is removed at the end."""
    pairs, names = load_training_scene(hippocampus_dir, 2)
    settings = fast_settings(2)
    settings.device = "auto"
    run = FineTuneRun(pairs, settings, "retried", tmp_path / "work", curves=False)
    run.worker = WorkerProcess("finetune", run.job_path, args=[sys.executable, "-c", OOM_WORKER])
    run.start().wait(timeout=120)
    assert run.state == FAILED and run.error["kind"] == "out_of_memory", run.error
    slicer.mrmlScene.Clear(0)  # the user closed the scene while it ran
    asked: list[str] = []
    outcome = finish_run(run, lambda question: asked.append(question) or True)
    assert asked and "Run again on the CPU" in asked[0]
    retry = outcome.retry
    assert retry is not None and retry.job["device"] == "cpu" and retry.workdir == run.workdir
    assert json.loads(Path(retry.job_path).read_text())["device"] == "cpu"
    retry.wait(timeout=600)
    assert retry.state == DONE, f"{retry.state}: {retry.error_text()}\n" + "\n".join(retry.worker.tail)
    done = finish_run(retry, no_question)
    assert done.state == DONE and "Adapter saved" in done.message
    assert not run.workdir.exists(), "the exported cases must not be left behind"
    assert [e.name for e in library.list_adapters()] == ["retried"] and library_leftovers() == ["retried"]
    assert interrupted_runs() == []


def test_declined_cpu_retry_shows_the_error_and_cleans_up(
    mrml, hippocampus_dir: Path, tmp_path: Path
) -> None:
    pairs, _ = load_training_scene(hippocampus_dir, 1)
    settings = fast_settings(2)
    settings.device = "auto"
    run = FineTuneRun(pairs, settings, "declined", tmp_path / "work", curves=False)
    run.worker = WorkerProcess("finetune", run.job_path, args=[sys.executable, "-c", OOM_WORKER])
    run.start().wait(timeout=120)
    outcome = finish_run(run, lambda question: False)
    assert outcome.state == FAILED and "CUDA out of memory" in outcome.error and outcome.retry is None
    assert outcome.resume_job == "" and not run.workdir.exists() and library_leftovers() == []


@pytest.mark.slow
def test_cancel_after_scene_close_keeps_resume(mrml, hippocampus_dir: Path, tmp_path: Path) -> None:
    """The scene closed during the run (the panel's parameter node is gone): the cancelled run's job is
    still offered for Resume, remembered beyond the scene."""
    pairs, _ = load_training_scene(hippocampus_dir, 2)
    settings = fast_settings(100000)
    settings.checkpoint_every = 2
    run = FineTuneRun(pairs, settings, "closing", tmp_path / "work").start()
    run_until(run, "checkpoint")
    slicer.mrmlScene.Clear(0)
    run.cancel()
    run.wait(timeout=60)
    outcome = finish_run(run, no_question)
    assert outcome.state == CANCELLED and outcome.resume_job == str(run.job_path)
    assert "Resume continues" in outcome.message and run.workdir.exists()
    assert interrupted_runs() == [run.job_path] and resume_candidate("") == str(run.job_path)
    discard_interrupted(outcome.resume_job)
    assert interrupted_runs() == [] and resume_candidate("") == "" and library_leftovers() == []


@pytest.mark.slow
def test_closing_slicer_keeps_the_run_resumable(mrml, hippocampus_dir: Path, tmp_path: Path) -> None:
    """Closing Slicer (or reloading) during training: asked first; the job, cases and checkpoint stay and
    are offered next time; the killed worker's lock and staging folder are swept when the panel opens."""
    pairs, _ = load_training_scene(hippocampus_dir, 2)
    settings = fast_settings(100000)
    settings.checkpoint_every = 2
    run = FineTuneRun(pairs, settings, "interrupted", tmp_path / "work", curves=False).start()
    assert "no checkpoint yet" in closing_question(run)
    run_until(run, "checkpoint")
    assert "checkpoint is kept" in closing_question(run)
    saved = json.loads((run.checkpoint / CHECKPOINT_FILE).read_text())["iteration"]
    run.shutdown()  # what the widget's cleanup() does
    assert not run.worker.running
    assert run.job_path.is_file() and can_resume(run.job_path), "closing must keep what Resume needs"
    assert interrupted_runs() == [run.job_path], "the next session must find the run"
    sweep_stale_staging()  # the panel opens again
    assert library_leftovers() == [run.checkpoint.name], library_leftovers()
    resumed = FineTuneRun.resume(resume_candidate(""), curves=False).start()
    run_until(resumed, "progress")
    first = next(e for e in resumed.events if e["event"] == "progress")
    assert first["iteration"] == saved + 1
    resumed.cancel()
    resumed.wait(timeout=60)
    discard_interrupted(resumed.job_path)
    assert library_leftovers() == [] and not run.workdir.exists()
    assert closing_question(resumed) is None and closing_question(None) is None


def test_sweep_removes_only_what_nothing_needs(mrml, tmp_path: Path) -> None:
    adapters = library.adapters_dir()
    (adapters / "kept-adapter").mkdir(parents=True)
    stale = library.staging_path("closing")
    (stale / "half").mkdir(parents=True)
    (adapters / f"{stale.name}.checkpoint").mkdir()
    (adapters / f"{stale.name}.checkpoint" / CHECKPOINT_FILE).write_text("{}")
    (adapters / f".{stale.name}.lock").write_text("123\n")  # a killed worker's lock file
    live = library.staging_path("running")
    (adapters / f"{live.name}.checkpoint").mkdir()
    remembered = library.staging_path("paused")
    (adapters / f"{remembered.name}.checkpoint").mkdir()
    (adapters / f"{remembered.name}.checkpoint" / CHECKPOINT_FILE).write_text("{}")
    work = tmp_path / "paused-work"
    work.mkdir()
    (work / RUN_INFO_FILE).write_text(json.dumps({"adapter_name": "paused"}))
    (work / "job.json").write_text(json.dumps({"command": "finetune", "output": str(remembered)}))
    from TCURFineTuneLib.interrupted import remember_interrupted

    remember_interrupted(work / "job.json")
    with OutputLock(live):  # a run in another Slicer is writing it
        removed = sweep_stale_staging()
    left = sorted(p.name for p in adapters.iterdir())
    assert left == sorted(["kept-adapter", f"{live.name}.checkpoint", f"{remembered.name}.checkpoint"]), left
    assert {p.name for p in removed} == {stale.name, f"{stale.name}.checkpoint", f".{stale.name}.lock"}
    assert interrupted_runs() == [work / "job.json"]


def test_widget_uses_the_tested_paths() -> None:
    """The widget's finish, retry, close and reload paths are the functions tested above (its own or
    RunPanelMixin's), and never read the parameter node without a fallback (it is None after the scene
    closed in another module)."""
    import ast

    root = Path(__file__).resolve().parents[2]
    script = root / "TCURFineTune" / "TCURFineTune.py"
    mixin_script = root / "TCURLoRACommon" / "panelwidget.py"
    sources = {p: p.read_text(encoding="utf-8") for p in (mixin_script, script)}
    methods: dict[str, tuple[ast.FunctionDef, str]] = {}
    for path, name in (
        (mixin_script, "RunPanelMixin"),
        (script, "TCURFineTuneWidget"),
    ):  # the widget's own win
        cls = next(n for n in ast.parse(sources[path]).body if isinstance(n, ast.ClassDef) and n.name == name)
        methods |= {n.name: (n, sources[path]) for n in cls.body if isinstance(n, ast.FunctionDef)}

    def calls(name: str) -> set[str]:
        return {
            c.func.attr if isinstance(c.func, ast.Attribute) else getattr(c.func, "id", "")
            for c in ast.walk(methods[name][0])
            if isinstance(c, ast.Call)
        }

    assert "finish_run" in calls("finishRun") and "finishRun" in calls("pollRun")
    assert "shutdown_active" in calls("cleanup") and "closing_question" in calls("confirmClose")
    assert "cleanup" in calls("cleanup"), "the widget's cleanup must run the shared one (the training run)"
    assert "confirmClose" in calls("onReload") and "installEventFilter" in calls("setup")
    assert {"sweep_stale_staging", "resume_candidate"} <= calls("setup") | calls("updateResumeButton")
    for name in ("finishRun", "pollRun", "onTimer", "startRun", "startPolling", "showRunDetails"):
        node, text = methods[name]
        source = ast.get_source_segment(text, node) or ""
        assert "self._parameterNode." not in source, (
            f"{name} reads the parameter node, None after a scene close"
        )
