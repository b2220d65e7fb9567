"""Adapter folders: `adapter_config.json` + `adapter.safetensors` (+ training log), written atomically.

adapter_config.json records the SHA-256 of adapter.safetensors (`weights_sha256`) and of itself
(`config_sha256`); loading and `tcurlora info` refuse an adapter whose files do not match them, or that
lacks one of them (tcurlora.adapter_integrity).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load, save_file
from torch import nn

from tcurlora.adapter_integrity import WEIGHTS_SHA256_KEY, check_record, check_weights, seal
from tcurlora.adapters.config import AdapterConfig
from tcurlora.adapters.methods.registry import method_info
from tcurlora.adapters.model import AdaptedModel, apply_adapter
from tcurlora.errors import ConfigError, FingerprintMismatchError, InputError
from tcurlora.filenames import ADAPTER_CONFIG_FILE, ADAPTER_FORMAT, ADAPTER_WEIGHTS_FILE
from tcurlora.fsutil import atomic_dir, atomic_write_json
from tcurlora.jsonio import read_json_object
from tcurlora.models.fingerprint import state_dict_fingerprint
from tcurlora.models.weight_files import check_weight_file
from tcurlora.outputs import check_adapter_output

SHA256_KEY = WEIGHTS_SHA256_KEY


def library_versions() -> dict[str, str]:
    """Versions of the packages that shape an adapter's numbers.

    PEFT's version is read from its installed metadata, never by importing it: only LoRA needs PEFT (and
    its transformers / accelerate / huggingface_hub), so tcur, decoder, full and scratch adapters save and
    load where it is not installed (then the key is absent).
    """
    import monai
    import safetensors
    import torch

    import tcurlora

    versions = {
        "tcurlora": tcurlora.__version__,
        "torch": torch.__version__,
        "monai": monai.__version__,
        "safetensors": safetensors.__version__,
    }
    try:
        versions["peft"] = importlib.metadata.version("peft")
    except importlib.metadata.PackageNotFoundError:
        pass
    return versions


def adapter_record(adapted: AdaptedModel, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The JSON written as adapter_config.json: the config, counts, versions, then `extra` on top."""
    config = adapted.config
    record: dict[str, Any] = {"format": ADAPTER_FORMAT}
    record.update(config.to_dict())
    record["targets"] = adapted.method.target_names(adapted)  # the adapted layers, for people reading it
    record["parameter_counts"] = adapted.parameter_counts().to_dict()
    # How the trained weights started: "random" for scratch (reports say "trained from random
    # initialisation"; every weight is in the adapter), else the base's pretrained weights.
    record["initialisation"] = "random" if method_info(config.method).random_init else "base"
    if method_info(config.method).ranked:
        from tcurlora.adapters.rank_check import effective_ranks

        record["effective_ranks"] = effective_ranks(adapted, config.rank)  # layers holding < rank
    record["versions"] = library_versions()
    for key, value in (extra or {}).items():
        if key in ("format", "method", "base_fingerprint", "initialisation", SHA256_KEY, "config_sha256"):
            raise ConfigError(f"extra may not override {key!r} in {ADAPTER_CONFIG_FILE}")
        record[key] = value
    return record


def save_adapter(
    folder: str | Path,
    adapted: AdaptedModel,
    *,
    extra: dict[str, Any] | None = None,
    force: bool = False,
    extra_files: dict[str, str | bytes] | None = None,
) -> Path:
    """Write an adapter folder atomically (temp sibling folder, then rename); returns its path.

    `extra` keys (metrics, preprocessing, label_colors, ...) are added to the config JSON;
    `extra_files` maps plain file names (e.g. training_log.jsonl) to their content.
    """
    folder = Path(folder)
    check_adapter_output(folder, force)  # with force: only an adapter folder tcurlora wrote is replaced
    for name in extra_files or {}:
        if (
            Path(name).name != name
            or name in (ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE)
            or name.startswith(".")
        ):
            raise ConfigError(f"extra file name {name!r} is not a plain, free file name")
    record = adapter_record(adapted, extra)
    state = adapted.adapter_state_dict()
    with atomic_dir(folder, "the adapter") as temp:  # a full disk: OutputWriteError (exit 3), nothing left
        save_file(state, str(temp / ADAPTER_WEIGHTS_FILE), metadata={"format": ADAPTER_FORMAT})
        record[SHA256_KEY] = hashlib.sha256((temp / ADAPTER_WEIGHTS_FILE).read_bytes()).hexdigest()
        for name, content in (extra_files or {}).items():
            data = content.encode("utf-8") if isinstance(content, str) else bytes(content)
            (temp / name).write_bytes(data)
        atomic_write_json(temp / ADAPTER_CONFIG_FILE, seal(record))
    return folder


