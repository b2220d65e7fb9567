"""Helpers of the trust tests: tiny real fine-tunes on hippocampus cases, and the CLI run in-process."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tcurlora.cli import main
from tcurlora.filenames import JOB_SCHEMA

TINY = "preset:unetr-tiny"
LABELS = ["Anterior", "Posterior"]


def hippo_case(folder: Path, number: int = 1) -> dict[str, str]:
    name = f"hippocampus_{number:03d}"
    return {
        "id": name,
        "image": str(folder / "imagesTr" / f"{name}.nii.gz"),
        "label": str(folder / "labelsTr" / f"{name}.nii.gz"),
    }


def tiny_job(folder: Path, output: Path, **changes: Any) -> dict[str, Any]:
    """A finetune job of a few CPU seconds: tiny UNETR, one or two real cases, 2 iterations."""
    job = {
        "schema": JOB_SCHEMA,
        "command": "finetune",
        "base_model": TINY,
        "cases": [hippo_case(folder, 1)],
        "label_names": LABELS,
        "rank": 4,
        "iterations": 2,
        "batch_size": 1,
        "device": "cpu",
        "output": str(output),
    }
    job.update(changes)
    return job


def write_job(path: Path, job: dict[str, Any]) -> Path:
    path.write_text(json.dumps(job))
    return path


def events_of(text: str) -> list[dict]:
    """The JSON-lines events in a captured stdout."""
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def run(capsys, *argv: str) -> tuple[int, list[dict], str, str]:
    """Run `tcurlora ARGV` in this process: (exit code, events on stdout, stdout, stderr)."""
    capsys.readouterr()
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, events_of(out), out, err


def kinds(events: list[dict]) -> list[str]:
    return [e["event"] for e in events]
