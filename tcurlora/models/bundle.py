"""MONAI bundles as base models: load a bundle folder offline, and export a base model as a bundle.

A bundle is `configs/metadata.json` + `configs/inference.json` (MONAI config syntax; the network is
the `network_def` item) + `models/model.safetensors` or `models/model.pt`. Only weights are read
from disk (safetensors, or `torch.load` with `weights_only=True`): a `model.pt` holding anything but
tensors is refused, never unpickled. The network is built from `network_def` only, with every `_target_` checked against an allow-list
(MONAI network classes, torch.nn) before anything is imported or instantiated; config expressions
(`$...`), macros (`%...`) and the bundle's own code (`scripts/`) are never run (models/safe_config.py).
Weight files must be regular files inside the bundle (no symlinks) under a size limit.
"""

from __future__ import annotations

import json
import logging
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from tcurlora.errors import ConfigError, InputError, OutputExistsError
from tcurlora.filenames import BUNDLE_SAFETENSORS_FILE, BUNDLE_TORCH_FILE, BUNDLE_WEIGHT_FILES
from tcurlora.fsutil import replace_dir, temp_sibling_dir
from tcurlora.models.base_model import BaseModel, finish_base_model, load_weights
from tcurlora.models.build_budget import BuildBudgetExceeded, build_budget, network_budget
from tcurlora.models.config_files import read_config_file
from tcurlora.models.safe_config import (
    Component,
    build_item,
    dropped_argument_notes,
    instantiate,
    literal_arguments,
    plan_item,
)
from tcurlora.models.spec import IntensitySpec, ModelSpec
from tcurlora.models.weight_files import check_weight_file

CONFIG_NAMES = ("inference.json", "inference.yaml", "inference.yml", "train.json", "train.yaml")
SPEC_KEY = "tcurlora_spec"
log = logging.getLogger(__name__)


def _config_file(folder: Path) -> Path:
    for name in CONFIG_NAMES:
        if (folder / "configs" / name).is_file():
            return folder / "configs" / name
    raise InputError(
        f"MONAI bundle without a network config (looked for {', '.join(CONFIG_NAMES)})", folder / "configs"
    )


def read_bundle_configs(folder: Path) -> tuple[dict[str, Any], dict[str, Any], Path]:
    """The bundle's raw network config and metadata (nothing evaluated); the config path."""
    config_path = _config_file(folder)
    meta_path = folder / "configs" / "metadata.json"
    config = read_config_file(config_path)
    meta = read_config_file(meta_path) if meta_path.is_file() else {}
    if not isinstance(config, dict):
        raise InputError("the bundle config is not a JSON/YAML object", config_path)
    if not isinstance(meta, dict):
        raise InputError("metadata.json is not a JSON object", meta_path)
    if "network_def" not in config:
        raise InputError("the bundle config has no 'network_def' item", config_path)
    return config, meta, config_path


