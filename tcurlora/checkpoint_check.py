"""Reading a training checkpoint safely, and refusing to resume it for a different job.

A checkpoint records the whole job except what may change on resume: the iteration count (to
train longer) and how the run is driven (output, force, resume, checkpoint_every). Anything else
that differs (cases, learning rate, seed, selection, ...) would mix two runs in one adapter.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

from tcurlora.errors import InputError
from tcurlora.filenames import ADAPTER_WEIGHTS_FILE, CHECKPOINT_FILE, OPTIMIZER_FILE
from tcurlora.jsonio import loads_strict

# Job keys that may differ between the run that wrote a checkpoint and the run resuming it.
RUN_KEYS = frozenset({"iterations", "output", "force", "resume", "checkpoint_every", "threads"})


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
    differences = [
        f"{key}: {saved.get(key)!r} in the checkpoint, {current.get(key)!r} now"
        for key in ("base_fingerprint", "label_names")
        if saved.get(key) != current.get(key)
    ]
    old, new = saved["settings"], current["settings"]
    differences += [
        f"{key}: {old.get(key)!r} in the checkpoint, {new.get(key)!r} now"
        for key in sorted(set(old) | set(new))
        if old.get(key) != new.get(key)
    ]
    if differences:
        raise InputError(
            "cannot resume: the checkpoint was made for another job (only iterations may change); "
            + "; ".join(differences),
            path,
        )
    if int(meta["iteration"]) > iterations:
        raise InputError(
            f"cannot resume: the checkpoint is at iteration {meta['iteration']}, beyond iterations={iterations}",
            path,
        )


def read_checkpoint(folder: Path) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(checkpoint.json, adapter weights, optimizer state); InputError naming the file for any damage."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    meta_path, weights_path, optimizer_path = (folder / n for n in (CHECKPOINT_FILE, ADAPTER_WEIGHTS_FILE, OPTIMIZER_FILE))
    try:
        meta = loads_strict(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:  # JSONDecodeError, JSONProblem, UnicodeDecodeError
        raise InputError(f"cannot resume: unreadable checkpoint ({error})", meta_path) from error
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
    try:
        weights = load_file(str(weights_path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise InputError(f"cannot resume: corrupt checkpoint weights ({error})", weights_path) from error
    optimizer = read_state_file(optimizer_path)
    if not isinstance(optimizer, dict) or not isinstance(optimizer.get("optimizer"), dict):
        raise InputError("cannot resume: corrupt optimizer state (no 'optimizer' entry)", optimizer_path)
    return meta, weights, optimizer


def read_state_file(path: Path) -> Any:
    """A torch.save file of tensors and plain values, loaded with weights_only (never unpickling objects);
    InputError naming the file when it is damaged or holds pickled objects."""
    import torch

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


def restore(adapted: Any, step: Any, weights: dict, optimizer_state: dict, folder: Path) -> None:
    """Load the checkpoint's tensors into the adapter and the training step (optimizer, scaler, torch RNG:
    `tcurlora.train_step.OptimStep.load_state`); InputError when they do not fit."""
    from tcurlora.errors import ConfigError

    try:
        adapted.load_adapter_state_dict(weights)
    except (ConfigError, RuntimeError, KeyError, ValueError) as error:
        raise InputError(f"cannot resume: checkpoint weights do not fit ({error})", folder / ADAPTER_WEIGHTS_FILE) from error
    try:
        step.load_state(optimizer_state)
    except (RuntimeError, KeyError, ValueError, TypeError) as error:
        raise InputError(f"cannot resume: optimizer state does not fit ({error})", folder / OPTIMIZER_FILE) from error
