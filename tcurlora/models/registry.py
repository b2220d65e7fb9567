"""Find and load a base model by reference: a built-in name, a model folder, a MONAI bundle or a preset.

A model folder holds `model.json` (the ModelSpec, format "tcurlora.model/1") and `model.safetensors`.
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import save_file
from torch import nn

from tcurlora.errors import InputError
from tcurlora.filenames import MODEL_FORMAT, MODEL_SPEC_FILE, MODEL_WEIGHTS_FILE
from tcurlora.fsutil import atomic_dir
from tcurlora.jsonio import read_json_object
from tcurlora.models.architectures import build_network, build_preset
from tcurlora.models.base_model import BaseModel, finish_base_model, load_weights
from tcurlora.models.build_budget import build_budget, network_budget
from tcurlora.models.builtin import builtin_models_dir, list_builtin_models
from tcurlora.models.int8_weights import read_model_weights
from tcurlora.models.spec import ModelSpec
from tcurlora.models.weight_files import check_weight_file
from tcurlora.outputs import check_model_output


def load_base_model(reference: str | Path) -> BaseModel:
    """Load `reference`: "preset:<name>", a built-in model name, a model folder or a MONAI bundle folder."""
    text = str(reference)
    if text.startswith("preset:"):
        model, spec = build_preset(text.removeprefix("preset:"))
        return finish_base_model(model, spec, model_id=text, source=text)
    folder = Path(text)
    if not folder.exists() and (builtin_models_dir() / text / MODEL_SPEC_FILE).is_file():
        folder = builtin_models_dir() / text
    if not folder.exists():
        known = ", ".join(list_builtin_models() + ["preset:unetr-tiny", "preset:unetr-base"])
        raise InputError(f"no such base model (not a folder, not a built-in name; built-in: {known})", text)
    if (folder / MODEL_SPEC_FILE).is_file():
        return load_model_folder(folder)
    if (folder / "configs").is_dir():
        from tcurlora.models.bundle import load_bundle

        return load_bundle(folder)
    raise InputError(
        f"not a model folder: expected {MODEL_SPEC_FILE} + {MODEL_WEIGHTS_FILE}, or a MONAI bundle", folder
    )


def load_model_folder(folder: Path) -> BaseModel:
    """Load a model folder written by `save_model_folder`."""
    spec_path, weights_path = folder / MODEL_SPEC_FILE, folder / MODEL_WEIGHTS_FILE
    data = read_json_object(spec_path, "model spec")
    if data.get("format") != MODEL_FORMAT:
        raise InputError(f"unknown model format {data.get('format')!r}, expected {MODEL_FORMAT!r}", spec_path)
    spec = ModelSpec.from_dict(data["spec"], spec_path)
    # The weight file is checked first: its size bounds what the spec may build.
    if not weights_path.is_file() and not weights_path.is_symlink():
        raise InputError("missing weights file", weights_path)
    check_weight_file(weights_path, folder)
    with build_budget(network_budget(weights_path.stat().st_size), f"the {spec.arch} of the spec", spec_path):
        model = build_network(spec)
    state = read_model_weights(weights_path)  # int8 files come back dequantized to float32
    load_weights(model, state, weights_path)
    return finish_base_model(model, spec, model_id=data.get("id", spec.name), source=str(folder))


def save_model_folder(
    folder: Path,
    model: nn.Module,
    spec: ModelSpec,
    *,
    model_id: str | None = None,
    half: bool = False,
    card: dict | None = None,
    force: bool = False,
    extra_files: dict[str, str] | None = None,
) -> Path:
    """Write `model.json` + `model.safetensors` (and `extra_files`, name -> text) atomically: a temporary
    sibling folder renamed into place, removed again when writing fails, so there is never half a folder."""
    folder = Path(folder)
    check_model_output(folder, force)  # with force: only a model folder tcurlora wrote is replaced
    with atomic_dir(
        folder, "the model folder"
    ) as temp:  # a full disk: OutputWriteError (exit 3), nothing left
        write_model_files(temp, model, spec, model_id=model_id, half=half, card=card)
        for name, text in (extra_files or {}).items():
            (temp / name).write_text(text, encoding="utf-8")
    return folder


def write_model_files(
    folder: Path,
    model: nn.Module,
    spec: ModelSpec,
    *,
    model_id: str | None = None,
    half: bool = False,
    card: dict | None = None,
) -> None:
    """`model.json` + `model.safetensors` into an existing (temporary) folder."""
    state = {
        k: (v.half() if half and v.is_floating_point() else v).detach().cpu().contiguous()
        for k, v in model.state_dict().items()
    }
    save_file(state, str(folder / MODEL_WEIGHTS_FILE))
    record = {"format": MODEL_FORMAT, "id": model_id or spec.name, "spec": spec.to_dict(), "card": card or {}}
    (folder / MODEL_SPEC_FILE).write_text(json.dumps(record, indent=2))
