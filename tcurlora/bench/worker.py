"""A fresh process for one benchmark run, so peak memory is the run's own:

    python -m tcurlora.bench.worker quality|cost SPEC.json RESULT.json

SPEC.json holds {"run"/"method": ..., "settings": ..., "workdir": ...}; RESULT.json receives the result
record, or {"status": "failed", "error": ..., "kind": ...} when the run fails (exit code then != 0).
"""

from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path

from tcurlora.errors import EXIT_INTERNAL, EXIT_USAGE, DeviceOutOfMemoryError, TCURLoRAError
from tcurlora.fsutil import atomic_write_text


def run_spec(kind: str, spec: dict) -> dict:
    """Execute one spec in this process (with settings["threads"] torch threads) and return its result."""
    import torch

    threads = spec["settings"].get("threads")
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    try:
        return _run(kind, spec)
    finally:
        torch.set_num_threads(previous)


def _run(kind: str, spec: dict) -> dict:
    if kind == "quality":
        from tcurlora.bench.single import execute_run

        return execute_run(spec["run"], spec["settings"], Path(spec["workdir"]))
    if kind == "cost":
        from tcurlora.bench.cost import measure_cost

        return {"status": "ok", **measure_cost(spec["method"], spec["settings"])}
    raise ValueError(f"unknown run kind {kind!r}")


def failure(error: BaseException) -> dict:
    """The result record of a failed run."""
    import torch

    if isinstance(error, torch.cuda.OutOfMemoryError):
        error = DeviceOutOfMemoryError(str(error).splitlines()[0])
    kind = error.kind if isinstance(error, TCURLoRAError) else "internal"
    return {"status": "failed", "kind": kind, "error": str(error) or type(error).__name__}


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[0] not in ("quality", "cost"):
        print(__doc__, file=sys.stderr)
        return EXIT_USAGE
    kind, spec_path, result_path = argv[0], Path(argv[1]), Path(argv[2])
    spec = json.loads(spec_path.read_text(encoding="utf-8"))
    code = 0
    try:
        result = run_spec(kind, spec)
    except Exception as error:  # noqa: BLE001 - every failure becomes a recorded, reported result
        traceback.print_exc()
        result = failure(error)
        code = error.exit_code if isinstance(error, TCURLoRAError) else EXIT_INTERNAL
    from tcurlora.jobs.events import json_safe

    atomic_write_text(result_path, json.dumps(json_safe(result), indent=1, allow_nan=False) + "\n")
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
