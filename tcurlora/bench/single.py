"""One quality run, in the current process: fine-tune, then evaluate on the test split and time inference."""

from __future__ import annotations

import math
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tcurlora.bench.measure import TimingSink, median_or_none, peak_memory, peak_rss_bytes
from tcurlora.bench.plan import case_from_dict
from tcurlora.data.cases import Case
from tcurlora.filenames import ADAPTER_WEIGHTS_FILE


def finetune_job(run: dict[str, Any], settings: dict[str, Any], output: Path):
    """The FinetuneJob of a run (no validation split: the test split is evaluated afterwards).

    `output` is made absolute first: the job resolves relative paths against its own folder, so a
    relative `bench --output` would otherwise put the adapter where the evaluation does not look."""
    from tcurlora.jobs.schema import FinetuneJob

    output = Path(output).resolve()
    method = run["method"]
    job = {
        "command": "finetune",
        "base_model": settings["base_model"],
        "output": str(output),
        "force": True,
        "cases": [{"id": c["id"], "image": c["image"], "label": c["label"]} for c in run["train"]],
        "label_names": settings["label_names"],
        "method": method["method"],
        "rank": method["rank"],
        "alpha": method["alpha"],
        "selection": method["selection"],
        "conv_targets": method["conv_targets"],
        "learning_rate": method["learning_rate"],
        "iterations": settings["iterations"],
        "head_learning_rate": method.get("head_learning_rate"),
        "modules_learning_rate": method.get("modules_learning_rate"),
        "train_modules": method.get("train_modules") or None,
        "spacing": settings.get("spacing"),
        "batch_size": settings["batch_size"],
        "patch_size": settings["patch_size"],
        "seed": run["seed"],
        "checkpoint_every": 0,
        "device": settings["device"],
        "amp": settings["amp"],
        # the worker already set the config's threads (or kept torch's default): not chosen by load here,
        # so the runs of a benchmark are timed with the same thread count
        "threads": torch.get_num_threads(),
    }
    if method.get("unlabeled") == "test":  # the test split's images only; their labels are never given
        job["unlabeled"] = [path for c in run["test"] for path in _as_paths(c["image"])]
        for key in ("unlabeled_weight", "unlabeled_loss"):
            if method.get(key) is not None:
                job[key] = method[key]
    return FinetuneJob.from_dict(job, output.parent)


def _as_paths(image: str | list[str]) -> list[str]:
    """A case's image: one path, or (multi-channel) the first channel's path."""
    return [image] if isinstance(image, str) else [image[0]]


def _timed_predictions(
    model, cases: list[Case], spec, device: str, overlap: float, options: dict[str, Any]
) -> tuple[list, list[float]]:
    """Predictions as `segment` makes them by default (`options`: infer.inference_options), timed."""
    from tcurlora.infer import predict_volume

    outputs, seconds = [], []
    for case in cases:
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        outputs.append(predict_volume(model, case.images, spec, device=device, overlap=overlap, **options))
        seconds.append(time.perf_counter() - started)
    return outputs, seconds


