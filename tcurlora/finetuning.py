"""Fine-tuning: adapt a base model to labeled cases with one method, report events, write the adapter.

The one entry point is `run_finetune(job, sink, token)`, driven by `tcurlora finetune` (CLI flags or
`--job job.json`) and by the Slicer module through the same worker. Checkpoints go to
`<output>.checkpoint/` and are replaced atomically; the adapter folder appears only when training ends.
"""

from __future__ import annotations

import json
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch

from tcurlora import distributed  # torchrun; no-ops in a run not started by it
from tcurlora.adapters.methods.registry import method_info
from tcurlora.dice import dice_by_class
from tcurlora.errors import ConfigError, InputError
from tcurlora.filenames import CHECKPOINT_FILE, TRAINING_LOG_FILE, checkpoint_dir
from tcurlora.jobs.events import eta_seconds
from tcurlora.mean_teacher import (
    RAMPUP_FRACTION,
    EMATeacher,
    SemiSupervisedLoss,
    consistency_weight,
    unlabeled_view_and_loss,
)
from tcurlora.output_lock import OutputLock
from tcurlora.outputs import check_adapter_output
from tcurlora.training.checkpoint import (
    load_best_weights,
    load_finetune_checkpoint,
    restore_sampler,
    restore_teacher,
    resume_record,
    save_finetune_checkpoint,
)
from tcurlora.training.loop import Batch, LoopHooks, run_loop
from tcurlora.training.schedule import finetuning_factor
from tcurlora.training.step import OptimStep, autocast_context, grad_scaler

# The new segmentation head and the extra `train_modules` learn at these rates whatever the method,
# so methods are compared on what they adapt, not on how fast their head learns (docs/benchmarks.md).
DEFAULT_HEAD_LEARNING_RATE = 5e-2
# 3e-3, measured on the validation splits (docs/benchmarks.md, session 10): tCURLoRA's full-resolution
# blocks at 1e-3 learned too slowly in 500 steps (two seeds: left atrium 0.762 -> 0.775, hippocampus
# 0.818 -> 0.828; 1e-2 was past the peak).
DEFAULT_MODULES_LEARNING_RATE = 3e-3
# With a validation split: validations per run, and how many without improvement end it early.
VALIDATIONS_PER_RUN = 10
DEFAULT_PATIENCE = 4


@dataclass
class TrainingState:
    """What a checkpoint restores besides the weights (`progress()` is what it stores)."""

    iteration: int = 0
    losses: list[float] = field(default_factory=list)
    val_history: list[dict[str, Any]] = field(default_factory=list)
    elapsed_s: float = 0.0
    stopped_early: bool = False
    consistency: list[float] = field(default_factory=list)  # semi-supervised: each step's consistency loss

    def best_validation(self) -> dict[str, Any] | None:
        """The validation with the highest mean Dice (the earliest of equals), or None."""
        if not self.val_history:
            return None
        return max(self.val_history, key=lambda v: (mean_dice(v["dice"]), -v["iteration"]))

    def validations_since_best(self) -> int:
        best = self.best_validation()
        return 0 if best is None else sum(1 for v in self.val_history if v["iteration"] > best["iteration"])

    def progress(self) -> dict[str, Any]:
        """The entries a checkpoint's checkpoint.json records."""
        return {
            "iteration": self.iteration,
            "losses": self.losses,
            "val_history": self.val_history,
            "elapsed_s": self.elapsed_s,
            "consistency": self.consistency,
        }

    @classmethod
    def from_checkpoint(cls, meta: dict[str, Any]) -> TrainingState:
        """The state a checkpoint.json records (older ones have no val_history, elapsed_s, consistency)."""
        return cls(
            iteration=int(meta["iteration"]),
            losses=list(meta["losses"]),
            val_history=list(meta.get("val_history", [])),
            elapsed_s=float(meta.get("elapsed_s", 0.0)),
            consistency=list(meta.get("consistency") or []),
        )


def mean_dice(per_class: dict[str, float]) -> float:
    return sum(per_class.values()) / len(per_class) if per_class else 0.0


def learning_rates(job) -> dict[str, float]:
    """Peak learning rate of each parameter role: the method's adapter, the train_modules, the head."""
    head = getattr(job, "head_learning_rate", None)
    modules = getattr(job, "modules_learning_rate", None)
    method = method_info(job.method)
    return {
        "adapter": job.learning_rate
        or method.learning_rate,  # measured (docs/benchmarks.md); a job may override
        "modules": modules or DEFAULT_MODULES_LEARNING_RATE,
        "head": head
        or (job.learning_rate if method.trains_head and job.learning_rate else DEFAULT_HEAD_LEARNING_RATE),
    }


