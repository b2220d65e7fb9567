"""Pretrain a base model from scratch on several labeled datasets with different label sets.

Design (one head over the union of labels): every source dataset's classes get their own global
indices (acdc 1-3, brats2013 4-7 in the shipped recipe). Each training batch is drawn from one
source (round robin). The loss is cross-entropy over the whole union softmax plus a soft Dice over
background and that source's own classes. Cross-entropy over the whole union is correct here
because the sources' label sets are anatomically exclusive (a voxel of a cardiac MRI is never a
brain tumour), so "not one of this dataset's classes" means background; the Dice term, which is
undefined for classes a batch can never contain, is restricted to the source's own classes.

The recipe is a JSON file (configs/pretrain/*.json), seeded; the result is a model folder
(model.json with the model card inside "card", model.safetensors) plus training_log.jsonl.

Under torchrun (tcurlora.distributed.run_pretrain) the calls marked "torchrun" split each global batch
over the ranks, pool the batch-wide Dice, average the gradients (DDP) and the logged loss, split the
held-out evaluation and let rank 0 alone write; without torchrun they are no-ops.
"""

from __future__ import annotations

import itertools
import json
import math
import platform
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from tcurlora import distributed  # torchrun; no-ops in a run not started by it
from tcurlora.data.cases import Case, cases_from_decathlon
from tcurlora.data.transforms import inference_transforms, validation_transforms
from tcurlora.dice import dice_by_class
from tcurlora.errors import ConfigError, InputError
from tcurlora.filenames import (
    MODEL_CARD_FILE,
    MODEL_SPEC_FILE,
    PRETRAIN_RECIPE_FORMAT,
    PRETRAIN_STATE_FILE,
    TRAINING_LOG_FILE,
    checkpoint_dir,
)
from tcurlora.intensity_randomisation import randomise_intensity
from tcurlora.jobs.events import eta_seconds, format_duration
from tcurlora.jobs.fields import MAX_BATCH_SIZE, MAX_ITERATIONS, MAX_THREADS
from tcurlora.jsonio import read_json_object
from tcurlora.models.architectures import build_network
from tcurlora.models.fingerprint import state_dict_fingerprint
from tcurlora.models.registry import save_model_folder
from tcurlora.models.spec import IntensitySpec, ModelSpec
from tcurlora.outputs import check_model_output
from tcurlora.pretrain_checkpoint import read_training_log, training_log_text
from tcurlora.settings import (
    SettingError,
    dump_fields,
    expect,
    positive_triple,
    read_object,
    setting,
    triple_schema,
)
from tcurlora.tissue_classes import tissue_class_names, tissue_classes
from tcurlora.train_loop import Batch, LoopHooks, run_loop

PRETRAIN_ARCHS = ("UNETR", "SwinUNETR", "SegResNet")
# The 1x1x1 output convolution of each architecture (replaced by a fresh head when adapting).
HEAD_MODULES = {"UNETR": "out.conv.conv", "SwinUNETR": "out.conv.conv", "SegResNet": "conv_final.2.conv"}
PRECISIONS = ("fp32", "bf16", "auto")
# "segment": learn the source's expert labels. "tissue": self-supervised, for unlabeled scans of the domains a
# base will be adapted to: the labels are the image's own intensity classes (tcurlora.tissue_classes), which the
# network must recover from a patch shown under a random contrast (intensity_randomisation), i.e. from anatomy
# and context. The source's label files are never read.
OBJECTIVES = ("segment", "tissue")


def _channels(key: str, value: Any, base_dir: Path | None) -> list[int]:
    ok = isinstance(value, list) and value and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value)
    if not ok:
        raise SettingError(key, f"expected a non-empty list of channel indices >= 0, got {type(value).__name__} {value!r}")
    return list(value)


def _sources(key: str, value: Any, base_dir: Path | None) -> list[SourceConfig]:
    expect(key, value, (list,), "a list of source objects")
    if not value:
        raise SettingError(key, "a pretrain recipe needs at least one source")
    sources = []
    for index, item in enumerate(value):
        sources.append(SourceConfig(**read_object(SourceConfig, item, "a source", f"{key}[{index}]")))
    return sources


