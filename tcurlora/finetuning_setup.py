"""Everything a training run needs, resolved from a job: model, cases, classes, adapter, device, data."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tcurlora.adapters.methods.registry import method_info
from tcurlora.adapters.rank_check import check_rank_fits
from tcurlora.data.validate import validation_count
from tcurlora.errors import ConfigError, InputError

# The unlabeled patch stream's seed is the job's plus this (its own random sequence, not the labeled one's).
UNLABELED_SEED_OFFSET = 7919

# Colors for classes 1..N when neither the job nor the data set gives any (Slicer's generic anatomy tints).
DEFAULT_COLORS = [
    (0.87, 0.51, 0.39),
    (0.50, 0.68, 0.50),
    (0.70, 0.47, 0.78),
    (0.85, 0.85, 0.35),
    (0.39, 0.63, 0.87),
    (0.92, 0.63, 0.70),
    (0.44, 0.80, 0.80),
    (0.95, 0.65, 0.30),
]


@dataclass
class TrainingSetup:
    base: Any
    adapted: Any
    device: torch.device
    device_name: str
    train_cases: list
    val_cases: list
    label_names: list[str]
    label_colors: list[list[float]]
    patch_size: tuple[int, int, int]
    spec: Any
    batches: Callable[..., Iterator[dict]]
    val_volumes: list[dict]
    unlabeled_files: list[Path] = field(default_factory=list)  # semi-supervised (mean teacher) volumes
    unlabeled_batches: Callable[..., Any] | None = None  # their patch stream (a BatchStream), or None
    threads: int | None = None  # torch CPU threads of the run (device.resolve_threads)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def resolve_cases(job) -> list:
    """The job's cases: an explicit list, or a Decathlon folder with optional count/ids."""
    from tcurlora.data.cases import cases_from_decathlon

    if job.cases:
        return list(job.cases)
    if job.data:
        return cases_from_decathlon(Path(job.data), num_cases=job.num_cases, case_ids=job.case_ids)
    raise InputError("no training cases: give `cases` or `data` in the job (or --data/--cases)")


def resolve_label_names(job, base) -> list[str]:
    """Class names for label values 1..N: the job's, else the data set's, else the base model's."""
    if job.label_names:
        return list(job.label_names)
    if job.data:
        from tcurlora.data.cases import dataset_label_names

        return dataset_label_names(Path(job.data))
    return [base.spec.labels[k] for k in sorted(base.spec.labels)]


def split_validation(cases: list, job) -> tuple[list, list]:
    """Cases named in val_case_ids, or a seeded fraction; at least one training case always remains."""
    if getattr(job, "val_case_ids", None):
        wanted = set(job.val_case_ids)
        unknown = wanted - {c.id for c in cases}
        if unknown:
            raise ConfigError(f"val_case_ids not among the cases: {sorted(unknown)}")
        return [c for c in cases if c.id not in wanted], [c for c in cases if c.id in wanted]
    count = validation_count(len(cases), float(job.val_fraction or 0.0), getattr(job, "job_file", None))
    if count <= 0:
        return list(cases), []
    if count >= len(cases):
        raise ConfigError(f"val_fraction {job.val_fraction} leaves no training case out of {len(cases)}")
    order = list(range(len(cases)))
    random.Random(job.seed).shuffle(order)
    val = set(order[:count])
    return [c for i, c in enumerate(cases) if i not in val], [c for i, c in enumerate(cases) if i in val]


def adapt_base(job, base, label_names: list[str]):
    """The base network with the job's method applied (in place): the adapter config every run of this job
    builds alike, wherever it runs (a fine-tuning run, each site and the server of a federation)."""
    from tcurlora.adapters.config import AdapterConfig, default_train_modules, expand_train_modules
    from tcurlora.adapters.model import apply_adapter
    from tcurlora.adapters.targets import configure_targets

    num_classes = len(label_names) + 1
    config = AdapterConfig(
        method=job.method,
        rank=job.rank,
        selection=job.selection,
        seed=job.seed,
        num_classes=num_classes,
        label_names=label_names,
        new_head=label_names != [base.spec.labels[k] for k in sorted(base.spec.labels)]
        or base.spec.output != "softmax",
        base_model_id=base.model_id,
        base_fingerprint=base.fingerprint,
        head_module=base.spec.head_module,
    )
    if job.alpha is not None:
        config.alpha = float(job.alpha)
    configure_targets(config, base.model, job.conv_targets)  # transformer layers, else a CNN's Conv3d
    requested = job.train_modules
    if requested is None:
        requested = default_train_modules(job.method, type(base.model).__name__)
    config.train_modules = expand_train_modules(requested)
    adapted = apply_adapter(base.model, config)
    check_rank_fits(adapted, job.rank, getattr(job, "job_file", None))
    return adapted


