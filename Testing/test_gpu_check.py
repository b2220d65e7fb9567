"""The CPU-testable parts of scripts/gpu_check.sh: its arguments, its plan, its refusals; the
out-of-memory paths it checks (exit code 4 and the message, through the real CLI error mapping, also
under a forced small memory limit); the memory cap variable; pretraining for a fixed time."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from pretrain_testing import TINY_UNETR_ARCH
from trust_testing import run, tiny_job, write_job

from tcurlora.device import memory_fraction
from tcurlora.errors import ConfigError
from tcurlora.filenames import MODEL_SPEC_FILE, MODEL_WEIGHTS_FILE
from tcurlora.jobs.runner import CPU_OOM_MESSAGE, CUDA_OOM_MESSAGE

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_check.sh"
STEPS = [
    "env",
    "install",
    "cuda-tests",
    "finetune-tcur",
    "finetune-lora",
    "finetune-decoder",
    "finetune-head",
    "finetune-full",
    "segment",
    "oom",
    "bench",
    "pretrain",
]


def script(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    environment = {
        k: v for k, v in os.environ.items() if k not in ("OUT", "TCURLORA_WHEELS", "TCURLORA_DATA")
    }
    return subprocess.run(
        ["bash", str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**environment, **(env or {})},
        cwd=ROOT,
    )


def test_help_documents_the_steps_and_how_to_build_the_wheel_folder():
    result = script("--help")
    assert result.returncode == 0 and result.stderr == ""
    for text in [
        "Usage: scripts/gpu_check.sh",
        "--wheels DIR",
        "--dry-run",
        "pip download --only-binary=:all:",
        "--no-index --find-links",
        "scripts/gpu_check_requirements.txt",
        "exits with code 4",
    ]:
        assert text in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--bogus"], "unknown argument '--bogus'"),
        (["--iterations", "0"], "--iterations needs a positive integer, got '0'"),
        (["--iterations", "x"], "--iterations needs a positive integer"),
        (["--pretrain-minutes", "-1"], "--pretrain-minutes needs a positive number, got '-1'"),
        (["--pretrain-minutes", "0"], "--pretrain-minutes needs a positive number"),
        (["--oom-fraction", "2"], "--oom-fraction must be at most 1"),
        (["--out"], "--out needs a value"),
        (["--wheels", "--dry-run"], "--wheels needs a value"),
        (["--only-transfer"], "--only-transfer needs --transfer-minutes N"),
        (["--transfer-minutes", "0"], "--transfer-minutes needs a positive number"),
    ],
)
def test_bad_arguments_exit_2_with_a_message(args, message):
    result = script(*args)
    assert result.returncode == 2 and message in result.stderr and result.stdout == ""


def test_dry_run_prints_the_plan_and_creates_nothing(tmp_path):
    out = tmp_path / "out"
    result = script(
        "--dry-run",
        "--pretrain-minutes",
        "3",
        "--iterations",
        "7",
        env={"OUT": str(out), "TCURLORA_WHEELS": "/carried/wheels", "TCURLORA_DATA": "/data"},
    )
    assert result.returncode == 0, result.stderr
    plan = [line for line in result.stdout.splitlines() if line.startswith("[plan] ")]
    assert [line.split()[1] for line in plan[:-1]] == STEPS
    by_step = {line.split()[1]: line for line in plan}
    assert "--no-index --find-links /carried/wheels --no-deps" in by_step["install"]
    assert "-m cuda" in by_step["cuda-tests"] and "Testing/test_cuda.py" in by_step["cuda-tests"]
    for method in ("tcur", "lora", "decoder", "head", "full"):
        line = by_step[f"finetune-{method}"]
        assert f"--method {method} --iterations 7" in line and "--device cuda" in line
        assert "--data /data/hippocampus" in line and f"--output {out}/finetune/{method}" in line
    assert f"--adapter {out}/finetune/tcur --device cuda" in by_step["segment"]
    assert "expect exit 4" in by_step["oom"] and "TCURLORA_CUDA_MEMORY_FRACTION=0.02" in by_step["oom"]
    assert "preset:unetr-base" in by_step["oom"] and "--batch-size 8" in by_step["oom"]
    assert "configs/bench/paper-size-gpu.json --device cuda" in by_step["bench"]
    assert "configs/pretrain/unetr-gpu.json" in by_step["pretrain"]
    assert (
        "--max-minutes 3 --checkpoint-minutes 1" in by_step["pretrain"]
        and "limit  420s" in by_step["pretrain"]
    )
    assert str(out) in plan[-1] and not out.exists()


def test_transfer_steps_pretrain_a_cnn_base_and_bench_it_on_validation_cases_only(tmp_path):
    out = tmp_path / "out"
    result = script(
        "--dry-run",
        "--only-transfer",
        "--transfer-minutes",
        "5",
        env={"OUT": str(out), "TCURLORA_DATA": "/data"},
    )
    assert result.returncode == 0, result.stderr
    plan = [line for line in result.stdout.splitlines() if line.startswith("[plan] ")]
    names = [line.split()[1] for line in plan[:-1]]
    assert names == ["env", "install", "transfer-pretrain", "transfer-left_atrium", "transfer-hippocampus"]
    by_step = {line.split()[1]: line for line in plan}
    base = f"{out}/transfer/segresnet-mri-gpu"
    assert "configs/pretrain/segresnet-mri-gpu.json" in by_step["transfer-pretrain"]
    assert f"--output {base} --device cuda --max-minutes 5" in by_step["transfer-pretrain"]
    assert "limit  540s" in by_step["transfer-pretrain"]
    for dataset in ("left_atrium", "hippocampus"):
        line = by_step[f"transfer-{dataset}"]
        assert f"configs/bench/transfer-{dataset}-val.json --data /data/{dataset} --base-model {base}" in line
    assert not out.exists()


def test_refuses_missing_data_and_a_used_output_folder(tmp_path):
    result = script("--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out"))
    assert result.returncode == 2 and "no real data at" in result.stderr and not (tmp_path / "out").exists()
    (tmp_path / "data" / "hippocampus").mkdir(parents=True)
    (tmp_path / "data" / "hippocampus" / "dataset.json").write_text("{}")
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "keep.txt").write_text("mine")
    result = script("--data", str(tmp_path / "data"), "--out", str(tmp_path / "used"))
    assert result.returncode == 2 and "is not empty" in result.stderr
    assert [p.name for p in (tmp_path / "used").iterdir()] == ["keep.txt"]


def test_cuda_out_of_memory_in_training_exits_4_with_its_message(
    tmp_path, hippocampus_dir, capsys, monkeypatch
):
    """torch.cuda.OutOfMemoryError raised inside the real training step, through the real CLI."""
    import tcurlora.training.step

    def out_of_memory(self, image, label, loss_fn, iteration):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 512.00 GiB")

    monkeypatch.setattr(tcurlora.training.step.OptimStep, "__call__", out_of_memory)
    job = write_job(tmp_path / "job.json", tiny_job(hippocampus_dir, tmp_path / "adapter"))
    code, events, _, _ = run(capsys, "finetune", "--job", str(job), "--events")
    assert code == 4
    assert events[-1] == {
        **events[-1],
        "event": "error",
        "kind": "out_of_memory",
        "message": CUDA_OOM_MESSAGE,
        "exit_code": 4,
    }
    assert not (tmp_path / "adapter").exists()


LIMITED = """
import resource, sys
import monai, torch  # noqa: F401  (their address space is not what is limited)
import tcurlora.finetuning, tcurlora.finetuning_setup  # noqa: F401
from tcurlora.cli import main
with open("/proc/self/status") as status:
    size = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmSize"))
