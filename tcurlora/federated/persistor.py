"""The server's copy of the adapter: the initial global tensors, and after every finished round the global
adapter written as a normal adapter folder (atomically: a reader sees the previous round's or this one's),
plus the federation state a resumed run continues from."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from nvflare.apis.fl_context import FLContext
from nvflare.app_common.abstract.model import ModelLearnable, ModelLearnableKey, make_model_learnable
from nvflare.app_common.abstract.model_persistor import ModelPersistor

from tcurlora.federated.checks import identity
from tcurlora.federated.client import IDENTITY_KEY, PIECE_KEYS
from tcurlora.federated.server import ROUND_KEY
from tcurlora.federated.tensors import merged_state, shared_tensors
from tcurlora.filenames import (
    FEDERATION_STATE_DIR,
    FEDERATION_STATE_FILE,
    FEDERATION_SUFFIX,
    FEDERATION_WEIGHTS_FILE,
    TRAINING_LOG_FILE,
)


def federation_dir(output: str | Path) -> Path:
    """Where a federation keeps its state and FLARE workspace: a sibling of the adapter folder."""
    output = Path(output)
    return output.with_name(output.name + FEDERATION_SUFFIX)


def read_state(output: str | Path) -> dict[str, Any] | None:
    """The last finished round's state.json, or None when no round has finished."""
    path = federation_dir(output) / FEDERATION_STATE_DIR / FEDERATION_STATE_FILE
    if not path.is_file():
        return None
    from tcurlora.jsonio import read_json_object

    return read_json_object(path, "federation state")