def prepare_training(job, sink) -> TrainingSetup:
    """Load and check everything before the first step, so bad input fails before any compute."""
    from tcurlora.data.loader import training_batches, unlabeled_batches, unlabeled_files, validation_volumes
    from tcurlora.data.spacing import resolve_working_spacing
    from tcurlora.data.validate import validate_case
    from tcurlora.device import describe_device, resolve_device, resolve_threads
    from tcurlora.models.registry import load_base_model

    seed_everything(job.seed)
    device = resolve_device(job.device, warn=lambda m: sink.log("warning", m))
    threads, why = resolve_threads(getattr(job, "threads", "auto"), device)
    notes = [f"torch CPU threads: {threads} ({why})"]  # logged after `started`, the first event
    base = load_base_model(job.base_model)
    for note in base.notes:
        sink.log("warning", f"base model: {note}")
    if method_info(
        job.method
    ).random_init:  # "scratch", the control group: the base's architecture, not its weights
        from tcurlora.models.architectures import randomly_initialise, scratch_seed

        randomly_initialise(base.model, base.spec, job.seed)
        notes.append(
            f"scratch: {base.spec.arch} of {base.model_id} trained from random initialisation "
            f"(torch seed {scratch_seed(job.seed)}); the base's pretrained weights are not used"
        )
    cases = resolve_cases(job)
    if not cases:
        raise InputError("the case list is empty: give at least one (image, label) pair")
    label_names = resolve_label_names(job, base)
    num_classes = len(label_names) + 1
    for case in cases:
        validate_case(case, num_classes)
    unlabeled = unlabeled_files(job.unlabeled) if getattr(job, "unlabeled", None) else []
    train_cases, val_cases = split_validation(cases, job)
    patch_size = tuple(int(p) for p in (job.patch_size or base.spec.patch_size))
    if tuple(base.spec.arch_params.get("img_size", patch_size)) != patch_size and base.spec.arch == "UNETR":
        raise ConfigError(
            f"UNETR {base.model_id} is built for patches of {base.spec.patch_size}; "
            f"patch_size {list(patch_size)} is not supported for it"
        )
    colors = [list(c) for c in (job.label_colors or [])]
    colors += [list(DEFAULT_COLORS[i % len(DEFAULT_COLORS)]) for i in range(len(colors), len(label_names))]

    adapted = adapt_base(job, base, label_names)
    counts = adapted.parameter_counts()
    sink.started(
        command="finetune",
        device=describe_device(device),
        total=job.iterations,
        parameters=counts.to_dict() if hasattr(counts, "to_dict") else dict(vars(counts)),
    )
    for note in notes:
        sink.log("info", note)
    spacing = resolve_working_spacing(job.spacing, train_cases, base.spec.spacing, patch_size)
    spec = base.spec.at_spacing(spacing)
    sink.log("info", f"working spacing {list(spacing)} mm (base model: {list(base.spec.spacing)} mm)")

    def batches(seed_offset: int = 0) -> Iterator[dict]:
        return training_batches(
            train_cases,
            spec,
            patch_size=patch_size,
            num_classes=num_classes,
            batch_size=job.batch_size,
            seed=job.seed + seed_offset,
            augment=True,
        )

    def unlabeled_stream(seed_offset: int = 0):
        return unlabeled_batches(
            unlabeled,
            spec,
            patch_size=patch_size,
            batch_size=job.batch_size,
            seed=(job.seed + UNLABELED_SEED_OFFSET + seed_offset) % 2**63,
        )

    if unlabeled:
        sink.log(
            "info",
            f"semi-supervised: {len(unlabeled)} unlabeled volume(s), consistency weight "
            f"{job.unlabeled_weight}, teacher EMA decay {job.ema_decay}",
        )
    val_volumes = validation_volumes(val_cases, spec) if val_cases else []
    return TrainingSetup(
        base=base,
        adapted=adapted,
        device=device,
        device_name=describe_device(device),
        train_cases=train_cases,
        val_cases=val_cases,
        label_names=label_names,
        label_colors=colors,
        patch_size=patch_size,
        spec=spec,
        batches=batches,
        val_volumes=val_volumes,
        unlabeled_files=unlabeled,
        unlabeled_batches=unlabeled_stream if unlabeled else None,
        threads=threads,
    )