def build_bundle_network(config: dict[str, Any], config_path: Path) -> nn.Module:
    """Instantiate `network_def` after checking every `_target_` it reaches (see models/safe_config.py)."""
    return build_item(config, "network_def", config_path)


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from safetensors, or from a weights-only torch file (nested "model"/"state_dict" allowed)."""
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as error:
            raise InputError(f"corrupt or unreadable safetensors file: {error}", path) from error
    try:
        data = torch.load(str(path), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, AttributeError, TypeError) as error:
        raise InputError(
            "refused: the file is not a plain weights file (it pickles other objects, which are never "
            "loaded for safety); save a state dict or safetensors instead",
            path,
        ) from error
    except (OSError, EOFError, ValueError) as error:
        raise InputError(f"corrupt or unreadable weights file: {error}", path) from error
    for key in ("model", "state_dict", "network"):
        if isinstance(data, Mapping) and isinstance(data.get(key), Mapping):
            data = data[key]
            break
    if not isinstance(data, Mapping) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise InputError("the weights file does not hold a state dict of tensors", path)
    return {str(k).removeprefix("module."): v for k, v in data.items()}


def _numbers(value: Any, count: int) -> tuple | None:
    if (
        isinstance(value, (list, tuple))
        and len(value) == count
        and all(isinstance(v, (int, float)) for v in value)
    ):
        return tuple(value)
    return None


def _find_targets(value: Any, suffix: str) -> list[Mapping[str, Any]]:
    if isinstance(value, Mapping):
        own = [value] if str(value.get("_target_", "")).endswith(suffix) else []
        return own + [m for v in value.values() for m in _find_targets(v, suffix)]
    if isinstance(value, list):
        return [m for v in value for m in _find_targets(v, suffix)]
    return []


def head_module_name(model: nn.Module, out_channels: int) -> str:
    """Name of the last Conv3d or ConvTranspose3d that maps to `out_channels` (the segmentation head: a
    MONAI UNet without residual units ends in a transposed conv)."""
    names = [
        n
        for n, m in model.named_modules()
        if isinstance(m, (nn.Conv3d, nn.ConvTranspose3d)) and m.out_channels == out_channels
    ]
    return names[-1] if names else ""


def _preprocessing(config: dict[str, Any]) -> Any:
    """The config part that describes the input pipeline (the whole config when it has none)."""
    return config.get("preprocessing", config)


def intensity_from_bundle(config: dict[str, Any]) -> tuple[IntensitySpec, list[str]]:
    """The bundle's intensity normalisation as an IntensitySpec, and notes on what is read differently."""
    pre = _preprocessing(config)
    for item in _find_targets(pre, "ScaleIntensityRanged"):
        window = _numbers([item.get("a_min"), item.get("a_max")], 2)
        if window is None:
            continue
        notes = []
        if (
            _numbers([item.get("b_min", 0), item.get("b_max", 1)], 2) != (0, 1)
            or item.get("clip") is not True
        ):
            notes.append(
                f"ScaleIntensityRanged to [{item.get('b_min')}, {item.get('b_max')}] with clip={item.get('clip')} "
                "is read as a clipped window scaled to [0, 1]"
            )
        return IntensitySpec(kind="range", a_min=float(window[0]), a_max=float(window[1])), notes
    if _find_targets(pre, "NormalizeIntensityd"):
        return IntensitySpec(kind="zscore"), []
    return IntensitySpec(kind="zscore"), [
        "no intensity normalisation tcurlora knows (ScaleIntensityRanged, NormalizeIntensityd) in the "
        "bundle's preprocessing: z-score over the nonzero voxels is used"
    ]


def _is_sigmoid(config: dict[str, Any]) -> bool:
    """True when the bundle's postprocessing applies a sigmoid (multi-label outputs)."""
    return any(
        t.get("sigmoid") is True for t in _find_targets(config.get("postprocessing", {}), "Activationsd")
    )


