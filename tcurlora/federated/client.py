"""The FLARE client: a site's normal fine-tuning, a few local steps per round from the global adapter.

The site builds its training exactly as `tcurlora finetune` does (the same job settings, data checks and
events: `prepare_training`, `Trainer`), then for each round: load the global adapter, train `local_steps`
steps on its own cases, send back the trained floating-point tensors and its case count (FLARE's FedAvg
weights the sites by `NUM_STEPS_CURRENT_ROUND`, which therefore carries the case count). The optimiser
starts afresh each round (FedAvg's local state does not outlive a round); the learning-rate schedule runs
over the whole federation (rounds x local steps), as over the iterations of one fine-tuning run."""

from __future__ import annotations

import json
import logging
import os
import time
from functools import partial
from pathlib import Path
from typing import Any

from nvflare.apis.executor import Executor
from nvflare.apis.fl_constant import FLMetaKey, ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable, make_reply
from nvflare.apis.signal import Signal
from nvflare.app_common.abstract.fl_model import FLModel, ParamsType
from nvflare.app_common.app_constant import AppConstants
from nvflare.app_common.utils.fl_model_utils import FLModelUtils

from tcurlora.errors import TCURLoRAError
from tcurlora.federated.checks import check_identity, identity
from tcurlora.federated.tensors import merged_state, payload_bytes, shared_tensors
from tcurlora.jobs.events import BaseSink
from tcurlora.training.loop import LoopHooks, run_loop

DATA_ENV = "TCURLORA_SITE_DATA"  # a deployed site's Decathlon folder, when its job config names none
IDENTITY_KEY = "tcurlora_identity"  # model meta: what every site must share (checks.identity)
# Result meta: a site's label classes, and those in several pieces (data.components.class_pieces), from which
# the server writes the adapter's single_piece_classes (persistor.single_piece_record).
PIECE_KEYS = ("present_classes", "split_classes")
LOG = logging.getLogger("tcurlora.federated")
# FLARE's simulator makes a new executor for every round of a site, in the same process: the site's
# prepared training (base model, cases, patch stream) is kept here so that a round does not reload it.
_PREPARED: dict[tuple, tuple[Any, Any, dict[str, Any], dict[str, list[int]]]] = {}


class LogSink(BaseSink):
    """Fine-tuning events of a site, as JSON lines in FLARE's log (prefixed by the site name)."""

    def __init__(self, site: str):
        self.site = site

    def emit(self, event: dict[str, Any]) -> None:
        LOG.info("%s %s", self.site, json.dumps(event, allow_nan=False, separators=(",", ":")))


def site_job(job: dict[str, Any], data: str, iterations: int, workdir: Path):
    """The site's FinetuneJob: the federation's settings on this site's Decathlon folder."""
    from tcurlora.jobs.schema import FinetuneJob

    values = {
        **job,
        "data": data,
        "output": str(workdir / "local-adapter"),
        "iterations": iterations,
        "checkpoint_every": 0,
        "resume": False,
        "force": False,
    }
    return FinetuneJob.from_dict(values, Path.cwd())


class RoundHooks(LoopHooks):
    """One round's local steps: record the losses, report progress, stop on FLARE's abort signal."""

    def __init__(self, sink: BaseSink, total: int, abort_signal: Signal | None):
        self.sink, self.total, self.abort_signal = sink, total, abort_signal
        self.losses: list[float] = []
        self.aborted = False

    def after_step(self, done: int, batch, loss) -> bool:
        self.losses.append(float(loss.detach()))
        self.sink.progress(iteration=done, total=self.total, loss=self.losses[-1])
        self.aborted = bool(self.abort_signal is not None and self.abort_signal.triggered)
        return self.aborted


