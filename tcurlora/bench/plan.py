"""Which runs a benchmark makes: the base model used, the fixed test split and the k-case training sets."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tcurlora.bench.config import BUILTIN, BenchConfig, MethodSpec
from tcurlora.data.cases import Case
from tcurlora.errors import ConfigError, InputError


@dataclass
class Split:
    """The fixed test cases and the pool the training cases are drawn from (disjoint)."""

    test: list[Case]
    pool: list[Case]


@dataclass
class RunSpec:
    """One fine-tuning run: a method on k cases drawn with a seed, evaluated on the test split."""

    run_id: str
    method: MethodSpec
    k: int
    seed: int
    train: list[Case]
    test: list[Case]

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "method": self.method.to_dict(),
            "k": self.k,
            "seed": self.seed,
            "train": [case_to_dict(c) for c in self.train],
            "test": [case_to_dict(c) for c in self.test],
        }


def case_to_dict(case: Case) -> dict[str, Any]:
    return {"id": case.id, "image": [str(p) for p in case.images], "label": str(case.label)}


def case_from_dict(data: dict[str, Any]) -> Case:
    return Case(id=data["id"], images=[Path(p) for p in data["image"]], label=Path(data["label"]))


def resolve_base_model(config: BenchConfig) -> tuple[str, str | None]:
    """(reference to load, note): "builtin" means the first model in Resources/Models, else the fallback."""
    from tcurlora.models.registry import list_builtin_models

    if config.base_model != BUILTIN:
        return config.base_model, None
    names = list_builtin_models()
    if names:
        return names[0], None
    if not config.fallback_base_model:
        raise InputError(
            "the config asks for the built-in base model, but Resources/Models holds none "
            "and no fallback_base_model is set",
            config.source,
        )
    return config.fallback_base_model, (
        f"no built-in base model in Resources/Models: used {config.fallback_base_model} instead "
        "(randomly initialised, not pretrained: these numbers measure training from scratch, not adaptation)"
    )


def fixed_split(cases: list[Case], config: BenchConfig) -> Split:
    """Test = the cases named in test_case_ids, else the last `test_cases` in file order; pool = the rest.

    `held_out_cases` first sets the last N cases aside, unused: a tuning benchmark (learning-rate
    sweeps) then validates on cases before them and never sees the real test split."""
    if config.held_out_cases:
        if config.held_out_cases >= len(cases):
            raise ConfigError(
                f"held_out_cases {config.held_out_cases} leaves no case out of {len(cases)}", config.source
            )
        cases = cases[: -config.held_out_cases]
    if config.test_case_ids:
        by_id = {c.id: c for c in cases}
        missing = [i for i in config.test_case_ids if i not in by_id]
        if missing:
            raise ConfigError(f"test_case_ids not in the data set: {', '.join(missing[:5])}", config.source)
        wanted = set(config.test_case_ids)
        test = [by_id[i] for i in config.test_case_ids]
        pool = [c for c in cases if c.id not in wanted]
    else:
        if config.test_cases >= len(cases):
            raise ConfigError(
                f"test_cases {config.test_cases} leaves no training case out of {len(cases)}", config.source
            )
        test, pool = cases[-config.test_cases :], cases[: -config.test_cases]
    if max(config.k) > len(pool):
        raise ConfigError(
            f"k = {max(config.k)} needs more training cases than the {len(pool)} outside the test split",
            config.source,
        )
    return Split(test=test, pool=pool)


def training_cases(pool: list[Case], k: int, seed: int) -> list[Case]:
    """k cases of the pool drawn with `seed`; for one seed, smaller k are subsets of larger k."""
    order = list(range(len(pool)))
    random.Random(seed).shuffle(order)
    return [pool[i] for i in order[:k]]


def plan_runs(config: BenchConfig, split: Split) -> list[RunSpec]:
    """Every (k, seed, method) run, in that order."""
    runs = []
    for k in config.k:
        for seed in config.seeds:
            train = training_cases(split.pool, k, seed)
            for method in config.methods:
                runs.append(RunSpec(f"k{k}-s{seed}-{method.label}", method, k, seed, train, split.test))
    return runs