def spec_from_bundle(
    config: dict[str, Any],
    meta: dict[str, Any],
    model: nn.Module,
    name: str,
    config_path: Path,
    plan: Component | None = None,
    notes: list[str] | None = None,
) -> ModelSpec:
    """Our spec from the bundle: exact when we exported it, else read from metadata and config (what
    is assumed is appended to `notes`)."""
    if isinstance(meta.get(SPEC_KEY), dict):
        return ModelSpec.from_dict(meta[SPEC_KEY])
    notes = [] if notes is None else notes
    plan = plan or plan_item(config, "network_def", config_path)
    arch = plan.cls.__name__
    network_def = literal_arguments(plan)
    fmt = meta.get("network_data_format", {})
    image = fmt.get("inputs", {}).get("image", {})
    outputs = fmt.get("outputs", {}).get("pred", {})
    channel_def = outputs.get("channel_def", {})
    output = "sigmoid" if _is_sigmoid(config) else "softmax"
    if output == "sigmoid":  # every channel is a region of its own: channel i is label i + 1
        labels = {int(k) + 1: str(v) for k, v in channel_def.items() if str(k).isdigit()}
        notes.append(
            "sigmoid (multi-label) outputs: fine-tuning trains a fresh softmax head; the base alone "
            "cannot segment with tcurlora"
        )
    else:
        labels = {int(k): str(v) for k, v in channel_def.items() if str(k).isdigit() and int(k) > 0}
    pre = _preprocessing(config)
    spacing = next((s for t in _find_targets(pre, "Spacingd") if (s := _numbers(t.get("pixdim"), 3))), None)
    if spacing is None:
        notes.append("no Spacingd in the bundle's preprocessing: images are resampled to 1 mm")
    intensity, intensity_notes = intensity_from_bundle(config)
    notes += intensity_notes
    roi = next((s for t in _find_targets(config, "Inferer") if (s := _numbers(t.get("roi_size"), 3))), None)
    patch = _numbers(image.get("spatial_shape"), 3) or roi or (96, 96, 96)
    declared = network_def.get("out_channels")  # what network_def says, when the metadata does not
    fallback = declared if isinstance(declared, int) and declared > 0 else len(labels) + (output != "sigmoid")
    out_channels = int(outputs.get("num_channels", fallback))
    if not labels:
        labels = {c: f"class {c}" for c in range(1, out_channels)}
    return ModelSpec(
        name=name,
        arch=arch,
        arch_params={k: v for k, v in network_def.items() if not str(k).startswith("_")},
        spacing=spacing or (1.0, 1.0, 1.0),
        patch_size=tuple(int(p) for p in patch),
        intensity=intensity,
        labels=labels,
        head_module=head_module_name(model, out_channels),
        description=str(meta.get("description", "")),
        output=output,
    )


def _build(
    config: dict[str, Any], meta: dict[str, Any], config_path: Path, budget: int
) -> tuple[Component, nn.Module]:
    """The checked plan of `network_def` and the network, built within `budget` bytes of tensors; a build
    failure names the MONAI versions."""
    import monai

    plan = plan_item(config, "network_def", config_path)
    try:
        with build_budget(budget, f"network_def ({plan.name})", config_path):
            model = instantiate(plan, config_path)
    except BuildBudgetExceeded:
        raise
    except InputError as error:
        written = meta.get("monai_version")
        if written and written != monai.__version__ and "argument" in error.problem:
            raise InputError(
                f"{error.problem}. This bundle was written for MONAI {written}; this is MONAI "
                f"{monai.__version__}, whose {plan.name} takes other arguments: use a bundle version "
                f"made for MONAI {monai.__version__.rsplit('.', 1)[0]}, or edit network_def",
                config_path,
            ) from error
        raise
    if not isinstance(model, nn.Module):
        raise InputError(f"network_def is not a torch module but {type(model).__name__}", config_path)
    return plan, model


def load_bundle(folder: str | Path) -> BaseModel:
    """Load a MONAI bundle folder offline as a base model."""
    folder = Path(folder)
    config, meta, config_path = read_bundle_configs(folder)
    plan_item(config, "network_def", config_path)  # refuses what the config must not run; builds nothing
    # The weight file is found and checked before building: its size bounds what network_def may build.
    weights = next(
        (folder / n for n in BUNDLE_WEIGHT_FILES if (folder / n).exists() or (folder / n).is_symlink()), None
    )
    if weights is None:
        raise InputError(
            f"MONAI bundle without weights (looked for {' or '.join(BUNDLE_WEIGHT_FILES)})", folder
        )
    check_weight_file(weights, folder)
    plan, model = _build(config, meta, config_path, network_budget(weights.stat().st_size))
    notes = dropped_argument_notes(plan)
    load_weights(model, read_weights(weights), weights)
    name = str(meta.get("name") or folder.name)
    spec = spec_from_bundle(config, meta, model, name, config_path, plan, notes)
    version = meta.get("version")
    for note in notes:
        log.info("%s: %s", folder, note)
    model_id = str(meta.get("tcurlora_model_id") or (f"{name}@{version}" if version else name))
    return finish_base_model(model, spec, model_id=model_id, source=str(folder), notes=notes)