@dataclass
class SourceConfig:
    """One pretraining dataset: a Decathlon folder, which channels to use, and the held-out cases."""

    name: str = setting(kind="string", help="the source's name (prefixes its class names in the union)")
    folder: str = setting(kind="string", help="its Decathlon folder, relative to --data-root")
    channels: list[int] = setting([0], "custom", parse=_channels, help="the image channels used")
    num_cases: int | None = setting(None, "integer", minimum=1, help="use only the first N cases")
    val_case_ids: list[str] = setting([], "strings", help="case ids held out for the evaluation")
    licence: str = setting("", "text", help="the data licence")
    reference: str = setting("", "text", help="where the data comes from")
    objective: str = setting("segment", "choice", choices=OBJECTIVES,
                             help="segment: its expert labels; tissue: self-supervised (no label is read)")


@dataclass
class PretrainConfig:
    """A pretraining recipe; `arch_params` are the MONAI `arch` network's arguments (in/out channels are set
    from the sources and labels; UNETR also gets img_size = patch_size). `precision` "bf16" autocasts the
    forward pass to bfloat16 (CPUs with AVX512-BF16/AMX and CUDA); "auto" does so where it is supported.
    `eval_every` > 0 measures the held-out Dice every that many iterations into the training log."""

    name: str = setting(kind="string", help="the base model's name")
    sources: list[SourceConfig] = setting(kind="custom", parse=_sources, help="the labeled datasets")
    arch_params: dict[str, Any] = setting(kind="object", help="arguments of the MONAI network")
    arch: str = setting("UNETR", "choice", choices=PRETRAIN_ARCHS, help="the MONAI network")
    spacing: tuple[float, float, float] = setting(
        (1.5, 1.5, 1.5), "custom", parse=positive_triple(float), schema=triple_schema("number"), help="mm"
    )
    patch_size: tuple[int, int, int] = setting(
        (48, 48, 48), "custom", parse=positive_triple(int), schema=triple_schema("integer"), help="voxels"
    )
    iterations: int = setting(1800, "integer", minimum=1, maximum=MAX_ITERATIONS, help="training steps")
    batch_size: int = setting(2, "integer", minimum=1, maximum=MAX_BATCH_SIZE, help="patches per step")
    learning_rate: float = setting(3e-4, "number", minimum=0.0, exclusive_minimum=True, help="AdamW peak rate")
    weight_decay: float = setting(1e-5, "number", minimum=0.0, help="AdamW weight decay")
    warmup: int = setting(50, "integer", minimum=0, help="linear warm-up steps before the cosine decay")
    foreground_fraction: float = setting(
        0.67, "number", minimum=0.0, maximum=1.0, help="share of patches centred on a labeled voxel"
    )
    seed: int = setting(0, "integer", minimum=0, help="random seed")
    threads: int = setting(2, "integer", minimum=1, maximum=MAX_THREADS, help="torch CPU threads")
    checkpoint_every: int = setting(
        200, "integer", minimum=1, maximum=MAX_ITERATIONS, help="steps between checkpoints"
    )
    description: str = setting("", "text", help="what the recipe is for")
    precision: str = setting("fp32", "choice", choices=PRECISIONS, help="fp32, bf16 or auto")
    eval_every: int = setting(0, "integer", minimum=0, help="steps between held-out evaluations (0: none)")
    grad_clip: float | None = setting(
        None, "number", minimum=0.0, exclusive_minimum=True, help="clip the gradient norm to this (null: none)"
    )
    intensity_randomisation: bool = setting(
        False, "boolean", help="show each patch under a random MRI contrast (tcurlora.intensity_randomisation)"
    )

    @classmethod
    def from_file(cls, path: str | Path) -> PretrainConfig:
        """Read and check a recipe JSON file: ConfigError naming the file and the key."""
        data = read_json_object(path, "pretrain recipe")
        if data.get("format") != PRETRAIN_RECIPE_FORMAT:
            raise ConfigError(
                f"unknown recipe format {data.get('format')!r}, expected {PRETRAIN_RECIPE_FORMAT!r}", path
            )
        try:
            return cls(**read_object(cls, data, "a pretrain recipe", extra=("format",)))
        except SettingError as error:
            raise ConfigError(str(error), path) from None

    def to_dict(self) -> dict[str, Any]:
        return {"format": PRETRAIN_RECIPE_FORMAT, **dump_fields(self)}


