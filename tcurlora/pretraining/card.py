"""The model card of a pretrained base: the record stored in model.json "card", and MODEL_CARD.md."""

from __future__ import annotations

import json
import platform
from typing import Any

import torch

from tcurlora.models.spec import ModelSpec
from tcurlora.pretraining.config import PretrainConfig, learning_rate
from tcurlora.pretraining.data import SourceData


def _versions() -> dict[str, str]:
    import monai

    return {"torch": torch.__version__, "monai": monai.__version__, "python": platform.python_version()}


def build_card(
    config: PretrainConfig,
    spec: ModelSpec,
    sources: list[SourceData],
    *,
    iterations_done: int,
    device: str,
    wall_s: float,
    metrics: dict[str, Any],
    final: bool,
) -> dict[str, Any]:
    """The model card stored in model.json "card" (and rendered to MODEL_CARD.md)."""
    data = []
    for source in sources:
        data.append(
            {
                "name": source.config.name,
                "folder": source.config.folder,
                "licence": source.config.licence,
                "reference": source.config.reference,
                "channels": source.config.channels,
                "train_volumes": source.train_ids,
                "val_volumes": [v.case_id for v in source.val],
                "classes": {str(c): n for c, n in zip(source.classes, source.names)},
            }
        )
    return {
        "architecture": {"arch": spec.arch, **spec.arch_params},
        "preprocessing": {
            "spacing_mm": list(spec.spacing),
            "orientation": "RAS",
            "intensity": "z-score over the nonzero voxels of each channel",
            "patch_size": list(spec.patch_size),
        },
        "training_data": data,
        "label_design": "one softmax head over the union of the sources' labels; CE over the union "
        "(sources are anatomically exclusive) + soft Dice over background and each batch's own classes",
        "recipe": config.to_dict(),
        "iterations": iterations_done,
        "complete": final,
        "device": device,
        "wall_time_s": round(wall_s, 1),
        "metrics": metrics,
        "versions": _versions(),
    }


def render_card(spec: ModelSpec, card: dict[str, Any], fingerprint: str) -> str:
    """MODEL_CARD.md text from the card record."""
    arch = card["architecture"]
    lines = [
        f"# {spec.name}",
        "",
        spec.description,
        "",
        "## Architecture",
        f"MONAI {arch['arch']}: "
        + ", ".join(f"{k} {v}" for k, v in arch.items() if k not in ("arch", "in_channels", "out_channels"))
        + ", "
        f"{arch['in_channels']} input channel, {arch['out_channels']} output classes (background + union).",
        f"Weights: model.safetensors ({card.get('weights_storage', 'fp16')}). SHA-256 fingerprint of the fp32 "
        f"weights: `{fingerprint}`.",
        "",
        "## Preprocessing",
        f"Orientation RAS, resampled to {card['preprocessing']['spacing_mm']} mm (bilinear; labels nearest), "
        f"intensity {card['preprocessing']['intensity']}. Patch / sliding window {spec.patch_size}.",
        "",
        "## Labels",
        *[f"- {k}: {v}" for k, v in spec.labels.items()],
        "",
        "## Training data",
    ]
    recipe = card["recipe"]
    objectives = {s.get("name"): s.get("objective", "segment") for s in recipe.get("sources", [])}
    for source in card["training_data"]:
        how = (
            "self-supervised: its own intensity classes, no label read"
            if objectives.get(source["name"]) == "tissue"
            else "supervised: its expert labels"
        )
        lines.append(
            f"- **{source['name']}** (`{source['folder']}`, {how}), channels {source['channels']}: "
            f"{len(source['train_volumes'])} training volumes, held out {', '.join(source['val_volumes']) or 'none'}. "
            f"Licence: {source['licence']}. Reference: {source['reference']}."
        )
    contrast = (
        ", every patch under a random MRI contrast (grey-level curve, bias field, blur/sharpen, noise)"
        if recipe.get("intensity_randomisation")
        else ""
    )
    lines += [
        "",
        "## Recipe",
        f"Label design: {card['label_design']}.",
        f"AdamW lr {recipe['learning_rate']} (warm-up {recipe['warmup']}, cosine), weight decay "
        f"{recipe['weight_decay']}, batch {recipe['batch_size']}, {recipe['foreground_fraction']:.0%} of patches "
        f"centred on a labeled voxel, random flips on all axes, intensity scale/shift{contrast}; seed {recipe['seed']}.",
        f"Iterations: {card['iterations']} on {card['device']} ({recipe['threads']} threads), "
        f"wall time {card['wall_time_s'] / 60:.1f} min. Versions: {card['versions']}.",
        *card.get("notes", []),
        *(
            []
            if card.get("complete", True)
            else [
                f"**Stopped early**: these weights are the checkpoint at iteration {card['iterations']} of the "
                f"recipe's {recipe['iterations']} (learning rate still at "
                f"{learning_rate(PretrainConfig.from_record(recipe), card['iterations']):.2e}); the run was cut "
                "for time on a shared 2-core CPU. Re-running the recipe to the end gives a stronger base."
            ]
        ),
        "",
        "## Held-out validation Dice (per class, 1.5 mm grid, sliding window)",
        *[f"- {k}: {v:.3f}" for k, v in card["metrics"].get("val_dice", {}).items()],
        "",
        "Per volume: " + json.dumps(card["metrics"].get("val_dice_per_volume", {})),
        "",
    ]
    return "\n".join(lines)
