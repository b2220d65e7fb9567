"""Segmenting: base model + optional adapter, merged once, applied to each input volume.

`run_segment(job, sink, token)` is driven by `tcurlora segment` and the Slicer Segmenter module alike.
Outputs are checked before any compute (no overwrite without force) and written atomically with the
input's exact geometry.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from tcurlora.errors import ConfigError, InputError
from tcurlora.filenames import ADAPTER_CONFIG_FILE
from tcurlora.jobs.events import eta_seconds


def plan_outputs(job) -> list[Path]:
    """The job's output paths (SegmentJob.output_paths, the names the schema promises), each checked
    before anything runs: free, or (with force) a segmentation tcurlora wrote; writable; every input
    readable, real, finite and within float32 (data.values)."""
    from tcurlora.data.io import check_labelmap_output

    outputs = list(job.output_paths())
    if not outputs:
        raise InputError("no input volumes to segment")
    if len(set(outputs)) != len(outputs):
        raise InputError("two inputs would write the same output file; give explicit outputs")
    check_input_volumes(job.inputs)
    for path in outputs:
        check_labelmap_output(path, job.force)
    return outputs


def check_input_volumes(inputs) -> None:
    """InputError naming the file when an input volume is missing, unreadable, complex, has NaN / infinite
    voxels or values beyond float32 (data.values): found before any model is loaded."""
    from tcurlora.data.values import check_image_values

    for channels in inputs:
        for path in channels if isinstance(channels, (list, tuple)) else [channels]:
            check_image_values(path)  # InputError naming the file: unreadable, complex, NaN, beyond float32


def load_segmentation_model(base_model: str, adapter: str | None):
    """The base model with the adapter merged in (inference then costs what the base costs)."""
    from tcurlora.models.registry import load_base_model

    base = load_base_model(base_model)
    if not adapter and base.spec.output != "softmax":
        raise ConfigError(
            f"base model {base.model_id} has {base.spec.output} (multi-label) outputs, which segment does not "
            "decode; fine-tune an adapter on it (it trains a softmax head) and segment with --adapter"
        )
    if not adapter:
        names = [base.spec.labels[k] for k in sorted(base.spec.labels)]
        return base.model, base.spec, names, None
    from tcurlora.adapters.io import load_adapter, read_adapter_config

    config = read_adapter_config(Path(adapter))
    adapted = load_adapter(Path(adapter), base.model)
    model = adapted.merge_and_unload()
    model.eval()
    try:
        spec = adapter_spec(base.spec, config)
    except ConfigError as error:
        raise ConfigError(error.problem, Path(adapter) / ADAPTER_CONFIG_FILE) from error
    return model, spec, list(config.get("label_names") or []), config


def adapter_spec(base_spec, config: dict):
    """The base model's preprocessing at the working spacing and with the sliding-window patch the
    adapter was trained at (where recorded; a zoo bundle's own window may be far larger)."""
    spec = base_spec.at_spacing((config.get("preprocessing") or {}).get("spacing"))
    patch = config.get("patch_size")
    if isinstance(patch, list) and len(patch) == 3 and all(isinstance(p, int) and p > 0 for p in patch):
        spec = replace(spec, patch_size=tuple(patch))
    return spec


def recorded_inference_options(config: dict | None, job) -> dict[str, Any]:
    """infer.inference_options for this adapter record and job; ConfigError naming the adapter's config."""
    from tcurlora.infer import inference_options

    try:
        return inference_options(
            config, tta=job.tta, largest_component=getattr(job, "largest_component", False)
        )
    except ConfigError as error:
        raise ConfigError(error.problem, Path(job.adapter) / ADAPTER_CONFIG_FILE) from error


def describe_inference_options(options: dict[str, Any], names: list[str]) -> str:
    """One log line: the mirrorings averaged and the classes cleaned to their largest component."""
    axes = options["flip_axes"]
    mirror = f"mirrored along axes {list(axes)} ({2 ** len(axes)} passes)" if axes else "no mirroring"
    chosen = options["largest_component"]
    if chosen is True:
        cleaned = "every class"
    elif chosen:
        cleaned = ", ".join(names[c - 1] if c <= len(names) else str(c) for c in chosen)
    else:
        cleaned = "no class"
    return f"test-time augmentation: {mirror}; largest connected component only: {cleaned}"


def run_segment(job, sink, token) -> dict[str, Any]:
    """Segment every input; returns {"outputs": {"segmentations": [...]}, "metrics": {...}}."""
    from tcurlora.device import describe_device, resolve_device, resolve_threads
    from tcurlora.infer import segment_file

    outputs = plan_outputs(job)
    inputs = [item if isinstance(item, (list, tuple)) else [item] for item in job.inputs]
    device = resolve_device(job.device, warn=lambda m: sink.log("warning", m))
    threads, why = resolve_threads(getattr(job, "threads", "auto"), device)  # logged after `started`
    model, spec, names, config = load_segmentation_model(job.base_model, job.adapter)
    label_names = {index: name for index, name in enumerate(names, start=1)}
    colors = (config or {}).get("label_colors") or []
    label_colors = {index: tuple(color) for index, color in enumerate(colors, start=1)}
    options = recorded_inference_options(config, job)
    model.to(device)
    sink.started(command="segment", device=describe_device(device), total=len(inputs), parameters=None)
    sink.log("info", f"torch CPU threads: {threads} ({why})")
    sink.log("info", describe_inference_options(options, names))
    written, seconds = [], []
    for index, (channels, output) in enumerate(zip(inputs, outputs), start=1):
        token.raise_if_cancelled()
        started = time.monotonic()
        path = segment_file(
            model,
            channels,
            output,
            spec,
            device=str(device),
            overlap=job.overlap,
            **options,
            force=job.force,
            amp=device.type == "cuda",
            names=label_names,
            colors=label_colors,
        )
        seconds.append(time.monotonic() - started)
        written.append(str(path))
        eta = eta_seconds(sum(seconds), len(seconds), len(inputs) - index)
        sink.progress(
            iteration=index,
            total=len(inputs),
            loss=None,
            val_dice=None,
            eta_s=eta,
            lr=None,
            message=f"segmented {Path(channels[0]).name} -> {path}",
        )
    return {
        "outputs": {"segmentations": written},
        "metrics": {"label_names": names, "seconds_per_volume": seconds, "device": describe_device(device)},
    }