def evaluate_adapter(
    adapter: Path,
    base_model: str,
    test: list[Case],
    label_names: list[str],
    device: str,
    overlap: float,
    latency_cases: int,
    *,
    tta: bool = True,
    largest_component: bool | str = "auto",
) -> dict[str, Any]:
    """Dice/HD95 per test case and class (merged weights), and latency with unmerged vs merged weights;
    every prediction made as `segment` makes it (by default: mirroring, largest components)."""
    from tcurlora.adapters.io import load_adapter, read_adapter_config
    from tcurlora.evaluate import LabelVolume, class_means, evaluate_pair, read_labels
    from tcurlora.infer import inference_options
    from tcurlora.models.registry import load_base_model
    from tcurlora.segmentation import adapter_spec

    base = load_base_model(base_model)
    adapted = load_adapter(adapter, base.model)
    config = read_adapter_config(adapter)
    spec = adapter_spec(base.spec, config)  # the working spacing it was trained at
    options = inference_options(config, tta=tta, largest_component=largest_component)  # as segment's
    timing = test[: min(latency_cases, len(test))]
    latency: dict[str, Any] = {"volumes": len(timing)}
    agreement = None
    if timing:
        _timed_predictions(adapted, timing[:1], spec, device, overlap, options)  # warm-up
        unmerged, latency["unmerged_s"] = _timed_predictions(adapted, timing, spec, device, overlap, options)
    adapted.merge()
    if timing:
        merged, latency["merged_s"] = _timed_predictions(adapted, timing, spec, device, overlap, options)
        agreement = min(float(np.mean(a[0] == b[0])) for a, b in zip(unmerged, merged))
        for key in ("unmerged_s", "merged_s"):
            latency[key.replace("_s", "_median_s")] = float(statistics.median(latency[key]))
    classes = {i + 1: name for i, name in enumerate(label_names)}
    cases = []
    predictions, _ = _timed_predictions(adapted, test, spec, device, overlap, options)
    for case, (labels, grid) in zip(test, predictions):
        reference = read_labels(case.label)
        prediction = LabelVolume(
            Path(f"prediction of {case.id}"),
            labels.astype(np.int64),
            grid.GetSpacing(),
            grid.GetOrigin(),
            grid.GetDirection(),
        )
        cases.append({"id": case.id, "classes": evaluate_pair(prediction, reference, classes)})
    return {
        "cases": cases,
        "mean": {
            name: {**m, "hd95": None if math.isnan(m["hd95"]) else m["hd95"]}  # JSON: no NaN
            for name, m in class_means(cases, label_names).items()
        },
        "latency": latency,
        "merge_agreement": agreement,
    }


def execute_run(run: dict[str, Any], settings: dict[str, Any], workdir: Path) -> dict[str, Any]:
    """Fine-tune and evaluate one run; returns its result record (see docs/benchmarks.md)."""
    from tcurlora.device import resolve_device
    from tcurlora.finetuning import run_finetune
    from tcurlora.jobs.cancel import CancelToken

    device = resolve_device(settings["device"])
    workdir.mkdir(parents=True, exist_ok=True)
    adapter = workdir / "adapter"
    rss_start = peak_rss_bytes()
    sink = TimingSink(device, settings["warmup_steps"])
    started = time.perf_counter()
    outcome = run_finetune(finetune_job(run, settings, adapter), sink, CancelToken())
    adapt_wall = time.perf_counter() - started
    memory = peak_memory(device)
    memory["process_start_bytes"] = rss_start
    parameters = sink.of_kind("started")[0].get("parameters", {})
    steps = sink.step_times()
    test = [case_from_dict(c) for c in run["test"]]
    evaluation = evaluate_adapter(
        adapter,
        settings["base_model"],
        test,
        settings["label_names"],
        str(device),
        settings["overlap"],
        settings["latency_cases"],
        tta=settings["tta"],
        largest_component=settings["largest_component"],
    )
    result = {
        "run_id": run["run_id"],
        "status": "ok",
        "method": run["method"],
        "k": run["k"],
        "seed": run["seed"],
        "train_cases": [c["id"] for c in run["train"]],
        "parameters": parameters,
        "adapter_bytes": (adapter / ADAPTER_WEIGHTS_FILE).stat().st_size,
        "step_time_s": {
            "median": median_or_none(steps),
            "steps_timed": len(steps),
            "warmup": settings["warmup_steps"],
        },
        "peak_memory": memory,
        "adapt_wall_s": adapt_wall,
        "train_time_s": outcome["metrics"].get("train_time_s"),
        "losses": sink.losses(),
        "test": {"cases": evaluation["cases"], "mean": evaluation["mean"]},
        "latency": evaluation["latency"],
        "merge_agreement": evaluation["merge_agreement"],
    }
    if not settings.get("keep_adapters", False):
        shutil.rmtree(adapter, ignore_errors=True)
    return result
