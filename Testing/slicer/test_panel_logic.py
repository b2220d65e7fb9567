"""The panels' decisions, moved out of the widgets into TCURFineTuneLib / TCURSegmenterLib /
TCURLoRACommon, tested against real MRML nodes and the real job schema."""

from __future__ import annotations

import ast
import dataclasses
import importlib
import json
import types
from pathlib import Path

import numpy as np
import pytest
import slicer
from TCURFineTuneLib.cases import TrainingPair, add_pair, classes_text, merge_pairs, pairs_from_lists
from TCURFineTuneLib.panel import parse_patch_size, settings_from_parameters
from TCURSegmenterLib.logic import choose_adapter, segmentation_run, volumes_and_targets

from tcurlora.errors import InputError
from tcurlora.jobs.schema import FinetuneJob, SegmentJob
from tcurlora.library import AdapterEntry
from TCURLoRACommon import scene
from TCURLoRACommon.jobs import LARGEST_COMPONENT_CHOICES, finetune_job
from TCURLoRACommon.models import base_model_choices, choose_base_model, resolve_base_model
from TCURLoRACommon.runs import event_text

ROOT = Path(__file__).resolve().parents[2]
BUILTIN = "unetr-small-acdc-brats"


def parameter_node_fields(script: Path) -> dict[str, ast.expr | None]:
    """The fields of a module's @parameterNodeWrapper class and the expressions of their defaults."""
    for node in ast.walk(ast.parse(script.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ClassDef) and any(
            getattr(d, "id", None) == "parameterNodeWrapper" for d in node.decorator_list
        ):
            return {item.target.id: item.value for item in node.body if isinstance(item, ast.AnnAssign)}
    raise AssertionError(f"{script}: no @parameterNodeWrapper class")


def module_imports(script: Path) -> dict[str, object]:
    """The names a module script imports from TCURLoRACommon (what its parameter node defaults may use)."""
    names: dict[str, object] = {}
    for node in ast.parse(script.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("TCURLoRACommon"):
            module = importlib.import_module(node.module)
            names.update({a.asname or a.name: getattr(module, a.name) for a in node.names})
    return names


def parameter_defaults(script: Path) -> types.SimpleNamespace:
    """The fields of a module's parameter node with their defaults (None if none), evaluated with the names
    the module imports from TCURLoRACommon.jobs: what a fresh scene's parameter node holds."""
    names = module_imports(script)
    return types.SimpleNamespace(
        **{
            name: eval(compile(ast.Expression(value), str(script), "eval"), names) if value else None  # noqa: S307
            for name, value in parameter_node_fields(script).items()
        }
    )


# Parameter node field -> the FinetuneJob setting whose default it shows.
JOB_BACKED_FIELDS = {
    "method": "method",
    "rank": "rank",
    "iterations": "iterations",
    "device": "device",
    "batchSize": "batch_size",
    "valFraction": "val_fraction",
    "seed": "seed",
}


SEGMENT_BACKED_FIELDS = {
    "device": "device",
    "overlap": "overlap",
    "largestComponentClasses": "largest_component",
    "testTimeAugmentation": "tta",
}


@pytest.mark.parametrize(
    ("module", "job", "backed", "namespace"),
    [
        ("TCURFineTune", FinetuneJob, JOB_BACKED_FIELDS, "JOB_DEFAULTS"),
        ("TCURSegmenter", SegmentJob, SEGMENT_BACKED_FIELDS, "SEGMENT_DEFAULTS"),
    ],
)
def test_the_parameter_nodes_take_their_defaults_from_the_job_declaration(module, job, backed, namespace):
    script = ROOT / module / f"{module}.py"
    fields, node = parameter_node_fields(script), parameter_defaults(script)
    job_defaults = {f.name: f.default for f in dataclasses.fields(job)}
    for field, key in backed.items():
        assert ast.unparse(fields[field]) == f"{namespace}.{key}", f"{field} states its own default"
        assert getattr(node, field) == job_defaults[key]
    # Run on: the remote settings' own defaults, named, not restated
    assert (ast.unparse(fields["runOn"]), ast.unparse(fields["remoteCommand"])) == (
        "THIS_COMPUTER",
        "DEFAULT_COMMAND",
    )
    assert (node.runOn, node.remoteCommand) == ("this computer", "tcurlora")


def volume(name: str, shape=(4, 5, 6)) -> slicer.vtkMRMLScalarVolumeNode:
    node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    slicer.util.updateVolumeFromArray(node, np.zeros(shape, np.int16))
    return node


def segmentation(name: str, reference, names=("a",)) -> slicer.vtkMRMLSegmentationNode:
    return scene.new_label_segmentation(reference, list(names))


# --- the default settings make a valid job ---------------------------------------------------------
def test_default_parameter_node_makes_a_valid_finetune_job(mrml, tmp_path: Path) -> None:
    node = parameter_defaults(ROOT / "TCURFineTune" / "TCURFineTune.py")
    assert node.baseModel == "", "a fresh parameter node names no base model: the panel must choose one"
    # what refreshModels stores after filling the combo box with its signals blocked
    node.baseModel = choose_base_model(base_model_choices(), node.baseModel)
    assert node.baseModel == BUILTIN
    settings = settings_from_parameters(node)
    job = finetune_job(
        settings,
        [{"id": "c1", "image": "images/c1.nrrd", "label": "labels/c1.nrrd"}],
        ["a"],
        [[1.0, 0.0, 0.0]],
        tmp_path / "out",
    )
    parsed = FinetuneJob.from_dict(json.loads(json.dumps(job)), tmp_path)
    assert parsed.base_model == BUILTIN and parsed.method == "tcur" and parsed.rank == 8
    assert parsed.iterations == 500 and parsed.patch_size is None and parsed.device == "auto"
    assert parsed.learning_rate is None and parsed.batch_size == 2
    # the measured default recipe: working spacing from the cases, the method's extra modules, head rate
    assert parsed.spacing == "auto" and parsed.train_modules is None and parsed.head_learning_rate is None


def test_advanced_recipe_fields_reach_the_job(mrml, tmp_path: Path) -> None:
    node = parameter_defaults(ROOT / "TCURFineTune" / "TCURFineTune.py")
    node.baseModel = BUILTIN
    node.headLearningRate, node.trainModules, node.spacing = 0.02, "decoder, encoder1", "1"
    settings = settings_from_parameters(node)
    job = finetune_job(
        settings, [{"id": "c1", "image": "i.nrrd", "label": "l.nrrd"}], ["a"], None, tmp_path / "o"
    )
    parsed = FinetuneJob.from_dict(json.loads(json.dumps(job)), tmp_path)
    assert (parsed.head_learning_rate, parsed.train_modules, parsed.spacing) == (
        0.02,
        ["decoder", "encoder1"],
        [1.0, 1.0, 1.0],
    )
    node.trainModules, node.spacing = "none", "base"
    settings = settings_from_parameters(node)
    assert settings.train_modules == [] and settings.spacing == "base"
    for field, value, message in (
        ("trainModules", "decoder([", "not a regular expression"),
        ("spacing", "1,2", "one or three positive numbers"),
        ("spacing", "fine", "use auto, base or numbers"),
    ):
        setattr(node, field, value)
        with pytest.raises(InputError, match=message):
            settings_from_parameters(node)
        node.trainModules, node.spacing = "", "auto"


def test_empty_base_model_is_an_input_error(mrml) -> None:
    node = parameter_defaults(ROOT / "TCURFineTune" / "TCURFineTune.py")
    with pytest.raises(InputError, match="choose a base model"):
        settings_from_parameters(node)
    node.baseModel, node.adapterName = BUILTIN, "  "
    with pytest.raises(InputError, match="give the adapter a name"):
        settings_from_parameters(node)


def test_chosen_base_model_is_kept_when_offered() -> None:
    choices = [("x (built-in)", "x"), ("b (folder)", "/data/b")]
    assert choose_base_model(choices, "/data/b") == "/data/b"
    assert choose_base_model(choices, "/gone") == "x"
    assert choose_base_model([], "") == ""


# --- a bad patch size is an input error with a message, not a ValueError outside the try -----------
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", None),
        ("  ", None),
        ("96,96,96", (96, 96, 96)),
        ("64x80x96", (64, 80, 96)),
        ("32 32 48", (32, 32, 48)),
    ],
)
def test_patch_size_parsing(text: str, expected) -> None:
    assert parse_patch_size(text) == expected


