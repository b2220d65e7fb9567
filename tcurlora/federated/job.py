"""The FLARE job of a federation: FedAvg and the adapter persistor on the server, a `SiteExecutor` per site;
run on one machine with FLARE's simulator, or exported as a job folder for a real deployment."""

from __future__ import annotations

from pathlib import Path
from typing import Any

JOB_NAME = "tcurlora-federate"
# FLARE builds only components whose class path a site allows (its local/resources.json); every site, and
# the server, must add this prefix to FLARE's default list (docs/federated.md; the simulator: `allow_tcurlora`).
ALLOW_PREFIX = "tcurlora.federated."


def build_fed_job(
    job: dict[str, Any],
    sites: dict[str, str],
    rounds: int,
    local_steps: int,
    output: Path,
    case_counts: dict[str, int],
    start_round: int = 0,
):
    """The FedJob: rounds `start_round`..`rounds`-1 over `sites` (name -> Decathlon folder at that site)."""
    from nvflare.job_config.api import FedJob

    from tcurlora.federated.client import SiteExecutor
    from tcurlora.federated.persistor import AdapterPersistor
    from tcurlora.federated.server import CaseWeightedFedAvg

    fed = FedJob(name=JOB_NAME, min_clients=len(sites))
    fed.set_app_packages(["tcurlora"])  # installed at every site: no copy of our code in the job folder
    fed.to_server(
        AdapterPersistor(job, str(output), rounds, local_steps, case_counts, resume=start_round > 0),
        id="persistor",
    )
    fed.to_server(
        CaseWeightedFedAvg(
            num_clients=len(sites),
            num_rounds=rounds - start_round,
            start_round=start_round,
            persistor_id="persistor",
        )
    )
    for name, data in sites.items():
        fed.to(SiteExecutor(job, data, rounds, local_steps), name, tasks=["train"])
    return fed


def allow_tcurlora(workspace: Path) -> Path:
    """Write the simulator's site resources (copied to every participant): FLARE's default class allow list
    plus our components."""
    from nvflare.app_common.default_component_policy import DEFAULT_CLASS_ALLOW_LIST

    from tcurlora.fsutil import atomic_write_json

    path = workspace / "local" / "resources.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_json(path, {"class_allow_list": [*DEFAULT_CLASS_ALLOW_LIST, ALLOW_PREFIX]})


def simulate(fed, workspace: Path, sites: list[str]) -> None:
    """Run the job with FLARE's simulator: one process per site for the whole run (FLARE swaps sites in and
    out of fresh processes when there are fewer threads than sites, which would reload every site each round)."""
    allow_tcurlora(workspace)
    fed.simulator_run(str(workspace), clients=sites, threads=len(sites), log_config="concise")


def export(fed, folder: Path) -> Path:
    """Write the job folder to `folder`; returns the job's own folder inside it."""
    fed.export_job(str(folder))
    return folder / JOB_NAME