def build_optimizer(adapted, rates: dict[str, float], method: str) -> torch.optim.Optimizer:
    """AdamW with one parameter group per role (adapter / modules / head), each at its own rate.

    Low-rank cores (tcur, lora) get no weight decay: decaying them pulls the update towards zero."""
    groups = []
    for role, parameters in adapted.parameter_groups().items():
        if parameters:
            decay = 0.0 if role == "adapter" and method_info(method).ranked else 1e-5
            groups.append(
                {
                    "params": parameters,
                    "lr": rates[role],
                    "initial_lr": rates[role],
                    "weight_decay": decay,
                    "role": role,
                }
            )
    return torch.optim.AdamW(groups)


def validate_output(output: Path, force: bool, resume: bool) -> None:
    """Refuse an output that exists (without force) or is not an adapter; refuse to resume without a checkpoint."""
    check_adapter_output(output, force)
    if resume and not (checkpoint_dir(output) / CHECKPOINT_FILE).is_file():
        raise InputError("nothing to resume: no checkpoint found", checkpoint_dir(output))


def run_finetune(job, sink, token) -> dict[str, Any]:
    """Adapt `job.base_model` to the job's cases; returns {"outputs": {"adapter": path}, "metrics": {...}}."""
    from tcurlora.finetuning_setup import prepare_training

    output = Path(job.output)
    with OutputLock(output) as lock:  # one run per output; every output problem is found here
        lock.sweep(checkpoint_dir(output))  # first: it may restore an adapter a killed swap left aside
        validate_output(output, job.force, job.resume)
        setup = prepare_training(job, sink)
        return Trainer(job, setup, sink, token).run(output)


