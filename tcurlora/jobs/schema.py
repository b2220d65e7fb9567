"""The worker protocol's job schema, defined once: job files in ("tcurlora.job/1"); the events out
("tcurlora.events/1") are in tcurlora.jobs.event_schema, the fields' bounds and parsers in
tcurlora.jobs.fields, their command-line converters in tcurlora.jobs.cli_args.

A job file is a JSON object with `"command"` ("finetune", "segment" or "suggest") and optional
`"schema": "tcurlora.job/1"`; every other key is a field of `FinetuneJob`, `SegmentJob` or `SuggestJob`, declared
once with its kind, bounds, default, help text and command-line flag (tcurlora.settings): the CLI
flags, the Slicer FineTune settings and the JSON Schema (`tcurlora schema job`) are derived from
these declarations. Relative paths are resolved against the job file's folder. Every problem
(unknown key, wrong type, missing key, bad value) is a `ConfigError` naming the job file and the key.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tcurlora.adapters.methods.registry import METHODS, conv_targets_on
from tcurlora.data.cases import Case
from tcurlora.errors import ConfigError, InputError
from tcurlora.filenames import JOB_SCHEMA, segmentation_output_name
from tcurlora.jobs.cli_args import (
    cases_from_flags,
    names_from_flags,
    patch_size_arg,
    spacing_arg,
    threads_arg,
)
from tcurlora.jobs.fields import (
    MAX_ALPHA,
    MAX_BATCH_SIZE,
    MAX_ITERATIONS,
    MAX_PATCH_SIDE,
    MAX_SEED,
    MAX_THREADS,
    PATH_SCHEMA,
    SELECTIONS,
    SUGGEST_SCORES,
    channels_out,
    check_alpha,
    check_label_names,
    check_regexes,
    check_seed,
    dump_cases,
    parse_cases,
    parse_colors,
    parse_inputs,
    parse_patch_size,
    parse_paths,
    parse_spacing,
    parse_threads,
    parse_unlabeled,
)
from tcurlora.jsonio import JSONProblem, loads_strict
from tcurlora.settings import SettingError, check_keys, expect, read_fields, setting
from tcurlora.settings import dump_fields as _dump_fields

_MISSING = object()


_RATE = {"kind": "number", "minimum": 0.0, "exclusive_minimum": True}
_DEVICE_HELP = "auto, cpu, cuda or cuda:N"
_THREADS = {
    "kind": "custom", "parse": parse_threads, "flag": "--threads", "cli": {"type": threads_arg, "metavar": "N"},
    "schema": {"anyOf": [{"const": "auto"}, {"type": "integer", "minimum": 1, "maximum": MAX_THREADS}]},
    "help": "torch CPU threads, or 'auto' (default): on the CPU the cores not kept busy by other work "
    "(1-minute load average), at least 1; CUDA runs keep torch's default",
}  # fmt: skip
_BASE_HELP = "built-in base model name, model folder or MONAI bundle folder"


# ------------------------------------------------------------------------------------------- jobs
# One labeled training case of a job is the data layer's Case (id, images, label, label_map).
JobCase = Case


def _fail(error: SettingError, source: Path | None):
    raise ConfigError(str(error), source) from None


def _check_header(data: dict, command: str) -> None:
    value = data.get("command", _MISSING)
    if value is _MISSING:
        raise SettingError("command", "missing (required)")
    expect("command", value, (str,), "a string")
    if value != command:
        raise SettingError("command", f"expected {command!r}, got {value!r}")
    schema = expect("schema", data.get("schema", JOB_SCHEMA), (str,), "a string")
    if schema != JOB_SCHEMA:
        raise SettingError("schema", f"unsupported job schema {schema!r}; this version reads {JOB_SCHEMA!r}")


def _job_keys(cls: Any) -> set[str]:
    return {f for f in cls.__dataclass_fields__ if f != "job_file"} | {"command", "schema"}


def _read_job_values(cls, data: dict[str, Any], base_dir: str | Path, command: str) -> dict[str, Any]:
    """The declared fields of a `command` job read from `data` (keys, header, types, exactly-one pairs)."""
    check_keys(data, _job_keys(cls))
    _check_header(data, command)
    values = read_fields(cls, data, Path(base_dir).resolve())
    _exactly_one(cls, values)
    return values


def _exactly_one(cls: Any, values: dict[str, Any]) -> None:
    for first, second, problem in cls.ONE_OF:
        if (values[first] is None) == (values[second] is None):
            raise SettingError(first if values[first] is None else second, problem)


@dataclass
class FinetuneJob:
    """Everything `tcurlora finetune` needs. Exactly one of `cases` / `data` is given."""

    base_model: str = setting(kind="reference", help=_BASE_HELP, flag="--base-model", slicer=True)
    output: Path = setting(kind="path", help="adapter folder to write", flag="--output", aliases=("-o",))
    cases: list[JobCase] | None = setting(
        None, "custom", parse=parse_cases, dump=dump_cases,
        schema={"type": "array", "items": {"$ref": "#/$defs/case"}, "minItems": 1},
        help="the labeled training cases (or give 'data')", flag="--case", aliases=("--cases",),
        cli={"nargs": 2, "action": "append", "metavar": ("IMAGE", "LABEL"),
             "help": "one labeled case (repeat the flag); IMAGE may list channel files separated by commas"},
        from_cli=cases_from_flags,
    )  # fmt: skip
    data: Path | None = setting(
        None, "path", help="training cases from a Decathlon folder (dataset.json), instead of 'cases'", flag="--data"
    )
    num_cases: int | None = setting(
        None, "integer", minimum=1, help="use only the first N cases of 'data'", flag="--num-cases"
    )
    case_ids: list[str] | None = setting(None, "strings", help="use only these case ids of 'data'")
    label_names: list[str] | None = setting(
        None, "strings", check=check_label_names, help="class names for label values 1..N", flag="--labels",
        dest="labels", cli={"metavar": "NAME"}, from_cli=names_from_flags,
    )  # fmt: skip
    label_colors: list[list[float]] | None = setting(
        None, "custom", parse=parse_colors,
        schema={"type": "array", "items": {"type": "array", "items": {"type": "number", "minimum": 0, "maximum": 1},
                                           "minItems": 3, "maxItems": 3}},
        help="one [r, g, b] color (0..1) per label name",
    )  # fmt: skip
    method: str = setting("tcur", "choice", choices=METHODS, help="adaptation method", flag="--method", slicer=True)
    rank: int = setting(8, "integer", minimum=1, help="adapter rank", flag="--rank", slicer=True)
    alpha: float | None = setting(
        None, "number", check=check_alpha, schema={"exclusiveMinimum": 0, "maximum": MAX_ALPHA},
        help="adapter scale (default: the method's)", flag="--alpha",
    )  # fmt: skip
    selection: str = setting(
        "topnorm", "choice", choices=SELECTIONS, help="tCUR index selection", flag="--selection"
    )
    conv_targets: bool | None = setting(
        None, "boolean", flag="--conv-targets",
        help="adapt the encoder/decoder Conv3d kernels too (tcur, lora; the default for tcur)",
        negation=("--no-conv-targets", False, "adapt only the transformer's linear layers (tCURLoRA as in the paper)"),
    )  # fmt: skip
    iterations: int = setting(
        500, "integer", minimum=1, maximum=MAX_ITERATIONS, help="training steps (at most 1,000,000)",
        flag="--iterations", slicer=True,
    )  # fmt: skip
    batch_size: int = setting(
        2, "integer", minimum=1, maximum=MAX_BATCH_SIZE, help="patches per step", flag="--batch-size", slicer=True
    )
    learning_rate: float | None = setting(
        None, **_RATE, help="learning rate of the adapter (default: the method's)", flag="--lr", dest="lr",
        slicer=True,
    )  # fmt: skip
    head_learning_rate: float | None = setting(
        None, **_RATE, help="learning rate of a new segmentation head (default 5e-3)", flag="--head-lr",
        dest="head_lr", slicer=True,
    )  # fmt: skip
    modules_learning_rate: float | None = setting(
        None, **_RATE, help="learning rate of the train_modules (default 1e-3)", flag="--modules-lr",
        dest="modules_lr",
    )  # fmt: skip
    train_modules: list[str] | None = setting(
        None, "strings", check=check_regexes, flag="--train-modules", cli={"metavar": "REGEX"}, slicer=True,
        help="extra modules trained in full (full-matched module names; 'decoder' = every decoderN block, "
        "the tCURLoRA authors' setting), saved in the adapter (default for tcur: the full-resolution blocks, "
        "UNETR encoder1 + decoder2; for other methods none)",
        negation=("--no-train-modules", [], "no extra trained modules (tCURLoRA alone, as in the paper)"),
    )  # fmt: skip
    spacing: list[float] | str | None = setting(
        None, "custom", parse=parse_spacing, flag="--spacing", cli={"type": spacing_arg}, slicer=True,
        schema={"anyOf": [{"enum": ["auto", "base"]},
                          {"type": "array", "items": {"type": "number", "exclusiveMinimum": 0},
                           "minItems": 3, "maxItems": 3}]},
        help="working spacing in mm (e.g. 1 or 1,1,1.5), 'base' (the base model's) or 'auto' (default: the "
        "cases' median spacing, coarsened until the labeled structure fits in a patch, within 2/3..1 x the "
        "base's); saved in the adapter, used by segment",
    )  # fmt: skip
    patch_size: list[int] | None = setting(
        None, "custom", parse=parse_patch_size, flag="--patch-size", cli={"type": patch_size_arg}, slicer=True,
        schema={"type": "array", "items": {"type": "integer", "minimum": 1, "maximum": MAX_PATCH_SIDE},
                "minItems": 3, "maxItems": 3},
        help="e.g. 96 or 96,96,64 (default: the base model's)",
    )  # fmt: skip
    seed: int = setting(
        0, "integer", minimum=0, check=check_seed, schema={"maximum": MAX_SEED}, help="random seed", flag="--seed",
        slicer=True,
    )  # fmt: skip
    val_fraction: float = setting(
        0.0, "number", minimum=0.0, maximum=1.0, exclusive_maximum=True, flag="--val-fraction", slicer=True,
        help="fraction of cases held out for validation",
    )  # fmt: skip
    val_case_ids: list[str] | None = setting(
        None, "strings", help="case ids held out for validation (instead of val_fraction)"
    )
    early_stopping: int = setting(
        4, "integer", minimum=0, maximum=MAX_ITERATIONS, flag="--early-stopping", cli={"metavar": "N"},
        help="with a validation split: stop after N validations without a better Dice and keep the best "
        "adapter (default 4; 0 = train all iterations, still keeping the best)",
    )  # fmt: skip
    grad_clip: float | None = setting(
        None, "number", minimum=0.0, exclusive_minimum=True, flag="--grad-clip", cli={"metavar": "NORM"},
        help="clip the gradient norm to NORM before each step (default: no clipping)",
    )  # fmt: skip
    unlabeled: list[Path] | None = setting(
        None, "custom", parse=parse_unlabeled, schema={"type": "array", "items": PATH_SCHEMA},
        flag="--unlabeled", cli={"nargs": "+", "metavar": "PATH"},
        help="unlabeled volumes for semi-supervised (mean teacher) training: image files, or folders of "
        "them (a Decathlon folder: its imagesTr)",
    )  # fmt: skip
    unlabeled_weight: float = setting(
        0.1, "number", minimum=0.0, flag="--unlabeled-weight", cli={"metavar": "W"},
        help="weight of the mean-teacher consistency loss on the unlabeled volumes (ramped up over the "
        "first 40 percent of the iterations)",
    )  # fmt: skip
    ema_decay: float = setting(
        0.99, "number", minimum=0.0, maximum=1.0, exclusive_maximum=True, flag="--ema-decay",
        help="with unlabeled volumes: decay of the teacher's exponential moving average of the trained weights",
    )  # fmt: skip
    keep_teacher: bool = setting(
        False, "boolean", flag="--keep-teacher",
        help="with unlabeled volumes: validate and save the teacher (the moving average) instead of the student",
    )  # fmt: skip
    checkpoint_every: int = setting(
        50, "integer", minimum=0, maximum=MAX_ITERATIONS, help="iterations between checkpoints (default 50; 0 = none)",
        flag="--checkpoint-every", slicer=True,
    )  # fmt: skip
    device: str = setting(
        "auto", "device", help=_DEVICE_HELP, flag="--device", override=True, slicer=True
    )
    amp: bool = setting(True, "boolean", help="no mixed precision on CUDA", flag="--no-amp", slicer=True)
    threads: int | str = setting("auto", override=True, **_THREADS)
    force: bool = setting(False, "boolean", help="replace an existing adapter folder", flag="--force", override=True)
    resume: bool = setting(
        False, "boolean", help="continue from the last checkpoint", flag="--resume", override=True
    )
    job_file: Path | None = field(default=None, compare=False, repr=False)

    command = "finetune"
    ONE_OF = (("cases", "data", "give exactly one of 'cases' (a list) or 'data' (a folder)"),)
    DATA_ONLY = ("num_cases", "case_ids")  # only with 'data'
    # (key, other, other's value, problem): when `key` is given, `other` must keep that value.
    REPLACES = (("val_case_ids", "val_fraction", 0.0, "give either 'val_fraction' or 'val_case_ids', not both"),)

    @classmethod
    def from_dict(
        cls, data: dict[str, Any], base_dir: str | Path, source: str | Path | None = None
    ) -> FinetuneJob:
        """Validate a job dict; relative paths are resolved against `base_dir`."""
        source = Path(source) if source else None
        try:
            values = _read_job_values(cls, data, base_dir, "finetune")
            for key in cls.DATA_ONLY if values["cases"] is not None else ():
                if values[key] is not None:
                    raise SettingError(key, "only applies with 'data' (a Decathlon folder), not with 'cases'")
            names, colors = values["label_names"], values["label_colors"]
            if names is not None and colors is not None and len(colors) != len(names):
                raise SettingError("label_colors", f"has {len(colors)} colors for {len(names)} label_names")
            for key, other, other_value, problem in cls.REPLACES:
                if values[key] is not None and values[other] != other_value:
                    raise SettingError(key, problem)
        except SettingError as error:
            _fail(error, source)
        return cls(**values, job_file=source)

    @property
    def uses_conv_targets(self) -> bool:
        """Conv3d kernels adapted too (see conv_targets_on)."""
        return conv_targets_on(self.method, self.conv_targets)

    @classmethod
    def from_file(cls, path: str | Path) -> FinetuneJob:
        path = Path(path)
        return cls.from_dict(_read_json(path), path.parent, path)

    def to_dict(self) -> dict[str, Any]:
        """The job as JSON-able dict, absolute paths; `from_dict(to_dict())` gives the same job."""
        return {"schema": JOB_SCHEMA, "command": self.command, **_dump_fields(self)}


@dataclass
class SegmentJob:
    """Everything `tcurlora segment` needs. Exactly one of `outputs` / `output_dir` is given."""

    base_model: str = setting(kind="reference", help=_BASE_HELP, flag="--base-model")
    inputs: list[list[Path]] = setting(
        kind="custom", parse=parse_inputs,
        schema={"type": "array", "items": {"$ref": "#/$defs/channels"}, "minItems": 1},
        help="the volumes to segment, each one path or a list of channel paths",
    )  # fmt: skip
    adapter: str | None = setting(
        None, "reference", help="adapter folder (default: the base model alone)", flag="--adapter"
    )
    outputs: list[Path] | None = setting(
        None, "custom", parse=parse_paths, schema={"type": "array", "items": PATH_SCHEMA},
        help="one output file per input (or give output_dir)",
    )  # fmt: skip
    output_dir: Path | None = setting(
        None, "path", help="folder for the outputs, named INPUT_seg + extension (or give outputs)"
    )
    overlap: float = setting(
        0.5, "number", minimum=0.0, maximum=1.0, exclusive_maximum=True, flag="--overlap",
        help="sliding-window overlap in [0, 1)",
    )  # fmt: skip
    largest_component: bool = setting(
        False, "boolean", flag="--largest-component",
        help="keep only the largest connected component of each class",
    )  # fmt: skip
    device: str = setting("auto", "device", help=_DEVICE_HELP, flag="--device")
    threads: int | str = setting("auto", **_THREADS)
    force: bool = setting(False, "boolean", help="overwrite existing outputs", flag="--force")
    job_file: Path | None = field(default=None, compare=False, repr=False)

    command = "segment"
    ONE_OF = (("outputs", "output_dir", "give exactly one of 'outputs' (a list of files) or 'output_dir' (a folder)"),)

    @classmethod
    def from_dict(
        cls, data: dict[str, Any], base_dir: str | Path, source: str | Path | None = None
    ) -> SegmentJob:
        """Validate a job dict; relative paths are resolved against `base_dir`."""
        source = Path(source) if source else None
        try:
            values = _read_job_values(cls, data, base_dir, "segment")
            outputs, inputs = values["outputs"], values["inputs"]
            if outputs is not None and len(outputs) != len(inputs):
                raise SettingError("outputs", f"has {len(outputs)} paths for {len(inputs)} inputs")
            job = cls(**values, job_file=source)
            paths = job.output_paths()
            duplicates = sorted({str(p) for p in paths if paths.count(p) > 1})
            if duplicates:
                raise SettingError(
                    "outputs" if outputs is not None else "output_dir",
                    f"two inputs would write the same file {duplicates[0]}",
                )
        except SettingError as error:
            _fail(error, source)
        return job

    @classmethod
    def from_file(cls, path: str | Path) -> SegmentJob:
        path = Path(path)
        return cls.from_dict(_read_json(path), path.parent, path)

    def output_paths(self) -> list[Path]:
        """One output file per input: `outputs`, or `output_dir / segmentation_output_name(channels)`.

        `tcurlora segment` writes exactly these paths (segmentation.plan_outputs calls this method).
        """
        if self.outputs is not None:
            return list(self.outputs)
        assert self.output_dir is not None
        return [self.output_dir / segmentation_output_name(channels) for channels in self.inputs]

    def to_dict(self) -> dict[str, Any]:
        """The job as JSON-able dict, absolute paths; `from_dict(to_dict())` gives the same job."""
        data = {"schema": JOB_SCHEMA, "command": self.command, **_dump_fields(self)}
        data["inputs"] = [channels_out(c) for c in self.inputs]
        return data


@dataclass
class SuggestJob:
    """Everything `tcurlora suggest` needs: which volumes to rank by the model's uncertainty, and how."""

    base_model: str = setting(kind="reference", help=_BASE_HELP, flag="--base-model")
    inputs: list[list[Path]] = setting(
        kind="custom", parse=parse_inputs,
        schema={"type": "array", "items": {"$ref": "#/$defs/channels"}, "minItems": 1},
        help="the volumes to rank, each one path or a list of channel paths",
    )  # fmt: skip
    adapter: str | None = setting(
        None, "reference", help="adapter folder (default: the base model alone)", flag="--adapter"
    )
    score: str = setting(
        "entropy", "choice", choices=SUGGEST_SCORES, flag="--score",
        help="entropy: mean predictive entropy inside the predicted foreground (one pass); flips: share of "
        "the predicted foreground whose label changes under mirroring along each axis (four passes)",
    )  # fmt: skip
    top: int | None = setting(None, "integer", minimum=1, help="report only the K most uncertain volumes",
                              flag="--top", cli={"metavar": "K"})
    overlap: float = setting(
        0.5, "number", minimum=0.0, maximum=1.0, exclusive_maximum=True, flag="--overlap",
        help="sliding-window overlap in [0, 1)",
    )  # fmt: skip
    device: str = setting("auto", "device", help=_DEVICE_HELP, flag="--device")
    threads: int | str = setting("auto", **_THREADS)
    job_file: Path | None = field(default=None, compare=False, repr=False)

    command = "suggest"
    ONE_OF = ()

    @classmethod
    def from_dict(
        cls, data: dict[str, Any], base_dir: str | Path, source: str | Path | None = None
    ) -> SuggestJob:
        """Validate a job dict; relative paths are resolved against `base_dir`."""
        source = Path(source) if source else None
        try:
            values = _read_job_values(cls, data, base_dir, "suggest")
        except SettingError as error:
            _fail(error, source)
        return cls(**values, job_file=source)

    @classmethod
    def from_file(cls, path: str | Path) -> SuggestJob:
        path = Path(path)
        return cls.from_dict(_read_json(path), path.parent, path)

    def to_dict(self) -> dict[str, Any]:
        """The job as JSON-able dict, absolute paths; `from_dict(to_dict())` gives the same job."""
        data = {"schema": JOB_SCHEMA, "command": self.command, **_dump_fields(self)}
        data["inputs"] = [channels_out(c) for c in self.inputs]
        return data


