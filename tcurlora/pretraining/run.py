"""Train a recipe's network (`run_pretrain`), continue an interrupted run exactly or warm-start from a
model folder, and write the final model folder (`finish_model`, `finish_from_checkpoint`)."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tcurlora import distributed  # torchrun: no-ops without it
from tcurlora.device import describe_device, resolve_device
from tcurlora.errors import ConfigError
from tcurlora.filenames import (
    MODEL_CARD_FILE,
    MODEL_SPEC_FILE,
    PRETRAIN_STATE_FILE,
    TRAINING_LOG_FILE,
    checkpoint_dir,
)
from tcurlora.jsonio import read_json_object
from tcurlora.models.architectures import build_network
from tcurlora.models.fingerprint import state_dict_fingerprint
from tcurlora.models.registry import load_model_folder, save_model_folder
from tcurlora.models.spec import ModelSpec
from tcurlora.outputs import check_model_output
from tcurlora.pretraining.card import build_card, render_card
from tcurlora.pretraining.config import PretrainConfig, learning_rate_factor, model_spec, union_labels
from tcurlora.pretraining.data import SourceData, load_sources
from tcurlora.pretraining.evaluation import evaluate_sources
from tcurlora.pretraining.hooks import PretrainHooks
from tcurlora.pretraining.sampling import pretrain_batches
from tcurlora.training.checkpoint import (
    PretrainState,
    check_same_recipe,
    load_pretrain_checkpoint,
    read_training_log,
    read_training_state,
    training_log_text,
)
from tcurlora.training.loop import run_loop
from tcurlora.training.step import OptimStep, cpu_supports_bf16, grad_scaler


def run_pretrain(
    config: PretrainConfig,
    data_root: Path,
    output: Path,
    *,
    device_name: str = "auto",
    force: bool = False,
    log: Callable[[str], None] = print,
    resume_from: Path | None = None,
    max_minutes: float | None = None,
    checkpoint_minutes: float | None = None,
    stop_after: int | None = None,
    cache_dir: Path | None = None,
) -> dict[str, Any]:
    """Train the recipe's network, checkpointing to <output>.checkpoint; write the final model folder to output.

    `max_minutes` stops training after that much wall time, `stop_after` after that many iterations (the
    model is finished at the iteration reached, and checkpointed there to resume); `checkpoint_minutes`
    checkpoints by wall time too, besides every `checkpoint_every` steps. `cache_dir` keeps the
    preprocessed volumes on disk (tcurlora.pretraining.cache).

    `resume_from` (a checkpoint folder of the same recipe) continues an interrupted run exactly: weights,
    optimizer, GradScaler, torch RNG, patch sampler, iteration and log are restored, so it ends with the
    weights an uninterrupted run ends with (tcurlora.training.checkpoint). A model folder instead (no
    training state) is a warm start: its weights, iteration and log, with a fresh optimizer and sampler.
    """
    output = Path(output)
    check_model_output(output, force)  # before any work: free, or (force) a model folder tcurlora wrote
    if stop_after is not None and stop_after < 1:
        raise ConfigError(f"stop_after must be a positive number of iterations, got {stop_after}")
    exact = resume_from is not None and (Path(resume_from) / PRETRAIN_STATE_FILE).is_file()
    if exact:
        meta = read_training_state(Path(resume_from))  # refuse another recipe before loading any data
        check_same_recipe(meta, config.to_dict(), meta.get("train_volumes", {}), Path(resume_from))
    torch.set_num_threads(config.threads)
    device = resolve_device(device_name, warn=log)
    labels: dict[int, str] = {}
    for _, classes, names in union_labels(config, data_root):
        labels.update(dict(zip(classes, names)))
    spec = model_spec(config, labels)
    loading = time.monotonic()
    sources = load_sources(config, data_root, spec, log, cache_dir=cache_dir)
    log(
        f"loaded {sum(len(s.train) + len(s.val) for s in sources)} volumes in {time.monotonic() - loading:.1f} s"
        + (f" (cache {cache_dir})" if cache_dir is not None else "")
    )
    train_volumes = {s.config.name: list(s.train_ids) for s in sources}
    torch.manual_seed(config.seed)
    model = build_network(spec).to(device)
    forward = distributed.wrap(model, device, find_unused=True)  # torchrun: DDP (tcurlora.distributed)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
    )
    use_amp = config.precision == "bf16" or (
        config.precision == "auto" and (device.type == "cuda" or cpu_supports_bf16())
    )
    step_fn = OptimStep(
        forward,
        optimizer,
        grad_scaler(device, use_amp),
        amp=use_amp,
        schedule=partial(learning_rate_factor, config),
        clip=config.grad_clip,
    )
    rng = np.random.default_rng(config.seed)
    state = PretrainState()
    if exact:
        state = load_pretrain_checkpoint(
            Path(resume_from), model, step_fn, recipe=config.to_dict(), train_volumes=train_volumes
        )
        rng.bit_generator.state = state.sampler
        log(
            f"resuming from {resume_from} at iteration {state.iteration} (the same run: optimizer, sampler, RNG)"
        )
    elif resume_from is not None:
        state = continue_from_model(Path(resume_from), model)
        rng = np.random.default_rng(config.seed + state.iteration)
        log(
            f"continuing from the weights of {resume_from} at iteration {state.iteration} (optimizer and patch "
            f"sampler restart, seeded with seed + {state.iteration})"
        )
    first, records = state.iteration, state.records
    checkpoint_folder = checkpoint_dir(output)
    started, described = time.time() - (records[-1]["time_s"] if records else 0.0), describe_device(device)
    if distributed.active():
        described = f"{distributed.world()} processes (rank 0 on {described})"
    log(
        f"pretraining {spec.name} on {described}{' with bf16 autocast' if use_amp else ''}: "
        f"{config.iterations} iterations"
    )
    hooks = PretrainHooks(
        config=config,
        spec=spec,
        sources=sources,
        model=model,
        device=device,
        step=step_fn,
        rng=rng,
        records=records,
        started=started,
        described=described,
        checkpoint_dir=checkpoint_folder,
        train_volumes=train_volumes,
        log=log,
        max_minutes=max_minutes,
        checkpoint_minutes=checkpoint_minutes,
        stop_after=stop_after,
    )
    iterations_done = run_loop(
        step_fn, pretrain_batches(config, sources, rng, device, first), first, config.iterations, hooks
    )
    notes = []
    if exact:
        notes.append(
            f"Resumed at iteration {first} from a checkpoint (weights, optimizer, sampler and RNG state "
            "restored: the same run as an uninterrupted one), after the first run was stopped."
        )
    elif resume_from is not None:
        notes.append(
            f"Continued at iteration {first} from the weights of {Path(resume_from).name} (the optimizer "
            f"state and the patch sampler restarted, seeded with seed + {first})."
        )
    return finish_model(
        config,
        spec,
        sources,
        model,
        output,
        notes=notes,
        iterations_done=iterations_done,
        device=described,
        wall_s=time.time() - started,
        records=records,
        force=force,
        log=log,
    )


def continue_from_model(folder: Path, model: torch.nn.Module) -> PretrainState:
    """Warm start from a model folder (or a weights-only checkpoint of an older tcurlora): its weights,
    iteration and log; not the optimizer or sampler state, which the caller restarts."""
    model.load_state_dict(load_model_folder(folder).model.state_dict())
    first = int(read_json_object(folder / MODEL_SPEC_FILE, "model").get("card", {}).get("iterations", 0))
    return PretrainState(iteration=first, records=read_training_log(folder)[:first])


def finish_model(
    config: PretrainConfig,
    spec: ModelSpec,
    sources: list[SourceData],
    model: torch.nn.Module,
    output: Path,
    *,
    iterations_done: int,
    device: str,
    wall_s: float,
    records: list[dict[str, Any]],
    force: bool,
    log: Callable[[str], None] = print,
    notes: list[str] | None = None,
) -> dict[str, Any]:
    """Round the weights to fp16, measure the held-out Dice with them, write the model folder and its card
    (every file into a temporary sibling renamed into place at the end: never half a folder). Under
    torchrun the ranks share the evaluation and rank 0 alone writes."""
    model = model.cpu().half().float()
    metrics = evaluate_sources(model, sources, spec, torch.device("cpu"))
    log(f"held-out Dice: {json.dumps(metrics['val_dice'])}")
    card = build_card(
        config,
        spec,
        sources,
        iterations_done=iterations_done,
        device=device,
        wall_s=wall_s,
        metrics=metrics,
        final=iterations_done >= config.iterations,
    )
    card["notes"] = list(notes or [])
    if distributed.is_writer():  # torchrun: rank 0 alone writes the model folder
        card_text = render_card(spec, card, state_dict_fingerprint(model))
        save_model_folder(
            output,
            model,
            spec,
            model_id=spec.name,
            half=True,
            card=card,
            force=force,
            extra_files={TRAINING_LOG_FILE: training_log_text(records), MODEL_CARD_FILE: card_text},
        )
    return card


def finish_from_checkpoint(
    config: PretrainConfig,
    data_root: Path,
    checkpoint: Path,
    output: Path,
    *,
    force: bool = False,
    log: Callable[[str], None] = print,
    cache_dir: Path | None = None,
) -> dict[str, Any]:
    """Turn a checkpoint of an interrupted run into the final model folder (the card says where it stopped)."""
    torch.set_num_threads(config.threads)
    base = load_model_folder(Path(checkpoint))
    record = read_json_object(Path(checkpoint) / MODEL_SPEC_FILE, f"checkpoint {MODEL_SPEC_FILE}")
    card = record.get("card", {})
    records = read_training_log(Path(checkpoint))
    sources = load_sources(config, data_root, base.spec, log, val_only=True, cache_dir=cache_dir)
    return finish_model(
        config,
        base.spec,
        sources,
        base.model,
        output,
        iterations_done=int(card.get("iterations", 0)),
        device=str(card.get("device", "cpu")),
        wall_s=float(card.get("wall_time_s", 0.0)),
        records=records,
        force=force,
        log=log,
    )


def main_log(message: str) -> None:
    """Timestamped log line on stdout."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)
    sys.stdout.flush()
