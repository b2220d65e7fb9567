"""`tcurlora federate`: several sites adapt one model together without sharing scans (NVIDIA FLARE).

On one machine it runs FLARE's simulator (one Decathlon folder per `--site`); `--export-job DIR` writes the
FLARE job folder for a real deployment instead (docs/federated.md)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from tcurlora.errors import ConfigError, InputError
from tcurlora.jobs.schema import FinetuneJob
from tcurlora.settings import add_arguments, flag_values

# Finetune flags that make no sense in a federation: the data are the sites', the steps are rounds x local
# steps, the checkpoints are the rounds.
NOT_FEDERATED = {
    "data": "--site",
    "cases": "--site",
    "num_cases": "--site",
    "iterations": "--rounds/--local-steps",
    "checkpoint_every": "--rounds",
    "unlabeled": None,
}


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "federate",
        help="adapt one model at several sites without sharing scans (NVIDIA FLARE)",
        description="Federated fine-tuning: each --site trains the global adapter for --local-steps steps per "
        "round on its own cases and sends back only the trained tensors; the server averages them weighted by "
        "case count (FLARE FedAvg) and writes the global adapter after every round.",
    )
    p.add_argument(
        "--site",
        action="append",
        required=True,
        type=Path,
        metavar="FOLDER",
        dest="sites",
        help="one site's Decathlon folder (repeat the flag, at least 2)",
    )
    p.add_argument("--rounds", type=int, required=True, help="federated rounds")
    p.add_argument("--local-steps", type=int, required=True, help="training steps per site per round")
    p.add_argument(
        "--export-job",
        type=Path,
        metavar="DIR",
        help="write the FLARE job folder for a real deployment to DIR instead of simulating",
    )
    add_arguments(p, FinetuneJob)
    p.set_defaults(func=main)


def build_job(args: argparse.Namespace) -> FinetuneJob:
    """The federation's finetune settings, validated like a finetune job (on the first site's folder)."""
    given = flag_values(args, FinetuneJob)
    for key, instead in NOT_FEDERATED.items():
        if key in given:
            hint = f": use {instead}" if instead else ""
            raise ConfigError(f"{key.replace('_', '-')} does not apply to a federation{hint}")
    if len(args.sites) < 2:
        raise ConfigError("a federation needs at least 2 --site folders")
    if args.rounds < 1 or args.local_steps < 1:
        raise ConfigError("--rounds and --local-steps must be at least 1")
    if args.base_model is None or args.output is None:
        raise ConfigError("--base-model and --output are required")
    data = {
        "command": "finetune",
        **given,
        "data": str(args.sites[0]),
        "iterations": args.rounds * args.local_steps,
    }
    return FinetuneJob.from_dict(data, Path.cwd())


def remote_sites(names: list[str], folders: list[Path], job: FinetuneJob) -> list:
    """Sites of an exported job whose folders are on their own machines: the labels and the spacing must be
    given, since they cannot be read here (each site checks them against the global adapter at round 1)."""
    from tcurlora.federated.checks import Site

    if not job.label_names or not isinstance(job.spacing, list | tuple):
        raise ConfigError(
            "the --site folders are not on this machine: give --labels and --spacing (mm) for "
            "the exported job"
        )
    return [
        Site(name, folder, 0, list(job.label_names), tuple(float(v) for v in job.spacing))
        for name, folder in zip(names, folders)
    ]


def require_nvflare() -> None:
    """ConfigError when NVIDIA FLARE is not installed (an optional dependency)."""
    try:
        import nvflare  # noqa: F401
    except ImportError as error:
        raise ConfigError(
            "tcurlora federate needs NVIDIA FLARE: pip install 'tcurlora[federated]' "
            "(scripts/setup.sh installs it)"
        ) from error


def main(args: argparse.Namespace) -> int:
    from tcurlora.federated.checks import check_sites, inspect_site, site_names
    from tcurlora.federated.job import build_fed_job, export, simulate
    from tcurlora.federated.persistor import federation_dir, read_state
    from tcurlora.models.registry import load_base_model
    from tcurlora.outputs import check_adapter_output

    require_nvflare()
    job = build_job(args)
    output = Path(job.output).resolve()
    names = site_names(len(args.sites))
    start = 0
    if job.resume:  # an exported job resumes too when written on the server, where the state is
        state = read_state(output)
        if state is None:
            raise InputError("nothing to resume: no finished round", federation_dir(output))
        start = int(state["rounds_done"])
        if start >= args.rounds:
            raise ConfigError(f"the federation already finished {start} of {args.rounds} rounds", output)
    if args.export_job is None:
        check_adapter_output(output, job.force or job.resume)
    base = load_base_model(job.base_model)
    patch = job.patch_size or base.spec.patch_size
    if args.export_job is not None and not all(folder.is_dir() for folder in args.sites):
        sites = remote_sites(names, args.sites, job)  # the folders are at the sites: nothing to inspect here
    else:
        sites = [
            inspect_site(name, folder.resolve(), job.spacing, base.spec.spacing, patch)
            for name, folder in zip(names, args.sites)
        ]
    label_names, spacing = check_sites(sites, job.label_names)
    record = job.to_dict()
    record.update(
        label_names=label_names, spacing=list(spacing), data=None, output=None, resume=False, force=False
    )
    counts = {s.name: s.cases for s in sites if s.cases}
    fed = build_fed_job(
        record,
        {s.name: str(s.data) for s in sites},
        args.rounds,
        args.local_steps,
        output,
        counts,
        start_round=start,
    )
    if args.export_job is not None:
        folder = export(fed, args.export_job.resolve())
        print(
            f"FLARE job written to {folder} ({len(sites)} sites: {', '.join(names)}); see docs/federated.md"
        )
        return 0
    from tcurlora.output_lock import OutputLock

    workspace = federation_dir(output) / "workspace"
    with OutputLock(output):  # one federation per adapter folder
        simulate(fed, workspace, names)
    state = read_state(output)
    done = int(state["rounds_done"]) if state else 0
    if done < args.rounds:
        print(
            f"tcurlora federate: error: {done} of {args.rounds} rounds finished; FLARE's log: "
            f"{workspace}; continue with --resume",
            file=sys.stderr,
        )
        return 3
    dropped = sorted({s for h in state["history"] for s in h["dropped"]})
    print(
        f"federated adapter written to {output}: {done} rounds, sites {counts}"
        + (f", dropped in some round: {dropped}" if dropped else "")
    )
    return 0
