"""`tcurlora bench`: how well and at what cost each adaptation method adapts a base model to k cases.

config (`configs/bench/*.json`) -> plan (test split, k-case training sets) -> one process per run
(`worker`: `single` for fine-tune + evaluate, `cost` for synthetic batches; `measure` for timings and
memory) -> `summary` (rows, findings) -> `report` (JSON, Markdown) + `plots` (PNG).
"""

from tcurlora.bench.config import BenchConfig, CostConfig, MethodSpec, load_config
from tcurlora.bench.runner import run_benchmark

__all__ = ["BenchConfig", "CostConfig", "MethodSpec", "load_config", "run_benchmark"]
