"""A fine-tuning run: cases exported, job written, worker running, adapter installed into the library;
an interrupted run can be resumed from its last checkpoint."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from TCURFineTuneLib.cases import TrainingPair, class_colors, export_cases, export_unlabeled
from TCURFineTuneLib.interrupted import forget_interrupted, remember_interrupted
from tcurlora import library
from tcurlora.errors import InputError
from tcurlora.filenames import CHECKPOINT_FILE, RUN_INFO_FILE, checkpoint_dir
from tcurlora.fsutil import atomic_write_json
from tcurlora.jsonio import read_json_object
from TCURLoRACommon.curves import TrainingCurves
from TCURLoRACommon.jobs import FineTuneSettings, finetune_job
from TCURLoRACommon.remote import RemoteSettings
from TCURLoRACommon.runs import CANCELLED, DONE, FAILED, WorkerRun, new_workdir


def _read_job(job_path: str | Path) -> dict[str, Any]:
    return read_json_object(Path(job_path), "fine-tuning job")


def can_resume(job_path: str | Path) -> bool:
    """True when an interrupted run's job and its checkpoint are still there."""
    path = Path(job_path)
    if not path.is_file() or not (path.parent / RUN_INFO_FILE).is_file():
        return False
    try:
        output = _read_job(path)["output"]
    except (InputError, KeyError):
        return False
    return (checkpoint_dir(output) / CHECKPOINT_FILE).is_file()


def job_method(job_path: str | Path) -> str:
    """The method of a run's job ("tcur", "lora", ...): whether resuming it needs PEFT."""
    return str(_read_job(job_path).get("method") or "")


def discard_interrupted(job_path: str | Path) -> None:
    """Delete what an interrupted run kept for resuming: its checkpoint and its work folder."""
    path = Path(job_path)
    if str(job_path):
        forget_interrupted(path)
    if not path.is_file():
        return
    try:
        output = _read_job(path).get("output")
    except InputError:
        output = None
    if output:
        shutil.rmtree(checkpoint_dir(output), ignore_errors=True)
    shutil.rmtree(path.parent, ignore_errors=True)


class FineTuneRun(WorkerRun):
    """Trains an adapter on scene cases; on success it lands in the model library as `adapter_name`.

    `unlabeled`: volumes without labels, exported beside the cases and given to the job as `unlabeled`
    (semi-supervised mean-teacher training; see TCURFineTuneLib.cases.unlabeled_volumes).

    With `remote` the worker runs on that host over SSH (tcurlora.remote); events, Cancel, outputs and the
    checkpoint to resume from behave as for a local run.

    The worker writes into a hidden staging folder of the library, which is renamed into place only after
    the `done` event; a failed or cancelled run deletes it, so the library never lists a partial adapter.
    Its checkpoint (a hidden sibling) stays until the run is resumed or discarded.
    """

    def __init__(
        self,
        pairs: Sequence[TrainingPair],
        settings: FineTuneSettings,
        adapter_name: str,
        workdir: Path | None = None,
        curves: bool = True,
        remote: RemoteSettings | None = None,
        unlabeled: Sequence[Any] = (),
    ) -> None:
        if not adapter_name.strip():
            raise InputError("give the adapter a name")
        workdir = workdir or new_workdir("finetune")
        cases, names = export_cases(pairs, workdir / "cases")
        unlabeled_files = export_unlabeled(unlabeled, workdir / "cases" / "unlabeled") if unlabeled else None
        job = finetune_job(
            settings,
            cases,
            names,
            class_colors(pairs, names),
            library.staging_path(adapter_name),
            unlabeled=unlabeled_files,
        )
        info = {"adapter_name": adapter_name, "remote": remote.to_dict() if remote else None}
        atomic_write_json(workdir / RUN_INFO_FILE, info)
        self._setup(job, workdir, adapter_name, curves, remote)

    def _setup(
        self,
        job: dict[str, Any],
        workdir: Path,
        adapter_name: str,
        curves: bool,
        remote: RemoteSettings | None,
    ) -> None:
        self.remote = remote  # None: on this computer
        self.label_names = list(job["label_names"])
        self.adapter_name = adapter_name
        self.staging = Path(job["output"])
        self.adapter: library.AdapterEntry | None = None
        self.curves = TrainingCurves(self.label_names, f"TCURLoRA {adapter_name}") if curves else None
        extra_args = remote.worker_args() if remote else ()
        WorkerRun.__init__(self, job, workdir, partial_outputs=[self.staging], extra_args=extra_args)

    @classmethod
    def resume(cls, job_path: str | Path, curves: bool = True) -> FineTuneRun:
        """A run that continues an interrupted one from its checkpoint (same cases, settings and name)."""
        if not can_resume(job_path):
            raise InputError("nothing to resume: the interrupted run's checkpoint is gone", job_path)
        path = Path(job_path)
        job = {**_read_job(path), "resume": True}
        info = read_json_object(path.parent / RUN_INFO_FILE, "run info")
        run = cls.__new__(cls)
        remote = RemoteSettings.from_dict(info.get("remote"))  # resumed where it ran
        run._setup(job, path.parent, str(info.get("adapter_name") or "adapter"), curves, remote)
        return run

    @property
    def checkpoint(self) -> Path:
        return checkpoint_dir(self.staging)

    def resumable(self) -> bool:
        """True for a cancelled or failed run that left a checkpoint to continue from."""
        return self.state in (CANCELLED, FAILED) and (self.checkpoint / CHECKPOINT_FILE).is_file()

    def on_event(self, event: dict[str, Any]) -> None:
        if self.curves is not None:
            self.curves.add(event)

    def on_done(self, event: dict[str, Any]) -> None:
        staged = Path(event["outputs"].get("adapter", self.staging))
        self.adapter = library.install_adapter(staged, self.adapter_name)

    @property
    def has_checkpoint(self) -> bool:
        return (self.checkpoint / CHECKPOINT_FILE).is_file()

    def shutdown(self) -> None:
        """Slicer is closing or the module reloads: stop the worker within a couple of seconds and keep what
        Resume needs (job, exported cases, checkpoint) when a checkpoint exists, remembered for the next
        session; without one there is nothing to resume and the work folder goes."""
        self.worker.shutdown()
        if self.has_checkpoint:
            remember_interrupted(self.job_path)
        else:
            self.remove_workdir()

    def retry_on_cpu(self) -> FineTuneRun:
        """The same job (same exported cases, settings, name) again on the CPU, from the start, in the same
        work folder: nothing of the scene is needed (it may have been closed) and nothing is left behind."""
        shutil.rmtree(self.checkpoint, ignore_errors=True)
        self.worker.remove_partial_outputs()
        forget_interrupted(self.job_path)
        job = {
            **self.job,
            "device": "cpu",
            "resume": False,
            "output": str(library.staging_path(self.adapter_name)),
        }
        run = FineTuneRun.__new__(FineTuneRun)
        run._setup(job, self.workdir, self.adapter_name, self.curves is not None, self.remote)
        return run


