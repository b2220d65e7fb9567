"""The server's workflow: FLARE's FedAvg (weighted by each site's case count), recording per round which
sites contributed, with how many cases, and which were dropped; the global adapter keeps its identity
(base fingerprint, labels, spacing) so that every site can check it before training."""

from __future__ import annotations

import time
from typing import Any

from nvflare.app_common.abstract.fl_model import FLModel
from nvflare.app_common.workflows.fedavg import FedAvg

from tcurlora.federated.client import IDENTITY_KEY, PIECE_KEYS

ROUND_KEY = "tcurlora_round"  # model meta: the record of the round just aggregated (persistor.py)


class CaseWeightedFedAvg(FedAvg):
    """FedAvg whose weights are the sites' case counts (sent as NUM_STEPS_CURRENT_ROUND by client.py).

    A site whose round fails (an error, a crash, a refusal) is dropped from that round's average
    (`ignore_result_error`) and the log says which; a round no site finished leaves the global adapter
    as it was and is not saved."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("ignore_result_error", True)
        super().__init__(*args, **kwargs)
        self._identity: dict[str, Any] | None = None
        self._sampled: list[str] = []
        self._contributed: list[dict[str, Any]] = []
        self._round_started = 0.0

    def load_model(self) -> FLModel:
        model = super().load_model()
        self._identity = (model.meta or {}).get(IDENTITY_KEY)
        return model

    def sample_clients(self, num_clients: int | None = None) -> list[str]:
        self._sampled = list(super().sample_clients(num_clients))
        self._contributed = []
        self._round_started = time.monotonic()
        return self._sampled

    def _aggregate_one_result(self, result: FLModel) -> bool:
        accepted = super()._aggregate_one_result(result)
        meta = result.meta or {}
        if accepted:
            entry = {key: meta.get(key) for key in ("site", "cases", "payload_bytes", "seconds")}
            entry.update({key: meta[key] for key in PIECE_KEYS if key in meta})
            entry.update(
                {key: float(v) for key, v in (result.metrics or {}).items() if isinstance(v, int | float)}
            )
            self._contributed.append(entry)
            self.info(
                f"round {self.current_round + 1}: {entry['site']} contributed {entry['cases']} case(s), "
                f"{entry['payload_bytes']} bytes"
            )
        return accepted

    def update_model(self, model: FLModel, aggr_result: FLModel) -> FLModel:
        if not self._contributed:
            return model
        model = super().update_model(model, aggr_result)
        model.meta = {**(model.meta or {}), IDENTITY_KEY: self._identity}
        return model

    def save_model(self, model: FLModel) -> None:
        contributed = {entry["site"] for entry in self._contributed}
        dropped = [site for site in self._sampled if site not in contributed]
        for site in dropped:
            self.warning(
                f"round {self.current_round + 1}: {site} dropped (no valid result); "
                f"averaged over {sorted(contributed)}"
            )
        if not self._contributed:
            self.error(
                f"round {self.current_round + 1}: no site returned a result; the global adapter stays "
                "as after the previous round"
            )
            return
        model.meta = {
            **(model.meta or {}),
            ROUND_KEY: {
                "round": int(self.current_round) + 1,
                "sites": sorted(self._contributed, key=lambda e: e["site"]),
                "dropped": dropped,
                "seconds": round(time.monotonic() - self._round_started, 3),
            },
        }
        super().save_model(model)
