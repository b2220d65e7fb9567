"""Cost on synthetic batches: step time, peak memory and inference latency of each method at a given
architecture and image size, without data (the numbers do not depend on the voxel values)."""

from __future__ import annotations

import itertools
import statistics
import time
from typing import Any

import torch

from tcurlora.bench.measure import peak_memory, peak_rss_bytes
from tcurlora.training.loop import Batch, LoopHooks, run_loop


def cost_network(base_model: str, img_size: int, num_classes: int):
    """The base model's architecture, randomly initialised, rebuilt for img_size^3 patches (UNETR)."""
    from tcurlora.models.architectures import build_network, build_preset
    from tcurlora.models.registry import load_base_model
    from tcurlora.models.spec import ModelSpec

    if base_model.startswith("preset:"):
        _, spec = build_preset(base_model.removeprefix("preset:"))
    else:
        spec = load_base_model(base_model).spec
    data = spec.to_dict()
    if "img_size" in data["arch_params"]:
        data["arch_params"]["img_size"] = [img_size] * 3
    data["patch_size"] = [img_size] * 3
    spec = ModelSpec.from_dict(data)
    torch.manual_seed(0)
    return build_network(spec), spec


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StepTimer(LoopHooks):
    """Times each step after `warmup` steps (synchronising CUDA around it); resets the peak-memory counter
    after the warm-up, whose cuDNN autotuning would inflate it."""

    def __init__(self, device: torch.device, warmup: int):
        self.device, self.warmup = device, warmup
        self.times: list[float] = []
        self.started = 0.0

    def before_step(self, iteration: int) -> None:
        if iteration == self.warmup and self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        _sync(self.device)
        self.started = time.perf_counter()

    def after_step(self, done: int, batch: Batch, loss: torch.Tensor) -> bool:
        _sync(self.device)
        if done > self.warmup:
            self.times.append(time.perf_counter() - self.started)
        return False


def measure_cost(method: dict[str, Any], settings: dict[str, Any]) -> dict[str, Any]:
    """Train `warmup + steps` steps on random batches; median step time after warm-up, peak memory,
    and forward latency (no grad) with unmerged and merged weights."""
    from monai.losses import DiceCELoss

    from tcurlora.adapters.config import CONV_TARGETS, AdapterConfig
    from tcurlora.adapters.methods.registry import method_info
    from tcurlora.adapters.model import apply_adapter
    from tcurlora.device import describe_device, resolve_device
    from tcurlora.training.step import OptimStep, autocast_context, grad_scaler

    device = resolve_device(settings["device"])
    model, spec = cost_network(settings["base_model"], settings["img_size"], settings["num_classes"])
    config = AdapterConfig(
        method=method["method"],
        rank=method["rank"],
        selection=method["selection"],
        num_classes=settings["num_classes"],
        head_module=spec.head_module,
    )
    if method["conv_targets"]:
        config.conv_target_modules = list(CONV_TARGETS)
    adapted = apply_adapter(model, config).to(device)
    counts = adapted.parameter_counts().to_dict()
    optimizer = torch.optim.AdamW(
        adapted.trainable_parameters(),
        lr=method["learning_rate"] or method_info(method["method"]).learning_rate,
    )
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    amp = bool(settings["amp"]) and device.type == "cuda"
    train_step = OptimStep(adapted, optimizer, grad_scaler(device, amp), amp=amp)  # constant learning rate
    generator = torch.Generator().manual_seed(0)
    shape = (settings["batch_size"], spec.in_channels, *[settings["img_size"]] * 3)
    image = torch.randn(shape, generator=generator).to(device)
    label = torch.randint(0, settings["num_classes"], (shape[0], 1, *shape[2:]), generator=generator).to(
        device
    )
    timer = StepTimer(device, settings["warmup"])
    batches = itertools.repeat(Batch(image, label, loss_fn))  # the same batch: the cost, not the learning
    run_loop(train_step, batches, 0, settings["warmup"] + settings["steps"], timer)
    times = timer.times
    memory = peak_memory(device)
    adapted.eval()
    latency = {}
    with torch.no_grad():
        for state in ("unmerged", "merged"):
            if state == "merged":
                adapted.merge()
            runs = []
            for _ in range(settings.get("latency_repeats", 5)):
                _sync(device)
                started = time.perf_counter()
                with autocast_context(device, amp):
                    adapted(image[:1])
                _sync(device)
                runs.append(time.perf_counter() - started)
            latency[f"{state}_s"] = float(statistics.median(runs[1:]))
    return {
        "method": method,
        "device": describe_device(device),
        "img_size": settings["img_size"],
        "batch_size": settings["batch_size"],
        "arch_params": spec.arch_params,
        "parameters": counts,
        "step_time_s": {
            "median": float(statistics.median(times)),
            "min": min(times),
            "all": times,
            "warmup": settings["warmup"],
        },
        "peak_memory": memory,
        "forward_latency": latency,
        "final_rss_bytes": peak_rss_bytes(),
    }
