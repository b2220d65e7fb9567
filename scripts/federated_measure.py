"""Measure federated adaptation on hippocampus (docs/federated.md): 3 sites of 6, 8 and 10 labeled cases
(each with its own validation split), test = the last 40 labeled cases (used only here, for the final
numbers). Each stage writes OUT/<stage>.json, so stages can run in separate processes:

  singles     each site alone: `tcurlora finetune` on its folder (N iterations)
  pooled      all sites' cases in one run (the union of the sites' validation splits)
  federation  `tcurlora federate` over the 3 sites (R rounds x N/R local steps = N steps per site)
  eval        Dice of every adapter written so far on the test split
  bytes       bytes a site sends per round for tCURLoRA, LoRA and full fine-tuning

  python scripts/federated_measure.py --data ../shared/data/hippocampus --work /tmp/fedm \
      --out docs/benchmarks/federated singles pooled federation eval bytes
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from tcurlora.filenames import ADAPTER_CONFIG_FILE, JOB_SCHEMA

SITE_SIZES = (6, 8, 10)
TEST_CASES = 40
BASE = "unetr-small-acdc-brats"
LABELS = ["Anterior", "Posterior"]


def make_sites(data: Path, work: Path) -> list[Path]:
    """Site folders (dataset.json + links to the real files) from the first non-test cases, in file order."""
    dataset = json.loads((data / "dataset.json").read_text())
    pool = dataset["training"][:-TEST_CASES]
    sites, start = [], 0
    for index, size in enumerate(SITE_SIZES):
        folder = work / f"site{index + 1}"
        entries = pool[start : start + size]
        start += size
        for entry in entries:
            for key in ("image", "label"):
                target = folder / entry[key]
                target.parent.mkdir(parents=True, exist_ok=True)
                if not target.exists():
                    target.symlink_to((data / entry[key]).resolve())
        meta = {k: v for k, v in dataset.items() if k != "training"}
        (folder / "dataset.json").write_text(json.dumps({**meta, "numTraining": size, "training": entries}))
        sites.append(folder)
    return sites


def run(command: list[str], log: Path) -> float:
    """Run a tcurlora command (1 thread), its output to `log`; wall seconds; exits on failure."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    started = time.monotonic()
    with log.open("w") as stream:
        code = subprocess.call(
            [sys.executable, "-m", "tcurlora", *command], stdout=stream, stderr=stream, env=env
        )
    if code != 0:
        sys.exit(f"{' '.join(command)} failed with exit code {code}; see {log}")
    return time.monotonic() - started


def common(args) -> list[str]:
    return [
        "--base-model",
        BASE,
        "--labels",
        *LABELS,
        "--val-fraction",
        "0.25",
        "--threads",
        "1",
        "--device",
        "cpu",
        "--force",
    ]


def singles(args, sites: list[Path]) -> dict:
    out = {}
    for site in sites:
        if args.sites and site.name not in args.sites:
            continue
        adapter = args.work / f"single-{site.name}"
        seconds = run(
            [
                "finetune",
                "--data",
                str(site),
                "--iterations",
                str(args.iterations),
                "--early-stopping",
                "0",
                "--checkpoint-every",
                "0",
                "-o",
                str(adapter),
                *common(args),
            ],
            args.work / f"single-{site.name}.log",
        )
        out[site.name] = {"adapter": str(adapter), "seconds": round(seconds, 1)}
    return out


def pooled(args, sites: list[Path]) -> dict:
    from tcurlora.data.cases import cases_from_decathlon
    from tcurlora.finetuning_setup import split_validation

    cases, val_ids = [], []
    for site in sites:
        site_cases = cases_from_decathlon(site)
        _, val = split_validation(
            site_cases, argparse.Namespace(val_fraction=0.25, seed=0, val_case_ids=None)
        )
        cases += site_cases
        val_ids += [c.id for c in val]
    adapter = args.work / "pooled"
    job = {
        "schema": JOB_SCHEMA,
        "command": "finetune",
        "base_model": BASE,
        "output": str(adapter),
        "cases": [{"id": c.id, "image": str(c.images[0]), "label": str(c.label)} for c in cases],
        "label_names": LABELS,
        "val_case_ids": val_ids,
        "iterations": args.iterations,
        "early_stopping": 0,
        "checkpoint_every": 0,
        "threads": 1,
        "device": "cpu",
        "force": True,
    }
    path = args.work / "pooled-job.json"
    path.write_text(json.dumps(job))
    seconds = run(["finetune", "--job", str(path)], args.work / "pooled.log")
    return {"adapter": str(adapter), "seconds": round(seconds, 1), "val_cases": val_ids}


