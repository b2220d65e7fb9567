"""What pretraining does after each step of the shared loop (tcurlora.training.loop)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tcurlora import distributed  # torchrun: no-ops without it
from tcurlora.jobs.events import eta_seconds, format_duration
from tcurlora.models.spec import ModelSpec
from tcurlora.pretraining.card import build_card
from tcurlora.pretraining.config import PretrainConfig, learning_rate
from tcurlora.pretraining.data import SourceData
from tcurlora.pretraining.evaluation import evaluate_sources
from tcurlora.training.checkpoint import PretrainState, save_pretrain_checkpoint
from tcurlora.training.loop import Batch, LoopHooks


@dataclass
class PretrainHooks(LoopHooks):
    """What pretraining does after each step of the shared loop: the training-log record, held-out
    evaluation every `eval_every`, a progress line every 20 steps, checkpoints (every `checkpoint_every`,
    every `checkpoint_minutes`, and where it stops), and the stop at `max_minutes` / `stop_after`."""

    config: PretrainConfig
    spec: ModelSpec
    sources: list[SourceData]
    model: torch.nn.Module
    device: torch.device
    step: Any  # the OptimStep, whose state checkpoints hold
    rng: np.random.Generator
    records: list[dict[str, Any]]
    started: float  # time.time() of iteration 0 (earlier runs' time included)
    described: str
    checkpoint_dir: Path
    train_volumes: dict[str, list[str]]
    log: Callable[[str], None]
    max_minutes: float | None = None
    checkpoint_minutes: float | None = None
    stop_after: int | None = None

    def __post_init__(self) -> None:
        clock = time.monotonic()
        self.cpu_started = time.process_time()
        self.cpu_before = self.records[-1].get("cpu_s", 0.0) if self.records else 0.0
        self.deadline = clock + 60 * self.max_minutes if self.max_minutes else None
        self.next_checkpoint = clock + 60 * self.checkpoint_minutes if self.checkpoint_minutes else None

    def after_step(self, done: int, batch: Batch, loss: torch.Tensor) -> bool:
        config, records, log = self.config, self.records, self.log
        loss_value = distributed.mean(float(loss.detach()))  # torchrun: the loss of the whole effective batch
        elapsed = time.time() - self.started
        record = {
            "iteration": done,
            "source": batch.info["source"],
            "loss": round(loss_value, 5),
            "lr": learning_rate(config, done - 1),
            "time_s": round(elapsed, 2),
            "cpu_s": round(self.cpu_before + time.process_time() - self.cpu_started, 2),
        }
        if config.eval_every and done % config.eval_every == 0 and done < config.iterations:
            record["val_dice"] = evaluate_sources(self.model, self.sources, self.spec, self.device)[
                "val_dice"
            ]
            log(f"iteration {done}: held-out Dice {json.dumps(record['val_dice'])}")
        records.append(record)
        if done % 20 == 0:
            eta = eta_seconds(elapsed, done, config.iterations - done)
            recent = np.mean([r["loss"] for r in records[-20:]])
            log(f"iteration {done}/{config.iterations} loss {recent:.4f} ETA {format_duration(eta)}")
        now = time.monotonic()
        out_of_time = self.deadline is not None and distributed.any_rank(
            now >= self.deadline
        )  # torchrun: together
        stopping = out_of_time or (self.stop_after is not None and done >= self.stop_after)
        timed = self.next_checkpoint is not None and now >= self.next_checkpoint
        if timed:
            self.next_checkpoint = now + 60 * self.checkpoint_minutes
        if (
            (stopping or timed or done % config.checkpoint_every == 0)
            and done < config.iterations
            and distributed.is_writer()
        ):  # torchrun: rank 0 alone writes checkpoints
            self.save_checkpoint(done, elapsed)
        if stopping:
            why = f"{self.max_minutes} minutes reached" if out_of_time else "as asked"
            log(f"stopping at iteration {done}: {why} (--resume {self.checkpoint_dir} continues)")
        return stopping

    def save_checkpoint(self, done: int, elapsed: float) -> None:
        card = build_card(
            self.config,
            self.spec,
            self.sources,
            iterations_done=done,
            device=self.described,
            wall_s=elapsed,
            metrics={},
            final=False,
        )
        saved = PretrainState(iteration=done, records=self.records, sampler=self.rng.bit_generator.state)
        save_pretrain_checkpoint(
            self.checkpoint_dir,
            self.model,
            self.spec,
            card,
            self.step,
            saved,
            recipe=self.config.to_dict(),
            train_volumes=self.train_volumes,
        )
        self.log(f"checkpoint {done} -> {self.checkpoint_dir}")