@dataclass
class FinishOutcome:
    """What the panel shows once a run has ended: a log line, an error for a dialog, the job Resume
    offers, or the run that retries on the CPU."""

    state: str
    message: str = ""
    error: str = ""
    resume_job: str = ""
    retry: FineTuneRun | None = None


def finish_run(run: FineTuneRun, confirm: Callable[[str], bool]) -> FinishOutcome:
    """Clean up after a run and say what to show; `confirm(question)` asks about retrying on the CPU.

    Needs no scene node: it works after the scene was closed while the run went on. A resumable run's
    files stay (and are remembered); every other ending removes the work folder with the exported cases.
    """
    if run.state == DONE:
        forget_interrupted(run.job_path)
        run.remove_workdir()
        return FinishOutcome(DONE, f"Adapter saved: {run.adapter.path}" if run.adapter else "Done.")
    if run.state == FAILED:
        reason = run.cpu_fallback_reason()
        if reason and confirm(reason):
            return FinishOutcome(FAILED, "Running again on the CPU...", retry=run.retry_on_cpu().start())
    resume = ""
    if run.resumable():
        remember_interrupted(run.job_path)
        resume = str(run.job_path)
    else:
        forget_interrupted(run.job_path)
        run.remove_workdir()
    if run.state == CANCELLED:
        kept = " Resume continues from the last checkpoint." if resume else ""
        return FinishOutcome(
            CANCELLED, "Cancelled; nothing was added to the model library." + kept, resume_job=resume
        )
    return FinishOutcome(FAILED, error=run.error_text() or "the run failed", resume_job=resume)


def closing_question(run: WorkerRun | None) -> str | None:
    """What to ask before Slicer closes (or the module reloads) while a fine-tuning runs; None when nothing
    runs. Says whether Resume will be able to continue it."""
    if run is None or run.finished:
        return None
    progress = run.progress or {}
    where = f" (iteration {progress['iteration']} of {progress['total']})" if progress.get("total") else ""
    has_checkpoint = bool(getattr(run, "has_checkpoint", False))
    after = (
        "Its last checkpoint is kept: TCUR Fine-Tune offers to resume it next time."
        if has_checkpoint
        else "It has no checkpoint yet, so it will start over."
    )
    return f"A fine-tuning is running{where}. Stop it and close? {after}"