def federation(args, sites: list[Path]) -> dict:
    adapter = args.work / "federated"
    steps = args.iterations // args.rounds
    command = [
        "federate",
        *[a for s in sites for a in ("--site", str(s))],
        "--rounds",
        str(args.rounds),
        "--local-steps",
        str(steps),
        "-o",
        str(adapter),
        *common(args),
        *(["--resume"] if args.resume else []),
    ]
    seconds = run(command, args.work / "federation.log")
    config = json.loads((adapter / ADAPTER_CONFIG_FILE).read_text())
    history = config["federation"]["history"]
    return {
        "adapter": str(adapter),
        "seconds": round(seconds, 1),
        "rounds": args.rounds,
        "local_steps": steps,
        "round_seconds": [h["seconds"] for h in history],
        "payload_bytes": {e["site"]: e["payload_bytes"] for e in history[-1]["sites"]},
        "case_counts": config["federation"]["case_counts"],
        "global_val_dice": [{e["site"]: e.get("global_val_dice") for e in h["sites"]} for h in history],
    }


def evaluate(args, sites: list[Path]) -> dict:
    from tcurlora.bench.single import evaluate_adapter
    from tcurlora.data.cases import cases_from_decathlon

    test = cases_from_decathlon(args.data)[-TEST_CASES:]
    adapters = sorted(
        p
        for p in args.work.iterdir()
        if (p / ADAPTER_CONFIG_FILE).is_file() and (not args.adapters or p.name in args.adapters)
    )
    out = {}
    for adapter in adapters:
        result = evaluate_adapter(adapter, BASE, test, LABELS, "cpu", 0.25, 0)
        dice = {name: m["dice"] for name, m in result["mean"].items()}
        out[adapter.name] = {"dice": dice, "mean_dice": sum(dice.values()) / len(dice)}
        print(adapter.name, out[adapter.name], flush=True)
    return out


def payloads(args, sites: list[Path]) -> dict:
    from types import SimpleNamespace

    from tcurlora.federated.tensors import payload_bytes, shared_tensors
    from tcurlora.finetuning_setup import adapt_base
    from tcurlora.models.registry import load_base_model

    out = {}
    for method in ("tcur", "lora", "full"):
        job = SimpleNamespace(
            method=method,
            rank=8,
            selection="topnorm",
            seed=0,
            alpha=None,
            conv_targets=None,
            train_modules=None,
            job_file=None,
        )
        adapted = adapt_base(job, load_base_model(BASE), LABELS)
        out[method] = payload_bytes(shared_tensors(adapted.adapter_state_dict()))
    return out


