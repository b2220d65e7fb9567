"""Run a benchmark: every (k, seed, method) quality run and every cost run, each in its own process,
then write report.json, report.md and the plots into the output folder. Under torchrun the quality
runs are split across the processes and rank 0 alone writes the report (tcurlora.bench.ranks)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tcurlora.bench import ranks
from tcurlora.bench.config import BenchConfig
from tcurlora.bench.plan import fixed_split, plan_runs, resolve_base_model
from tcurlora.errors import ConfigError, OutputExistsError
from tcurlora.filenames import BENCH_REPORT_FILE, BENCH_REPORT_SCHEMA
from tcurlora.fsutil import atomic_write_json

REPO_ROOT = Path(__file__).resolve().parents[2]


def execute(kind: str, spec: dict[str, Any], workdir: Path, isolate: bool) -> dict[str, Any]:
    """Run one spec in a fresh `python -m tcurlora.bench.worker` process (or in this one)."""
    from tcurlora.bench.worker import failure, run_spec

    workdir.mkdir(parents=True, exist_ok=True)
    result_path = workdir / "result.json"
    if not isolate:
        try:
            result = run_spec(kind, spec)
            result.setdefault("peak_memory", {})["isolated"] = False
        except Exception as error:  # noqa: BLE001 - a failed run is reported, the benchmark goes on
            result = failure(error)
        atomic_write_json(result_path, result)
        return result
    spec_path = workdir / "spec.json"
    atomic_write_json(spec_path, spec)
    env = ranks.worker_env(dict(os.environ))  # under torchrun: a plain 1-process run on this rank's GPU
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    result_path.unlink(missing_ok=True)
    with open(workdir / "worker.log", "w", encoding="utf-8") as log:
        process = subprocess.run(
            [sys.executable, "-m", "tcurlora.bench.worker", kind, str(spec_path), str(result_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            check=False,
        )
    if not result_path.is_file():
        return {
            "status": "failed",
            "kind": "internal",
            "error": f"worker exited with code {process.returncode} without a result (see {workdir / 'worker.log'})",
        }
    result = json.loads(result_path.read_text(encoding="utf-8"))
    result.setdefault("peak_memory", {})["isolated"] = True
    return result


def _reuse(workdir: Path) -> dict[str, Any] | None:
    path = workdir / "result.json"
    if not path.is_file():
        return None
    result = json.loads(path.read_text(encoding="utf-8"))
    return result if result.get("status") == "ok" else None


def quality_settings(config: BenchConfig, base_model: str, label_names: list[str]) -> dict[str, Any]:
    return {
        "base_model": base_model,
        "label_names": label_names,
        "iterations": config.iterations,
        "batch_size": config.batch_size,
        "patch_size": config.patch_size,
        "spacing": config.spacing,
        "device": config.device,
        "amp": config.amp,
        "overlap": config.overlap,
        "tta": config.tta,
        "largest_component": config.largest_component,
        "latency_cases": config.latency_cases,
        "warmup_steps": config.warmup_steps,
        "threads": config.threads,
        "keep_adapters": config.keep_adapters,
    }


def run_quality(
    config: BenchConfig, output: Path, resume: bool, log: Callable[[str], None]
) -> dict[str, Any]:
    """All quality runs; returns the report's quality section."""
    from tcurlora.data.cases import cases_from_decathlon, dataset_label_names
    from tcurlora.models.registry import load_base_model

    base_ref, note = resolve_base_model(config)
    if note:
        log(f"warning: {note}")
    base = load_base_model(base_ref)
    label_names = config.label_names or dataset_label_names(config.data)
    split = fixed_split(cases_from_decathlon(config.data), config)
    runs = plan_runs(config, split)
    settings = quality_settings(config, base_ref, label_names)
    share = ranks.mine(len(runs))  # every run without torchrun; runs r, r+N, ... on rank r of N
    if ranks.launched():
        ranks.use_local_gpu(config.device)
        if ranks.is_writer():
            log(f"{ranks.world()} processes: rank 0 executes {len(share)} of the {len(runs)} quality runs")
    prefix = f"rank {ranks.rank()}: " if ranks.launched() else ""
    done: dict[int, dict[str, Any]] = {}
    for position in share:
        run, index = runs[position], position + 1
        workdir = output / "runs" / run.run_id
        result = _reuse(workdir) if resume else None
        if result is None:
            started = time.monotonic()
            spec = {"run": run.to_dict(), "settings": settings, "workdir": str(workdir)}
            result = execute("quality", spec, workdir, config.isolate)
            result.setdefault("run_id", run.run_id)
            result.setdefault("method", run.method.to_dict())
            result.setdefault("k", run.k)
            result.setdefault("seed", run.seed)
            if ranks.launched():
                result["rank"] = ranks.rank()  # which process executed it (torchrun)
            log(
                f"{prefix}[{index}/{len(runs)}] {run.run_id}: {_brief(result)} ({time.monotonic() - started:.0f} s)"
            )
        done[position] = result
    results = ranks.gather(done, len(runs))
    if results is None:  # torchrun, rank > 0: rank 0 has this rank's results and writes the report
        return {}
    return {
        "base_model": {
            "reference": base_ref,
            "model_id": base.model_id,
            "fingerprint": base.fingerprint,
            "pretrained": not base_ref.startswith("preset:"),
            "note": note,
            "arch": base.spec.arch,
            "arch_params": base.spec.arch_params,
        },
        "data": str(config.data),
        "label_names": label_names,
        "test_case_ids": [c.id for c in split.test],
        "pool_size": len(split.pool),
        "settings": settings,
        "runs": results,
    }