class Trainer(LoopHooks):
    """Fine-tuning on the shared loop (`run_loop`): patches in, DiceCE loss, AdamW with warm-up + cosine,
    periodic validation, early stopping, checkpoints."""

    def __init__(self, job, setup, sink, token):
        from monai.losses import DiceCELoss

        self.job, self.setup, self.sink, self.token = job, setup, sink, token
        self.device = setup.device
        self.adapted = setup.adapted.to(self.device)
        self.learning_rates = learning_rates(job)
        self.learning_rate = self.learning_rates["adapter"]
        self.optimizer = build_optimizer(self.adapted, self.learning_rates, job.method)
        self.forward = distributed.wrap(self.adapted, self.device)  # torchrun: DDP (tcurlora.distributed)
        self.loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
        self.amp = bool(job.amp) and self.device.type == "cuda"
        self.scaler = grad_scaler(self.device, self.amp)
        self.optim_step = OptimStep(
            self.forward, self.optimizer, self.scaler, amp=self.amp, clip=job.grad_clip
        )  # schedule: step()
        self.state = TrainingState()
        self.best_state: dict[str, torch.Tensor] | None = None  # adapter at the best validation Dice
        # Semi-supervised (job.unlabeled): the mean teacher, and whether it (not the student) is validated
        # and saved (job.keep_teacher; default the student).
        self.teacher = (
            EMATeacher(self.adapted, job.ema_decay) if setup.unlabeled_batches is not None else None
        )
        self.keep_teacher = self.teacher is not None and bool(getattr(job, "keep_teacher", False))
        self.unlabeled_stream = None
        if self.teacher is not None:  # the student's view of an unlabeled patch, and its loss
            self.unlabeled_view, self.unlabeled_loss = unlabeled_view_and_loss(job.unlabeled_loss)

    def job_record(self) -> dict:
        return {
            **resume_record(self.job, self.setup.base.fingerprint, self.setup.label_names),
            "iterations": self.job.iterations,
        }

    def run(self, output: Path) -> dict[str, Any]:
        job, sink = self.job, self.sink
        ckpt = checkpoint_dir(output)
        stream = self.setup.batches(seed_offset=0)
        if job.resume:
            meta = load_finetune_checkpoint(ckpt, self.adapted, self.optim_step, self.job_record())
            self.state = TrainingState.from_checkpoint(meta)
            self.best_state = load_best_weights(ckpt)
            if meta.get("sampler") is not None:
                restore_sampler(stream, meta["sampler"], ckpt)
            else:  # a checkpoint of an older tcurlora: draw again the batches an uninterrupted run drew
                for _ in range(self.state.iteration):
                    next(stream)
            sink.log("info", f"resumed from {ckpt} at iteration {self.state.iteration}")
        if self.teacher is not None:
            self.unlabeled_stream = self.setup.unlabeled_batches(
                seed_offset=0
            )  # loads them: errors before step 1
            if job.resume:
                restore_teacher(self.teacher, ckpt)
                if meta.get("unlabeled_sampler") is None:
                    raise InputError(
                        "cannot resume: the checkpoint holds no unlabeled sampler state",
                        ckpt / CHECKPOINT_FILE,
                    )
                restore_sampler(self.unlabeled_stream, meta["unlabeled_sampler"], ckpt, "unlabeled sampler")
        self.stream = stream
        total = job.iterations
        self.optim_step.schedule = partial(finetuning_factor, total=total)
        self.eval_every = max(1, total // VALIDATIONS_PER_RUN)
        self.patience = getattr(job, "early_stopping", DEFAULT_PATIENCE)
        self.previous_elapsed = self.state.elapsed_s  # time spent before a resume
        self.started = time.monotonic() - self.previous_elapsed
        self.start_iteration = self.state.iteration
        self.checkpoint_folder = ckpt
        batches = (self.to_batch(b) for b in distributed.shard(stream))  # torchrun: this rank's patches
        run_loop(self.optim_step, batches, self.state.iteration, total, self)
        self.state.elapsed_s = time.monotonic() - self.started
        return self.finish(output, ckpt)

    def to_batch(self, batch: dict) -> Batch:
        image = batch["image"].to(self.device, non_blocking=True)
        label = batch["label"].to(self.device, non_blocking=True)
        if self.teacher is None:
            return Batch(image, label, self.loss_fn)
        return self.semi_supervised_batch(image, label)

    def semi_supervised_batch(self, image: torch.Tensor, label: torch.Tensor) -> Batch:
        """[labeled; noisy unlabeled] patches in one batch, with the teacher's logits of the clean unlabeled
        patches (drawn just before the step of iteration `state.iteration`, with the current EMA)."""
        unlabeled = distributed.local_part(next(self.unlabeled_stream))["image"].to(
            self.device, non_blocking=True
        )
        with torch.no_grad(), self.teacher.swapped() as teacher:
            teacher.eval()
            with autocast_context(self.device, self.amp):
                teacher_logits = teacher(unlabeled).float()
            teacher.train()
        weight = consistency_weight(self.state.iteration, self.job.iterations, self.job.unlabeled_weight)
        loss = SemiSupervisedLoss(self.loss_fn, image.shape[0], teacher_logits, weight, self.unlabeled_loss)
        return Batch(
            torch.cat([image, self.unlabeled_view(unlabeled)]),
            label,
            loss,
            info={"consistency_weight": weight},
        )

    @contextmanager
    def kept_weights(self):
        """The weights to validate and save: the teacher's with job.keep_teacher, else the student's."""
        if self.keep_teacher:
            with self.teacher.swapped():
                yield
        else:
            yield

    def before_step(self, iteration: int) -> None:
        distributed.raise_if_cancelled(self.token)  # torchrun: all ranks stop at the same step

    def after_step(self, done: int, batch: Batch, loss: torch.Tensor) -> bool:
        """Record the loss (torchrun: of the whole effective batch), validate, report, checkpoint; True to
        stop early (validation Dice not improving for `patience` validations)."""
        job, sink, state, total = self.job, self.sink, self.state, self.job.iterations
        value = distributed.mean(float(loss.detach()))
        state.iteration = done
        state.losses.append(value)
        if self.teacher is not None:
            self.teacher.update()
            state.consistency.append(distributed.mean(batch.loss_fn.last["consistency"]))
        val = None
        if self.setup.val_volumes and (done % self.eval_every == 0 or done == total):
            with self.kept_weights():
                val = self.validate()
                state.val_history.append({"iteration": done, "dice": val})
                if state.best_validation()["iteration"] == done:
                    self.best_state = self.adapted.adapter_state_dict()
        elapsed = time.monotonic() - self.started
        sink.progress(
            iteration=done,
            total=total,
            loss=value,
            val_dice=val,
            eta_s=eta_seconds(elapsed - self.previous_elapsed, done - self.start_iteration, total - done),
            lr=self.optimizer.param_groups[0]["lr"],
        )
        if (
            job.checkpoint_every
            and done % job.checkpoint_every == 0
            and done < total
            and distributed.is_writer()
        ):
            state.elapsed_s = elapsed
            teacher = self.teacher
            path = save_finetune_checkpoint(
                self.checkpoint_folder,
                self.adapted,
                self.optim_step,
                state.progress(),
                self.job_record(),
                sampler=self.stream.state(),
                best=self.best_state,
                teacher=teacher.state_dict() if teacher else None,
                unlabeled_sampler=self.unlabeled_stream.state() if teacher else None,
            )
            sink.checkpoint(iteration=done, path=str(path))
        if self.patience and state.validations_since_best() >= self.patience and done < total:
            state.stopped_early = True
            sink.log(
                "info",
                f"early stop at iteration {done}: validation Dice has not improved for "
                f"{self.patience} validations; keeping the adapter of iteration "
                f"{state.best_validation()['iteration']}",
            )
            return True
        return False

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        from monai.inferers import sliding_window_inference

        self.adapted.eval()
        names = self.setup.label_names
        per_class: list[list[float]] = [[] for _ in names]
        for volume in self.setup.val_volumes:
            image = volume["image"].unsqueeze(0).to(self.device)
            with autocast_context(self.device, self.amp):
                logits = sliding_window_inference(
                    image, self.setup.patch_size, 2, self.adapted, overlap=0.25, mode="gaussian"
                )
            prediction = logits.argmax(1)[0].cpu()
            scores = dice_by_class(prediction, volume["label"][0].long(), range(1, len(names) + 1))
            for index, score in enumerate(scores.values()):
                per_class[index].append(score)
        self.adapted.train()
        return {name: float(sum(s) / len(s)) for name, s in zip(names, per_class)}

    def finish(self, output: Path, ckpt: Path) -> dict[str, Any]:
        from tcurlora.adapters.io import save_adapter
        from tcurlora.data.components import single_piece_classes
        from tcurlora.data.transforms import TRAINING_FLIP_AXES

        setup, state = self.setup, self.state
        if not distributed.is_writer():  # torchrun: rank 0 alone writes the adapter
            return {"outputs": {}, "metrics": {}}
        tail = state.losses[-max(1, min(10, len(state.losses))) :]
        metrics: dict[str, Any] = {
            "final_loss": sum(tail) / len(tail),
            "first_loss": state.losses[0] if state.losses else None,
            "iterations": state.iteration,
            "train_cases": [c.id for c in setup.train_cases],
            "val_cases": [c.id for c in setup.val_cases],
            "train_time_s": round(state.elapsed_s, 2),
            "device": setup.device_name,
            "threads": setup.threads,
        }
        best = state.best_validation()
        if best is not None:
            metrics["val_dice"] = best["dice"]
            metrics["best_iteration"] = best["iteration"]
            metrics["stopped_early"] = state.stopped_early
        semi = None
        if self.teacher is not None:
            semi = {
                "unlabeled_volumes": len(setup.unlabeled_files),
                "unlabeled_weight": self.job.unlabeled_weight,
                "unlabeled_loss": self.job.unlabeled_loss,
                "ema_decay": self.job.ema_decay,
                "rampup_fraction": RAMPUP_FRACTION,
                "saved": "teacher" if self.keep_teacher else "student",
            }
            metrics["unlabeled_volumes"] = len(setup.unlabeled_files)
            recent = state.consistency[-len(tail) :]
            if recent:
                metrics["final_consistency"] = sum(recent) / len(recent)
        if self.keep_teacher:
            self.teacher.copy_to_model()  # the teacher is saved (replaced below by the best validated one)
        if best is not None:
            if self.best_state is not None and best["iteration"] != state.iteration:
                self.adapted.load_adapter_state_dict(self.best_state)  # the best validated adapter is kept
        extra = {
            "label_colors": setup.label_colors,
            "preprocessing": setup.spec.to_dict(),
            "patch_size": list(setup.patch_size),
            # segment's default cleanup: only classes never in several pieces in a training label
            "single_piece_classes": single_piece_classes(setup.train_cases, len(setup.label_names) + 1),
            "metrics": metrics,
            "training": {
                "iterations": self.job.iterations,
                "batch_size": self.job.batch_size,
                "learning_rate": self.learning_rate,
                "learning_rates": self.learning_rates,
                "seed": self.job.seed,
                "amp": self.amp,
                "flip_axes": list(TRAINING_FLIP_AXES),  # segment mirrors along exactly these
            },
        }
        if semi is not None:
            extra["training"]["semi_supervised"] = semi
        log_lines = [json.dumps({"iteration": i + 1, "loss": loss}) for i, loss in enumerate(state.losses)]
        if semi is not None:
            log_lines = [json.dumps({"semi_supervised": semi})] + [
                json.dumps({"iteration": i + 1, "loss": loss, "consistency": c})
                for i, (loss, c) in enumerate(zip(state.losses, state.consistency))
            ]
        log_lines += [
            json.dumps({"iteration": v["iteration"], "val_dice": v["dice"]}) for v in state.val_history
        ]
        self.adapted.eval()
        save_adapter(
            output,
            self.adapted.to("cpu"),
            extra=extra,
            force=self.job.force,
            extra_files={TRAINING_LOG_FILE: "\n".join(log_lines) + "\n"},
        )
        shutil.rmtree(ckpt, ignore_errors=True)
        return {"outputs": {"adapter": str(output)}, "metrics": metrics}


__all__ = ["run_finetune", "Trainer", "ConfigError", "checkpoint_dir"]
