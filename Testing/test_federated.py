"""Federated adaptation on NVIDIA FLARE: aggregation exactness, site checks, and a real simulator run
(2 hippocampus cases per site, 2 rounds, 2 local steps) whose adapter `info` and `segment` accept."""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from adapter_testing import adapted_copy, small_unetr

from tcurlora.errors import ConfigError, FingerprintMismatchError
from tcurlora.federated.checks import Site, check_identity, check_sites, identity
from tcurlora.federated.tensors import merged_state, payload_bytes, shared_tensors
from tcurlora.filenames import ADAPTER_CONFIG_FILE, TRAINING_LOG_FILE

REPO = Path(__file__).resolve().parents[1]
CASES = (3, 5, 8)  # the sites' case counts: the aggregation weights


def make_site(data: Path, folder: Path, entries: list[dict], labels: dict | None = None) -> Path:
    """A Decathlon folder of `entries` of `data` (links to the real files), optionally other labels."""
    dataset = json.loads((data / "dataset.json").read_text())
    for entry in entries:
        for key in ("image", "label"):
            target = folder / entry[key]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to((data / entry[key]).resolve())
    meta = {k: v for k, v in dataset.items() if k != "training"}
    if labels is not None:
        meta["labels"] = labels
    (folder / "dataset.json").write_text(
        json.dumps({**meta, "numTraining": len(entries), "training": entries})
    )
    return folder


def delta_w(adapted, base_state: dict) -> dict[str, torch.Tensor]:
    """The weight update an adapter makes: merged weights minus the base's, per base weight."""
    plain = copy.deepcopy(adapted).merge_and_unload().state_dict()
    return {k: plain[k] - base_state[k] for k in base_state if k in plain}


def fedavg(sites: list[tuple[int, dict]]) -> dict:
    """FLARE's own weighted average (the helper FedAvg aggregates with), weights = case counts."""
    from nvflare.app_common.aggregators.weighted_aggregation_helper import WeightedAggregationHelper

    helper = WeightedAggregationHelper()
    for index, (cases, params) in enumerate(sites):
        helper.add(data=params, weight=cases, contributor_name=f"site-{index + 1}", contribution_round=0)
    return helper.get_result()


def federated_gap(method: str, **config) -> tuple[float, list[str]]:
    """Relative distance between the model of the averaged tensors and the average of the sites' delta-W,
    after each site moved every trained tensor from the same global start (as local training does)."""
    base = small_unetr(torch.float64)
    base_state = {k: v.clone() for k, v in base.state_dict().items()}
    start = adapted_copy(base, method=method, rank=4, **config)
    start_state = start.adapter_state_dict()
    generator = torch.Generator().manual_seed(3)
    sites, deltas = [], []
    for cases in CASES:
        site = adapted_copy(base, method=method, rank=4, **config)
        state = {
            k: v + 0.05 * torch.randn(v.shape, generator=generator, dtype=v.dtype)
            if v.is_floating_point()
            else v
            for k, v in start_state.items()
        }
        site.load_adapter_state_dict(state)
        sites.append((cases, shared_tensors(site.adapter_state_dict())))
        deltas.append((cases, delta_w(site, base_state)))
    start.load_adapter_state_dict(merged_state(start_state, fedavg(sites), "test"))
    averaged_model = delta_w(start, base_state)
    total = sum(CASES)
    expected = {k: sum(n * d[k] for n, d in deltas) / total for k in averaged_model}
    error = sum(float((averaged_model[k] - expected[k]).norm() ** 2) for k in expected) ** 0.5
    norm = sum(float(expected[k].norm() ** 2) for k in expected) ** 0.5
    return error / norm, sorted(sites[0][1])


def test_averaged_tcur_core_is_exactly_the_average_of_the_sites_updates():
    gap, sent = federated_gap("tcur", train_modules=["encoder1"])
    assert gap < 1e-12, gap  # float64: exact up to rounding
    assert sent and not [k for k in sent if k.endswith((".rows", ".cols"))]  # indices never travel
    assert any(k.startswith("model.encoder1.") for k in sent)


