"""The `scratch` method (the control group): the base's architecture with a seeded random initialisation,
every weight trained; its adapter holds every weight, so loading reproduces the trained model whatever
the base's weights are."""

from __future__ import annotations

import json

import pytest
import torch

from tcurlora.adapters.io import load_adapter
from tcurlora.adapters.methods.registry import METHODS, SCRATCH_LEARNING_RATE, method_info
from tcurlora.filenames import ADAPTER_CONFIG_FILE
from tcurlora.finetuning import Trainer, learning_rates
from tcurlora.finetuning_setup import prepare_training
from tcurlora.jobs.cancel import CancelToken
from tcurlora.jobs.events import RecordingSink
from tcurlora.jobs.schema import FinetuneJob
from tcurlora.models.registry import load_base_model

BASE = "preset:unetr-tiny"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from tcurlora.synthetic import write_dataset

    return write_dataset(tmp_path_factory.mktemp("scratch") / "data", 2, shape=(32, 36, 36), spacing=1.5)


def scratch_job(data, output, seed: int = 0, iterations: int = 2) -> FinetuneJob:
    return FinetuneJob.from_dict(
        {
            "command": "finetune",
            "base_model": BASE,
            "data": str(data),
            "method": "scratch",
            "seed": seed,
            "iterations": iterations,
            "batch_size": 1,
            "checkpoint_every": 0,
            "device": "cpu",
            "spacing": "base",
            "output": str(output),
        },
        output.parent,
    )


def initial_weights(data, tmp_path, seed: int) -> dict[str, torch.Tensor]:
    setup = prepare_training(scratch_job(data, tmp_path / f"unused{seed}", seed), RecordingSink())
    return {k: v.detach().clone() for k, v in setup.adapted.model.state_dict().items()}


def test_scratch_is_a_method_with_its_own_learning_rate():
    assert "scratch" in METHODS
    assert method_info("scratch").learning_rate == SCRATCH_LEARNING_RATE
    job = FinetuneJob.from_dict(
        {"command": "finetune", "base_model": BASE, "data": "x", "method": "scratch", "output": "out"}, "."
    )
    assert learning_rates(job)["adapter"] == SCRATCH_LEARNING_RATE


def test_scratch_starts_from_seeded_random_weights_not_the_base(data, tmp_path):
    base = load_base_model(BASE).model.state_dict()
    first, again, other = (initial_weights(data, tmp_path, s) for s in (0, 0, 1))
    head = "out.conv.conv."  # the new head is seeded as for every method
    body = [k for k in base if not k.startswith(head) and base[k].is_floating_point() and base[k].numel() > 1]
    assert body and set(first) == set(base)
    # not the base's weights (the preset base itself is built with seed 0, so the job seed is offset)
    assert all(not torch.equal(first[k], base[k]) for k in body if base[k].std() > 0)
    assert all(torch.equal(first[k], again[k]) for k in first)  # the same seed, the same start
    assert any(not torch.equal(first[k], other[k]) for k in body)  # another seed, another start


@pytest.mark.slow
def test_scratch_adapter_holds_every_weight_and_reloads_exactly_whatever_the_base(data, tmp_path):
    output = tmp_path / "adapter"
    job = scratch_job(data, output)
    sink = RecordingSink()
    setup = prepare_training(job, sink)
    trainer = Trainer(job, setup, sink, CancelToken())
    trainer.run(output)
    trained = trainer.adapted.eval()
    record = json.loads((output / ADAPTER_CONFIG_FILE).read_text())
    assert record["method"] == "scratch" and record["initialisation"] == "random"
    assert record["training"]["learning_rate"] == SCRATCH_LEARNING_RATE
    assert any("trained from random initialisation" in e.get("message", "") for e in sink.events)

    x = torch.randn(1, 1, 32, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = trained(x)
    # the named base, as segment loads it
    loaded = load_adapter(output, load_base_model(BASE).model)
    with torch.no_grad():
        assert torch.equal(loaded(x), expected)
    # a base whose weights are all different: they play no part (every weight is in the adapter)
    other = load_base_model(BASE).model
    with torch.no_grad():
        for parameter in other.parameters():
            parameter.add_(torch.randn_like(parameter))
    loaded = load_adapter(output, other, check_fingerprint=False)
    with torch.no_grad():
        assert torch.equal(loaded(x), expected)
    assert torch.equal(loaded.merge_and_unload()(x), expected)