class AdapterPersistor(ModelPersistor):
    """Builds the federation's adapter (the same `adapt_base` as every site) and persists the global one.

    `job` is the federation's finetune settings (label names and spacing resolved); `sites` maps each
    site name to its case count as checked before round 1 (recorded in the adapter's config)."""

    def __init__(
        self,
        job: dict,
        output: str,
        rounds: int,
        local_steps: int,
        sites: dict | None = None,
        resume: bool = False,
    ):
        super().__init__()
        self.job, self.output, self.rounds, self.local_steps = job, output, rounds, local_steps
        self.sites, self.resume = sites or {}, resume
        self.adapted = None
        self.history: list[dict[str, Any]] = []

    def _build(self) -> None:
        from tcurlora.finetuning_setup import adapt_base, seed_everything
        from tcurlora.models.registry import load_base_model

        job = SimpleNamespace(**self.job)
        seed_everything(job.seed)
        base = load_base_model(job.base_model)
        self.base = base
        self.adapted = adapt_base(job, base, list(job.label_names))
        self.spec = base.spec.at_spacing(job.spacing)
        self.identity = identity(base.fingerprint, job.label_names, job.spacing, job.method, job.rank)

    def load_model(self, fl_ctx: FLContext) -> ModelLearnable:
        """The initial global tensors, or (resumed) those of the last finished round."""
        from safetensors.torch import load_file

        self._build()
        weights = shared_tensors(self.adapted.adapter_state_dict())
        state = read_state(self.output) if self.resume else None
        if state is not None:
            saved = load_file(
                str(federation_dir(self.output) / FEDERATION_STATE_DIR / FEDERATION_WEIGHTS_FILE)
            )
            weights = shared_tensors(saved)
            self.history = list(state.get("history", []))
            self.log_info(fl_ctx, f"resumed the global adapter of round {state['rounds_done']}")
        return make_model_learnable(weights, {IDENTITY_KEY: self.identity})

    def save_model(self, model: ModelLearnable, fl_ctx: FLContext) -> None:
        """Write the state of this finished round, then the adapter folder (both atomically)."""
        from safetensors.torch import save_file

        from tcurlora.adapters.io import save_adapter
        from tcurlora.fsutil import atomic_write_json, replace_dir, temp_sibling_dir

        record = (model.get(ModelLearnableKey.META) or {}).get(ROUND_KEY)
        if record is None:
            return
        adapted = self.adapted
        state = merged_state(adapted.adapter_state_dict(), model[ModelLearnableKey.WEIGHTS], "server")
        adapted.load_adapter_state_dict(state)
        self.history = [h for h in self.history if h["round"] < record["round"]] + [record]
        folder = federation_dir(self.output) / FEDERATION_STATE_DIR
        folder.parent.mkdir(parents=True, exist_ok=True)
        temp = temp_sibling_dir(folder)
        save_file(
            {k: v.contiguous() for k, v in adapted.adapter_state_dict().items()},
            str(temp / FEDERATION_WEIGHTS_FILE),
        )
        atomic_write_json(
            temp / FEDERATION_STATE_FILE,
            {"rounds_done": record["round"], "rounds": self.rounds, "history": self.history},
        )
        replace_dir(temp, folder)
        adapted.eval()
        save_adapter(
            self.output,
            adapted,
            extra=self.extra(record),
            force=True,
            extra_files={TRAINING_LOG_FILE: "".join(json.dumps(h) + "\n" for h in self.history)},
        )
        self.log_info(fl_ctx, f"round {record['round']}: global adapter written to {self.output}")

    def extra(self, record: dict[str, Any]) -> dict[str, Any]:
        """The adapter config's additions: what segment needs, and the federation's record."""
        from tcurlora.data.transforms import TRAINING_FLIP_AXES
        from tcurlora.finetuning import learning_rates
        from tcurlora.finetuning_setup import DEFAULT_COLORS

        job = SimpleNamespace(**self.job)
        names = list(job.label_names)
        colors = [list(c) for c in (job.label_colors or [])]
        colors += [list(DEFAULT_COLORS[i % len(DEFAULT_COLORS)]) for i in range(len(colors), len(names))]
        patch = [int(p) for p in (job.patch_size or self.base.spec.patch_size)]
        cases = {e["site"]: e["cases"] for h in self.history for e in h["sites"]}
        return {
            **single_piece_record(self.history),
            "label_colors": colors,
            "preprocessing": self.spec.to_dict(),
            "patch_size": patch,
            "metrics": {
                "rounds": record["round"],
                "final_loss": _weighted_loss(record),
                "sites": sorted(cases),
                "train_cases": sum(cases.values()),
            },
            "training": {
                "iterations": record["round"] * self.local_steps,
                "batch_size": job.batch_size,
                "learning_rate": learning_rates(job)["adapter"],
                "learning_rates": learning_rates(job),
                "seed": job.seed,
                "amp": job.amp,
                "flip_axes": list(TRAINING_FLIP_AXES),  # the sites train as finetune does
            },
            "federation": {
                "framework": "nvflare",
                "workflow": "FedAvg weighted by case count",
                "rounds_done": record["round"],
                "rounds": self.rounds,
                "local_steps": self.local_steps,
                "sites": self.sites or cases,
                "case_counts": cases,
                "history": self.history,
            },
        }


def single_piece_record(history: list[dict[str, Any]]) -> dict[str, Any]:
    """{"single_piece_classes": [...]}: the classes one piece in every label of every site that contributed,
    for segment's default cleanup; {} when a site did not say (a site of an older tcurlora)."""
    from tcurlora.data.components import combine_pieces

    entries = [e for h in history for e in h["sites"]]
    if not entries or any(key not in e for e in entries for key in PIECE_KEYS):
        return {}
    return {"single_piece_classes": combine_pieces([tuple(e[key] for key in PIECE_KEYS) for e in entries])}


def _weighted_loss(record: dict[str, Any]) -> float | None:
    """The round's mean local loss, weighted by case count as the tensors are."""
    sites = [e for e in record["sites"] if e.get("loss") is not None]
    total = sum(e["cases"] for e in sites)
    return sum(e["loss"] * e["cases"] for e in sites) / total if total else None