def test_averaged_lora_factors_are_not_the_average_of_the_sites_updates():
    gap, _ = federated_gap("lora")
    assert 1e-3 < gap < 1.0, gap  # avg(B)avg(A) != avg(BA): measured, stated in docs/federated.md


def test_payload_counts_only_floating_tensors():
    params = shared_tensors(
        {"a": torch.zeros(3, dtype=torch.bfloat16), "rows": torch.zeros(4, dtype=torch.long)}
    )
    assert list(params) == ["a"] and params["a"].dtype == np.float32
    assert payload_bytes(params) == 12
    with pytest.raises(ValueError, match="site-2: the global adapter does not fit"):
        merged_state({"a": torch.zeros(3), "b": torch.zeros(1)}, params, "site-2")


def site(name: str, labels=("Anterior", "Posterior"), spacing=(1.0, 1.0, 1.0)) -> Site:
    return Site(name, Path(f"/data/{name}"), 4, list(labels), spacing)


def test_sites_must_share_labels_and_spacing():
    assert check_sites([site("site-1"), site("site-2")], None) == (["Anterior", "Posterior"], (1.0, 1.0, 1.0))
    with pytest.raises(ConfigError, match=r"site-2 \(/data/site-2\) has labels \['Head', 'Tail'\]"):
        check_sites([site("site-1"), site("site-2", labels=("Head", "Tail"))], None)
    with pytest.raises(ConfigError, match=r"site-1 .* has labels"):
        check_sites([site("site-1"), site("site-2")], ["A", "B"])
    with pytest.raises(ConfigError, match=r"site-3 .* spacing \[1.5, 1.0, 1.0\] mm.*give one --spacing"):
        check_sites([site("site-1"), site("site-2"), site("site-3", spacing=(1.5, 1.0, 1.0))], None)


def test_site_with_another_base_refuses_the_global_adapter():
    ours = identity("a" * 64, ["Anterior"], (1, 1, 1), "tcur", 8)
    check_identity("site-2", ours, dict(ours))
    with pytest.raises(FingerprintMismatchError, match="site-2: its base model .*aaaaaaaaaaaa.*bbbbbbbbbbbb"):
        check_identity("site-2", ours, {**ours, "base_fingerprint": "b" * 64})
    with pytest.raises(ConfigError, match=r"site-2: its label names \['Anterior'\] differ"):
        check_identity("site-2", ours, {**ours, "label_names": ["Other"]})


