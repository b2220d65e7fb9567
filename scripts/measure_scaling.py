"""Measure `tcurlora finetune` with 1 and with N torchrun processes at the same effective batch.

    python scripts/measure_scaling.py --data ../shared/data/hippocampus --nproc 1 2 --out scaling.json

Each process count runs the same job (the built-in base, the first `--cases` cases, `--batch-size`
patches per step, seed 0, CPU) for `--iterations` steps with `--threads` CPU threads in all (split
evenly over the processes: OMP_NUM_THREADS), or `--threads-per-process` threads each. At every progress event the CPU time (user + system) of
the whole process tree (torchrun and its workers) is sampled with psutil; per-step figures are taken
from iteration `--warmup` to the last, so start-up (imports, data loading) is left out:

- wall s/step: the wall time between those progress events;
- CPU s/step and CPU s/sample: the tree's CPU time over the same steps (divided by the batch size).

Wall time means a speed-up only on an otherwise idle machine; CPU time per step shows the work the N
processes add (gradient all-reduce, every rank loading the whole batch) whatever else runs. The load
average and this process's nice value are recorded with the results.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

REPO_ROOT = Path(__file__).resolve().parents[1]


def tree_cpu_s(process: psutil.Process) -> float:
    """CPU seconds (user + system) of `process` and its live descendants."""
    total = 0.0
    for p in [process, *process.children(recursive=True)]:
        try:
            times = p.cpu_times()
            total += times.user + times.system
        except psutil.NoSuchProcess:
            pass
    return total


def job(args: argparse.Namespace, output: Path) -> dict:
    data = args.data.resolve()
    names = sorted(p.name for p in (data / "labelsTr").glob("*.nii.gz") if not p.name.startswith("."))[
        : args.cases
    ]
    return {
        "command": "finetune",
        "base_model": args.base_model,
        "label_names": args.labels,
        "cases": [
            {"id": n.split(".")[0], "image": str(data / "imagesTr" / n), "label": str(data / "labelsTr" / n)}
            for n in names
        ],
        "iterations": args.iterations,
        "batch_size": args.batch_size,
        "seed": 0,
        "device": args.device,
        "checkpoint_every": 0,
        "output": str(output),
        "force": True,
    }


def measure(args: argparse.Namespace, nproc: int, work: Path) -> dict:
    job_path = work / f"job-{nproc}.json"
    job_path.write_text(json.dumps(job(args, work / f"adapter-{nproc}")))
    threads = args.threads_per_process or max(1, args.threads // nproc)
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(threads),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
    }
    if args.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = "-1"  # one GPU per process otherwise (torchrun's LOCAL_RANK)
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
    prefix = [torchrun, "--standalone", f"--nproc-per-node={nproc}"] if nproc > 1 else [sys.executable]
    started = time.perf_counter()
    run = subprocess.Popen(
        [*prefix, "-m", "tcurlora", "finetune", "--job", str(job_path)],
        env=env,
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    tree = psutil.Process(run.pid)
    samples: dict[int, tuple[float, float]] = {}  # iteration -> (wall s, tree CPU s)
    for line in run.stdout:
        if line.startswith("{"):
            event = json.loads(line)
            if event["event"] == "progress":
                samples[event["iteration"]] = (time.perf_counter() - started, tree_cpu_s(tree))
    if run.wait() != 0:
        raise SystemExit(f"the {nproc}-process run failed (exit {run.returncode})")
    first, last = args.warmup, args.iterations
    steps = last - first
    wall = (samples[last][0] - samples[first][0]) / steps
    cpu = (samples[last][1] - samples[first][1]) / steps
    return {
        "processes": nproc,
        "threads_per_process": threads,
        "steps_measured": steps,
        "wall_s_per_step": round(wall, 3),
        "cpu_s_per_step": round(cpu, 3),
        "cpu_s_per_sample": round(cpu / args.batch_size, 3),
        "total_wall_s": round(time.perf_counter() - started, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=REPO_ROOT.parent / "shared" / "data" / "hippocampus")
    parser.add_argument("--base-model", default="unetr-small-acdc-brats")
    parser.add_argument("--labels", nargs="+", default=["Anterior", "Posterior"])
    parser.add_argument("--cases", type=int, default=4)
    parser.add_argument(
        "--batch-size", type=int, default=2, help="the effective batch (split over the processes)"
    )
    parser.add_argument("--iterations", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=2, help="steps left out of the per-step figures")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="CPU threads in all")
    parser.add_argument(
        "--threads-per-process", type=int, help="instead of --threads split over the processes"
    )
    parser.add_argument("--nproc", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--out", type=Path, help="write the results here as JSON")
    parser.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        default="cpu",
        help="cuda: each process its own GPU (NCCL), as many GPUs as the largest --nproc",
    )
    args = parser.parse_args()
    results = {
        "conditions": {
            "cpu_count": os.cpu_count(),
            "nice": os.nice(0),
            "load_average_start": os.getloadavg(),
            "base_model": args.base_model,
            "batch_size": args.batch_size,
            "data": str(args.data),
            "iterations": args.iterations,
            "warmup": args.warmup,
            "device": args.device,
        },
        "runs": [],
    }
    with tempfile.TemporaryDirectory(prefix="tcur-scaling-") as work:
        for nproc in args.nproc:
            results["runs"].append(measure(args, nproc, Path(work)))
            print(json.dumps(results["runs"][-1]), flush=True)
    results["conditions"]["load_average_end"] = os.getloadavg()
    base = results["runs"][0]
    for run in results["runs"]:
        run["wall_speedup"] = round(base["wall_s_per_step"] / run["wall_s_per_step"], 2)
        run["cpu_per_step_ratio"] = round(run["cpu_s_per_step"] / base["cpu_s_per_step"], 2)
    text = json.dumps(results, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