class SiteExecutor(Executor):
    """Trains the global adapter on this site's cases for `local_steps` steps per round.

    `job` holds the federation's fine-tuning settings (a finetune job without data/output); `data` is this
    site's Decathlon folder, unless the environment variable `data_env` names another."""

    def __init__(
        self, job: dict, data: str = "", rounds: int = 1, local_steps: int = 1, data_env: str = DATA_ENV
    ):
        super().__init__()
        self.job, self.data, self.rounds, self.local_steps, self.data_env = (
            job,
            data,
            rounds,
            local_steps,
            data_env,
        )
        self.trainer = None
        self.stream = None
        self.local_identity: dict[str, Any] | None = None
        self.pieces: dict[str, list[int]] = {}  # present_classes, split_classes of this site's labels

    def setup(self, site: str, workdir: Path, first_round: int = 0) -> None:
        """Load the base model, this site's cases and the adapter, as `tcurlora finetune` does; the patch
        stream is seeded by the first round this process trains (a resumed site draws new patches)."""
        from tcurlora.data.components import class_pieces
        from tcurlora.finetuning import Trainer
        from tcurlora.finetuning_setup import prepare_training

        data = (
            os.environ.get(self.data_env) or self.data
        )  # a site may keep its data elsewhere than the job says
        key = (site, json.dumps(self.job, sort_keys=True, default=str), data, self.rounds, self.local_steps)
        if key in _PREPARED:
            self.trainer, self.stream, self.local_identity, self.pieces = _PREPARED[key]
            return
        if not data:
            raise TCURLoRAError(
                f"{site}: no data folder: give the site's Decathlon folder in the job "
                f"(data) or in ${self.data_env}"
            )
        job = site_job(self.job, data, self.rounds * self.local_steps, workdir)
        sink = LogSink(site)
        setup = prepare_training(job, sink)
        self.trainer = Trainer(job, setup, sink, None)
        self.stream = setup.batches(seed_offset=first_round)
        self.local_identity = identity(
            setup.base.fingerprint, setup.label_names, setup.spec.spacing, job.method, job.rank
        )
        self.pieces = dict(zip(PIECE_KEYS, class_pieces(setup.train_cases, len(setup.label_names) + 1)))
        _PREPARED[key] = (self.trainer, self.stream, self.local_identity, self.pieces)
        LOG.info(
            "%s: %d training case(s), %d validation case(s) from %s",
            site,
            len(setup.train_cases),
            len(setup.val_cases),
            data,
        )

    def execute(
        self, task_name: str, shareable: Shareable, fl_ctx: FLContext, abort_signal: Signal
    ) -> Shareable:
        if task_name != AppConstants.TASK_TRAIN:
            return make_reply(ReturnCode.TASK_UNKNOWN)
        site = fl_ctx.get_identity_name()
        try:
            model = FLModelUtils.from_shareable(shareable)
            if self.trainer is None:
                workdir = Path(fl_ctx.get_engine().get_workspace().get_root_dir())
                self.setup(site, workdir, int(model.current_round or 0))
            result = self.train_round(site, model, abort_signal)
        except TCURLoRAError as error:  # refused: FLARE drops this site's result and the server logs it
            self.log_error(fl_ctx, f"{site} refused round: {error}")
            return make_reply(ReturnCode.BAD_TASK_DATA)
        if result is None:
            return make_reply(ReturnCode.TASK_ABORTED)
        return FLModelUtils.to_shareable(result)

    def train_round(self, site: str, model: FLModel, abort_signal: Signal | None = None) -> FLModel | None:
        """Load the global adapter, validate it (with a validation split), train the local steps; the
        site's trained tensors with its case count, or None when FLARE aborted the round."""
        from tcurlora.finetuning import build_optimizer
        from tcurlora.training.schedule import finetuning_factor
        from tcurlora.training.step import OptimStep

        check_identity(site, self.local_identity, (model.meta or {}).get(IDENTITY_KEY, {}))
        trainer = self.trainer
        adapted, setup = trainer.adapted, trainer.setup
        try:
            state = merged_state(adapted.adapter_state_dict(), model.params, site)
        except ValueError as error:
            raise TCURLoRAError(str(error)) from error
        adapted.load_adapter_state_dict(state)
        started = time.monotonic()
        metrics: dict[str, float] = {}
        if setup.val_volumes:
            dice = trainer.validate()
            metrics["global_val_dice"] = sum(dice.values()) / len(dice)
        total = self.rounds * self.local_steps
        trainer.optimizer = build_optimizer(adapted, trainer.learning_rates, trainer.job.method)
        step = OptimStep(
            trainer.forward, trainer.optimizer, trainer.scaler, amp=trainer.amp, clip=trainer.job.grad_clip
        )
        step.schedule = partial(finetuning_factor, total=total)
        first = int(model.current_round or 0) * self.local_steps
        hooks = RoundHooks(trainer.sink, total, abort_signal)
        batches = (trainer.to_batch(b) for b in self.stream)
        run_loop(step, batches, first, min(total, first + self.local_steps), hooks)
        if hooks.aborted:
            return None
        adapted.eval()
        params = shared_tensors(adapted.adapter_state_dict())
        cases = len(setup.train_cases)
        metrics["loss"] = sum(hooks.losses) / max(1, len(hooks.losses))
        meta = {
            FLMetaKey.NUM_STEPS_CURRENT_ROUND: cases,
            "site": site,
            "cases": cases,
            "payload_bytes": payload_bytes(params),
            "seconds": round(time.monotonic() - started, 3),
            **self.pieces,
        }
        LOG.info(
            "%s round %s: %d case(s), %d local step(s), loss %.4f, sends %d bytes",
            site,
            int(model.current_round or 0) + 1,
            cases,
            len(hooks.losses),
            metrics["loss"],
            meta["payload_bytes"],
        )
        return FLModel(
            params_type=ParamsType.FULL,
            params=params,
            metrics=metrics,
            meta=meta,
            current_round=model.current_round,
        )