def run_cost(
    config: BenchConfig, output: Path, resume: bool, log: Callable[[str], None]
) -> list[dict[str, Any]]:
    """All synthetic-batch cost runs."""
    cost = config.cost
    settings = {
        k: getattr(cost, k)
        for k in ("base_model", "img_size", "batch_size", "num_classes", "warmup", "steps", "device", "amp")
    }
    settings["threads"] = config.threads
    results = []
    for index, method in enumerate(cost.methods, start=1):
        workdir = output / "cost" / method.label
        result = _reuse(workdir) if resume else None
        if result is None:
            spec = {"method": method.to_dict(), "settings": settings, "workdir": str(workdir)}
            result = execute("cost", spec, workdir, config.isolate)
            result.setdefault("method", method.to_dict())
            log(f"[cost {index}/{len(cost.methods)}] {method.label}: {_brief(result)}")
        results.append(result)
    return results


def _brief(result: dict[str, Any]) -> str:
    if result.get("status") != "ok":
        return f"FAILED ({result.get('kind')}: {result.get('error')})"
    parts = []
    if "test" in result:
        dice = [v["dice"] for v in result["test"]["mean"].values()]
        parts.append(f"mean Dice {sum(dice) / len(dice):.3f}")
    step = result.get("step_time_s", {}).get("median")
    if step is not None:
        parts.append(f"step {step:.3f} s")
    return ", ".join(parts)


def check_devices(config: BenchConfig, only: str | None) -> None:
    """A benchmark that asks for CUDA must not quietly measure the CPU instead."""
    import torch

    wanted = []
    if config.methods and only in (None, "quality"):
        wanted.append(("device", config.device))
    if config.cost is not None and only in (None, "cost"):
        wanted.append(("cost.device", config.cost.device))
    for key, device in wanted:
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError(
                f"key {key!r}: this benchmark asks for {device}, but CUDA is not available here "
                "(run it on a GPU machine, or pass --device cpu to measure the CPU instead)",
                config.source,
            )


def _earlier_report(output: Path) -> dict[str, Any]:
    """The report.json of an earlier call into the same folder ({} when there is none)."""
    path = output / BENCH_REPORT_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def run_benchmark(
    config: BenchConfig,
    output: Path,
    *,
    force: bool = False,
    resume: bool = False,
    only: str | None = None,
    command: str | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run what `config` asks (`only`: "quality" or "cost"), write the report files; returns the report.

    With `resume`, finished runs in `output` are reused, and a section not run now (`only`) is kept
    from the earlier report.json.
    """
    from tcurlora.bench.measure import environment
    from tcurlora.bench.report import write_report
    from tcurlora.device import resolve_device

    check_devices(config, only)
    output = Path(output)
    if (output / BENCH_REPORT_FILE).exists() and not (force or resume):
        raise OutputExistsError(
            "benchmark output exists (use --force to replace it or --resume to continue)", output
        )
    output.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "schema": BENCH_REPORT_SCHEMA,
        "name": config.name,
        "description": config.description,
        "command": command or " ".join(["tcurlora", *sys.argv[1:]]),
        "config": config.to_dict(),
        "environment": environment(resolve_device(config.device), config.threads),
        "started": time.time(),
    }
    if ranks.launched():
        report["processes"] = ranks.world()
    earlier = _earlier_report(output) if resume else {}
    if config.methods and only in (None, "quality"):
        report["quality"] = run_quality(config, output, resume, log)
    if not ranks.is_writer():  # torchrun, rank > 0: its quality runs are with rank 0, which does the rest
        return {}
    if "quality" not in report and "quality" in earlier:
        report["quality"] = earlier["quality"]
    if config.cost is not None and only in (None, "cost"):
        report["cost"] = run_cost(config, output, resume, log)
    elif "cost" in earlier:
        report["cost"] = earlier["cost"]
    report["finished"] = time.time()
    write_report(report, output)
    return report