def read_adapter_config(folder: str | Path) -> dict[str, Any]:
    """The parsed adapter_config.json of an adapter folder, its integrity keys checked (present, and the
    config unchanged: tcurlora.adapter_integrity); InputError naming the file otherwise."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError("no such adapter folder", folder)
    path = folder / ADAPTER_CONFIG_FILE
    if not path.exists() and not path.is_symlink():
        raise InputError(f"not an adapter folder: {ADAPTER_CONFIG_FILE} is missing", path)
    if path.is_symlink() or not path.is_file():
        raise InputError(
            f"refused: {ADAPTER_CONFIG_FILE} is not a regular file (a link, a folder or a special file)", path
        )
    data = read_json_object(path, "adapter config")
    if data.get("format", ADAPTER_FORMAT) != ADAPTER_FORMAT:
        raise InputError(f"unknown adapter format {data.get('format')!r}, expected {ADAPTER_FORMAT!r}", path)
    check_record(data, path)
    return data


def config_from_record(record: dict[str, Any], path: str | Path) -> AdapterConfig:
    """The AdapterConfig inside an adapter_config.json record (other keys ignored)."""
    try:
        return AdapterConfig.from_dict(record, ignore_unknown=True)
    except ConfigError as error:
        raise ConfigError(error.problem, path) from error


def read_adapter_weights(folder: str | Path, record: dict[str, Any] | None = None) -> dict:
    """The tensors of adapter.safetensors, checked against the SHA-256 in `record` (read from the folder
    when not given); InputError naming the file when missing, corrupt or not the recorded content."""
    folder = Path(folder)
    path = folder / ADAPTER_WEIGHTS_FILE
    if not path.exists() and not path.is_symlink():
        raise InputError(f"not a complete adapter folder: {ADAPTER_WEIGHTS_FILE} is missing", path)
    weights = check_weight_file(
        path, folder
    )  # a link, a folder, a FIFO: named as such, before anything opens it
    record = read_adapter_config(folder) if record is None else record
    data = weights.read_bytes()
    check_weights(data, record, path)
    try:
        return load(data)
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise InputError(f"corrupt or truncated adapter weights: {error}", path) from error


def load_adapter(
    folder: str | Path, base_model: nn.Module, *, check_fingerprint: bool = True
) -> AdaptedModel:
    """Apply the adapter in `folder` to `base_model` (changed in place) and load its weights.

    The base model must be the one the adapter was trained on: FingerprintMismatchError otherwise
    (`check_fingerprint=False` skips that comparison; a missing fingerprint is refused on reading).
    """
    folder = Path(folder)
    record = read_adapter_config(folder)
    config_path = folder / ADAPTER_CONFIG_FILE
    config = config_from_record(record, config_path)
    state = read_adapter_weights(folder, record)
    if check_fingerprint:
        actual = state_dict_fingerprint(base_model)
        if actual != config.base_fingerprint:
            raise FingerprintMismatchError(
                f"this adapter was trained on base model {config.base_model_id or '?'} with fingerprint "
                f"{config.base_fingerprint}, but the given base model has fingerprint {actual}",
                config_path,
            )
    try:
        adapted = apply_adapter(base_model, config)
    except ConfigError as error:
        raise ConfigError(error.problem, config_path) from error
    try:
        adapted.load_adapter_state_dict(state)
    except ConfigError as error:
        raise ConfigError(error.problem, folder / ADAPTER_WEIGHTS_FILE) from error
    adapted.eval()
    return adapted
