"""The one declaration per setting (tcurlora.settings): the generic validator, the JSON Schema and the CLI
flags derived from a dataclass's `setting(...)` fields; and the pretrain recipe read through it."""

from __future__ import annotations

import argparse
import ast
import json
from dataclasses import dataclass
from pathlib import Path

import jsonschema
import pytest

from tcurlora.errors import ConfigError
from tcurlora.filenames import MODEL_SPEC_FILE
from tcurlora.jobs.schema import FinetuneJob, SegmentJob
from tcurlora.pretraining.config import PretrainConfig, SourceConfig
from tcurlora.settings import (
    SettingError,
    add_arguments,
    check_keys,
    flag_values,
    job_flags,
    object_schema,
    read_fields,
    setting,
    settings_of,
)

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Toy:
    """A toy model."""

    name: str = setting(kind="string", help="its name", flag="--name")
    count: int = setting(3, "integer", minimum=1, maximum=9, help="how many", flag="--count")
    rate: float | None = setting(
        None, "number", minimum=0.0, exclusive_minimum=True, help="a rate", flag="--rate", dest="r"
    )
    mode: str = setting("a", "choice", choices=("a", "b"), help="the mode", flag="--mode")
    quiet: bool = setting(False, "boolean", help="say less", flag="--quiet")
    tags: list[str] = setting([], "strings", help="labels", flag="--tags")
    note: str = setting("", "text", help="free text")
    where: Path | None = setting(None, "path", help="a folder")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({}, "key 'name': missing (required)"),
        ({"name": " "}, "key 'name': must not be empty"),
        ({"name": "x", "count": "3"}, "key 'count': expected an integer, got str '3'"),
        ({"name": "x", "count": True}, "key 'count': expected an integer, got bool True"),
        ({"name": "x", "count": 0}, "key 'count': must be >= 1, got 0"),
        ({"name": "x", "count": 10}, "key 'count': must be <= 9, got 10"),
        ({"name": "x", "count": None}, "key 'count': expected an integer, got NoneType None"),
        ({"name": "x", "rate": 0}, "key 'rate': must be > 0"),
        ({"name": "x", "rate": float("inf")}, "key 'rate': expected a number, got float inf"),
        ({"name": "x", "mode": "c"}, "key 'mode': must be one of a, b; got 'c'"),
        ({"name": "x", "quiet": 1}, "key 'quiet': expected true or false, got int 1"),
        ({"name": "x", "tags": ["a", 2]}, "key 'tags[1]': expected a string, got int 2"),
        ({"name": "x", "where": ""}, "key 'where': must not be empty"),
    ],
)
def test_the_generic_validator_names_the_key_and_the_problem(data, message):
    with pytest.raises(SettingError) as info:
        read_fields(Toy, data, Path("/base"))
    assert str(info.value) == message


def test_defaults_conversions_and_fresh_list_defaults():
    values = read_fields(Toy, {"name": "x", "rate": 1, "where": "sub", "note": ""}, Path("/base"))
    assert values == {
        "name": "x",
        "count": 3,
        "rate": 1.0,
        "mode": "a",
        "quiet": False,
        "tags": [],
        "note": "",
        "where": Path("/base/sub"),
    }
    assert isinstance(values["rate"], float)
    a, b = Toy(name="a"), Toy(name="b")
    a.tags.append("t")
    assert b.tags == []


def test_the_json_schema_agrees_with_the_validator():
    schema = object_schema(Toy)
    jsonschema.Draft202012Validator.check_schema(schema)
    check = jsonschema.Draft202012Validator(schema)
    assert schema["required"] == ["name"] and schema["description"] == "A toy model."
    assert schema["properties"]["count"] == {
        "type": "integer",
        "minimum": 1,
        "maximum": 9,
        "description": "how many",
        "default": 3,
    }
    good = {
        "name": "x",
        "count": 9,
        "rate": 0.5,
        "mode": "b",
        "quiet": True,
        "tags": ["t"],
        "note": "",
        "where": None,
    }
    check.validate(good)
    for key, bad in [
        ("count", 10),
        ("count", "3"),
        ("rate", 0),
        ("mode", "c"),
        ("quiet", 1),
        ("name", " "),
        ("tags", ["a", 2]),
        ("other", 1),
    ]:
        assert list(check.iter_errors({**good, key: bad})), (key, bad)
        with pytest.raises(SettingError):
            check_keys({**good, key: bad}, set(Toy.__dataclass_fields__))
            read_fields(Toy, {**good, key: bad})


def test_flags_helps_and_values_come_from_the_declaration():
    parser = argparse.ArgumentParser()
    add_arguments(parser, Toy)
    assert job_flags(Toy) == {
        "name": "--name",
        "count": "--count",
        "r": "--rate",
        "mode": "--mode",
        "quiet": "--quiet",
        "tags": "--tags",
    }
    args = parser.parse_args(["--name", "n", "--rate", "0.5", "--quiet", "--tags", "a", "b"])
    assert flag_values(args, Toy) == {"name": "n", "rate": 0.5, "quiet": True, "tags": ["a", "b"]}
    helps = {a.dest: a.help for a in parser._actions}
    assert helps["count"] == "how many (default 3)" and helps["quiet"] == "say less"