@pytest.mark.parametrize("text", ["96,96", "96,96,96,96", "a,b,c", "0,96,96", "-1,2,3", "96.5,96,96"])
def test_bad_patch_size_names_the_problem(text: str) -> None:
    with pytest.raises(InputError, match=r"patch size .*e\.g\. 96,96,96"):
        parse_patch_size(text)


# --- the case table -----------------------------------------------------------------------------
def test_case_table_rows(mrml) -> None:
    v1, v2, v3 = volume("v1"), volume("v2"), volume("v3")
    s1, s2 = segmentation("s1", v1), segmentation("s2", v2)
    pairs = add_pair([], v1, s1)
    assert [(p.volume, p.segmentation) for p in pairs] == [(v1, s1)]
    with pytest.raises(InputError, match="'v2' has no segmentation"):
        add_pair(pairs, v2, None)
    with pytest.raises(InputError, match="choose a volume"):
        add_pair(pairs, None, s2)
    with pytest.raises(InputError, match="'v1' is already in the table"):
        add_pair(pairs, v1, s2)
    assert pairs_from_lists([v1, v2], [s1]) == [TrainingPair(v1, s1), TrainingPair(v2, None)]
    assert classes_text([]) == "Classes: none" and classes_text(pairs) == "Classes: a"
    assert classes_text([*pairs, TrainingPair(v3, None)]).startswith("Problem: ")