def gap(args, sites: list[Path]) -> dict:
    """How far the model of the averaged tensors is from the average of the sites' weight updates, after one
    real round (site1 and site2, `iterations // rounds` local steps each, from the same start), per method."""
    import copy

    from nvflare.app_common.abstract.fl_model import FLModel
    from nvflare.app_common.aggregators.weighted_aggregation_helper import WeightedAggregationHelper

    from tcurlora.federated.client import IDENTITY_KEY, SiteExecutor
    from tcurlora.federated.tensors import merged_state, shared_tensors
    from tcurlora.jobs.schema import FinetuneJob
    from tcurlora.models.registry import load_base_model

    base_state = {k: v.clone() for k, v in load_base_model(BASE).model.state_dict().items()}

    def delta(adapted) -> dict:
        for module in adapted.modules():  # tCUR keeps the last forward's (non-leaf) factors: not copyable
            if hasattr(module, "clear_cache"):
                module.clear_cache()
        plain = copy.deepcopy(adapted).merge_and_unload().state_dict()
        # the new head (3 classes, not the base's 8) counts with its own weights: a plain, linearly averaged tensor
        return {
            k: (
                v - base_state[k] if base_state.get(k) is not None and base_state[k].shape == v.shape else v
            ).double()
            for k, v in plain.items()
            if v.is_floating_point()
        }

    out = {}
    for method in ("tcur", "lora"):
        job = FinetuneJob.from_dict(
            {
                "command": "finetune",
                "base_model": BASE,
                "data": str(sites[0]),
                "output": "x",
                "label_names": LABELS,
                "spacing": [1, 1, 1],
                "threads": 1,
                "method": method,
                "device": "cpu",
            },
            args.work,
        ).to_dict()
        start, results, executors = None, [], []
        for site in sites[:2]:
            executor = SiteExecutor(job, str(site), rounds=1, local_steps=args.iterations // args.rounds)
            executor.setup(site.name, args.work)
            if start is None:
                start = shared_tensors(executor.trainer.adapted.adapter_state_dict())
            model = FLModel(params=start, current_round=0, meta={IDENTITY_KEY: executor.local_identity})
            result = executor.train_round(site.name, model)
            results.append((result.meta["cases"], result.params, delta(executor.trainer.adapted)))
            executors.append(executor)
        helper = WeightedAggregationHelper()
        for index, (cases, params, _) in enumerate(results):
            helper.add(data=params, weight=cases, contributor_name=f"site{index + 1}", contribution_round=0)
        adapted = executors[0].trainer.adapted
        adapted.load_adapter_state_dict(
            merged_state(adapted.adapter_state_dict(), helper.get_result(), "server")
        )
        averaged = delta(adapted)
        total = sum(r[0] for r in results)
        expected = {k: sum(r[0] * r[2][k] for r in results) / total for k in averaged}
        error = sum(float((averaged[k] - expected[k]).norm() ** 2) for k in expected) ** 0.5
        norm = sum(float(expected[k].norm() ** 2) for k in expected) ** 0.5
        out[method] = {"relative_gap": error / norm, "update_norm": norm, "cases": [r[0] for r in results]}
        print(method, out[method], flush=True)
    return out


def report(args, sites: list[Path]) -> dict:
    """The markdown table of docs/federated.md from the JSON files in --out (printed)."""
    dice = {}
    for path in sorted(args.out.glob("eval*.json")):
        dice.update(json.loads(path.read_text()))
    fed = json.loads((args.out / "federation.json").read_text())
    sent = json.loads((args.out / "bytes.json").read_text())
    names = {
        "single-site1": "site 1 alone (4 training cases)",
        "single-site2": "site 2 alone (6)",
        "single-site3": "site 3 alone (8)",
        "federated": "federation, 3 sites (4 + 6 + 8)",
        "pooled": "pooled: all 18 cases in one run",
    }
    lines = ["| run | Dice Anterior | Dice Posterior | mean Dice |", "|---|---|---|---|"]
    for key, label in names.items():
        if key in dice:
            d = dice[key]["dice"]
            lines.append(
                f"| {label} | {d['Anterior']:.3f} | {d['Posterior']:.3f} | {dice[key]['mean_dice']:.3f} |"
            )
    singles = [dice[k]["mean_dice"] for k in dice if k.startswith("single-")]
    summary = {}
    if "federated" in dice and singles and "pooled" in dice:
        f = dice["federated"]["mean_dice"]
        summary = {
            "federated_minus_best_single": f - max(singles),
            "federated_over_pooled": f / dice["pooled"]["mean_dice"],
        }
    rounds = fed["round_seconds"]
    lines += [
        "",
        f"Federation vs best single site: {summary.get('federated_minus_best_single', float('nan')):+.3f} "
        f"mean Dice; federation / pooled: {summary.get('federated_over_pooled', float('nan')):.3f}.",
        "",
        "| sent per site per round | bytes |",
        "|---|---|",
    ]
    lines += [f"| {m} | {b:,} |" for m, b in sent.items()]
    lines += [
        "",
        f"Wall time per round (3 sites in turn, 10 local steps each, validation of the global adapter "
        f"included): median {sorted(rounds)[len(rounds) // 2]:.0f} s, min {min(rounds):.0f} s, max "
        f"{max(rounds):.0f} s over {len(rounds)} rounds.",
    ]
    print("\n".join(lines))
    return {"dice": dice, **summary, "round_seconds": rounds, "bytes": sent}


STAGES = {
    "report": report,
    "gap": gap,
    "singles": singles,
    "pooled": pooled,
    "federation": federation,
    "eval": evaluate,
    "bytes": payloads,
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("stages", nargs="+", choices=sorted(STAGES))
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument(
        "--iterations", type=int, default=150, help="steps per run (per site in the federation)"
    )
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument(
        "--resume", action="store_true", help="federation: continue from the last finished round"
    )
    parser.add_argument("--sites", nargs="+", help="singles: only these sites (site1, site2, site3)")
    parser.add_argument("--adapters", nargs="+", help="eval: only these adapter folders of --work")
    args = parser.parse_args()
    args.data, args.work, args.out = args.data.resolve(), args.work.resolve(), args.out.resolve()
    args.work.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    sites = make_sites(args.data, args.work)
    for stage in args.stages:
        result = STAGES[stage](args, sites)
        name = f"eval-{'-'.join(args.adapters)}" if stage == "eval" and args.adapters else stage
        name = f"singles-{'-'.join(args.sites)}" if stage == "singles" and args.sites else name
        (args.out / f"{name}.json").write_text(json.dumps(result, indent=1) + "\n")
        print(stage, "done", flush=True)


if __name__ == "__main__":
    main()
