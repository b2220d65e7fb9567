"""The job files the Slicer modules write (TCUR Fine-Tune's FineTuneRun, TCUR Segmenter's SegmentVolumesRun,
on real MRML nodes) validate against the exported JSON Schema (docs/schemas/job.schema.json), and the
panel's settings take their defaults from the one job declaration (FinetuneJob)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jsonschema
import numpy as np
import slicer
from TCURFineTuneLib.panel import settings_from_parameters
from TCURFineTuneLib.run import FineTuneRun
from TCURFineTuneLib.testing import fast_settings, load_training_scene
from test_panel_logic import BUILTIN, ROOT, parameter_defaults

from tcurlora.jobs.schema import FinetuneJob, SegmentJob
from TCURLoRACommon.jobs import FineTuneSettings
from TCURLoRACommon.segment_run import SegmentVolumesRun


def job_validator() -> jsonschema.Draft202012Validator:
    schema = json.loads((ROOT / "docs" / "schemas" / "job.schema.json").read_text(encoding="utf-8"))
    return jsonschema.Draft202012Validator(schema)


def panel_settings(**fields) -> FineTuneSettings:
    node = parameter_defaults(ROOT / "TCURFineTune" / "TCURFineTune.py")
    node.baseModel = BUILTIN
    for name, value in fields.items():
        setattr(node, name, value)
    return settings_from_parameters(node)


def test_the_panel_defaults_are_the_job_defaults() -> None:
    settings = panel_settings()
    # the panel's "auto" spacing is the job's default (None = auto); everything else equal as declared
    assert settings.spacing == "auto"
    assert dataclasses.replace(settings, spacing=None) == FineTuneSettings(base_model=BUILTIN)
    job_defaults = {f.name: f.default for f in dataclasses.fields(FinetuneJob)}
    for f in dataclasses.fields(FineTuneSettings):
        if f.name != "base_model":
            assert f.default == job_defaults[f.name], f.name


def test_finetune_runs_write_jobs_the_schema_accepts(mrml, hippocampus_dir: Path, tmp_path: Path) -> None:
    pairs, names = load_training_scene(hippocampus_dir, 2)
    check = job_validator()
    choices = {
        "defaults": panel_settings(),
        "advanced": panel_settings(
            headLearningRate=0.02,
            trainModules="decoder, encoder1",
            spacing="1",
            patchSize="32,32,16",
            valFraction=0.5,
            learningRate=0.001,
        ),
        "self-test": fast_settings(),
    }
    for name, settings in choices.items():
        run = FineTuneRun(pairs, settings, f"adapter-{name}", tmp_path / name, curves=False)  # not started
        data = json.loads(run.job_path.read_text(encoding="utf-8"))
        errors = [e.message for e in check.iter_errors(data)]
        assert errors == [], (name, errors)
        job = FinetuneJob.from_file(run.job_path)
        assert job.label_names == names and len(job.cases) == 2


def test_segment_runs_write_jobs_the_schema_accepts(mrml, tmp_path: Path) -> None:
    check = job_validator()
    volumes = []
    for name in ("head", "knee"):
        node = mrml.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
        slicer.util.updateVolumeFromArray(node, np.zeros((6, 7, 8), np.int16))
        volumes.append(node)
    runs = [
        SegmentVolumesRun(volumes[:1], BUILTIN, None, ["a"], workdir=tmp_path / "one"),
        SegmentVolumesRun(
            volumes,
            BUILTIN,
            tmp_path / "adapters" / "x",
            ["a", "b"],
            device="cpu",
            workdir=tmp_path / "two",
            overlap=0.25,
            largest_component=True,
        ),
    ]
    for run in runs:
        data = json.loads(run.job_path.read_text(encoding="utf-8"))
        assert [e.message for e in check.iter_errors(data)] == []
        assert SegmentJob.from_file(run.job_path).output_paths() == run.outputs
    assert list(check.iter_errors({**data, "overlap": 1.0})), "the schema must be able to refuse a Slicer job"