def test_pair_by_study_keeps_the_table(mrml) -> None:
    """The "Pair by study" button, finding nothing, must not empty the table; found pairs are added."""
    v1, v2 = volume("v1"), volume("v2")
    s1, s2 = segmentation("s1", v1), segmentation("s2", v2)
    table = [TrainingPair(v1, s1)]
    assert merge_pairs(table, []) == table
    assert merge_pairs(table, [TrainingPair(v1, s1), TrainingPair(v2, s2)]) == [*table, TrainingPair(v2, s2)]
    assert merge_pairs(table, [TrainingPair(v2, s1)]) == table  # s1 is used already


# --- Segmenter ----------------------------------------------------------------------------------
def test_adapter_selection(tmp_path: Path) -> None:
    entries = [AdapterEntry(name=n, path=tmp_path / n) for n in ("a", "b")]
    assert choose_adapter(entries, str(tmp_path / "b")) == 1
    assert choose_adapter(entries, "") == 0 and choose_adapter([], "x") == -1


def test_what_to_segment(mrml) -> None:
    v1, v2 = volume("v1"), volume("v2")
    labels = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "labels")
    out = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "out")
    node = types.SimpleNamespace(allVolumes=False, inputVolume=v2, outputSegmentation=out)
    assert volumes_and_targets(node) == ([v2], [out])
    node.allVolumes = True
    assert volumes_and_targets(node) == ([v1, v2], None) and labels not in volumes_and_targets(node)[0]
    node.allVolumes, node.inputVolume = False, None
    with pytest.raises(InputError, match="no input volume"):
        volumes_and_targets(node)


def test_segmenter_job_carries_overlap_largest_component_and_a_loadable_base(mrml, tmp_path: Path) -> None:
    v1 = volume("v1")
    adapter = AdapterEntry(name="a", path=tmp_path / "a", label_names=["x"], base_model_id=BUILTIN)
    run = segmentation_run([v1], adapter, "cpu", None, overlap=0.25, largest_component=True, tta=False)
    parsed = SegmentJob.from_dict(json.loads(json.dumps(run.job)), tmp_path)
    assert parsed.base_model == BUILTIN and parsed.overlap == 0.25 and parsed.largest_component is True
    assert parsed.tta is False
    run.remove_workdir()
    # the panel's "Largest component only" choices become the job's values; the defaults are segment's
    for choice, value in (("auto", "auto"), ("every class", True), ("no class", False)):
        run = segmentation_run([v1], adapter, "cpu", largest_component=LARGEST_COMPONENT_CHOICES[choice])
        parsed = SegmentJob.from_dict(json.loads(json.dumps(run.job)), tmp_path)
        assert (parsed.largest_component, parsed.tta) == (value, True)
        run.remove_workdir()
    assert parsed.device == "cpu" and [Path(p[0]).name for p in parsed.inputs] == ["volume0.nrrd"]
    with pytest.raises(InputError, match="overlap must be"):
        segmentation_run([v1], adapter, "cpu", overlap=1.0)
    unknown = AdapterEntry(name="a", path=tmp_path / "a", label_names=["x"], base_model_id="gone@1.0")
    with pytest.raises(InputError, match="'gone@1.0', which is neither built in nor in the model library"):
        segmentation_run([v1], unknown, "cpu")
    assert resolve_base_model("preset:unetr-tiny") == "preset:unetr-tiny"


def test_event_lines() -> None:
    assert event_text({"event": "log", "message": "hello"}) == "hello"
    assert event_text({"event": "progress", "iteration": 1, "message": None}) is None
    assert event_text({"event": "checkpoint", "iteration": 50, "path": "x"}) == "Checkpoint at iteration 50"
    started = {
        "event": "started",
        "device": "cpu",
        "parameters": {"trainable": 1200, "trainable_percent": 1.5},
    }
    assert event_text(started) == "Training on cpu: 1200 trainable parameters (1.500%)"
    assert event_text({"event": "started", "device": "cuda:0", "parameters": None}) == "Running on cuda:0"
    assert event_text({"event": "error", "message": "boom"}) == "Error: boom"
