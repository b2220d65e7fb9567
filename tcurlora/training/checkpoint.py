"""Training checkpoints: what they hold, written atomically, read safely, and refused for another run.

Both kinds share the step's state (`optimizer.pt`: optimizer, GradScaler, torch RNG; tensors and plain
values only, never unpickled objects), the same safe readers and the same resume checks: a checkpoint
records the whole run except what may change on resume, and each difference is named. Their files differ
because their outputs do, and stay as older tcurlora versions wrote them so those checkpoints resume:

- fine-tuning (`<adapter>.checkpoint/`): adapter.safetensors, best_adapter.safetensors, teacher.safetensors
  (semi-supervised), optimizer.pt and checkpoint.json (iteration, losses, validations, job, samplers);
- pretraining (`<model>.checkpoint/`): a model folder (fp32 weights, card), optimizer.pt,
  training_log.jsonl and training_state.json (iteration, patch sampler, recipe, training volumes).
"""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tcurlora.errors import ConfigError, InputError, OutputExistsError
from tcurlora.filenames import (
    ADAPTER_WEIGHTS_FILE,
    BEST_WEIGHTS_FILE,
    CHECKPOINT_FILE,
    MODEL_FILES,
    MODEL_WEIGHTS_FILE,
    OPTIMIZER_FILE,
    PRETRAIN_STATE_FILE,
    PRETRAIN_STATE_FORMAT,
    TEACHER_WEIGHTS_FILE,
    TRAINING_LOG_FILE,
)
from tcurlora.fsutil import atomic_dir, atomic_write_json, atomic_write_text, write_torch_file
from tcurlora.jsonio import loads_strict
from tcurlora.models.base_model import load_weights
from tcurlora.models.registry import write_model_files
from tcurlora.models.spec import ModelSpec

# Fine-tuning: job keys that may differ between the run that wrote a checkpoint and the run resuming it.
RUN_KEYS = frozenset({"iterations", "output", "force", "resume", "checkpoint_every", "threads"})
# Pretraining: recipe keys a resumed run may change; they do not change what is trained (iterations: train longer).
RESUMABLE_KEYS = frozenset({"iterations", "checkpoint_every", "threads", "eval_every", "description"})
PRETRAIN_FILES = MODEL_FILES | {PRETRAIN_STATE_FILE, OPTIMIZER_FILE}


# --- shared by both kinds -------------------------------------------------------------------------------


def read_state_file(path: Path) -> Any:
    """A torch.save file of tensors and plain values, loaded with weights_only (never unpickling objects);
    InputError naming the file when it is damaged or holds pickled objects."""
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise InputError(
            "cannot resume: the optimizer file holds pickled objects other than tensors; it is refused "
            "for safety (tcurlora never unpickles them). Delete the checkpoint folder and start again",
            path,
        ) from error
    except (OSError, EOFError, ValueError, RuntimeError, AttributeError, TypeError) as error:
        raise InputError(f"cannot resume: corrupt optimizer state ({error})", path) from error


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint's safetensors file; InputError naming it when unreadable."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise InputError(f"cannot resume: corrupt checkpoint weights ({error})", path) from error