resource.setrlimit(resource.RLIMIT_AS, (size + 100 * 2**20, resource.RLIM_INFINITY))
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_a_forced_small_memory_limit_exits_4_with_the_cpu_message(tmp_path, hippocampus_dir):
    """A real allocation failure: 100 MB of address space above what the imports took, batch 64."""
    job = write_job(tmp_path / "job.json", tiny_job(hippocampus_dir, tmp_path / "adapter", batch_size=64))
    result = subprocess.run(
        [sys.executable, "-c", LIMITED, "finetune", "--job", str(job)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 4, result.stdout[-2000:] + result.stderr[-2000:]
    final = json.loads(result.stdout.strip().splitlines()[-1])
    assert final["kind"] == "out_of_memory" and final["message"] == CPU_OOM_MESSAGE


def test_memory_fraction_variable(monkeypatch):
    monkeypatch.delenv("TCURLORA_CUDA_MEMORY_FRACTION", raising=False)
    assert memory_fraction() is None
    monkeypatch.setenv("TCURLORA_CUDA_MEMORY_FRACTION", "0.25")
    assert memory_fraction() == 0.25
    for bad in ("0", "1.5", "half"):
        monkeypatch.setenv("TCURLORA_CUDA_MEMORY_FRACTION", bad)
        with pytest.raises(ConfigError, match=f"must be a number in \\(0, 1\\], got '{bad}'"):
            memory_fraction()


@pytest.mark.slow
def test_pretraining_for_a_fixed_time_with_timed_checkpoints(tmp_path):
    from tcurlora.pretraining.config import PretrainConfig, SourceConfig
    from tcurlora.pretraining.run import run_pretrain
    from tcurlora.synthetic import write_dataset

    write_dataset(tmp_path / "a", 2, seed=1, shape=(24, 28, 28))
    config = PretrainConfig(
        name="tiny-timed",
        sources=[SourceConfig("a", "a", val_case_ids=["synthetic_001"])],
        arch_params=dict(TINY_UNETR_ARCH),
        spacing=(1.5, 1.5, 1.5),
        patch_size=(32, 32, 32),
        iterations=3,
        batch_size=1,
        warmup=1,
        checkpoint_every=1000,
        threads=1,
    )
    # A checkpoint "every minute" scaled down: every 1e-6 minutes, so after each step but the last.
    card = run_pretrain(
        config, tmp_path, tmp_path / "timed", device_name="cpu", log=lambda m: None, checkpoint_minutes=1e-6
    )
    assert card["iterations"] == 3 and card["complete"] is True
    checkpoint = json.loads((tmp_path / "timed.checkpoint" / MODEL_SPEC_FILE).read_text())
    assert checkpoint["card"]["iterations"] == 2
    # A fixed time: stopped after the first step, finished as a (non-final) model at iteration 1.
    card = run_pretrain(
        config, tmp_path, tmp_path / "short", device_name="cpu", log=lambda m: None, max_minutes=1e-6
    )
    assert card["iterations"] == 1 and card["complete"] is False
    assert (tmp_path / "short" / MODEL_WEIGHTS_FILE).is_file()
