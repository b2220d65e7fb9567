"""The one training loop and step (tcurlora.training.loop, tcurlora.training.step): iteration counting, hooks,
the schedule, gradient clipping, and the `grad_clip` setting of a job and a recipe."""

from __future__ import annotations

import itertools
import json

import pytest
import torch

from tcurlora.cli import build_parser
from tcurlora.errors import ConfigError
from tcurlora.filenames import PRETRAIN_RECIPE_FORMAT
from tcurlora.jobs.schema import FinetuneJob
from tcurlora.pretraining.config import PretrainConfig
from tcurlora.training.loop import Batch, LoopHooks, run_loop
from tcurlora.training.step import OptimStep, grad_scaler

CPU = torch.device("cpu")


def squared_error(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return ((output - target) ** 2).sum()


class Recorder(LoopHooks):
    def __init__(self, stop_at: int | None = None):
        self.before: list[int] = []
        self.after: list[tuple[int, float]] = []
        self.stop_at = stop_at

    def before_step(self, iteration: int) -> None:
        self.before.append(iteration)

    def after_step(self, done: int, batch: Batch, loss: torch.Tensor) -> bool:
        self.after.append((done, float(loss.detach())))
        return done == self.stop_at


def linear_step(
    lr: float = 0.1, clip: float | None = None, schedule=None
) -> tuple[torch.nn.Linear, OptimStep]:
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1, bias=False)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    return model, OptimStep(
        model, optimizer, grad_scaler(CPU, False), amp=False, clip=clip, schedule=schedule
    )


def batches(count: int | None = None):
    x = torch.tensor([[1.0, 2.0, 3.0]])
    batch = Batch(x, torch.tensor([[10.0]]), squared_error, {"source": "a"})
    return itertools.repeat(batch) if count is None else iter([batch] * count)


def test_the_loop_counts_iterations_and_calls_the_hooks_in_order():
    model, step = linear_step(lr=0.01)
    hooks = Recorder()
    assert run_loop(step, batches(), 2, 6, hooks) == 6
    assert hooks.before == [2, 3, 4, 5]
    assert [done for done, _ in hooks.after] == [3, 4, 5, 6]
    losses = [loss for _, loss in hooks.after]
    assert losses == sorted(losses, reverse=True) and losses[-1] < losses[0], "the loss must fall"
    assert model.training


def test_a_hook_stops_the_loop_and_batches_are_drawn_only_when_needed():
    _, step = linear_step()
    hooks = Recorder(stop_at=2)
    assert run_loop(step, batches(2), 0, 10, hooks) == 2  # two batches: a third draw would raise
    assert hooks.before == [0, 1]
    with pytest.raises(ValueError, match="cannot start at iteration 5 of 3"):
        run_loop(step, batches(), 5, 3, hooks)


def test_a_finished_run_does_not_step():
    model, step = linear_step()
    before = model.weight.detach().clone()
    assert run_loop(step, batches(0), 4, 4, Recorder()) == 4
    assert torch.equal(model.weight, before)


def test_the_schedule_sets_each_groups_rate_from_its_initial_rate():
    _, step = linear_step(lr=0.5, schedule=lambda i: 1.0 / (i + 1))
    rates = []

    class Rates(LoopHooks):
        def after_step(self, done, batch, loss):
            rates.append(step.optimizer.param_groups[0]["lr"])
            return False

    run_loop(step, batches(), 0, 3, Rates())
    assert rates == pytest.approx([0.5, 0.25, 0.5 / 3])


def test_clipping_bounds_the_update_to_the_clipped_gradient():
    x, y = torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([[10.0]])
    model, step = linear_step(lr=1.0)
    gradient = torch.autograd.grad(squared_error(model(x), y), model.weight)[0]
    assert gradient.norm() > 1.0, "the test needs a gradient larger than the clip norm"
    before = model.weight.detach().clone()
    step(x, y, squared_error, 0)
    unclipped_update = before - model.weight.detach()
    torch.testing.assert_close(unclipped_update, gradient)  # SGD, lr 1: the update is the gradient

    model, step = linear_step(lr=1.0, clip=0.5)
    before = model.weight.detach().clone()
    step(x, y, squared_error, 0)
    update = before - model.weight.detach()
    torch.testing.assert_close(update.norm(), torch.tensor(0.5), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(update / update.norm(), gradient / gradient.norm())  # same direction
    with pytest.raises(ValueError, match="clip must be a positive gradient norm"):
        linear_step(clip=0.0)


def finetune_job(tmp_path, **overrides) -> dict:
    return {
        "command": "finetune",
        "base_model": "unetr-small-acdc-brats",
        "output": str(tmp_path / "out"),
        "cases": [{"id": "c1", "image": "i.nrrd", "label": "l.nrrd"}],
        **overrides,
    }


def test_grad_clip_is_a_job_setting_and_a_flag(tmp_path):
    assert FinetuneJob.from_dict(finetune_job(tmp_path), tmp_path).grad_clip is None
    assert FinetuneJob.from_dict(finetune_job(tmp_path, grad_clip=1), tmp_path).grad_clip == 1.0
    for bad, message in ((0, "must be > 0"), (-1, "must be in"), ("1", "expected a number")):
        with pytest.raises(ConfigError, match=f"key 'grad_clip': {message}"):
            FinetuneJob.from_dict(finetune_job(tmp_path, grad_clip=bad), tmp_path)
    args = build_parser().parse_args(["finetune", "--base-model", "b", "-o", "o", "--grad-clip", "0.5"])
    assert args.grad_clip == 0.5


def test_grad_clip_is_a_recipe_setting(tmp_path):
    data = {
        "format": PRETRAIN_RECIPE_FORMAT,
        "name": "n",
        "sources": [{"name": "a", "folder": "a"}],
        "arch_params": {},
        "grad_clip": 2.0,
    }
    path = tmp_path / "recipe.json"
    path.write_text(json.dumps(data))
    assert PretrainConfig.from_file(path).grad_clip == 2.0
    path.write_text(json.dumps({**data, "grad_clip": "2"}))
    with pytest.raises(ConfigError, match="key 'grad_clip': expected a number"):
        PretrainConfig.from_file(path)