def test_every_finetune_and_segment_key_is_declared_once_with_a_help_text():
    for cls in (FinetuneJob, SegmentJob):
        declared = [f.name for f, _ in settings_of(cls)]
        assert set(declared) == {f for f in cls.__dataclass_fields__ if f != "job_file"}
        assert all(s.help for _, s in settings_of(cls)), cls
    # the fine-tune settings are not listed again anywhere in the package (no second table of keys)
    tree = ast.parse((REPO / "tcurlora" / "commands" / "finetune.py").read_text(encoding="utf-8"))
    literals = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
    assert not literals & {"rank", "iterations", "learning_rate", "--rank", "--iterations", "--lr"}


# --------------------------------------------------------------------------------- pretrain recipe
def recipe(tmp_path: Path, **changes) -> Path:
    data = json.loads((REPO / "configs" / "pretrain" / "unetr-small-cpu.json").read_text(encoding="utf-8"))
    data.update(changes)
    path = tmp_path / "recipe.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"iterations": "100"}, "key 'iterations': expected an integer, got str '100'"),
        ({"iterations": 0}, "key 'iterations': must be >= 1, got 0"),
        ({"learning_rate": 0}, "key 'learning_rate': must be > 0"),
        ({"foreground_fraction": 1.5}, "key 'foreground_fraction': must be in [0.0, 1.0], got 1.5"),
        ({"patch_size": [48, 48]}, "key 'patch_size': expected a list of 3 positive integers"),
        ({"spacing": ["1.5", 1, 1]}, "key 'spacing': expected a list of 3 positive numbers"),
        ({"arch": "VNet"}, "key 'arch': must be one of UNETR, SwinUNETR, SegResNet; got 'VNet'"),
        ({"precision": "fp16"}, "key 'precision': must be one of fp32, bf16, auto; got 'fp16'"),
        ({"checkpoint_every": 0}, "key 'checkpoint_every': must be >= 1, got 0"),
        ({"iteration": 5}, "key 'iteration': unknown key"),
        ({"sources": [{"name": "a"}]}, "key 'sources[0].folder': missing (required)"),
        (
            {"sources": [{"name": "a", "folder": "f", "channels": ["0"]}]},
            "key 'sources[0].channels': expected",
        ),
        (
            {"sources": [{"name": "a", "folder": "f", "num_cases": 0}]},
            "key 'sources[0].num_cases': must be >= 1",
        ),
        ({"sources": [{"name": "a", "folder": "f", "val_ids": []}]}, "key 'sources[0].val_ids': unknown key"),
        ({"sources": "acdc"}, "key 'sources': expected a list of source objects, got str 'acdc'"),
        ({"arch_params": None}, "key 'arch_params': expected an object, got NoneType None"),
    ],
)
def test_bad_recipes_name_the_file_and_the_key(tmp_path, changes, message):
    path = recipe(tmp_path, **changes)
    with pytest.raises(ConfigError) as info:
        PretrainConfig.from_file(path)
    assert info.value.path == str(path)
    assert info.value.problem.startswith(message), info.value.problem


def test_a_recipe_round_trips_through_to_dict(tmp_path):
    config = PretrainConfig.from_file(REPO / "configs" / "pretrain" / "unetr-small-cpu.json")
    assert isinstance(config.sources[0], SourceConfig) and isinstance(config.spacing, tuple)
    path = tmp_path / "again.json"
    path.write_text(json.dumps(config.to_dict()), encoding="utf-8")
    assert PretrainConfig.from_file(path) == config
    assert config.to_dict()["spacing"] == list(config.spacing)


# -------------------------------------------------------------------------------------- model spec
def test_the_builtin_model_spec_round_trips_and_bad_specs_name_the_key():
    from tcurlora.models.spec import IntensitySpec, ModelSpec

    record = json.loads(
        (REPO / "Resources" / "Models" / "unetr-small-acdc-brats" / MODEL_SPEC_FILE).read_text()
    )
    spec = ModelSpec.from_dict(record["spec"])
    assert (
        spec.spacing == (1.5, 1.5, 1.5)
        and spec.patch_size == (48, 48, 48)
        and spec.labels[1] == "RightVentricle"
    )
    assert isinstance(spec.intensity, IntensitySpec) and ModelSpec.from_dict(spec.to_dict()) == spec
    assert ModelSpec("x").intensity is not ModelSpec("y").intensity  # a fresh default per spec
    for change, message in [
        ({"patch_size": "96"}, "key 'patch_size': expected a list of 3 positive integers, got str '96'"),
        ({"intensity": {"kind": "minmax"}}, "key 'intensity.kind': must be one of zscore, percentile, range"),
        ({"intensity": {"lower": "1"}}, "key 'intensity.lower': expected a number, got str '1'"),
        ({"labels": {"one": "a"}}, "key 'labels[one]': label values must be whole numbers"),
        ({"output": "logits"}, "key 'output': must be one of softmax, sigmoid"),
        ({"spec": 1}, "key 'spec': unknown key"),
    ]:
        with pytest.raises(ConfigError) as info:
            ModelSpec.from_dict({**record["spec"], **change}, MODEL_SPEC_FILE)
        assert info.value.path == MODEL_SPEC_FILE and message in info.value.problem, info.value.problem
