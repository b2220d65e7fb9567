"""The benchmark's parts that the slow end-to-end bench tests reach only through a real run: the
per-process split of runs under torchrun, the plots, and one cost run on synthetic batches."""

from __future__ import annotations

import pytest

from tcurlora.bench import plots, ranks
from tcurlora.bench.cost import measure_cost


def test_without_torchrun_one_process_runs_everything(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert ranks.is_writer() and ranks.mine(3) == [0, 1, 2]
    env = {"PATH": "/bin", "RANK": "0"}
    assert ranks.worker_env(env) is env
    assert ranks.gather({1: {"b": 2}, 0: {"a": 1}}, 2) == [{"a": 1}, {"b": 2}]


def test_under_torchrun_each_rank_takes_every_nth_run_and_its_worker_sees_one_gpu(monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,6")
    assert not ranks.is_writer() and ranks.mine(5) == [1, 3]
    env = ranks.worker_env({"PATH": "/bin", "RANK": "1", "WORLD_SIZE": "2", "MASTER_PORT": "29500"})
    assert env == {"PATH": "/bin", "CUDA_VISIBLE_DEVICES": "6"}
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "-1")  # no GPU: nothing to choose
    assert "CUDA_VISIBLE_DEVICES" not in ranks.worker_env({"PATH": "/bin"})


def method(label: str, name: str) -> dict:
    return {"label": label, "method": name, "conv_targets": False}


def test_plots_are_written_and_not_blank(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.image
    import matplotlib.pyplot as plt

    rows = [
        {
            "k": 2,
            "label": "tcur-r2",
            "method": method("tcur-r2", "tcur"),
            "parameters": {"trainable": 900},
            "mean_dice": 0.6,
            "case_dice": [0.5, 0.7],
        },
        {
            "k": 2,
            "label": "full",
            "method": method("full", "full"),
            "parameters": {"trainable": 90000},
            "mean_dice": 0.7,
            "case_dice": [0.6, 0.8],
        },
    ]
    runs = [
        {"k": 2, "status": "ok", "method": method("tcur-r2", "tcur"), "losses": [1.0, 0.8, None, 0.6]},
        {"k": 2, "status": "failed", "method": method("full", "full"), "losses": []},
    ]
    written = [
        plots.dice_vs_parameters(rows, tmp_path / "a.png", plt),
        plots.dice_boxes(rows, 2, tmp_path / "b.png", plt),
        plots.loss_curves(runs, 2, tmp_path / "c.png", plt),
    ]
    for path in written:
        pixels = matplotlib.image.imread(path)
        assert pixels.shape[0] > 200 and pixels.std() > 0.01, path
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "b.png", "c.png"]  # no temporaries left
    assert plots.write_plots({"quality": {"runs": runs[1:]}}, tmp_path) == []  # nothing finished: no plots


@pytest.mark.parametrize("name", ["tcur", "full"])
def test_a_cost_run_times_steps_after_warm_up_and_counts_parameters(name):
    settings = {
        "device": "cpu",
        "base_model": "preset:unetr-tiny",
        "img_size": 16,
        "num_classes": 2,
        "amp": False,
        "batch_size": 1,
        "warmup": 1,
        "steps": 2,
        "latency_repeats": 2,
    }
    spec = {"method": name, "rank": 2, "selection": "topnorm", "conv_targets": False, "learning_rate": None}
    cost = measure_cost(spec, settings)
    assert cost["img_size"] == 16 and cost["arch_params"]["img_size"] == [16, 16, 16]
    assert (
        len(cost["step_time_s"]["all"]) == 2 and cost["step_time_s"]["min"] <= cost["step_time_s"]["median"]
    )
    trainable, total = cost["parameters"]["trainable"], cost["parameters"]["total"]
    assert (trainable == total) if name == "full" else (0 < trainable < total)
    assert set(cost["forward_latency"]) == {"unmerged_s", "merged_s"}