def tcurlora(*args: str, cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "tcurlora", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def tcurlora_here(*args: str, cwd: Path, capsys, monkeypatch) -> tuple[int, str, str]:
    """The CLI in this process (no interpreter start-up): exit code, stdout, stderr."""
    from tcurlora.cli import main

    monkeypatch.chdir(cwd)
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def sites(hippocampus_dir, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("federation")
    entries = json.loads((hippocampus_dir / "dataset.json").read_text())["training"]
    make_site(hippocampus_dir, root / "A", entries[0:2])
    make_site(hippocampus_dir, root / "B", entries[2:4])
    return root


FEDERATE = [
    "federate",
    "--site",
    "A",
    "--site",
    "B",
    "--labels",
    "Anterior",
    "Posterior",
    "--local-steps",
    "2",
    "--base-model",
    "unetr-small-acdc-brats",
    "--threads",
    "1",
    "-o",
    "out",
]


@pytest.fixture(scope="module")
def federated(sites) -> Path:
    done = tcurlora(*FEDERATE, "--rounds", "2", cwd=sites)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "federated adapter written to" in done.stdout
    return sites / "out"


@pytest.mark.slow
def test_federate_writes_one_adapter_with_rounds_sites_and_case_counts(federated):
    config = json.loads((federated / ADAPTER_CONFIG_FILE).read_text())
    assert config["method"] == "tcur" and config["label_names"] == ["Anterior", "Posterior"]
    federation = config["federation"]
    assert federation["framework"] == "nvflare" and federation["rounds_done"] == 2
    assert federation["local_steps"] == 2 and federation["case_counts"] == {"site-1": 2, "site-2": 2}
    assert [h["round"] for h in federation["history"]] == [1, 2]
    for record in federation["history"]:
        assert record["dropped"] == [] and [e["site"] for e in record["sites"]] == ["site-1", "site-2"]
        for entry in record["sites"]:
            assert entry["cases"] == 2 and np.isfinite(entry["loss"])
            assert 0 < entry["payload_bytes"] < 300_000  # tCURLoRA: under 300 KB per site per round
    log = [json.loads(line) for line in (federated / TRAINING_LOG_FILE).read_text().splitlines()]
    assert [r["round"] for r in log] == [1, 2]
    assert config["training"]["iterations"] == 4 and config["preprocessing"]["spacing"] == [1.0, 1.0, 1.0]
    # each site said which classes its labels hold and which in several pieces; segment cleans the rest
    for record in federation["history"]:
        assert all(e["present_classes"] == [1, 2] and e["split_classes"] == [] for e in record["sites"])
    assert config["single_piece_classes"] == [1, 2]


@pytest.mark.slow
def test_info_and_segment_accept_the_federated_adapter(federated, sites, hippocampus_dir):
    import SimpleITK as sitk

    info = tcurlora("info", str(federated), cwd=sites, timeout=300)
    assert info.returncode == 0, info.stderr
    assert "tcur" in info.stdout and "63,567" in info.stdout
    image = hippocampus_dir / "imagesTr" / "hippocampus_001.nii.gz"
    out = sites / "seg.nii.gz"
    seg = tcurlora(
        "segment",
        str(image),
        "--base-model",
        "unetr-small-acdc-brats",
        "--adapter",
        str(federated),
        "-o",
        str(out),
        "--threads",
        "1",
        cwd=sites,
        timeout=300,
    )
    assert seg.returncode == 0, seg.stderr
    source, result = sitk.ReadImage(str(image)), sitk.ReadImage(str(out))
    assert result.GetSize() == source.GetSize()
    assert np.allclose(result.GetSpacing(), source.GetSpacing()) and np.allclose(
        result.GetOrigin(), source.GetOrigin()
    )
    assert set(np.unique(sitk.GetArrayFromImage(result))) <= {0, 1, 2}


@pytest.mark.slow
def test_a_resumed_federation_continues_from_the_last_finished_round(federated, sites):
    before = json.loads((federated / ADAPTER_CONFIG_FILE).read_text())["federation"]["history"]
    again = tcurlora(*FEDERATE, "--rounds", "2", "--resume", cwd=sites)
    assert again.returncode == 2 and "already finished 2 of 2 rounds" in again.stderr
    more = tcurlora(*FEDERATE, "--rounds", "3", "--resume", cwd=sites)
    assert more.returncode == 0, more.stdout[-3000:] + more.stderr[-3000:]
    history = json.loads((federated / ADAPTER_CONFIG_FILE).read_text())["federation"]["history"]
    assert [h["round"] for h in history] == [1, 2, 3] and history[:2] == before
    assert json.loads((federated / ADAPTER_CONFIG_FILE).read_text())["training"]["iterations"] == 6


def test_federate_refuses_a_site_with_other_labels_before_round_1(
    sites, hippocampus_dir, tmp_path, capsys, monkeypatch
):
    entries = json.loads((hippocampus_dir / "dataset.json").read_text())["training"]
    other = make_site(
        hippocampus_dir, tmp_path / "C", entries[4:6], labels={"0": "background", "1": "Head", "2": "Tail"}
    )
    shutil.copytree(sites / "A", tmp_path / "A", symlinks=True)
    code, _, err = tcurlora_here(
        "federate",
        "--site",
        "A",
        "--site",
        str(other),
        "--rounds",
        "1",
        "--local-steps",
        "1",
        "--base-model",
        "unetr-small-acdc-brats",
        "-o",
        "refused",
        cwd=tmp_path,
        capsys=capsys,
        monkeypatch=monkeypatch,
    )
    assert code == 2
    assert f"site-2 ({other}) has labels ['Head', 'Tail']" in err
    assert not (tmp_path / "refused").exists() and not (tmp_path / "refused.federation").exists()


def test_federate_rejects_finetune_only_flags(tmp_path, capsys, monkeypatch):
    code, _, err = tcurlora_here(
        *FEDERATE, "--rounds", "1", "--iterations", "5", cwd=tmp_path, capsys=capsys, monkeypatch=monkeypatch
    )
    assert code == 2 and "iterations does not apply to a federation: use --rounds/--local-steps" in err
    code, _, err = tcurlora_here(
        *FEDERATE[:3],
        "--rounds",
        "1",
        "--local-steps",
        "1",
        "--base-model",
        "x",
        "-o",
        "y",
        cwd=tmp_path,
        capsys=capsys,
        monkeypatch=monkeypatch,
    )
    assert code == 2 and "a federation needs at least 2 --site folders" in err


DROP_SCRIPT = """
import json, sys
from pathlib import Path
from tcurlora.federated.job import build_fed_job, simulate
job = json.loads(sys.argv[1])
sites = {"site-1": sys.argv[2], "site-2": sys.argv[3]}
fed = build_fed_job(job, sites, 1, 1, Path("dropped").resolve(), {"site-1": 2, "site-2": 2})
simulate(fed, Path("dropped.federation") / "workspace", list(sites))
"""


@pytest.mark.slow
def test_a_failing_site_is_dropped_from_the_round_and_the_log_says_which(sites, tmp_path):
    from tcurlora.jobs.schema import FinetuneJob

    job = FinetuneJob.from_dict(
        {
            "command": "finetune",
            "base_model": "unetr-small-acdc-brats",
            "data": str(sites / "A"),
            "output": "x",
            "label_names": ["Anterior", "Posterior"],
            "spacing": [1, 1, 1],
            "threads": 1,
        },
        tmp_path,
    ).to_dict()
    gone = tmp_path / "B-unmounted"  # passed the checks, then its disk went away: setup fails in round 1
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", DROP_SCRIPT, json.dumps(job), str(sites / "A"), str(gone)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    log = (tmp_path / "dropped.federation" / "workspace" / "server" / "log.txt").read_text()
    assert "round 1: site-2 dropped (no valid result); averaged over ['site-1']" in log
    history = json.loads((tmp_path / "dropped" / ADAPTER_CONFIG_FILE).read_text())["federation"]["history"]
    assert history[0]["dropped"] == ["site-2"] and [e["site"] for e in history[0]["sites"]] == ["site-1"]


def test_export_writes_a_flare_job_with_each_sites_own_data_path(tmp_path, capsys, monkeypatch):
    common = [
        "federate",
        "--site",
        "/data/h1",
        "--site",
        "/srv/h2",
        "--rounds",
        "3",
        "--local-steps",
        "4",
        "--base-model",
        "unetr-small-acdc-brats",
        "-o",
        "/srv/adapter",
        "--export-job",
        "jobs",
    ]
    code, _, err = tcurlora_here(
        *common, "--labels", "Anterior", "Posterior", cwd=tmp_path, capsys=capsys, monkeypatch=monkeypatch
    )
    assert code == 2 and "give --labels and --spacing" in err
    code, out, err = tcurlora_here(
        *common,
        "--labels",
        "Anterior",
        "Posterior",
        "--spacing",
        "1",
        cwd=tmp_path,
        capsys=capsys,
        monkeypatch=monkeypatch,
    )
    assert code == 0, err
    assert "FLARE job written to" in out
    job = tmp_path / "jobs" / "tcurlora-federate"
    meta = json.loads((job / "meta.json").read_text())
    assert meta["min_clients"] == 2 and meta["deploy_map"]["app_site-2"] == ["site-2"]
    for name, data in (("site-1", "/data/h1"), ("site-2", "/srv/h2")):
        client = json.loads((job / f"app_{name}" / "config" / "config_fed_client.json").read_text())
        executor = client["executors"][0]["executor"]
        assert executor["path"] == "tcurlora.federated.client.SiteExecutor"
        assert executor["args"]["data"] == data and executor["args"]["local_steps"] == 4
        assert executor["args"]["job"]["label_names"] == ["Anterior", "Posterior"]
    server = (job / "app_server" / "config" / "config_fed_server.json").read_text()
    assert "tcurlora.federated.server.CaseWeightedFedAvg" in server and '"/srv/adapter"' in server
    assert not list(job.rglob("*.py"))  # tcurlora is installed at every site: no code copied into the job
