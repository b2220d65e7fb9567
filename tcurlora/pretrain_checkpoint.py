"""Pretraining checkpoints that continue a run exactly: the model folder (fp32 weights, card) plus the
training step's state (optimizer, GradScaler, torch RNG; `optimizer.pt`, tensors and plain values only),
the patch sampler's Generator state, the iteration and the log (`training_state.json`)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tcurlora.checkpoint_check import read_state_file
from tcurlora.errors import InputError, OutputExistsError
from tcurlora.filenames import (
    MODEL_FILES,
    MODEL_WEIGHTS_FILE,
    OPTIMIZER_FILE,
    PRETRAIN_STATE_FILE,
    PRETRAIN_STATE_FORMAT,
    TRAINING_LOG_FILE,
)
from tcurlora.fsutil import atomic_dir, atomic_write_json, atomic_write_text, write_torch_file
from tcurlora.jsonio import loads_strict
from tcurlora.models.base_model import load_weights
from tcurlora.models.registry import write_model_files
from tcurlora.models.spec import ModelSpec
from tcurlora.train_step import OptimStep

CHECKPOINT_FILES = MODEL_FILES | {PRETRAIN_STATE_FILE, OPTIMIZER_FILE}
# Recipe keys a resumed run may change: they do not change what is trained (iterations: train longer).
RESUMABLE_KEYS = frozenset({"iterations", "checkpoint_every", "threads", "eval_every", "description"})


@dataclass
class PretrainState:
    """What a pretraining checkpoint restores besides the weights and the step's state."""

    iteration: int = 0
    records: list[dict[str, Any]] = field(default_factory=list)
    sampler: dict[str, Any] | None = None  # numpy Generator.bit_generator.state of the patch sampler


def training_log_text(records: list[dict[str, Any]]) -> str:
    """The training log's JSON lines."""
    return "".join(json.dumps(r) + "\n" for r in records)


def read_training_log(folder: Path, *, resuming: bool = False) -> list[dict[str, Any]]:
    """The records of a model or checkpoint folder's training log: [] when it has none, unless `resuming`
    (an exact resume needs it); InputError naming the file when it is missing there or unreadable."""
    path = Path(folder) / TRAINING_LOG_FILE
    if not resuming and not path.is_file():
        return []
    try:
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, ValueError) as error:
        raise InputError(f"{'cannot resume: ' if resuming else ''}unreadable training log ({error})", path) from error


def recipe_record(recipe: dict[str, Any]) -> dict[str, Any]:
    """The recipe keys a resume must match."""
    return {k: v for k, v in recipe.items() if k not in RESUMABLE_KEYS}


def save_pretrain_checkpoint(folder: Path, model: torch.nn.Module, spec: ModelSpec, card: dict[str, Any],
                             step: OptimStep, state: PretrainState, *, recipe: dict[str, Any],
                             train_volumes: dict[str, list[str]]) -> Path:  # fmt: skip
    """Write the checkpoint to `folder`, replacing the previous one atomically."""
    folder = Path(folder)
    if folder.exists() or folder.is_symlink():
        foreign = [] if not folder.is_dir() else [p.name for p in folder.iterdir() if p.name not in CHECKPOINT_FILES]
        if folder.is_symlink() or not folder.is_dir() or foreign:
            raise OutputExistsError("the checkpoint folder holds files tcurlora did not write; move it away", folder)
    with atomic_dir(folder, "the checkpoint") as temp:  # a full disk: OutputWriteError, the previous checkpoint kept
        write_model_files(temp, model, spec, model_id=spec.name, card=card)
        write_torch_file(temp / OPTIMIZER_FILE, step.state())
        atomic_write_text(temp / TRAINING_LOG_FILE, training_log_text(state.records))
        atomic_write_json(temp / PRETRAIN_STATE_FILE, {
            "format": PRETRAIN_STATE_FORMAT, "iteration": state.iteration, "sampler": state.sampler,
            "recipe": recipe_record(recipe), "train_volumes": train_volumes,
        })  # fmt: skip
    return folder


def read_training_state(folder: Path) -> dict[str, Any]:
    """training_state.json of a checkpoint; InputError naming the file when missing or damaged."""
    path = Path(folder) / PRETRAIN_STATE_FILE
    if not path.is_file():
        raise InputError(
            "cannot resume: this folder holds no training state (a checkpoint of an older tcurlora keeps the "
            "weights only and cannot continue the same run); finish it with --finish-checkpoint or start again",
            path,
        )
    try:
        meta = loads_strict(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise InputError(f"cannot resume: unreadable training state ({error})", path) from error
    if (not isinstance(meta, dict) or meta.get("format") != PRETRAIN_STATE_FORMAT or not isinstance(meta.get("iteration"), int)
            or isinstance(meta.get("iteration"), bool) or meta["iteration"] < 0
            or not isinstance(meta.get("sampler"), dict) or not isinstance(meta.get("recipe"), dict)):  # fmt: skip
        raise InputError(f"cannot resume: corrupt training state (expected format {PRETRAIN_STATE_FORMAT!r} with "
                         "iteration, sampler and recipe)", path)  # fmt: skip
    return meta


def check_same_recipe(meta: dict[str, Any], recipe: dict[str, Any], train_volumes: dict[str, list[str]],
                      path: Path) -> None:  # fmt: skip
    """InputError naming each difference between the checkpoint's recipe (and data) and the current one."""
    old, new = meta["recipe"], json.loads(json.dumps(recipe_record(recipe)))
    differences = [f"{key}: {old.get(key)!r} in the checkpoint, {new.get(key)!r} now"
                   for key in sorted(set(old) | set(new)) if old.get(key) != new.get(key)]  # fmt: skip
    saved_volumes = meta.get("train_volumes", {})
    differences += [f"training volumes of {name} differ ({len(saved_volumes.get(name, []))} in the checkpoint, "
                    f"{len(ids)} now)" for name, ids in train_volumes.items() if saved_volumes.get(name) != ids]  # fmt: skip
    if differences:
        raise InputError("cannot resume: the checkpoint was made for another recipe (only "
                         f"{', '.join(sorted(RESUMABLE_KEYS))} may change); " + "; ".join(differences), path)  # fmt: skip
    if meta["iteration"] > recipe["iterations"]:
        raise InputError(f"cannot resume: the checkpoint is at iteration {meta['iteration']}, beyond "
                         f"iterations={recipe['iterations']}", path)  # fmt: skip


def load_pretrain_checkpoint(folder: Path, model: torch.nn.Module, step: OptimStep, *, recipe: dict[str, Any],
                             train_volumes: dict[str, list[str]]) -> PretrainState:  # fmt: skip
    """Check the checkpoint is of this recipe, then restore weights, the step's state and the log."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    meta = read_training_state(folder)
    check_same_recipe(meta, recipe, train_volumes, folder / PRETRAIN_STATE_FILE)
    weights_path = folder / MODEL_WEIGHTS_FILE
    try:
        weights = load_file(str(weights_path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise InputError(f"cannot resume: corrupt checkpoint weights ({error})", weights_path) from error
    load_weights(model, weights, weights_path)
    optimizer_path = folder / OPTIMIZER_FILE
    saved = read_state_file(optimizer_path)
    try:
        step.load_state(saved)
    except (RuntimeError, KeyError, ValueError, TypeError) as error:
        raise InputError(f"cannot resume: optimizer state does not fit ({error})", optimizer_path) from error
    records = read_training_log(folder, resuming=True)
    return PretrainState(iteration=meta["iteration"], records=records[: meta["iteration"]], sampler=meta["sampler"])