@dataclass
class Volume:
    """A preprocessed single-channel volume (1, X, Y, Z) with its label in global class indices."""

    case_id: str
    source: int
    image: torch.Tensor
    label: torch.Tensor
    foreground: torch.Tensor  # flat indices of labeled voxels


@dataclass
class SourceData:
    """The loaded volumes of one source and its global class indices."""

    config: SourceConfig
    classes: list[int]
    names: list[str]
    train: list[Volume]
    val: list[Volume]
    train_ids: list[str] = field(default_factory=list)


def union_labels(config: PretrainConfig, data_root: Path) -> list[tuple[str, list[int], list[str]]]:
    """(source name, global class indices, class names) per source, classes numbered 1.. in order."""
    from tcurlora.data.cases import dataset_label_names

    result, offset = [], 0
    for source in config.sources:
        if source.objective == "tissue":
            names = tissue_class_names(source.name)
        else:
            names = dataset_label_names(data_root / source.folder)
        result.append((source.name, list(range(offset + 1, offset + 1 + len(names))), names))
        offset += len(names)
    return result


def model_spec(config: PretrainConfig, labels: dict[int, str]) -> ModelSpec:
    """The ModelSpec of the network the recipe trains."""
    params = dict(config.arch_params)
    params["in_channels"] = 1
    params["out_channels"] = len(labels) + 1
    if config.arch == "UNETR":
        params["img_size"] = list(config.patch_size)
    return ModelSpec(
        name=config.name,
        arch=config.arch,
        arch_params=params,
        spacing=config.spacing,
        patch_size=config.patch_size,
        intensity=IntensitySpec(kind="zscore"),
        labels=labels,
        head_module=HEAD_MODULES[config.arch],
        description=config.description,
    )


def _load_volume(case: Case, channel: int, source: int, offset: int, spec: ModelSpec,
                 cache_dir: Path | None = None, objective: str = "segment") -> Volume:  # fmt: skip
    if channel >= len(case.images):
        raise InputError(f"case {case.id} has no channel {channel}", case.images[0])
    preprocess = _preprocess_tissue if objective == "tissue" else _preprocess
    if cache_dir is None:
        image, label = preprocess(case, channel, offset, spec)
    else:
        from tcurlora.pretrain_cache import cached_volume, volume_key

        label_file = None if objective == "tissue" else case.label  # a tissue source never reads its labels
        key = volume_key(case.images[channel], label_file, channel, offset, spec)
        image, label = cached_volume(cache_dir, key, partial(preprocess, case, channel, offset, spec))
    return Volume(
        case_id=f"{case.id}_{channel:04d}", source=source, image=image, label=label,
        foreground=torch.nonzero(label.flatten() > 0).flatten(),
    )  # fmt: skip


