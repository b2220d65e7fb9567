"""The exported JSON Schemas of the worker protocol (`tcurlora schema job|events`, docs/schemas/): they are
what the command prints, valid draft 2020-12, accept every job and event the worker accepts (the docs'
examples too) and refuse what it refuses, except the cross-field rules a JSON Schema cannot state."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
from test_jobs_schema import BAD_FINETUNE, BAD_SEGMENT, VALID_EVENTS, event, finetune_data, segment_data

from tcurlora.cli import main as cli_main
from tcurlora.filenames import JOB_SCHEMA
from tcurlora.jobs.event_schema import validate_event
from tcurlora.jobs.schema import FinetuneJob, SegmentJob, load_job
from tcurlora.jobs.schema_export import SCHEMA_FILES, SCHEMAS

ROOT = Path(__file__).resolve().parents[1]
SCHEMA_DIR = ROOT / "docs" / "schemas"
EXAMPLES = sorted((ROOT / "docs" / "examples").glob("*.job.json"))


def validator(which: str) -> jsonschema.Draft202012Validator:
    schema = json.loads((SCHEMA_DIR / SCHEMA_FILES[which]).read_text(encoding="utf-8"))
    return jsonschema.Draft202012Validator(schema)


@pytest.mark.parametrize("which", sorted(SCHEMAS))
def test_committed_schema_is_what_the_command_prints(which, capsys):
    assert cli_main(["schema", which]) == 0
    printed = capsys.readouterr().out
    committed = (SCHEMA_DIR / SCHEMA_FILES[which]).read_text(encoding="utf-8")
    assert printed == committed, f"docs/schemas/{SCHEMA_FILES[which]} is stale: run `tcurlora schema {which}`"
    schema = json.loads(printed)
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"


@pytest.mark.slow
def test_schema_command_runs_as_a_process_and_refuses_unknown_names():
    done = subprocess.run(
        [sys.executable, "-m", "tcurlora", "schema", "job"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["title"] == JOB_SCHEMA
    bad = subprocess.run(
        [sys.executable, "-m", "tcurlora", "schema", "jobs"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert bad.returncode == 2 and "invalid choice: 'jobs'" in bad.stderr


def test_the_docs_have_example_jobs():
    assert {p.name for p in EXAMPLES} >= {
        "finetune-cases.job.json",
        "finetune-decathlon.job.json",
        "segment.job.json",
    }


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_job_in_the_docs_validates_and_loads(path):
    data = json.loads(path.read_text(encoding="utf-8"))
    validator("job").validate(data)
    job = load_job(path)
    assert job.command == data["command"]


def test_jobs_the_worker_writes_and_reads_validate(tmp_path):
    check = validator("job")
    variants = [
        finetune_data(),
        finetune_data(cases=None, data="dec", num_cases=3, label_names=["a"], label_colors=[[1, 0, 0]]),
        finetune_data(
            spacing=[1, 1, 1.5], train_modules=[], alpha=16, val_case_ids=["a"], conv_targets=False
        ),
        segment_data(),
        segment_data(output_dir=None, outputs=["o1.nii.gz", "o2.nrrd"], adapter=None),
    ]
    for data in variants:
        check.validate(data)
        job = (FinetuneJob if data["command"] == "finetune" else SegmentJob).from_dict(data, tmp_path)
        check.validate(json.loads(json.dumps(job.to_dict())))  # to_dict writes every key, nulls included


# What the worker refuses but a JSON Schema cannot say (cross-field and content rules).
NOT_IN_SCHEMA = {
    "key 'train_modules[0]': invalid regular expression 'decoder(['",
    "key 'label_colors': has 1 colors for 2 label_names",
    "key 'cases[1].id': duplicate case id 'a'",
    "key 'output_dir': two inputs would write the same file",
    "key 'outputs': has 1 paths for 2 inputs",
}


BAD_JOBS = [(finetune_data, o, m) for o, m in BAD_FINETUNE] + [(segment_data, o, m) for o, m in BAD_SEGMENT]


@pytest.mark.parametrize(("make", "overrides", "message"), BAD_JOBS, ids=[m for _, _, m in BAD_JOBS])
def test_the_schema_refuses_the_jobs_the_worker_refuses(make, overrides, message):
    errors = list(validator("job").iter_errors(make(**overrides)))
    if message in NOT_IN_SCHEMA:
        assert errors == [], "the schema now states this rule: remove it from NOT_IN_SCHEMA"
    else:
        assert errors, f"the schema accepts a job the worker refuses with {message!r}"


def test_a_job_of_the_wrong_command_is_refused():
    assert list(validator("job").iter_errors(finetune_data(command="segment")))
    assert list(validator("job").iter_errors({"command": "train"}))


@pytest.mark.parametrize("kind", sorted(VALID_EVENTS))
def test_every_event_kind_validates_against_the_events_schema(kind):
    obj = event(kind)
    validate_event(obj)
    validator("events").validate(obj)


def test_the_events_schema_refuses_bad_events():
    check = validator("events")
    segment_started = event("started", command="segment", total=3)
    del segment_started["parameters"]
    check.validate(segment_started)
    missing = event("checkpoint")
    del missing["path"]
    bad = [
        {**event("progress"), "event": "finished"},
        event("progress", time="now"),
        event("progress", loss="low"),
        event("progress", iteration=1.5),
        event("progress", val_dice={"Anterior": "high"}),
        event("progress", extra=1),
        missing,
        event("log", level="debug"),
        event("error", exit_code=True),
        event("done", outputs=["a"]),
        event("started", command="train"),
        event("started", parameters={"total": 1, "trainable": 1, "head": 0}),
        [1, 2],
    ]
    for obj in bad:
        with pytest.raises(ValueError):
            validate_event(obj)
        assert list(check.iter_errors(obj)), obj
