"""Job files (tcurlora.job/1) and the event schema (tcurlora.events/1): round trips and every error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tcurlora.errors import ConfigError, InputError
from tcurlora.filenames import JOB_SCHEMA
from tcurlora.jobs.event_schema import EVENT_SCHEMA, parse_event_line, validate_event
from tcurlora.jobs.job_reading import JobCase
from tcurlora.jobs.schema import FinetuneJob, SegmentJob, load_job


def write_job(folder: Path, data: dict, name: str = "job.json") -> Path:
    path = folder / name
    path.write_text(json.dumps(data))
    return path


def finetune_data(**overrides) -> dict:
    data = {
        "schema": JOB_SCHEMA,
        "command": "finetune",
        "base_model": "unetr-brats",
        "cases": [
            {"id": "a", "image": "img/a.nii.gz", "label": "lab/a.nii.gz"},
            {"id": "b", "image": ["img/b_0000.nrrd", "img/b_0001.nrrd"], "label": "lab/b.nrrd"},
        ],
        "output": "out/adapter",
    }
    data.update(overrides)
    return data


def segment_data(**overrides) -> dict:
    data = {
        "command": "segment",
        "base_model": "unetr-brats",
        "adapter": "./adapters/hippo",
        "inputs": ["x/case1.nrrd", ["x/c2_0000.nii.gz", "x/c2_0001.nii.gz"]],
        "output_dir": "segs",
    }
    data.update(overrides)
    return data


def test_finetune_defaults_and_relative_paths(tmp_path):
    job = load_job(write_job(tmp_path, finetune_data()))
    assert isinstance(job, FinetuneJob)
    assert job.base_model == "unetr-brats"  # a name, not a path
    assert job.output == tmp_path / "out" / "adapter"
    assert job.cases == [
        JobCase("a", [tmp_path / "img/a.nii.gz"], tmp_path / "lab/a.nii.gz"),
        JobCase("b", [tmp_path / "img/b_0000.nrrd", tmp_path / "img/b_0001.nrrd"], tmp_path / "lab/b.nrrd"),
    ]
    assert (job.method, job.rank, job.alpha, job.selection, job.conv_targets) == (
        "tcur",
        8,
        None,
        "topnorm",
        None,
    )
    assert job.uses_conv_targets  # tcur adapts the Conv3d kernels too unless told not to
    assert (job.iterations, job.batch_size, job.learning_rate, job.patch_size, job.seed) == (
        500,
        2,
        None,
        None,
        0,
    )
    assert (job.val_fraction, job.checkpoint_every, job.device, job.amp, job.force, job.resume) == (
        0.0,
        50,
        "auto",
        True,
        False,
        False,
    )
    assert job.job_file == tmp_path / "job.json"


def test_finetune_round_trip_with_data_folder(tmp_path):
    (tmp_path / "models" / "mine").mkdir(parents=True)
    data = finetune_data(
        cases=None,
        data="../decathlon/hippocampus",
        num_cases=4,
        case_ids=None,
        base_model="models/mine",
        label_names=["Anterior", "Posterior"],
        label_colors=[[1, 0, 0], [0, 0.5, 1]],
        method="lora",
        rank=4,
        alpha=16,
        iterations=10,
        batch_size=1,
        learning_rate=0.001,
        patch_size=[32, 32, 16],
        seed=3,
        val_fraction=0.25,
        checkpoint_every=0,
        device="cuda:1",
        amp=False,
        force=True,
    )
    job = FinetuneJob.from_file(write_job(tmp_path, data))
    assert job.data == (tmp_path.parent / "decathlon" / "hippocampus").resolve()
    assert job.base_model == str(tmp_path / "models" / "mine")  # an existing relative folder is a path
    assert job.label_colors == [[1.0, 0.0, 0.0], [0.0, 0.5, 1.0]]
    assert job.alpha == 16.0 and isinstance(job.alpha, float)
    again = FinetuneJob.from_dict(json.loads(json.dumps(job.to_dict())), "/somewhere/else")
    assert again == job
    assert again.to_dict() == job.to_dict()


def test_segment_round_trip_and_output_names(tmp_path):
    job = load_job(write_job(tmp_path, segment_data()))
    assert isinstance(job, SegmentJob)
    assert job.adapter == str(tmp_path / "adapters" / "hippo")
    assert job.inputs == [
        [tmp_path / "x/case1.nrrd"],
        [tmp_path / "x/c2_0000.nii.gz", tmp_path / "x/c2_0001.nii.gz"],
    ]
    assert job.output_paths() == [tmp_path / "segs" / "case1_seg.nrrd", tmp_path / "segs" / "c2_seg.nii.gz"]
    assert (job.overlap, job.largest_component, job.tta, job.device, job.force) == (
        0.5,
        "auto",
        True,
        "auto",
        False,
    )
    assert SegmentJob.from_dict(job.to_dict(), tmp_path / "elsewhere") == job

    explicit = SegmentJob.from_dict(
        segment_data(output_dir=None, outputs=["o1.nii.gz", "/abs/o2.nrrd"], adapter=None, overlap=0.25),
        tmp_path,
    )
    assert explicit.output_paths() == [tmp_path / "o1.nii.gz", Path("/abs/o2.nrrd")]
    assert explicit.adapter is None
    assert SegmentJob.from_dict(explicit.to_dict(), "/") == explicit
    for value in (True, False, "auto"):  # every state of the tri-state survives the file
        stated = SegmentJob.from_dict(segment_data(largest_component=value, tta=False), tmp_path)
        assert (stated.largest_component, stated.tta) == (value, False)
        assert SegmentJob.from_dict(stated.to_dict(), "/").largest_component == value


BAD_FINETUNE = [
    ({"rnak": 4}, "key 'rnak': unknown key"),
    ({"rank": "eight"}, "key 'rank': expected an integer, got str 'eight'"),
    ({"rank": True}, "key 'rank': expected an integer, got bool True"),
    ({"rank": 0}, "key 'rank': must be >= 1, got 0"),
    (
        {"method": "qlora"},
        "key 'method': must be one of tcur, lora, decoder, full, head, scratch; got 'qlora'",
    ),
    ({"selection": "best"}, "key 'selection': must be one of"),
    ({"device": "tpu"}, "key 'device': must be auto, cpu, cuda or cuda:N; got 'tpu'"),
    ({"amp": "yes"}, "key 'amp': expected true or false, got str 'yes'"),
    ({"alpha": "big"}, "key 'alpha': expected a number, got str 'big'"),
    ({"learning_rate": 0}, "key 'learning_rate': must be > 0"),
    ({"head_learning_rate": 0}, "key 'head_learning_rate': must be > 0"),
    ({"modules_learning_rate": -1}, "key 'modules_learning_rate': must be in [0.0, None], got -1.0"),
    ({"train_modules": "decoder"}, "key 'train_modules': expected a list of strings, got str 'decoder'"),
    ({"train_modules": ["decoder(["]}, "key 'train_modules[0]': invalid regular expression 'decoder(['"),
    ({"spacing": [1, 1]}, "key 'spacing': expected a list of 3 positive numbers (mm), got [1, 1]"),
    ({"spacing": [1, 0, 1]}, "key 'spacing': expected a list of 3 positive numbers (mm)"),
    (
        {"spacing": "native"},
        "key 'spacing': expected a list of 3 positive numbers (mm), \"auto\" or \"base\", got 'native'",
    ),
    ({"early_stopping": -1}, "key 'early_stopping': must be >= 0, got -1"),
    ({"val_fraction": 1.0}, "key 'val_fraction': must be in [0.0, 1.0), got 1.0"),
    ({"val_fraction": 0.2, "val_case_ids": ["a"]}, "key 'val_case_ids': give either 'val_fraction'"),
    ({"patch_size": [32, 32]}, "key 'patch_size': expected a list of 3 positive integers, got [32, 32]"),
    ({"patch_size": [32, 0, 32]}, "key 'patch_size': expected a list of 3 positive integers"),
    ({"label_names": ["a", 2]}, "key 'label_names[1]': expected a string, got int 2"),
    (
        {"label_names": ["a", "b"], "label_colors": [[1, 0, 0]]},
        "key 'label_colors': has 1 colors for 2 label_names",
    ),
    (
        {"label_colors": [[1, 0, 2]]},
        "key 'label_colors[0]': expected [r, g, b] with values in 0..1, got [1, 0, 2]",
    ),
    ({"output": None}, "key 'output': expected a path string, got NoneType None"),
    ({"cases": None}, "key 'cases': give exactly one of 'cases' (a list) or 'data' (a folder)"),
    ({"data": "dec"}, "key 'data': give exactly one of 'cases'"),
    ({"num_cases": 3}, "key 'num_cases': only applies with 'data'"),
    ({"cases": []}, "key 'cases': needs at least one case"),
    ({"cases": ["a.nii.gz"]}, "key 'cases[0]': expected an object with id, image and label, got str"),
    ({"cases": [{"id": "a", "image": "a.nii", "lable": "l.nii"}]}, "key 'cases[0].lable': unknown key"),
    ({"cases": [{"id": "a", "image": "a.nii"}]}, "key 'cases[0].label': missing (required)"),
    (
        {"cases": [{"id": "a", "image": [], "label": "l"}]},
        "key 'cases[0].image': needs at least one image path",
    ),
    (
        {"cases": [{"id": "a", "image": "a", "label": "l"}, {"id": "a", "image": "b", "label": "m"}]},
        "key 'cases[1].id': duplicate case id 'a'",
    ),
    ({"command": "segment"}, "key 'command': expected 'finetune', got 'segment'"),
    ({"schema": "tcurlora.job/2"}, "key 'schema': unsupported job schema 'tcurlora.job/2'"),
]


@pytest.mark.parametrize(("overrides", "message"), BAD_FINETUNE)
def test_finetune_errors_name_file_and_key(tmp_path, overrides, message):
    path = write_job(tmp_path, finetune_data(**overrides))
    with pytest.raises(ConfigError) as info:
        FinetuneJob.from_file(path)
    assert info.value.path == str(path)
    assert message in info.value.problem
    assert str(info.value).startswith(f"{path}: ")


def test_missing_required_key(tmp_path):
    data = finetune_data()
    del data["base_model"]
    with pytest.raises(ConfigError, match=r"key 'base_model': missing \(required\)"):
        load_job(write_job(tmp_path, data))


BAD_SEGMENT = [
    ({"inputs": []}, "key 'inputs': needs at least one input volume"),
    ({"inputs": "a.nrrd"}, "key 'inputs': expected a list of image paths"),
    ({"inputs": [3]}, "key 'inputs[0]': expected a path string, got int 3"),
    ({"outputs": ["a.nrrd"]}, "key 'output_dir': give exactly one of 'outputs'"),
    ({"output_dir": None}, "key 'outputs': give exactly one of 'outputs'"),
    ({"output_dir": None, "outputs": ["a.nrrd"]}, "key 'outputs': has 1 paths for 2 inputs"),
    ({"overlap": 1}, "key 'overlap': must be in [0.0, 1.0), got 1.0"),
    ({"largest_component": 1}, """key 'largest_component': expected true, false or "auto", got int 1"""),
    (
        {"largest_component": "all"},
        """key 'largest_component': expected true, false or "auto", got str 'all'""",
    ),
    ({"tta": "off"}, "key 'tta': expected true or false, got str 'off'"),
    ({"inputs": ["a/x.nrrd", "b/x.nrrd"]}, "key 'output_dir': two inputs would write the same file"),
    ({"adapter": ""}, "key 'adapter': must not be empty"),
    ({"output": "x"}, "key 'output': unknown key"),
]


@pytest.mark.parametrize(("overrides", "message"), BAD_SEGMENT)
def test_segment_errors_name_file_and_key(tmp_path, overrides, message):
    path = write_job(tmp_path, segment_data(**overrides))
    with pytest.raises(ConfigError) as info:
        load_job(path)
    assert info.value.path == str(path)
    assert message in info.value.problem


def test_load_job_file_level_errors(tmp_path):
    with pytest.raises(InputError, match="job file not found"):
        load_job(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{"command": "finetune",')
    with pytest.raises(ConfigError, match=r"bad.json: not valid JSON: .* line 1"):
        load_job(bad)
    with pytest.raises(ConfigError, match="a job must be a JSON object, not list"):
        load_job(write_job(tmp_path, [1, 2]))
    with pytest.raises(ConfigError, match=r"key 'command': missing"):
        load_job(write_job(tmp_path, {"base_model": "x"}))
    with pytest.raises(
        ConfigError, match=r"key 'command': must be one of finetune, segment, suggest; got 'train'"
    ):
        load_job(write_job(tmp_path, {"command": "train"}))


# ------------------------------------------------------------------------------------------ events
VALID_EVENTS = {
    "started": {
        "command": "finetune",
        "device": "cuda:0 (NVIDIA H200)",
        "total": 200,
        "parameters": {"total": 100000, "trainable": 4608, "trainable_percent": 4.608, "head": 99},
    },
    "progress": {
        "iteration": 3,
        "total": 200,
        "loss": 0.5,
        "val_dice": {"Anterior": 0.8, "Posterior": None},
        "eta_s": 12.5,
        "lr": 0.01,
        "message": None,
    },
    "checkpoint": {"iteration": 50, "path": "/tmp/x.checkpoint"},
    "log": {"level": "warning", "message": "CUDA not available"},
    "done": {"outputs": {"adapter": "/tmp/a"}, "metrics": {"final_loss": 0.1}},
    "error": {"kind": "input_error", "message": "bad", "path": None, "exit_code": 2},
}


def event(kind: str, **changes) -> dict:
    obj = {"event": kind, "time": 1700000000.5, **VALID_EVENTS[kind]}
    obj.update(changes)
    return obj


def test_schema_covers_every_kind():
    assert set(VALID_EVENTS) == set(EVENT_SCHEMA)


@pytest.mark.parametrize("kind", sorted(VALID_EVENTS))
def test_every_event_kind_validates_and_parses(kind):
    obj = event(kind)
    validate_event(obj)
    assert parse_event_line(json.dumps(obj) + "\n") == obj


def test_segment_started_without_parameters_is_valid():
    obj = event("started", command="segment", total=3)
    del obj["parameters"]
    validate_event(obj)


BAD_EVENTS = [
    ({"event": "finished"}, "unknown event kind 'finished'"),
    ({"time": "now"}, "key 'time' must be a number"),
    ({"loss": "low"}, "progress event: key 'loss' must be number or null, got 'low'"),
    ({"iteration": 1.5}, "progress event: key 'iteration' must be integer, got 1.5"),
    ({"iteration": 201}, "need 0 <= iteration <= total, got 201/200"),
    ({"val_dice": {"Anterior": "high"}}, "val_dice['Anterior'] must be a number or null"),
    ({"extra": 1}, "progress event: unknown key 'extra'"),
]


@pytest.mark.parametrize(("changes", "reason"), BAD_EVENTS)
def test_bad_progress_events_fail_with_reason(changes, reason):
    with pytest.raises(ValueError, match=reason.replace("[", r"\[").replace("(", r"\(")):
        validate_event(event("progress", **changes))


def test_bad_events_of_other_kinds():
    missing = event("checkpoint")
    del missing["path"]
    cases = [
        (missing, "checkpoint event: missing key 'path'"),
        (event("log", level="debug"), "level must be one of info, warning"),
        (event("error", exit_code=True), "key 'exit_code' must be integer"),
        (event("done", outputs=["a"]), "key 'outputs' must be object"),
        (event("started", command="train"), "command must be one of finetune, segment"),
        (
            event("started", parameters={"total": 1, "trainable": 1, "head": 0}),
            "started event parameters: missing key 'trainable_percent'",
        ),
        ([1, 2], "an event must be a JSON object"),
    ]
    for obj, reason in cases:
        with pytest.raises(ValueError, match=reason):
            validate_event(obj)


def test_parse_event_line_skips_stray_output_but_not_bad_events():
    for line in ["", "\n", "Loading weights...\n", "Warning: {not json}", "{half json", "[1, 2]"]:
        assert parse_event_line(line) is None
    with pytest.raises(ValueError, match="unknown event kind"):
        parse_event_line('{"event": "nope", "time": 1}')
    with pytest.raises(ValueError, match="loss"):
        parse_event_line(json.dumps(event("progress", loss=float("nan"))))


@pytest.mark.parametrize(
    ("method", "conv_targets", "expected"),
    [
        ("tcur", None, True),
        ("tcur", False, False),
        ("lora", None, False),
        ("full", None, False),
        ("tcur", True, True),
    ],
)
def test_conv_targets_default_is_per_method_and_survives_a_round_trip(
    tmp_path, method, conv_targets, expected
):
    overrides = (
        {"method": method} if conv_targets is None else {"method": method, "conv_targets": conv_targets}
    )
    job = load_job(write_job(tmp_path, finetune_data(**overrides)))
    assert job.conv_targets is conv_targets and job.uses_conv_targets is expected
    again = FinetuneJob.from_dict(job.to_dict(), tmp_path, None)
    assert again.conv_targets is conv_targets and again.uses_conv_targets is expected


@pytest.mark.parametrize("spacing", [[1, 1, 1.5], "auto", "base", None])
def test_new_finetune_settings_round_trip(tmp_path, spacing):
    data = finetune_data(
        spacing=spacing,
        train_modules=["decoder", r"encoder1"],
        head_learning_rate=0.05,
        modules_learning_rate=1e-3,
        early_stopping=2,
    )
    job = FinetuneJob.from_file(write_job(tmp_path, data))
    assert job.spacing == ([1.0, 1.0, 1.5] if isinstance(spacing, list) else spacing)
    assert (job.train_modules, job.head_learning_rate, job.modules_learning_rate, job.early_stopping) == (
        ["decoder", "encoder1"],
        0.05,
        1e-3,
        2,
    )
    again = FinetuneJob.from_dict(job.to_dict(), tmp_path)
    assert again == job