def _preprocess(case: Case, channel: int, offset: int, spec: ModelSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """(image (1, X, Y, Z) float16, label (X, Y, Z) uint8 in global class indices), padded to the patch."""
    item = validation_transforms(spec)({"image": [str(case.images[channel])], "label": str(case.label)})
    label = item["label"].as_tensor()[0] if hasattr(item["label"], "as_tensor") else item["label"][0]
    label = torch.where(label > 0, label + offset, torch.zeros_like(label)).to(torch.uint8)
    image = torch.as_tensor(item["image"]).float()
    image, label = _pad_to(image, label, spec.patch_size)
    return image.half().as_subclass(torch.Tensor), label.as_subclass(torch.Tensor)


def _preprocess_tissue(case: Case, channel: int, offset: int, spec: ModelSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """(image, label) of a self-supervised source: the label is the image's own intensity classes, shifted
    to the source's global class indices; the case's label file is not read."""
    item = inference_transforms(spec)({"image": [str(case.images[channel])]})
    image = torch.as_tensor(item["image"]).float().as_subclass(torch.Tensor)
    classes = tissue_classes(image[0])
    label = torch.where(classes > 0, classes + offset, torch.zeros_like(classes)).to(torch.uint8)
    image, label = _pad_to(image, label, spec.patch_size)
    return image.half(), label


def _pad_to(
    image: torch.Tensor, label: torch.Tensor, size: tuple[int, ...]
) -> tuple[torch.Tensor, torch.Tensor]:
    pads = []
    for dim, target in reversed(list(zip(label.shape, size))):
        extra = max(0, target - dim)
        pads += [extra // 2, extra - extra // 2]
    if not any(pads):
        return image, label
    return F.pad(image, pads), F.pad(label[None], pads)[0]


def load_sources(
    config: PretrainConfig,
    data_root: Path,
    spec: ModelSpec,
    log: Callable[[str], None] = print,
    *,
    val_only: bool = False,
    cache_dir: Path | None = None,
) -> list[SourceData]:
    """Preprocess every train (unless val_only) and held-out volume of every source into memory (through
    the volume cache in `cache_dir`, tcurlora.pretrain_cache, when given)."""
    sources = []
    for index, ((name, classes, names), source) in enumerate(
        zip(union_labels(config, data_root), config.sources)
    ):
        cases = cases_from_decathlon(data_root / source.folder)
        val_ids = set(source.val_case_ids)
        missing = val_ids - {c.id for c in cases}
        if missing:
            raise ConfigError(f"source {name}: held-out case ids not found: {sorted(missing)}")
        train_cases = [c for c in cases if c.id not in val_ids][: source.num_cases]
        val_cases = [c for c in cases if c.id in val_ids]
        offset = classes[0] - 1
        train_ids = [f"{c.id}_{ch:04d}" for c in train_cases for ch in source.channels]
        load = partial(_load_volume, source=index, offset=offset, spec=spec, cache_dir=cache_dir,
                       objective=source.objective)
        train = [] if val_only else [load(c, ch) for c in train_cases for ch in source.channels]
        val = [load(c, ch) for c in val_cases for ch in source.channels]
        log(f"{name}: {len(train_ids)} training and {len(val)} held-out volumes, classes {classes}")
        sources.append(
            SourceData(config=source, classes=classes, names=names, train=train, val=val, train_ids=train_ids)
        )
    return sources


def sample_batch(
    source: SourceData,
    batch_size: int,
    patch: tuple[int, int, int],
    fg_fraction: float,
    rng: np.random.Generator,
    randomise_contrast: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random patches of one source: centred on a labeled voxel with probability fg_fraction, flipped, rescaled
    (and, with `randomise_contrast`, shown under a random MRI contrast)."""
    images, labels = [], []
    for _ in range(batch_size):
        volume = source.train[int(rng.integers(len(source.train)))]
        shape = volume.label.shape
        if len(volume.foreground) and rng.random() < fg_fraction:
            flat = int(volume.foreground[int(rng.integers(len(volume.foreground)))])
            centre = np.unravel_index(flat, shape)
        else:
            centre = [int(rng.integers(s)) for s in shape]
        start = [min(max(0, int(c) - p // 2), s - p) for c, p, s in zip(centre, patch, shape)]
        window = tuple(slice(b, b + p) for b, p in zip(start, patch))
        image = volume.image[(slice(None), *window)].float()
        label = volume.label[window].long()
        for axis in range(3):
            if rng.random() < 0.5:
                image, label = image.flip(axis + 1), label.flip(axis)
        image = image * float(rng.uniform(0.9, 1.1)) + float(rng.uniform(-0.1, 0.1))
        if randomise_contrast:
            image = randomise_intensity(image, rng)
        images.append(image)
        labels.append(label)
    return torch.stack(images), torch.stack(labels)


def union_loss(logits: torch.Tensor, label: torch.Tensor, classes: list[int],
               pool: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:  # fmt: skip
    """Cross-entropy over the union softmax + soft Dice over background and the source's classes. The Dice
    is pooled over the whole batch; `pool` (torchrun: distributed.pooled_sum) sums its per-class sums over
    the ranks' shares of the effective batch."""
    ce = F.cross_entropy(logits, label)
    probs = logits.softmax(1)
    channels = [0, *classes]
    onehot = F.one_hot(label, logits.shape[1]).permute(0, 4, 1, 2, 3).float()
    p, g = probs[:, channels], onehot[:, channels]
    dims = (0, 2, 3, 4)
    overlap, predicted, truth = (p * g).sum(dims), p.sum(dims), g.sum(dims)
    if pool is not None:
        overlap, predicted, truth = pool(overlap), pool(predicted), pool(truth)
    dice = (2 * overlap + 1e-5) / (predicted + truth + 1e-5)
    return ce + (1 - dice.mean())


def learning_rate_factor(config: PretrainConfig, step: int) -> float:
    """The schedule as a factor of the peak: linear warm-up, then cosine decay to 2%."""
    if step < config.warmup:
        return (step + 1) / config.warmup
    progress = (step - config.warmup) / max(1, config.iterations - config.warmup)
    return 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def learning_rate(config: PretrainConfig, step: int) -> float:
    """The learning rate of (0-based) `step`: linear warm-up then cosine decay to 2% of the peak."""
    return config.learning_rate * learning_rate_factor(config, step)


@torch.no_grad()
def evaluate_sources(
    model: torch.nn.Module, sources: list[SourceData], spec: ModelSpec, device: torch.device
) -> dict[str, Any]:
    """Mean held-out Dice per class (on the network's 1.5 mm grid) and per volume. Under torchrun each rank
    scores volumes r, r+N, ... and every rank gets all the scores (in the 1-process order)."""
    from monai.inferers import sliding_window_inference

    model.eval()
    volumes = [(source, volume) for source in sources for volume in source.val]
    scored: dict[int, dict[int, float]] = {}
    for index in distributed.mine(len(volumes)):  # torchrun: this rank's share of the volumes
        source, volume = volumes[index]
        image = volume.image.float()[None].to(device)
        logits = sliding_window_inference(
            image, spec.patch_size, sw_batch_size=4, predictor=model, overlap=0.25, mode="gaussian"
        )
        pred = logits.argmax(1)[0].cpu()
        scored[index] = dice_by_class(pred, volume.label.long(), source.classes, skip_absent=True)
    scored = distributed.merged(scored)  # torchrun: every rank's scores
    per_class: dict[str, list[float]] = {}
    per_volume = {}
    for index, (_, volume) in enumerate(volumes):
        scores = scored[index]
        per_volume[volume.case_id] = {spec.labels[c]: round(s, 4) for c, s in scores.items()}
        for c, s in scores.items():
            per_class.setdefault(spec.labels[c], []).append(s)
    model.train()
    return {
        "val_dice": {name: round(float(np.mean(v)), 4) for name, v in per_class.items()},
        "val_dice_per_volume": per_volume,
    }


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
        data.append({
            "name": source.config.name, "folder": source.config.folder, "licence": source.config.licence,
            "reference": source.config.reference, "channels": source.config.channels,
            "train_volumes": source.train_ids, "val_volumes": [v.case_id for v in source.val],
            "classes": {str(c): n for c, n in zip(source.classes, source.names)},
        })  # fmt: skip
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


def pretrain_batches(config: PretrainConfig, sources: list[SourceData], rng: np.random.Generator,
                     device: torch.device, first: int) -> Iterator[Batch]:  # fmt: skip
    """The batches of iterations `first`, `first` + 1, ...: the sources in turn, `batch_size` patches each
    (torchrun: this rank's patches of the global batch), with the union loss of the batch's source."""
    for iteration in itertools.count(first):
        source = sources[iteration % len(sources)]
        image, label = sample_batch(source, config.batch_size, config.patch_size, config.foreground_fraction, rng,
                                    config.intensity_randomisation)
        mine = distributed.local_part({"image": image, "label": label})  # torchrun: this rank's patches
        loss_fn = partial(union_loss, classes=source.classes, pool=distributed.pooled_sum)
        yield Batch(mine["image"].to(device), mine["label"].to(device), loss_fn, {"source": source.config.name})


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
        record = {"iteration": done, "source": batch.info["source"], "loss": round(loss_value, 5),
                  "lr": learning_rate(config, done - 1), "time_s": round(elapsed, 2),
                  "cpu_s": round(self.cpu_before + time.process_time() - self.cpu_started, 2)}  # fmt: skip
        if config.eval_every and done % config.eval_every == 0 and done < config.iterations:
            record["val_dice"] = evaluate_sources(self.model, self.sources, self.spec, self.device)["val_dice"]
            log(f"iteration {done}: held-out Dice {json.dumps(record['val_dice'])}")
        records.append(record)
        if done % 20 == 0:
            eta = eta_seconds(elapsed, done, config.iterations - done)
            recent = np.mean([r["loss"] for r in records[-20:]])
            log(f"iteration {done}/{config.iterations} loss {recent:.4f} ETA {format_duration(eta)}")
        now = time.monotonic()
        out_of_time = self.deadline is not None and distributed.any_rank(now >= self.deadline)  # torchrun: together
        stopping = out_of_time or (self.stop_after is not None and done >= self.stop_after)
        timed = self.next_checkpoint is not None and now >= self.next_checkpoint
        if timed:
            self.next_checkpoint = now + 60 * self.checkpoint_minutes
        if ((stopping or timed or done % config.checkpoint_every == 0) and done < config.iterations
                and distributed.is_writer()):  # torchrun: rank 0 alone writes checkpoints
            self.save_checkpoint(done, elapsed)
        if stopping:
            why = f"{self.max_minutes} minutes reached" if out_of_time else "as asked"
            log(f"stopping at iteration {done}: {why} (--resume {self.checkpoint_dir} continues)")
        return stopping

    def save_checkpoint(self, done: int, elapsed: float) -> None:
        from tcurlora.pretrain_checkpoint import PretrainState, save_pretrain_checkpoint

        card = build_card(self.config, self.spec, self.sources, iterations_done=done, device=self.described,
                          wall_s=elapsed, metrics={}, final=False)  # fmt: skip
        saved = PretrainState(iteration=done, records=self.records, sampler=self.rng.bit_generator.state)
        save_pretrain_checkpoint(self.checkpoint_dir, self.model, self.spec, card, self.step, saved,
                                 recipe=self.config.to_dict(), train_volumes=self.train_volumes)  # fmt: skip
        self.log(f"checkpoint {done} -> {self.checkpoint_dir}")


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
    preprocessed volumes on disk (tcurlora.pretrain_cache).

    `resume_from` (a checkpoint folder of the same recipe) continues an interrupted run exactly: weights,
    optimizer, GradScaler, torch RNG, patch sampler, iteration and log are restored, so it ends with the
    weights an uninterrupted run ends with (tcurlora.pretrain_checkpoint). A model folder instead (no
    training state) is a warm start: its weights, iteration and log, with a fresh optimizer and sampler.
    """
    from tcurlora.device import describe_device, resolve_device
    from tcurlora.pretrain_checkpoint import PretrainState, load_pretrain_checkpoint
    from tcurlora.train_step import OptimStep, cpu_supports_bf16, grad_scaler

    output = Path(output)
    check_model_output(output, force)  # before any work: free, or (force) a model folder tcurlora wrote
    if stop_after is not None and stop_after < 1:
        raise ConfigError(f"stop_after must be a positive number of iterations, got {stop_after}")
    exact = resume_from is not None and (Path(resume_from) / PRETRAIN_STATE_FILE).is_file()
    if exact:
        from tcurlora.pretrain_checkpoint import check_same_recipe, read_training_state

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
    log(f"loaded {sum(len(s.train) + len(s.val) for s in sources)} volumes in {time.monotonic() - loading:.1f} s"
        + (f" (cache {cache_dir})" if cache_dir is not None else ""))
    train_volumes = {s.config.name: list(s.train_ids) for s in sources}
    torch.manual_seed(config.seed)
    model = build_network(spec).to(device)
    forward = distributed.wrap(model, device, find_unused=True)  # torchrun: DDP (tcurlora.distributed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    use_amp = config.precision == "bf16" or (config.precision == "auto" and (device.type == "cuda" or cpu_supports_bf16()))
    step_fn = OptimStep(forward, optimizer, grad_scaler(device, use_amp), amp=use_amp,
                        schedule=partial(learning_rate_factor, config), clip=config.grad_clip)  # fmt: skip
    rng = np.random.default_rng(config.seed)
    state = PretrainState()
    if exact:
        state = load_pretrain_checkpoint(Path(resume_from), model, step_fn, recipe=config.to_dict(),
                                         train_volumes=train_volumes)  # fmt: skip
        rng.bit_generator.state = state.sampler
        log(f"resuming from {resume_from} at iteration {state.iteration} (the same run: optimizer, sampler, RNG)")
    elif resume_from is not None:
        state = continue_from_model(Path(resume_from), model)
        rng = np.random.default_rng(config.seed + state.iteration)
        log(f"continuing from the weights of {resume_from} at iteration {state.iteration} (optimizer and patch "
            f"sampler restart, seeded with seed + {state.iteration})")
    first, records = state.iteration, state.records
    checkpoint_folder = checkpoint_dir(output)
    started, described = time.time() - (records[-1]["time_s"] if records else 0.0), describe_device(device)
    if distributed.active():
        described = f"{distributed.world()} processes (rank 0 on {described})"
    log(f"pretraining {spec.name} on {described}{' with bf16 autocast' if use_amp else ''}: "
        f"{config.iterations} iterations")
    hooks = PretrainHooks(config=config, spec=spec, sources=sources, model=model, device=device, step=step_fn,
                          rng=rng, records=records, started=started, described=described,
                          checkpoint_dir=checkpoint_folder, train_volumes=train_volumes, log=log,
                          max_minutes=max_minutes, checkpoint_minutes=checkpoint_minutes, stop_after=stop_after)  # fmt: skip
    iterations_done = run_loop(step_fn, pretrain_batches(config, sources, rng, device, first), first,
                               config.iterations, hooks)  # fmt: skip
    notes = []
    if exact:
        notes.append(f"Resumed at iteration {first} from a checkpoint (weights, optimizer, sampler and RNG state "
                     "restored: the same run as an uninterrupted one), after the first run was stopped.")
    elif resume_from is not None:
        notes.append(f"Continued at iteration {first} from the weights of {Path(resume_from).name} (the optimizer "
                     f"state and the patch sampler restarted, seeded with seed + {first}).")
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


def continue_from_model(folder: Path, model: torch.nn.Module) -> Any:
    """Warm start from a model folder (or a weights-only checkpoint of an older tcurlora): its weights,
    iteration and log; not the optimizer or sampler state, which the caller restarts."""
    from tcurlora.models.registry import load_model_folder
    from tcurlora.pretrain_checkpoint import PretrainState

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
    card = build_card(config, spec, sources, iterations_done=iterations_done, device=device,
                      wall_s=wall_s, metrics=metrics, final=iterations_done >= config.iterations)  # fmt: skip
    card["notes"] = list(notes or [])
    if distributed.is_writer():  # torchrun: rank 0 alone writes the model folder
        card_text = render_card(spec, card, state_dict_fingerprint(model))
        save_model_folder(output, model, spec, model_id=spec.name, half=True, card=card, force=force,
                          extra_files={TRAINING_LOG_FILE: training_log_text(records), MODEL_CARD_FILE: card_text})  # fmt: skip
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
    from tcurlora.models.registry import load_model_folder

    torch.set_num_threads(config.threads)
    base = load_model_folder(Path(checkpoint))
    record = read_json_object(Path(checkpoint) / MODEL_SPEC_FILE, f"checkpoint {MODEL_SPEC_FILE}")
    card = record.get("card", {})
    records = read_training_log(Path(checkpoint))
    sources = load_sources(config, data_root, base.spec, log, val_only=True, cache_dir=cache_dir)
    return finish_model(config, base.spec, sources, base.model, output, iterations_done=int(card.get("iterations", 0)),
                        device=str(card.get("device", "cpu")), wall_s=float(card.get("wall_time_s", 0.0)),
                        records=records, force=force, log=log)  # fmt: skip


def _config_values(recipe: dict[str, Any]) -> dict[str, Any]:
    values = {k: v for k, v in recipe.items() if k != "format"}
    values["sources"] = [SourceConfig(**x) if isinstance(x, dict) else x for x in values.get("sources", [])]
    return values


def render_card(spec: ModelSpec, card: dict[str, Any], fingerprint: str) -> str:
    """MODEL_CARD.md text from the card record."""
    arch = card["architecture"]
    lines = [
        f"# {spec.name}", "", spec.description, "",
        "## Architecture",
        f"MONAI {arch['arch']}: " + ", ".join(f"{k} {v}" for k, v in arch.items()
                                           if k not in ("arch", "in_channels", "out_channels")) + ", "
        f"{arch['in_channels']} input channel, {arch['out_channels']} output classes (background + union).",
        f"Weights: model.safetensors (fp16). SHA-256 fingerprint of the fp32 weights: `{fingerprint}`.", "",
        "## Preprocessing",
        f"Orientation RAS, resampled to {card['preprocessing']['spacing_mm']} mm (bilinear; labels nearest), "
        f"intensity {card['preprocessing']['intensity']}. Patch / sliding window {spec.patch_size}.", "",
        "## Labels", *[f"- {k}: {v}" for k, v in spec.labels.items()], "",
        "## Training data",
    ]  # fmt: skip
    recipe = card["recipe"]
    objectives = {s.get("name"): s.get("objective", "segment") for s in recipe.get("sources", [])}
    for source in card["training_data"]:
        how = ("self-supervised: its own intensity classes, no label read"
               if objectives.get(source["name"]) == "tissue" else "supervised: its expert labels")
        lines.append(
            f"- **{source['name']}** (`{source['folder']}`, {how}), channels {source['channels']}: "
            f"{len(source['train_volumes'])} training volumes, held out {', '.join(source['val_volumes']) or 'none'}. "
            f"Licence: {source['licence']}. Reference: {source['reference']}."
        )
    contrast = (", every patch under a random MRI contrast (grey-level curve, bias field, blur/sharpen, noise)"
                if recipe.get("intensity_randomisation") else "")
    lines += [
        "", "## Recipe", f"Label design: {card['label_design']}.",
        f"AdamW lr {recipe['learning_rate']} (warm-up {recipe['warmup']}, cosine), weight decay "
        f"{recipe['weight_decay']}, batch {recipe['batch_size']}, {recipe['foreground_fraction']:.0%} of patches "
        f"centred on a labeled voxel, random flips on all axes, intensity scale/shift{contrast}; seed {recipe['seed']}.",
        f"Iterations: {card['iterations']} on {card['device']} ({recipe['threads']} threads), "
        f"wall time {card['wall_time_s'] / 60:.1f} min. Versions: {card['versions']}.",
        *card.get("notes", []),
        *([] if card.get("complete", True) else [
            f"**Stopped early**: these weights are the checkpoint at iteration {card['iterations']} of the "
            f"recipe's {recipe['iterations']} (learning rate still at "
            f"{learning_rate(PretrainConfig(**_config_values(recipe)), card['iterations']):.2e}); the run was cut "
            "for time on a shared 2-core CPU. Re-running the recipe to the end gives a stronger base."]),
        "", "## Held-out validation Dice (per class, 1.5 mm grid, sliding window)",
        *[f"- {k}: {v:.3f}" for k, v in card["metrics"].get("val_dice", {}).items()],
        "", "Per volume: " + json.dumps(card["metrics"].get("val_dice_per_volume", {})), "",
    ]  # fmt: skip
    return "\n".join(lines)


def main_log(message: str) -> None:
    """Timestamped log line on stdout."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)
    sys.stdout.flush()