def read_record(path: Path, what: str) -> Any:
    """A checkpoint's JSON record (strict: no duplicate keys, no NaN); InputError naming the file."""
    try:
        return loads_strict(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:  # JSONDecodeError, JSONProblem, UnicodeDecodeError
        raise InputError(f"cannot resume: unreadable {what} ({error})", path) from error


def is_iteration(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """ "key: old in the checkpoint, new now" for each key whose value differs."""
    return [
        f"{key}: {old.get(key)!r} in the checkpoint, {new.get(key)!r} now"
        for key in sorted(set(old) | set(new))
        if old.get(key) != new.get(key)
    ]


def check_iteration(iteration: int, iterations: int, path: Path) -> None:
    """A run cannot resume past its own end."""
    if iteration > iterations:
        raise InputError(
            f"cannot resume: the checkpoint is at iteration {iteration}, beyond iterations={iterations}", path
        )


def restore_step(step: Any, state: dict[str, Any], path: Path) -> None:
    """Load `OptimStep.state()` into the step; InputError when it does not fit this optimizer."""
    try:
        step.load_state(state)
    except (RuntimeError, KeyError, ValueError, TypeError) as error:
        raise InputError(f"cannot resume: optimizer state does not fit ({error})", path) from error


def save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    from safetensors.torch import save_file

    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(path))


# --- fine-tuning -------------------------------------------------------------------------------------------


def resume_record(job: Any, base_fingerprint: str, label_names: list[str]) -> dict[str, Any]:
    """What a checkpoint stores about its job, to compare on resume."""
    settings = {k: v for k, v in job.to_dict().items() if k not in RUN_KEYS}
    record = {"base_fingerprint": base_fingerprint, "label_names": list(label_names), "settings": settings}
    # Through JSON, as the checkpoint will store it (tuples become lists, paths strings).
    return json.loads(json.dumps(record, default=str))


def check_resume(meta: dict[str, Any], current: dict[str, Any], iterations: int, path: Path) -> None:
    """InputError naming each difference between the checkpoint's job and the current one."""
    saved = meta.get("job")
    if not isinstance(saved, dict) or not isinstance(saved.get("settings"), dict):
        raise InputError(
            "cannot resume: the checkpoint does not record its job (written by an older tcurlora); "
            "start again without --resume",
            path,
        )
    keys = ("base_fingerprint", "label_names")
    found = differences({k: saved.get(k) for k in keys}, {k: current.get(k) for k in keys})
    found += differences(saved["settings"], current["settings"])
    if found:
        raise InputError(
            "cannot resume: the checkpoint was made for another job (only iterations may change); "
            + "; ".join(found),
            path,
        )
    check_iteration(int(meta["iteration"]), iterations, path)


def read_checkpoint(folder: Path) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(checkpoint.json, adapter weights, optimizer state); InputError naming the file for any damage."""
    folder = Path(folder)
    meta_path = folder / CHECKPOINT_FILE
    meta = read_record(meta_path, "checkpoint")
    if (
        not isinstance(meta, dict)
        or not isinstance(meta.get("iteration"), int)
        or isinstance(meta.get("iteration"), bool)
        or not isinstance(meta.get("losses"), list)
        or not isinstance(meta.get("val_history", []), list)
    ):
        raise InputError("cannot resume: corrupt checkpoint (iteration / losses missing)", meta_path)
    if meta["iteration"] < 0:
        raise InputError(f"cannot resume: corrupt checkpoint (iteration {meta['iteration']} < 0)", meta_path)
    weights = read_weights(folder / ADAPTER_WEIGHTS_FILE)
    optimizer_path = folder / OPTIMIZER_FILE
    optimizer = read_state_file(optimizer_path)
    if not isinstance(optimizer, dict) or not isinstance(optimizer.get("optimizer"), dict):
        raise InputError("cannot resume: corrupt optimizer state (no 'optimizer' entry)", optimizer_path)
    return meta, weights, optimizer


def restore(adapted: Any, step: Any, weights: dict, optimizer_state: dict, folder: Path) -> None:
    """Load the checkpoint's tensors into the adapter and the training step (optimizer, scaler, torch RNG:
    `OptimStep.load_state`); InputError when they do not fit."""
    try:
        adapted.load_adapter_state_dict(weights)
    except (ConfigError, RuntimeError, KeyError, ValueError) as error:
        raise InputError(
            f"cannot resume: checkpoint weights do not fit ({error})", folder / ADAPTER_WEIGHTS_FILE
        ) from error
    restore_step(step, optimizer_state, folder / OPTIMIZER_FILE)


def save_finetune_checkpoint(
    folder: Path,
    adapted: Any,
    step: Any,
    progress: dict[str, Any],
    job_record: dict,
    *,
    sampler: dict | None = None,
    best: dict[str, torch.Tensor] | None = None,
    teacher: dict[str, torch.Tensor] | None = None,
    unlabeled_sampler: dict | None = None,
) -> Path:
    """Write adapter weights, the step's state, the data sampler's state, the best validated adapter, the
    mean teacher (its EMA tensors and unlabeled sampler, semi-supervised runs only) and the `progress`
    (iteration, losses, val_history, elapsed_s, consistency) to `folder`, replacing the old one atomically."""
    with atomic_dir(
        folder, "the checkpoint"
    ) as temp:  # a full disk: OutputWriteError (exit 3), the previous checkpoint kept
        if teacher is not None:
            save_tensors(teacher, temp / TEACHER_WEIGHTS_FILE)
        save_tensors(adapted.adapter_state_dict(), temp / ADAPTER_WEIGHTS_FILE)
        if best is not None:
            save_tensors(best, temp / BEST_WEIGHTS_FILE)
        write_torch_file(temp / OPTIMIZER_FILE, step.state())
        atomic_write_json(
            temp / CHECKPOINT_FILE,
            {
                "iteration": progress["iteration"],
                "losses": progress["losses"],
                "val_history": progress["val_history"],
                "elapsed_s": progress["elapsed_s"],
                "job": job_record,
                "sampler": sampler,
                "consistency": progress["consistency"],
                "unlabeled_sampler": unlabeled_sampler,
            },
        )
    return folder


def load_finetune_checkpoint(folder: Path, adapted: Any, step: Any, job_record: dict) -> dict[str, Any]:
    """Check the checkpoint is of this job, restore the adapter and the step; checkpoint.json (its
    "sampler" entry is the data sampler's state, or None in a checkpoint of an older tcurlora)."""
    meta, weights, optimizer_state = read_checkpoint(folder)
    check_resume(meta, job_record, job_record["iterations"], folder / CHECKPOINT_FILE)
    restore(adapted, step, weights, optimizer_state, folder)
    return meta


def load_best_weights(folder: Path, name: str = BEST_WEIGHTS_FILE) -> dict[str, torch.Tensor] | None:
    """The best validated adapter a checkpoint holds (or its other weights file `name`), or None."""
    path = folder / name
    return read_weights(path) if path.is_file() else None


def restore_sampler(stream: Any, sampler: dict, folder: Path, what: str = "data sampler") -> None:
    """Continue the data sampler from a checkpoint's state; InputError when it does not fit."""
    try:
        stream.restore(sampler)
    except (KeyError, TypeError, ValueError) as error:
        raise InputError(
            f"cannot resume: the {what} state does not fit ({error})", folder / CHECKPOINT_FILE
        ) from error


def restore_teacher(teacher: Any, folder: Path) -> None:
    """Load the mean teacher's EMA tensors of a checkpoint; InputError when missing or not fitting."""
    weights = load_best_weights(folder, TEACHER_WEIGHTS_FILE)
    if weights is None:
        raise InputError("cannot resume: the checkpoint holds no mean teacher", folder / TEACHER_WEIGHTS_FILE)
    try:
        teacher.load_state_dict(weights)
    except (KeyError, ValueError, RuntimeError) as error:
        raise InputError(
            f"cannot resume: the teacher weights do not fit ({error})", folder / TEACHER_WEIGHTS_FILE
        ) from error


# --- pretraining -------------------------------------------------------------------------------------------


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
        raise InputError(
            f"{'cannot resume: ' if resuming else ''}unreadable training log ({error})", path
        ) from error


def recipe_record(recipe: dict[str, Any]) -> dict[str, Any]:
    """The recipe keys a resume must match."""
    return {k: v for k, v in recipe.items() if k not in RESUMABLE_KEYS}


def save_pretrain_checkpoint(
    folder: Path,
    model: torch.nn.Module,
    spec: ModelSpec,
    card: dict[str, Any],
    step: Any,
    state: PretrainState,
    *,
    recipe: dict[str, Any],
    train_volumes: dict[str, list[str]],
) -> Path:
    """Write the checkpoint to `folder`, replacing the previous one atomically."""
    folder = Path(folder)
    if folder.exists() or folder.is_symlink():
        foreign = (
            [] if not folder.is_dir() else [p.name for p in folder.iterdir() if p.name not in PRETRAIN_FILES]
        )
        if folder.is_symlink() or not folder.is_dir() or foreign:
            raise OutputExistsError(
                "the checkpoint folder holds files tcurlora did not write; move it away", folder
            )
    with atomic_dir(
        folder, "the checkpoint"
    ) as temp:  # a full disk: OutputWriteError, the previous checkpoint kept
        write_model_files(temp, model, spec, model_id=spec.name, card=card)
        write_torch_file(temp / OPTIMIZER_FILE, step.state())
        atomic_write_text(temp / TRAINING_LOG_FILE, training_log_text(state.records))
        atomic_write_json(
            temp / PRETRAIN_STATE_FILE,
            {
                "format": PRETRAIN_STATE_FORMAT,
                "iteration": state.iteration,
                "sampler": state.sampler,
                "recipe": recipe_record(recipe),
                "train_volumes": train_volumes,
            },
        )
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
    meta = read_record(path, "training state")
    if (
        not isinstance(meta, dict)
        or meta.get("format") != PRETRAIN_STATE_FORMAT
        or not is_iteration(meta.get("iteration"))
        or not isinstance(meta.get("sampler"), dict)
        or not isinstance(meta.get("recipe"), dict)
    ):
        raise InputError(
            f"cannot resume: corrupt training state (expected format {PRETRAIN_STATE_FORMAT!r} with "
            "iteration, sampler and recipe)",
            path,
        )
    return meta


def check_same_recipe(
    meta: dict[str, Any], recipe: dict[str, Any], train_volumes: dict[str, list[str]], path: Path
) -> None:
    """InputError naming each difference between the checkpoint's recipe (and data) and the current one."""
    found = differences(meta["recipe"], json.loads(json.dumps(recipe_record(recipe))))
    saved_volumes = meta.get("train_volumes", {})
    found += [
        f"training volumes of {name} differ ({len(saved_volumes.get(name, []))} in the checkpoint, "
        f"{len(ids)} now)"
        for name, ids in train_volumes.items()
        if saved_volumes.get(name) != ids
    ]
    if found:
        raise InputError(
            "cannot resume: the checkpoint was made for another recipe (only "
            f"{', '.join(sorted(RESUMABLE_KEYS))} may change); " + "; ".join(found),
            path,
        )
    check_iteration(meta["iteration"], recipe["iterations"], path)


def load_pretrain_checkpoint(
    folder: Path,
    model: torch.nn.Module,
    step: Any,
    *,
    recipe: dict[str, Any],
    train_volumes: dict[str, list[str]],
) -> PretrainState:
    """Check the checkpoint is of this recipe, then restore weights, the step's state and the log."""
    folder = Path(folder)
    meta = read_training_state(folder)
    check_same_recipe(meta, recipe, train_volumes, folder / PRETRAIN_STATE_FILE)
    weights_path = folder / MODEL_WEIGHTS_FILE
    load_weights(model, read_weights(weights_path), weights_path)
    optimizer_path = folder / OPTIMIZER_FILE
    restore_step(step, read_state_file(optimizer_path), optimizer_path)
    records = read_training_log(folder, resuming=True)
    return PretrainState(
        iteration=meta["iteration"], records=records[: meta["iteration"]], sampler=meta["sampler"]
    )