JOB_CLASSES: dict[str, type[FinetuneJob] | type[SegmentJob] | type[SuggestJob]] = {
    "finetune": FinetuneJob,
    "segment": SegmentJob,
    "suggest": SuggestJob,
}


def _read_json(path: Path) -> Any:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(
            f"not UTF-8 text (byte {error.start}: {error.reason}); save the job file as UTF-8 JSON", path
        ) from error
    except FileNotFoundError as error:
        raise InputError("job file not found", path) from error
    except OSError as error:
        raise InputError(f"cannot read job file: {error.strerror or error}", path) from error
    try:
        return loads_strict(text)
    except json.JSONDecodeError as error:
        raise ConfigError(
            f"not valid JSON: {error.msg} at line {error.lineno} column {error.colno}", path
        ) from error
    except JSONProblem as error:
        raise ConfigError(f"refused job file: {error}", path) from error


def load_job(path: str | Path) -> FinetuneJob | SegmentJob | SuggestJob:
    """Read a job file and return the job of its "command"."""
    path = Path(path)
    data = _read_json(path)
    if not isinstance(data, dict):
        raise ConfigError(f"a job must be a JSON object, not {type(data).__name__}", path)
    command = data.get("command", _MISSING)
    if command is _MISSING:
        raise ConfigError('key \'command\': missing (required; "finetune", "segment" or "suggest")', path)
    if command not in JOB_CLASSES:
        raise ConfigError(f"key 'command': must be one of {', '.join(JOB_CLASSES)}; got {command!r}", path)
    return JOB_CLASSES[command].from_dict(data, path.parent, path)
