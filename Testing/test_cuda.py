"""CUDA-only tests (marked `cuda`, skipped without a GPU; scripts/gpu_check.sh runs them): the adapters
on the GPU in bf16 autocast against the CPU in float32, merge on the GPU, a real fine-tune with bf16
autocast through the CLI, and a real CUDA out-of-memory mapped to exit code 4."""

from __future__ import annotations

import copy

import pytest
import torch
from adapter_testing import CONV_TARGETS, small_swin, small_unetr

from tcurlora.adapters.config import AdapterConfig
from tcurlora.adapters.model import apply_adapter
from tcurlora.filenames import ADAPTER_CONFIG_FILE

pytestmark = pytest.mark.cuda
CUDA = torch.device("cuda")


def _randomized(model, method: str, **kwargs):
    adapted = apply_adapter(copy.deepcopy(model), AdapterConfig(method=method, rank=4, **kwargs))
    with torch.no_grad():
        for parameter in adapted.trainable_parameters():
            parameter.copy_(0.05 * torch.randn_like(parameter))
    return adapted


@pytest.mark.parametrize("arch", ["unetr", "swin"])
@pytest.mark.parametrize("method", ["tcur", "lora"])
def test_bf16_forward_backward_on_cuda_matches_cpu(arch, method):
    base = small_unetr(torch.float32) if arch == "unetr" else small_swin(torch.float32)
    adapted = _randomized(base, method, conv_target_modules=CONV_TARGETS)
    x = torch.randn(2, 1, 32, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = adapted(x)
    gpu = adapted.to(CUDA)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = gpu(x.to(CUDA))
    assert out.dtype == torch.bfloat16
    scale = float(expected.abs().max())
    assert float((out.float().cpu() - expected).abs().max()) < 0.05 * scale
    out.float().mean().backward()
    grads = [p.grad for p in gpu.trainable_parameters()]
    assert all(g is not None and g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)
    assert any(float(g.abs().max()) > 0 for g in grads)


def test_merge_on_cuda_equals_unmerged():
    adapted = _randomized(small_swin(torch.float32), "tcur", conv_target_modules=CONV_TARGETS).to(CUDA)
    x = torch.randn(1, 1, 32, 32, 32, device=CUDA)
    with torch.no_grad():
        unmerged = adapted(x)
        adapted.merge()
        torch.testing.assert_close(adapted(x), unmerged, atol=1e-4, rtol=1e-4)


def test_finetune_on_cuda_with_bf16_through_the_cli(tmp_path, hippocampus_dir, capsys):
    import json

    from trust_testing import run, tiny_job, write_job

    job = tiny_job(hippocampus_dir, tmp_path / "adapter", device="cuda", iterations=3)
    code, events, _, err = run(capsys, "finetune", "--job", str(write_job(tmp_path / "job.json", job)))
    assert code == 0, err
    started = next(e for e in events if e["event"] == "started")
    assert started["device"].startswith("cuda:")
    record = json.loads((tmp_path / "adapter" / ADAPTER_CONFIG_FILE).read_text())
    assert record["training"]["amp"] is True


def test_a_real_cuda_out_of_memory_exits_4(tmp_path, hippocampus_dir, capsys, monkeypatch):
    from trust_testing import run, tiny_job, write_job

    from tcurlora.jobs.runner import CUDA_OOM_MESSAGE

    free, _ = torch.cuda.mem_get_info()
    job = tiny_job(
        hippocampus_dir,
        tmp_path / "adapter",
        device="cuda",
        base_model="preset:unetr-base",
        method="full",
        batch_size=2,
        iterations=1,
    )
    monkeypatch.setenv("TCURLORA_CUDA_MEMORY_FRACTION", "0.01")  # ~1% of the GPU: UNETR-base cannot train
    code, events, _, err = run(capsys, "finetune", "--job", str(write_job(tmp_path / "job.json", job)))
    torch.cuda.set_per_process_memory_fraction(1.0)
    torch.cuda.empty_cache()
    assert code == 4, err
    assert events[-1]["kind"] == "out_of_memory" and events[-1]["message"] == CUDA_OOM_MESSAGE
    assert free > 0