def _is_our_bundle(folder: Path) -> bool:
    """A folder holding only what export_bundle writes, with our spec in its metadata."""
    if folder.is_symlink() or not folder.is_dir():
        return False
    if not {p.name for p in folder.iterdir()} <= {"configs", "models", "LICENSE"}:
        return False
    try:
        meta = json.loads((folder / "configs" / "metadata.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and SPEC_KEY in meta


def network_def(spec: ModelSpec) -> dict[str, Any]:
    """The MONAI config item that builds the spec's network."""
    return {"_target_": f"monai.networks.nets.{spec.arch}", **spec.arch_params}


def export_bundle(
    base: BaseModel,
    folder: str | Path,
    *,
    weights_format: str = "safetensors",
    version: str = "0.1.0",
    force: bool = False,
) -> Path:
    """Write `base` as a MONAI bundle folder (atomically); the spec rides along in metadata.json."""
    import monai

    folder = Path(folder)
    if weights_format not in ("safetensors", "pt"):
        raise ConfigError(f"unknown weights format {weights_format!r}: use safetensors or pt")
    if folder.exists() and not force:
        raise OutputExistsError("bundle folder exists (use force to replace it)", folder)
    if folder.exists() and not _is_our_bundle(folder):
        raise OutputExistsError("not a bundle exported by tcurlora; force replaces only those", folder)
    spec = base.spec
    temp = temp_sibling_dir(folder)
    (temp / "configs").mkdir()
    (temp / "models").mkdir()
    channel_def = {"0": "background", **{str(k): v for k, v in spec.labels.items()}}
    metadata = {
        "schema": "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20220324.json",
        "version": version,
        "monai_version": monai.__version__,
        "pytorch_version": torch.__version__.split("+")[0],
        "name": spec.name,
        "description": spec.description,
        "task": "3D segmentation",
        "tcurlora_model_id": base.model_id,
        "tcurlora_fingerprint": base.fingerprint,
        SPEC_KEY: spec.to_dict(),
        "network_data_format": {
            "inputs": {
                "image": {
                    "type": "image",
                    "format": "magnitude",
                    "modality": "MR",
                    "num_channels": spec.in_channels,
                    "spatial_shape": list(spec.patch_size),
                    "dtype": "float32",
                    "value_range": [],
                    "is_patch_data": True,
                }
            },
            "outputs": {
                "pred": {
                    "type": "image",
                    "format": "segmentation",
                    "num_channels": spec.out_channels,
                    "spatial_shape": list(spec.patch_size),
                    "dtype": "float32",
                    "value_range": [0, 1],
                    "is_patch_data": True,
                    "channel_def": channel_def,
                }
            },
        },
    }
    inference = {
        "imports": [],
        "device": "$torch.device('cuda' if torch.cuda.is_available() else 'cpu')",
        "network_def": network_def(spec),
        "network": "$@network_def.to(@device)",
        "preprocessing": {
            "_target_": "Compose",
            "transforms": [
                {"_target_": "LoadImaged", "keys": "image"},
                {"_target_": "EnsureChannelFirstd", "keys": "image"},
                {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS"},
                {"_target_": "Spacingd", "keys": "image", "pixdim": list(spec.spacing), "mode": "bilinear"},
                {"_target_": "NormalizeIntensityd", "keys": "image", "nonzero": True, "channel_wise": True},
            ],
        },
        "inferer": {
            "_target_": "SlidingWindowInferer",
            "roi_size": list(spec.patch_size),
            "sw_batch_size": 4,
            "overlap": 0.5,
            "mode": "gaussian",
        },
    }
    (temp / "configs" / "metadata.json").write_text(json.dumps(metadata, indent=2))
    (temp / "configs" / "inference.json").write_text(json.dumps(inference, indent=2))
    state = {k: v.detach().cpu().contiguous() for k, v in base.model.state_dict().items()}
    if weights_format == "safetensors":
        save_file(state, str(temp / BUNDLE_SAFETENSORS_FILE))
    else:
        torch.save(state, str(temp / BUNDLE_TORCH_FILE))
    (temp / "LICENSE").write_text("See the TCURLoRA model card (MODEL_CARD.md) for data licences.\n")
    return replace_dir(temp, folder)
