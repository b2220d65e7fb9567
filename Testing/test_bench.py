"""`tcurlora bench`: config validation, the fixed split, and one tiny real benchmark on hippocampus MRI.

The end-to-end benchmark runs tCURLoRA, LoRA and full fine-tuning (each in its own worker process)
on 2 real cases for 4 iterations, evaluates on a fixed 2-case test split, measures synthetic-batch
cost, and the tests check the report's values, their consistency and the written files.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

import pytest

from tcurlora.bench.config import load_config
from tcurlora.bench.plan import fixed_split, plan_runs, training_cases
from tcurlora.data.cases import cases_from_decathlon
from tcurlora.errors import ConfigError, InputError, OutputExistsError
from tcurlora.filenames import BENCH_MARKDOWN_FILE, BENCH_REPORT_FILE, BENCH_REPORT_SCHEMA, BENCH_SCHEMA

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIGS = REPO_ROOT / "configs" / "bench"
ITERATIONS, WARMUP = 4, 2


def write_config(folder: Path, **values) -> Path:
    path = folder / "bench.json"
    path.write_text(json.dumps({"schema": BENCH_SCHEMA, "name": "t", **values}))
    return path


def bench_parser() -> argparse.ArgumentParser:
    """A parser with only the bench sub-command, registered the way cli.py registers every command."""
    from tcurlora.commands import bench

    parser = argparse.ArgumentParser(prog="tcurlora")
    bench.register(parser.add_subparsers(dest="command", required=True))
    return parser


def run_cli(argv: list[str]) -> int:
    args = bench_parser().parse_args(["bench", *argv])
    return args.func(args)


# ------------------------------------------------------------------------------------------- configs
def test_repository_configs_load_and_expand_the_issue_grid():
    names = sorted(p.stem for p in CONFIGS.glob("*.json"))
    assert names == [
        "design-hippocampus-val",
        "design-left_atrium-val",
        "design-left_atrium-val-fold2",
        "hippocampus",
        "hippocampus-cpu",
        "hippocampus-default",
        "left_atrium",
        "left_atrium-cpu",
        "left_atrium-default",
        "paper-size-gpu",
        "quick-cpu",
        "semi-left_atrium-val",
        "transfer-hippocampus-val",
        "transfer-left_atrium-val",
    ]
    hippocampus = load_config(CONFIGS / "hippocampus.json")
    labels = [m.label for m in hippocampus.methods]
    tcur = [m for m in hippocampus.methods if m.method == "tcur"]
    # ranks 4/8/16 x 4 selection strategies x with/without Conv3d targets
    assert len(tcur) == 24 and {m.rank for m in tcur} == {4, 8, 16}
    assert {m.selection for m in tcur} == {"topnorm", "leverage", "inverse", "uniform"}
    assert sum(m.conv_targets for m in tcur) == 12
    assert {"lora-r4", "lora-r8", "lora-r16", "decoder", "full", "head"} <= set(labels)
    assert len(labels) == len(set(labels)) == 30
    assert hippocampus.k == [5, 10] and hippocampus.data.name == "hippocampus"
    atrium = load_config(CONFIGS / "left_atrium.json")
    assert atrium.k == [4, 8, 16] and len(atrium.seeds) == 3 and atrium.test_cases == 24
    paper = load_config(CONFIGS / "paper-size-gpu.json")
    assert paper.cost.base_model == "preset:unetr-base" and paper.cost.img_size == 128
    assert not paper.methods
    for name, full in (("hippocampus-cpu", hippocampus), ("left_atrium-cpu", atrium)):
        cut = load_config(CONFIGS / f"{name}.json")  # the CPU cut keeps the full grid's test split
        assert cut.test_cases == full.test_cases and cut.data == full.data and set(cut.k) <= set(full.k)
        assert {"tcur-r8-topnorm", "tcur-r8-topnorm+conv", "lora-r8", "full"} <= {
            m.label for m in cut.methods
        }
    for name, full, k in (("design-hippocampus-val", hippocampus, 10), ("design-left_atrium-val", atrium, 8)):
        design = load_config(CONFIGS / f"{name}.json")  # designs are compared on validation cases only
        assert design.held_out_cases == full.test_cases and design.data == full.data and design.k == [k]
        assert [m.method for m in design.methods] == ["tcur"]
    semi = load_config(
        CONFIGS / "semi-left_atrium-val.json"
    )  # tuned on validation cases only, never the test split
    assert semi.held_out_cases == atrium.test_cases and semi.data == atrium.data and semi.k == [8]
    assert [m.label for m in semi.methods] == [
        "tcur-r8-topnorm+conv",
        "tcur-r8-topnorm+conv+unlabeled-test-uw1",
    ]
    for name, full, k in (("hippocampus-default", hippocampus, 10), ("left_atrium-default", atrium, 8)):
        # the default recipe against its peers, on the test split
        acceptance = load_config(CONFIGS / f"{name}.json")
        assert acceptance.test_cases == full.test_cases
        assert acceptance.data == full.data and acceptance.k == [k]
        assert acceptance.iterations == 500 and acceptance.spacing == "auto"
        expected = ["tcur-r8-topnorm+conv", "scratch", "decoder", "full-lr0.001"]
        if name.startswith("left_atrium"):
            # the default again, with the test split's images as unlabeled scans
            expected.append("tcur-r8-topnorm+conv+unlabeled-test")
        assert [m.label for m in acceptance.methods] == expected


def test_the_two_left_atrium_validation_folds_score_every_non_test_case_once(left_atrium_dir):
    """design-left_atrium-val and its fold 2 swap training and validation cases; neither sees the test split."""
    cases = cases_from_decathlon(left_atrium_dir)
    folds = [
        load_config(CONFIGS / f"{name}.json")
        for name in ("design-left_atrium-val", "design-left_atrium-val-fold2")
    ]
    splits = [fixed_split(cases, config) for config in folds]
    test_split = {c.id for c in cases[-folds[0].held_out_cases :]}
    non_test = [c.id for c in cases[: -folds[0].held_out_cases]]
    assert folds[1].held_out_cases == folds[0].held_out_cases == 24 and len(non_test) == 16
    first, second = ({c.id for c in s.test} for s in splits)
    assert first == set(non_test[8:]) and second == set(non_test[:8])
    for split in splits:
        assert {c.id for c in split.pool} == set(non_test) - {c.id for c in split.test}
        assert not ({c.id for c in split.pool + split.test} & test_split)
    assert [m.label for m in folds[1].methods] == ["tcur-r8-topnorm+conv", "scratch", "decoder"]


def test_a_learning_rate_entry_is_its_own_setting(tmp_path):
    entries = [
        {"method": "tcur", "conv_targets": True},
        {"method": "tcur", "conv_targets": True, "learning_rate": 0.002},
        {"method": "tcur", "conv_targets": True, "modules_learning_rate": 0.003},
    ]
    config = load_config(write_config(tmp_path, methods=entries, data="x"))
    assert [m.label for m in config.methods] == [
        "tcur-r8-topnorm+conv",
        "tcur-r8-topnorm+conv-lr0.002",
        "tcur-r8-topnorm+conv-mlr0.003",
    ]
    assert config.methods[1].learning_rate == 0.002
    assert config.methods[2].modules_learning_rate == 0.003 and config.methods[2].learning_rate is None
    with pytest.raises(ConfigError, match="'methods\\[0\\].modules_learning_rate': must be > 0"):
        load_config(
            write_config(tmp_path, methods=[{"method": "tcur", "modules_learning_rate": 0}], data="x")
        )


def test_an_unlabeled_weight_and_loss_reach_the_finetune_job(tmp_path, monkeypatch):
    """The mean teacher's weight and loss are settings of their own, and the run's job carries them (only
    with unlabeled)."""
    from tcurlora.bench.single import finetune_job

    entries = [
        {"method": "tcur", "unlabeled": "test"},
        {"method": "tcur", "unlabeled": "test", "unlabeled_weight": 1, "unlabeled_loss": "pseudo_label"},
    ]
    config = load_config(write_config(tmp_path, methods=entries, data="x"))
    assert [m.label for m in config.methods] == [
        "tcur-r8-topnorm+unlabeled-test",
        "tcur-r8-topnorm+unlabeled-test-uw1-pseudo_label",
    ]
    image = tmp_path / "a.nii.gz"
    run = {
        "method": config.methods[1].to_dict(),
        "seed": 0,
        "train": [{"id": "a", "image": [str(image)], "label": str(image)}],
        "test": [{"id": "b", "image": [str(tmp_path / "b.nii.gz")], "label": str(image)}],
    }
    settings = {
        "base_model": "builtin",
        "label_names": ["x"],
        "iterations": 2,
        "batch_size": 1,
        "patch_size": None,
        "spacing": None,
        "device": "cpu",
        "amp": False,
    }
    job = finetune_job(run, settings, tmp_path / "out")
    assert job.modules_learning_rate is None  # not set: finetune's default
    with_rate = {**run, "method": {**run["method"], "modules_learning_rate": 0.003}}
    assert finetune_job(with_rate, settings, tmp_path / "m").modules_learning_rate == 0.003
    # a relative `bench --output`: the adapter goes where the evaluation reads it (cwd/out/runs/RUN/adapter)
    monkeypatch.chdir(tmp_path)
    relative = finetune_job(run, settings, Path("out") / "runs" / "r1" / "adapter")
    assert Path(relative.output) == tmp_path / "out" / "runs" / "r1" / "adapter"
    assert job.unlabeled_weight == 1.0 and [p.name for p in job.unlabeled] == ["b.nii.gz"]
    assert job.unlabeled_loss == "pseudo_label"
    assert finetune_job(
        {**run, "method": config.methods[0].to_dict()}, settings, tmp_path / "o"
    ).unlabeled_loss == ("consistency")
    with pytest.raises(ConfigError, match="'methods\\[0\\].unlabeled_weight': needs 'unlabeled'"):
        load_config(write_config(tmp_path, methods=[{"method": "tcur", "unlabeled_weight": 1}], data="x"))
    for entry in (
        {"method": "tcur", "unlabeled_loss": "pseudo_label"},
        {**entries[1], "unlabeled_loss": "mse"},
    ):
        with pytest.raises(
            ConfigError, match="'methods\\[0\\].unlabeled_loss': needs 'unlabeled' and one of"
        ):
            load_config(write_config(tmp_path, methods=[entry], data="x"))


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"methods": [{"method": "dora"}], "data": "x"}, "'methods[0].method': must be one of"),
        ({"methods": [{"method": "tcur", "rank": [4, 0]}], "data": "x"}, "'methods[0].rank'"),
        ({"methods": [{"method": "tcur", "selection": "best"}], "data": "x"}, "'methods[0].selection'"),
        ({"methods": [{"method": "lora"}, {"method": "lora"}], "data": "x"}, "'lora-r8' appears twice"),
        ({"methods": [{"method": "full"}]}, "'data': quality runs need a Decathlon folder"),
        ({"methods": [{"method": "full"}], "data": "x", "iterations": 0}, "'iterations': must be >= 1"),
        ({"methods": [{"method": "full"}], "data": "x", "seed": 1}, "'seed': unknown key"),
        (
            {"methods": [{"method": "full"}], "data": "x", "largest_component": "some"},
            """'largest_component': expected true, false or "auto", got str 'some'""",
        ),
        ({"methods": [{"method": "full"}], "data": "x", "tta": 1}, "'tta': expected true or false"),
        (
            {"cost": {"img_size": 64, "methods": [{"method": "full"}], "stepz": 3}},
            "'cost.stepz': unknown key",
        ),
        ({}, "give `methods`"),
    ],
)
def test_bad_config_is_a_config_error_naming_file_and_key(tmp_path, values, message):
    path = write_config(tmp_path, **values)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert message in str(caught.value) and str(path.resolve()) in str(caught.value)


def test_missing_and_malformed_config_files(tmp_path):
    with pytest.raises(InputError, match="benchmark config not found"):
        load_config(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{oops")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_config(tmp_path / "bad.json")


# --------------------------------------------------------------------------------------------- split
def test_fixed_split_and_nested_training_sets_on_real_cases(tmp_path, hippocampus_dir):
    config = load_config(
        write_config(
            tmp_path,
            data=str(hippocampus_dir),
            k=[3, 6],
            seeds=[0, 1],
            test_cases=5,
            methods=[{"method": "full"}, {"method": "head"}],
        )
    )
    cases = cases_from_decathlon(hippocampus_dir)
    split = fixed_split(cases, config)
    assert [c.id for c in split.test] == [c.id for c in cases[-5:]]
    assert not {c.id for c in split.test} & {c.id for c in split.pool}
    assert len(split.pool) == len(cases) - 5
    small, large = training_cases(split.pool, 3, 0), training_cases(split.pool, 6, 0)
    assert [c.id for c in small] == [c.id for c in large[:3]]  # k=3 is a subset of k=6 for one seed
    assert [c.id for c in training_cases(split.pool, 6, 0)] == [c.id for c in large]  # deterministic
    assert [c.id for c in training_cases(split.pool, 6, 1)] != [c.id for c in large]
    runs = plan_runs(config, split)
    assert [r.run_id for r in runs][:3] == ["k3-s0-full", "k3-s0-head", "k3-s1-full"] and len(runs) == 8

    too_many = load_config(
        write_config(
            tmp_path, data=str(hippocampus_dir), k=[len(cases)], test_cases=5, methods=[{"method": "full"}]
        )
    )
    with pytest.raises(ConfigError, match=f"k = {len(cases)} needs more training cases"):
        fixed_split(cases, too_many)
    named = load_config(
        write_config(
            tmp_path,
            data=str(hippocampus_dir),
            test_case_ids=["hippocampus_999"],
            methods=[{"method": "full"}],
        )
    )
    with pytest.raises(ConfigError, match="test_case_ids not in the data set: hippocampus_999"):
        fixed_split(cases, named)


# ------------------------------------------------------------------------------ tiny real benchmark
@pytest.fixture(scope="module")
def tiny_bench(tmp_path_factory, hippocampus_dir) -> dict:
    work = tmp_path_factory.mktemp("bench")
    config = write_config(
        work,
        data=str(hippocampus_dir),
        base_model="preset:unetr-tiny",
        k=[2],
        seeds=[0],
        test_cases=2,
        iterations=ITERATIONS,
        batch_size=1,
        device="cpu",
        latency_cases=1,
        # a report test: 4 steps from random weights segment scattered voxels, and the mirrored mean or
        # their largest piece misses the structure; the tables need a Dice above 0 (one plain pass, as
        # `segment --no-tta --no-largest-component`; the post-processing is test_postprocessing's)
        tta=False,
        largest_component=False,
        warmup_steps=WARMUP,
        isolate=False,
        threads=1,
        methods=[{"method": "tcur", "rank": 2}, {"method": "lora", "rank": 2}, {"method": "full"}],
        cost={
            "base_model": "preset:unetr-tiny",
            "img_size": 32,
            "warmup": 1,
            "steps": 2,
            "device": "cpu",
            "methods": [{"method": "tcur", "rank": 2}, {"method": "full"}],
        },
    )
    output = work / "out"
    # quality runs in this process (saves a torch import per run); cost runs each in a worker process
    code = run_cli([str(config), "--output", str(output), "--only", "quality"])
    assert code == 0
    settings = json.loads(config.read_text())
    config.write_text(json.dumps({**settings, "isolate": True}))
    code = run_cli([str(config), "--output", str(output), "--only", "cost", "--resume"])
    report = json.loads((output / BENCH_REPORT_FILE).read_text())
    return {"code": code, "output": output, "config": config, "report": report, "data": hippocampus_dir}


@pytest.mark.slow
def test_report_records_environment_base_and_split(tiny_bench):
    assert tiny_bench["code"] == 0
    report = tiny_bench["report"]
    assert report["schema"] == BENCH_REPORT_SCHEMA
    env = report["environment"]
    assert env["device"] == "cpu" and {"torch", "monai", "peft", "tcurlora"} <= set(env["versions"])
    assert env["git_commit"] is None or len(env["git_commit"]) == 40
    quality = report["quality"]
    assert (
        quality["base_model"]["reference"] == "preset:unetr-tiny"
        and quality["base_model"]["pretrained"] is False
    )
    assert quality["label_names"] == ["Anterior", "Posterior"]
    # evaluated as segment with these settings: one plain pass, no component cleanup (as configured)
    assert (quality["settings"]["tta"], quality["settings"]["largest_component"]) == (False, False)
    all_ids = [c.id for c in cases_from_decathlon(tiny_bench["data"])]
    assert quality["test_case_ids"] == all_ids[-2:]
    for run in quality["runs"]:
        assert run["status"] == "ok", run
        assert len(run["train_cases"]) == 2 and not set(run["train_cases"]) & set(quality["test_case_ids"])
        assert [c["id"] for c in run["test"]["cases"]] == quality["test_case_ids"]


@pytest.mark.slow
def test_runs_measure_parameters_sizes_times_memory(tiny_bench):
    runs = {r["method"]["label"]: r for r in tiny_bench["report"]["quality"]["runs"]}
    assert set(runs) == {"tcur-r2-topnorm", "lora-r2", "full"}
    tcur, lora, full = runs["tcur-r2-topnorm"], runs["lora-r2"], runs["full"]
    assert full["parameters"]["trainable"] == full["parameters"]["total"]
    assert tcur["parameters"]["trainable"] < lora["parameters"]["trainable"] < full["parameters"]["trainable"]
    # the replaced 3-class head (8 features -> 3 classes, 1x1x1 conv) trains in every method
    assert tcur["parameters"]["head"] == lora["parameters"]["head"] == 8 * 3 + 3
    assert tcur["adapter_bytes"] < lora["adapter_bytes"] < full["adapter_bytes"]
    assert full["adapter_bytes"] >= 4 * full["parameters"]["total"]  # fp32 weights of the whole network
    for run in runs.values():
        assert len(run["losses"]) == ITERATIONS and all(math.isfinite(v) for v in run["losses"])
        assert run["step_time_s"]["steps_timed"] == ITERATIONS - WARMUP  # intervals after the warm-up steps
        assert run["step_time_s"]["median"] > 0 and run["adapt_wall_s"] > 0
        memory = run["peak_memory"]
        assert memory["kind"] == "cpu_peak_rss" and memory["isolated"] is False
        assert memory["bytes"] >= memory["process_start_bytes"] > 50 * 2**20
        assert run["latency"]["volumes"] == 1
        assert run["latency"]["unmerged_median_s"] > 0 and run["latency"]["merged_median_s"] > 0
        assert run["merge_agreement"] > 0.99  # merged and unmerged weights segment the same voxels
        for name, mean in run["test"]["mean"].items():
            per_case = [c["classes"][name]["dice"] for c in run["test"]["cases"]]
            assert all(0.0 <= d <= 1.0 for d in per_case)
            assert mean["dice"] == pytest.approx(sum(per_case) / len(per_case))


@pytest.mark.slow
def test_markdown_tables_findings_and_plots(tiny_bench):
    from tcurlora.bench.summary import quality_rows

    output, report = tiny_bench["output"], tiny_bench["report"]
    text = (output / BENCH_MARKDOWN_FILE).read_text()
    rows = {r["label"]: r for r in quality_rows(report["quality"])}
    assert rows["full"]["ratio_to_full"] == pytest.approx(1.0)
    assert rows["tcur-r2-topnorm"]["ratio_to_full"] == pytest.approx(
        rows["tcur-r2-topnorm"]["mean_dice"] / rows["full"]["mean_dice"]
    )
    for label, row in rows.items():
        line = next(li for li in text.splitlines() if li.startswith(f"| {label} |"))
        assert f"{row['mean_dice']:.3f}" in line and f"{row['ratio_to_full']:.3f}" in line
    assert "RANDOM INIT, not pretrained" in text and "- device: cpu" in text
    assert (
        f"- command: `tcurlora bench {tiny_bench['config']} --output {output} --only cost --resume`" in text
    )
    assert "## Where tCURLoRA wins and loses" in text
    ratio = rows["tcur-r2-topnorm"]["ratio_to_full"]
    assert f"reaches {100 * ratio:.1f}% of full fine-tuning's mean Dice" in text
    assert ("WIN (reaches" if ratio >= 0.98 else "LOSS (below") in text
    assert "tcur-r2-topnorm (" in text and "vs lora-r2 (" in text
    assert "synthetic 32^3 batches: tcur-r2-topnorm vs full: step time" in text
    import matplotlib.image

    for name in ("dice_vs_parameters.png", "dice_per_case_k2.png", "loss_curves_k2.png"):
        assert f"]({name})" in text
        pixels = matplotlib.image.imread(output / name)
        assert pixels.shape[0] > 200 and pixels.shape[1] > 200 and pixels.std() > 0.01  # not blank


@pytest.mark.slow
def test_cost_runs_on_synthetic_batches(tiny_bench):
    cost = {r["method"]["label"]: r for r in tiny_bench["report"]["cost"]}
    assert set(cost) == {"tcur-r2-topnorm", "full"}
    tcur, full = cost["tcur-r2-topnorm"], cost["full"]
    assert tcur["status"] == full["status"] == "ok"
    assert tcur["img_size"] == 32 and tcur["arch_params"]["img_size"] == [32, 32, 32]
    assert tcur["parameters"]["trainable"] < full["parameters"]["trainable"] == full["parameters"]["total"]
    assert (
        len(tcur["step_time_s"]["all"]) == 2 and tcur["step_time_s"]["min"] <= tcur["step_time_s"]["median"]
    )
    assert tcur["peak_memory"]["isolated"] is True and tcur["peak_memory"]["bytes"] > 50 * 2**20


@pytest.mark.slow
def test_existing_output_needs_force_and_report_only_rewrites(tiny_bench):
    output = tiny_bench["output"]
    with pytest.raises(OutputExistsError, match="use --force"):
        run_cli([str(tiny_bench["config"]), "--output", str(output)])
    before = (output / BENCH_MARKDOWN_FILE).read_text()
    (output / BENCH_MARKDOWN_FILE).unlink()
    assert run_cli(["--report-only", str(output)]) == 0
    assert (output / BENCH_MARKDOWN_FILE).read_text() == before


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the no-GPU refusal")
def test_gpu_benchmark_refuses_to_measure_the_cpu_quietly(tmp_path):
    with pytest.raises(
        ConfigError, match="'cost.device': this benchmark asks for cuda, but CUDA is not available"
    ):
        run_cli([str(CONFIGS / "paper-size-gpu.json"), "--output", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def test_a_failing_run_is_recorded_not_fatal(tmp_path, hippocampus_dir):
    from tcurlora.bench.config import MethodSpec
    from tcurlora.bench.plan import RunSpec
    from tcurlora.bench.runner import execute, quality_settings
    from tcurlora.data.cases import Case

    config = load_config(write_config(tmp_path, data=str(hippocampus_dir), methods=[{"method": "full"}]))
    missing = Case("ghost", [tmp_path / "ghost.nii.gz"], tmp_path / "ghost_label.nii.gz")
    run = RunSpec("k1-s0-full", MethodSpec("full"), 1, 0, [missing], [missing])
    spec = {
        "run": run.to_dict(),
        "settings": quality_settings(config, "preset:unetr-tiny", ["a", "b"]),
        "workdir": str(tmp_path / "run"),
    }
    result = execute("quality", spec, tmp_path / "run", isolate=False)
    assert result["status"] == "failed" and result["kind"] == "input_error"
    assert "ghost.nii.gz" in result["error"]
    assert json.loads((tmp_path / "run" / "result.json").read_text())["status"] == "failed"


def _fake_run(label: str, method: str, rank: int, dice: float, adapter: int, step: float) -> dict:
    """A minimal ok run record (one class, one test case) for the summary logic."""
    return {
        "status": "ok",
        "k": 5,
        "seed": 0,
        "adapter_bytes": 4 * adapter,
        "adapt_wall_s": 1.0,
        "latency": {},
        "method": {
            "label": label,
            "method": method,
            "rank": rank,
            "selection": "topnorm",
            "conv_targets": False,
        },
        "parameters": {
            "total": 10**6,
            "trainable": adapter + 10,
            "adapter": adapter,
            "head": 10,
            "trainable_percent": (adapter + 10) / 10**4,
        },
        "step_time_s": {"median": step},
        "peak_memory": {"kind": "cpu_peak_rss", "bytes": 100},
        "test": {
            "cases": [{"id": "c", "classes": {"A": {"dice": dice, "hd95": 1.0}}}],
            "mean": {"A": {"dice": dice, "hd95": 1.0, "hd95_infinite": 0}},
        },
    }


def test_findings_compare_at_equal_parameters_and_say_win_loss_or_tie():
    from tcurlora.bench.summary import findings

    runs = [
        _fake_run("tcur-r4-topnorm", "tcur", 4, 0.80, 1_000, 2.0),
        _fake_run("tcur-r16-topnorm", "tcur", 16, 0.90, 16_000, 3.0),
        _fake_run("lora-r4", "lora", 4, 0.85, 1_200, 1.0),
        _fake_run("lora-r16", "lora", 16, 0.90, 20_000, 1.5),
        _fake_run("full", "full", 8, 0.95, 10**6, 6.0),
    ]
    lines = findings({"quality": {"runs": runs, "label_names": ["A"]}})
    assert "k=5: best tCURLoRA (tcur-r16-topnorm, 16,010 trainable) reaches 94.7% of full" in lines[0]
    assert lines[0].endswith("LOSS (below the paper's 98%).")
    # each LoRA is compared with the tCURLoRA setting nearest in adapter parameters
    assert any(
        li.startswith("k=5: tcur-r4-topnorm (1,000 adapter parameters) vs lora-r4 (1,200): -0.050")
        and "LOSS" in li
        for li in lines
    )
    assert any(
        li.startswith("k=5: tcur-r16-topnorm (16,000 adapter parameters) vs lora-r16 (20,000): +0.000")
        and "(TIE" in li
        for li in lines
    )
    assert "training at k=5: tcur-r16-topnorm vs lora-r16: step time 2.00x (higher)" in " ".join(lines)
    assert (
        "tcur-r4-topnorm vs full: step time 0.33x (lower), peak memory 1.00x (same), adapter file 1/1,000"
        in " ".join(lines)
    )


def test_findings_name_the_finetune_default_when_another_tcur_setting_is_best():
    from tcurlora.bench.summary import DEFAULT_SETTING, findings

    runs = [
        _fake_run(DEFAULT_SETTING, "tcur", 8, 0.57, 30_000, 1.0),
        _fake_run("tcur-r16-topnorm", "tcur", 16, 0.60, 16_000, 1.0),
        _fake_run("full", "full", 8, 0.60, 10**6, 2.0),
    ]
    lines = findings({"quality": {"runs": runs, "label_names": ["A"]}})
    assert DEFAULT_SETTING == "tcur-r8-topnorm+conv"
    assert (
        lines[0]
        == "k=5: the default setting tcur-r8-topnorm+conv reaches 95.0% of full fine-tuning's mean Dice (0.570)."
    )
    assert lines[1].startswith("k=5: best tCURLoRA (tcur-r16-topnorm, 16,010 trainable) reaches 100.0%")


def test_report_says_what_the_base_contributes_over_scratch():
    from tcurlora.bench.report import LOSS_TO_SCRATCH, to_markdown
    from tcurlora.bench.summary import DEFAULT_SETTING, base_contribution

    def run(label, method, dice, seed, k=5):
        return {**_fake_run(label, method, 8, dice, 1_000, 1.0), "seed": seed, "k": k}

    runs = [
        run(DEFAULT_SETTING, "tcur", 0.70, 0),
        run("full", "full", 0.65, 0),
        run("scratch", "scratch", 0.60, 0),
        run(DEFAULT_SETTING, "tcur", 0.50, 1),
        run("full", "full", 0.58, 1),
        run("scratch", "scratch", 0.55, 1),
        run(DEFAULT_SETTING, "tcur", 0.40, 0, k=2),
        run("scratch", "scratch", 0.45, 0, k=2),
    ]
    report = {
        "config": {"methods": [{"label": DEFAULT_SETTING}, {"label": "full"}, {"label": "scratch"}]},
        "quality": {"runs": runs, "label_names": ["A"]},
    }
    rows = {(r["k"], r["seed"], r["label"]): r for r in base_contribution(report)}
    assert rows[(5, 0, DEFAULT_SETTING)]["difference"] == pytest.approx(0.10)
    assert rows[(5, 1, DEFAULT_SETTING)]["difference"] == pytest.approx(-0.05)
    assert rows[(5, None, DEFAULT_SETTING)]["difference"] == pytest.approx(0.025)
    assert rows[(5, None, "full")]["difference"] == pytest.approx(0.04)
    assert rows[(2, None, DEFAULT_SETTING)]["difference"] == pytest.approx(-0.05)
    assert not any(label == "scratch" for _, _, label in rows)

    lines = _report_markdown(report, to_markdown).splitlines()
    assert "## What the base contributes (each method's mean Dice minus scratch's)" in lines
    # one test case per run: its counts, no interval
    assert (
        f"| 5 | 0 | {DEFAULT_SETTING} | 0.700 | 0.600 | +0.100 | 1 / 0 of 1 | n/a | above scratch |" in lines
    )
    assert (
        f"| 5 | 1 | {DEFAULT_SETTING} | 0.500 | 0.550 | -0.050 | 0 / 1 of 1 | n/a | {LOSS_TO_SCRATCH} |"
        in lines
    )
    assert "| 5 | mean | full | 0.615 | 0.575 | +0.040 | 1 / 0 of 1 | n/a |  |" in lines
    assert (
        f"- k=5: the default method {DEFAULT_SETTING} is above scratch by +0.025 mean Dice (over 2 seeds)."
        in lines
    )
    assert (
        f"- k=2: the default method {DEFAULT_SETTING} is not above scratch by -0.050 mean Dice (over 1 seed): "
        f"{LOSS_TO_SCRATCH}."
    ) in lines
    assert LOSS_TO_SCRATCH == "**LOSS: the base does not beat scratch**"
    # no scratch run, no section
    report["quality"]["runs"] = [r for r in runs if r["method"]["method"] != "scratch"]
    assert base_contribution(report) == []
    assert "What the base contributes" not in _report_markdown(report, to_markdown)


def _cases_run(label: str, method: str, dice_by_case: dict[str, float], seed: int = 0) -> dict:
    """An ok run record scored on several named test cases (one class)."""
    run = _fake_run(label, method, 8, statistics.fmean(dice_by_case.values()), 1_000, 1.0)
    run["seed"] = seed
    run["test"]["cases"] = [
        {"id": i, "classes": {"A": {"dice": d, "hd95": 1.0}}} for i, d in dice_by_case.items()
    ]
    return run


def test_base_contribution_pairs_cases_by_id_and_bounds_the_mean_difference():
    from tcurlora.bench.paired import bootstrap_interval
    from tcurlora.bench.report import to_markdown
    from tcurlora.bench.summary import DEFAULT_SETTING, base_contribution

    scratch = {"a": 0.80, "b": 0.70, "c": 0.60, "d": 0.90}
    # the same cases in another order: pairing is by id, not by position
    tcur = {"d": 0.80, "c": 0.50, "b": 0.72, "a": 0.70}
    scratch1 = {"a": 0.82, "b": 0.70, "c": 0.60, "d": 0.88}
    tcur1 = {"a": 0.74, "b": 0.70, "c": 0.58, "d": 0.80}
    runs = [
        _cases_run(DEFAULT_SETTING, "tcur", tcur),
        _cases_run("scratch", "scratch", scratch),
        _cases_run(DEFAULT_SETTING, "tcur", tcur1, seed=1),
        _cases_run("scratch", "scratch", scratch1, seed=1),
    ]
    report = {
        "config": {"methods": [{"label": DEFAULT_SETTING}]},
        "quality": {"runs": runs, "label_names": ["A"]},
    }
    rows = {(r["k"], r["seed"]): r for r in base_contribution(report)}
    seed0 = rows[(5, 0)]
    assert (seed0["cases"], seed0["better"], seed0["worse"]) == (4, 1, 3)
    differences0 = [-0.10, 0.02, -0.10, -0.10]  # a, b, c, d
    assert seed0["interval"] == pytest.approx(list(bootstrap_interval(differences0)))
    assert seed0["difference"] == pytest.approx(statistics.fmean(differences0))
    seed1 = rows[(5, 1)]
    assert (seed1["better"], seed1["worse"]) == (0, 3)  # b is a tie
    mean = rows[(5, None)]
    per_case = [(-0.10 - 0.08) / 2, (0.02 + 0.0) / 2, (-0.10 - 0.02) / 2, (-0.10 - 0.08) / 2]
    assert (mean["cases"], mean["better"], mean["worse"]) == (4, 1, 3)
    assert mean["interval"] == pytest.approx(list(bootstrap_interval(per_case)))
    low, high = mean["interval"]
    assert min(per_case) <= low <= statistics.fmean(per_case) <= high <= max(per_case)
    assert high < 0  # every resample of these cases is a loss

    text = _report_markdown(report, to_markdown)
    assert f"| 5 | mean | {DEFAULT_SETTING} | " in text
    assert f"| 1 / 3 of 4 | [{low:+.3f}, {high:+.3f}] |" in text
    assert "within noise" not in text
    # a gap whose interval holds 0 is said to be within noise
    runs[0]["test"]["cases"][1]["classes"]["A"]["dice"] = 0.60  # c: 0.50 -> 0.60, a tie with scratch
    runs[0]["test"]["cases"][0]["classes"]["A"]["dice"] = 1.00  # d: 0.80 -> 1.00, a win
    runs[0]["test"]["mean"]["A"]["dice"] = statistics.fmean([1.00, 0.60, 0.72, 0.70])
    runs[2]["test"]["mean"]["A"]["dice"] = runs[3]["test"]["mean"]["A"]["dice"]
    for case in runs[2]["test"]["cases"]:
        case["classes"]["A"]["dice"] = scratch1[case["id"]]
    assert "(within noise: the 95% interval holds 0)" in _report_markdown(report, to_markdown)


def test_bootstrap_interval_is_exact_for_equal_differences_and_none_for_one_case():
    from tcurlora.bench.paired import bootstrap_interval

    assert bootstrap_interval([0.05] * 6) == pytest.approx((0.05, 0.05))
    assert bootstrap_interval([0.05]) is None
    values = [-0.3, 0.1, 0.2, 0.0, 0.05, -0.02, 0.4, 0.01]
    low, high = bootstrap_interval(values)
    assert low < statistics.fmean(values) < high
    assert bootstrap_interval(values) == (low, high)  # seeded: the same every time
    assert bootstrap_interval(values, level=0.5)[1] - bootstrap_interval(values, level=0.5)[0] < high - low


def test_paired_differences_leave_out_cases_one_run_lacks_or_scored_nan():
    from tcurlora.bench.paired import paired_differences

    run = _cases_run("a", "tcur", {"x": 0.5, "y": float("nan"), "z": 0.9})
    reference = _cases_run("b", "scratch", {"x": 0.4, "y": 0.7, "w": 0.1})
    assert paired_differences(run, reference) == pytest.approx({"x": 0.1})


def _report_markdown(report: dict, to_markdown) -> str:
    """report.md of a report.json-like structure (header fields filled in)."""
    env = {
        "device": "cpu",
        "cpu": "x",
        "cpu_count": 2,
        "torch_threads": 1,
        "versions": {},
        "python": "3",
        "platform": "linux",
    }
    quality = {
        **report["quality"],
        "base_model": {"reference": "b", "arch": "UNETR", "fingerprint": "f" * 64, "pretrained": True},
        "settings": {"iterations": 1, "batch_size": 1, "patch_size": None},
        "data": "d",
        "test_case_ids": ["c"],
        "pool_size": 3,
    }
    config = {"k": [2, 5], "seeds": [0, 1], **report["config"]}
    return to_markdown(
        {"name": "t", "command": "tcurlora bench", "environment": env, "config": config, "quality": quality}
    )
