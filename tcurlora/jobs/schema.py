"""The worker protocol's two schemas, defined once: job files in ("tcurlora.job/1"), events out
("tcurlora.events/1").

A job file is a JSON object with `"command"` ("finetune" or "segment") and optional
`"schema": "tcurlora.job/1"`; the other keys and their defaults are the fields of `FinetuneJob` and
`SegmentJob`. Relative paths are resolved against the job file's folder. Every problem (unknown key,
wrong type, missing key, bad value) is a `ConfigError` naming the job file and the key.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tcurlora.data.cases import Case
from tcurlora.errors import ConfigError, InputError
from tcurlora.filenames import case_id_from_path, segmentation_output_name

JOB_SCHEMA = "tcurlora.job/1"
EVENT_SCHEMA_NAME = "tcurlora.events/1"

METHODS = ("tcur", "lora", "decoder", "full", "head")
# Index selection strategies of the tensor CUR adapter (docs/method.md, step 2).
SELECTIONS = ("topnorm", "leverage", "inverse", "uniform")
_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")

_MISSING = object()


def conv_targets_on(method: str, asked: bool | None) -> bool:
    """Whether Conv3d kernels are adapted: as asked, else the default (on for tcur, measured best in docs/benchmarks.md)."""
    return asked if asked is not None else method == "tcur"


# ----------------------------------------------------------------------------------------- helpers
def _looks_like_path(value: str, base_dir: Path) -> bool:
    return (
        any(sep in value for sep in ("/", "\\"))
        or value.startswith((".", "~"))
        or (base_dir / value).exists()
    )


class _Reader:
    """Reads typed values out of a job dict, raising ConfigError naming the job file and the key."""

    def __init__(self, data: Any, base_dir: Path, source: Path | None, allowed: set[str]):
        self.source = source
        self.base_dir = base_dir
        if not isinstance(data, dict):
            self.fail("", f"a job must be a JSON object, not {type(data).__name__}")
        unknown = sorted(set(data) - allowed)
        if unknown:
            self.fail(unknown[0], f"unknown key (allowed keys: {', '.join(sorted(allowed))})")
        self.data = data

    def fail(self, key: str, problem: str):
        raise ConfigError(f"key {key!r}: {problem}" if key else problem, self.source)

    def raw(self, key: str, default: Any = _MISSING) -> Any:
        if key not in self.data:
            if default is _MISSING:
                self.fail(key, "missing (required)")
            return default
        return self.data[key]

    def typed(
        self, key: str, kinds: tuple[type, ...], label: str, default: Any = _MISSING, value: Any = _MISSING
    ):
        value = self.raw(key, default) if value is _MISSING else value
        if value is None and default is None:
            return None
        ok = isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds)
        if not ok or (isinstance(value, float) and not math.isfinite(value)):
            self.fail(key, f"expected {label}, got {type(value).__name__} {value!r}")
        return value

    def string(self, key: str, default: Any = _MISSING) -> str | None:
        value = self.typed(key, (str,), "a string", default)
        if value is not None and not value.strip():
            self.fail(key, "must not be empty")
        return value

    def boolean(self, key: str, default: Any = _MISSING) -> bool:
        return self.typed(key, (bool,), "true or false", default)

    def integer(self, key: str, default: Any = _MISSING, minimum: int | None = None) -> int | None:
        value = self.typed(key, (int,), "an integer", default)
        if value is not None and minimum is not None and value < minimum:
            self.fail(key, f"must be >= {minimum}, got {value}")
        return value

    def number(
        self,
        key: str,
        default: Any = _MISSING,
        low: float | None = None,
        high: float | None = None,
        high_open: bool = False,
    ) -> float | None:
        value = self.typed(key, (int, float), "a number", default)
        if value is None:
            return None
        value = float(value)
        if (low is not None and value < low) or (
            high is not None and (value > high or (high_open and value == high))
        ):
            bracket = ")" if high_open else "]"
            self.fail(key, f"must be in [{low}, {high}{bracket}, got {value}")
        return value

    def choice(self, key: str, options: tuple[str, ...], default: Any = _MISSING) -> str:
        value = self.string(key, default)
        if value not in options:
            self.fail(key, f"must be one of {', '.join(options)}; got {value!r}")
        return value

    def device(self, key: str) -> str:
        value = self.string(key, "auto")
        if not _DEVICE.match(value):
            self.fail(key, f"must be auto, cpu, cuda or cuda:N; got {value!r}")
        return value

    def path(self, key: str, value: Any = _MISSING, default: Any = _MISSING) -> Path | None:
        value = self.typed(key, (str,), "a path string", default, value)
        if value is None:
            return None
        if not value.strip():
            self.fail(key, "must not be empty")
        path = Path(value).expanduser()
        return path if path.is_absolute() else (self.base_dir / path).resolve()

    def reference(self, key: str, default: Any = _MISSING) -> str | None:
        """A built-in/library name stays a name; anything that looks like a path is resolved."""
        value = self.string(key, default)
        if value is None or not _looks_like_path(value, self.base_dir):
            return value
        return str(self.path(key, value))

    def string_list(self, key: str, default: Any = _MISSING) -> list[str] | None:
        values = self.typed(key, (list,), "a list of strings", default)
        if values is None:
            return None
        for index, item in enumerate(values):
            self.typed(f"{key}[{index}]", (str,), "a string", value=item)
        return list(values)

    def channels(self, key: str, value: Any) -> list[Path]:
        """One path or a non-empty list of channel paths -> list of resolved paths."""
        if isinstance(value, list):
            if not value:
                self.fail(key, "needs at least one image path")
            return [self.path(f"{key}[{i}]", item) for i, item in enumerate(value)]
        return [self.path(key, value)]


def _channels_out(paths: list[Path]) -> str | list[str]:
    return str(paths[0]) if len(paths) == 1 else [str(p) for p in paths]


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
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise ConfigError(
            f"not valid JSON: {error.msg} at line {error.lineno} column {error.colno}", path
        ) from error


def _check_header(reader: _Reader, command: str) -> None:
    if reader.string("command") != command:
        reader.fail("command", f"expected {command!r}, got {reader.data['command']!r}")
    schema = reader.string("schema", JOB_SCHEMA)
    if schema != JOB_SCHEMA:
        reader.fail("schema", f"unsupported job schema {schema!r}; this version reads {JOB_SCHEMA!r}")


MAX_SEED = 2**63 - 1  # torch and numpy seed generators take signed 64-bit values
MAX_ALPHA = 1e4


def check_seed(r: _Reader, seed: int) -> int:
    if seed > MAX_SEED:
        r.fail("seed", f"must be at most 2^63 - 1 = {MAX_SEED}, got {seed}")
    return seed


def check_alpha(r: _Reader, alpha: float | None) -> float | None:
    if alpha is not None and not 0.0 < alpha <= MAX_ALPHA:
        r.fail("alpha", f"must be > 0 and <= {MAX_ALPHA:g} (the adapter's scale), got {alpha:g}")
    return alpha


def check_label_names(r: _Reader, names: list[str] | None) -> list[str] | None:
    if names is None:
        return None
    if not names:
        r.fail("label_names", "needs at least one class name")
    seen: set[str] = set()
    for index, name in enumerate(names):
        if not name.strip():
            r.fail(f"label_names[{index}]", "must not be empty")
        if name in seen:
            r.fail(f"label_names[{index}]", f"duplicate class name {name!r} (each class needs its own name)")
        seen.add(name)
    return names


# ------------------------------------------------------------------------------------------- jobs
# One labeled training case of a job is the data layer's Case (id, images, label, label_map).
JobCase = Case


@dataclass
class FinetuneJob:
    """Everything `tcurlora finetune` needs. Exactly one of `cases` / `data` is given."""

    base_model: str
    output: Path
    cases: list[JobCase] | None = None
    data: Path | None = None
    num_cases: int | None = None
    case_ids: list[str] | None = None
    label_names: list[str] | None = None
    label_colors: list[list[float]] | None = None
    method: str = "tcur"
    rank: int = 8
    alpha: float | None = None
    selection: str = "topnorm"
    conv_targets: bool | None = None  # None: the method's default (on for tcur, see uses_conv_targets)
    iterations: int = 500
    batch_size: int = 2
    learning_rate: float | None = None
    head_learning_rate: float | None = None
    modules_learning_rate: float | None = None
    train_modules: list[str] | None = None  # None: the method's default (adapters.config.default_train_modules)
    spacing: list[float] | str | None = None  # mm, "auto" (None) or "base": see tcurlora.data.spacing
    patch_size: list[int] | None = None
    seed: int = 0
    val_fraction: float = 0.0
    val_case_ids: list[str] | None = None
    early_stopping: int = 4  # validations without improvement that end a run (0 = never); needs a val split
    checkpoint_every: int = 50
    device: str = "auto"
    amp: bool = True
    force: bool = False
    resume: bool = False
    job_file: Path | None = field(default=None, compare=False, repr=False)

    command = "finetune"

    @classmethod
    def from_dict(
        cls, data: dict[str, Any], base_dir: str | Path, source: str | Path | None = None
    ) -> FinetuneJob:
        """Validate a job dict; relative paths are resolved against `base_dir`."""
        keys = {f for f in cls.__dataclass_fields__ if f != "job_file"} | {"command", "schema"}
        r = _Reader(data, Path(base_dir).resolve(), Path(source) if source else None, keys)
        _check_header(r, "finetune")
        cases = _read_cases(r) if "cases" in data and data["cases"] is not None else None
        data_dir = r.path("data", default=None)
        if (cases is None) == (data_dir is None):
            r.fail(
                "cases" if cases is None else "data",
                "give exactly one of 'cases' (a list) or 'data' (a folder)",
            )
        if cases is not None:
            for key in ("num_cases", "case_ids"):
                if data.get(key) is not None:
                    r.fail(key, "only applies with 'data' (a Decathlon folder), not with 'cases'")
        label_names = check_label_names(r, r.string_list("label_names", None))
        label_colors = _read_colors(r, label_names)
        patch = r.typed("patch_size", (list,), "a list of 3 positive integers", None)
        if patch is not None and (
            len(patch) != 3
            or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in patch)
        ):
            r.fail("patch_size", f"expected a list of 3 positive integers, got {patch!r}")
        val_fraction = r.number("val_fraction", 0.0, low=0.0, high=1.0, high_open=True)
        val_case_ids = r.string_list("val_case_ids", None)
        if val_case_ids is not None and val_fraction > 0:
            r.fail("val_case_ids", "give either 'val_fraction' or 'val_case_ids', not both")
        learning_rate = _positive_rate(r, "learning_rate")
        spacing = r.typed("spacing", (list, str), 'a list of 3 positive numbers (mm), "auto" or "base"', None)
        if isinstance(spacing, str) and spacing not in ("auto", "base"):
            r.fail("spacing", f'expected a list of 3 positive numbers (mm), "auto" or "base", got {spacing!r}')
        if isinstance(spacing, list) and (
            len(spacing) != 3
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0
                       for v in spacing)
        ):
            r.fail("spacing", f"expected a list of 3 positive numbers (mm), got {spacing!r}")
        train_modules = r.string_list("train_modules", None)
        for index, pattern in enumerate(train_modules or []):
            try:
                re.compile(pattern)
            except re.error as error:
                r.fail(f"train_modules[{index}]", f"invalid regular expression {pattern!r}: {error}")
        return cls(
            base_model=r.reference("base_model"),
            output=r.path("output"),
            cases=cases,
            data=data_dir,
            num_cases=r.integer("num_cases", None, minimum=1),
            case_ids=r.string_list("case_ids", None),
            label_names=label_names,
            label_colors=label_colors,
            method=r.choice("method", METHODS, "tcur"),
            rank=r.integer("rank", 8, minimum=1),
            alpha=check_alpha(r, r.number("alpha", None)),
            selection=r.choice("selection", SELECTIONS, "topnorm"),
            conv_targets=r.boolean("conv_targets", None),
            iterations=r.integer("iterations", 500, minimum=1),
            batch_size=r.integer("batch_size", 2, minimum=1),
            learning_rate=learning_rate,
            head_learning_rate=_positive_rate(r, "head_learning_rate"),
            modules_learning_rate=_positive_rate(r, "modules_learning_rate"),
            train_modules=train_modules,
            spacing=[float(v) for v in spacing] if isinstance(spacing, list) else spacing,
            patch_size=list(patch) if patch is not None else None,
            seed=check_seed(r, r.integer("seed", 0, minimum=0)),
            val_fraction=val_fraction,
            val_case_ids=val_case_ids,
            early_stopping=r.integer("early_stopping", 4, minimum=0),
            checkpoint_every=r.integer("checkpoint_every", 50, minimum=0),
            device=r.device("device"),
            amp=r.boolean("amp", True),
            force=r.boolean("force", False),
            resume=r.boolean("resume", False),
            job_file=Path(source) if source else None,
        )

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
        cases = None
        if self.cases is not None:
            cases = [
                {"id": c.id, "image": _channels_out(c.images), "label": str(c.label)} for c in self.cases
            ]
        return {
            "schema": JOB_SCHEMA,
            "command": "finetune",
            "base_model": self.base_model,
            "cases": cases,
            "data": str(self.data) if self.data else None,
            "num_cases": self.num_cases,
            "case_ids": self.case_ids,
            "label_names": self.label_names,
            "label_colors": self.label_colors,
            "method": self.method,
            "rank": self.rank,
            "alpha": self.alpha,
            "selection": self.selection,
            "conv_targets": self.conv_targets,
            "iterations": self.iterations,
            "batch_size": self.batch_size,
            "learning_rate": self.learning_rate,
            "head_learning_rate": self.head_learning_rate,
            "modules_learning_rate": self.modules_learning_rate,
            "train_modules": self.train_modules,
            "spacing": self.spacing,
            "patch_size": self.patch_size,
            "seed": self.seed,
            "val_fraction": self.val_fraction,
            "val_case_ids": self.val_case_ids,
            "early_stopping": self.early_stopping,
            "checkpoint_every": self.checkpoint_every,
            "device": self.device,
            "amp": self.amp,
            "output": str(self.output),
            "force": self.force,
            "resume": self.resume,
        }


def _positive_rate(r: _Reader, key: str) -> float | None:
    """An optional learning rate: null, or a number > 0."""
    value = r.number(key, None, low=0.0)
    if value == 0.0:
        r.fail(key, "must be > 0")
    return value


def _read_cases(r: _Reader) -> list[JobCase]:
    items = r.typed("cases", (list,), "a list of {id, image, label} objects")
    if not items:
        r.fail("cases", "needs at least one case")
    cases, seen = [], set()
    for index, item in enumerate(items):
        key = f"cases[{index}]"
        if not isinstance(item, dict):
            r.fail(key, f"expected an object with id, image and label, got {type(item).__name__}")
        extra = sorted(set(item) - {"id", "image", "label", "label_map"})
        if extra:
            r.fail(f"{key}.{extra[0]}", "unknown key (allowed keys: id, image, label, label_map)")
        for name in ("image", "label"):
            if name not in item:
                r.fail(f"{key}.{name}", "missing (required)")
        images = r.channels(f"{key}.image", item["image"])
        label = r.path(f"{key}.label", item["label"])
        case_id = item.get("id", case_id_from_path(images[0]))
        r.typed(f"{key}.id", (str,), "a string", value=case_id)
        if case_id in seen:
            r.fail(f"{key}.id", f"duplicate case id {case_id!r}")
        seen.add(case_id)
        cases.append(JobCase(id=case_id, images=images, label=label, label_map=_read_label_map(r, key, item)))
    return cases


def _read_label_map(r: _Reader, key: str, item: dict) -> dict[int, int] | None:
    """Optional {"file label value": class index} of one case (unlisted values become background)."""
    mapping = item.get("label_map")
    if mapping is None:
        return None
    r.typed(f"{key}.label_map", (dict,), "an object of label value -> class index", value=mapping)
    out: dict[int, int] = {}
    for source, target in mapping.items():
        where = f"{key}.label_map[{source}]"
        if not isinstance(source, str) or not re.fullmatch(r"\d+", source.strip()):
            r.fail(where, f"label values must be whole numbers >= 0 (as JSON keys: \"1\"), got {source!r}")
        if isinstance(target, bool) or not isinstance(target, int) or target < 0:
            r.fail(where, f"class index must be a whole number >= 0, got {type(target).__name__} {target!r}")
        out[int(source)] = target
    return out


def _read_colors(r: _Reader, label_names: list[str] | None) -> list[list[float]] | None:
    colors = r.typed("label_colors", (list,), "a list of [r, g, b] values in 0..1", None)
    if colors is None:
        return None
    out = []
    for index, color in enumerate(colors):
        ok = (
            isinstance(color, list)
            and len(color) == 3
            and all(
                isinstance(c, (int, float)) and not isinstance(c, bool) and 0.0 <= c <= 1.0 for c in color
            )
        )
        if not ok:
            r.fail(f"label_colors[{index}]", f"expected [r, g, b] with values in 0..1, got {color!r}")
        out.append([float(c) for c in color])
    if label_names is not None and len(out) != len(label_names):
        r.fail("label_colors", f"has {len(out)} colors for {len(label_names)} label_names")
    return out


@dataclass
class SegmentJob:
    """Everything `tcurlora segment` needs. Exactly one of `outputs` / `output_dir` is given."""

    base_model: str
    inputs: list[list[Path]]
    adapter: str | None = None
    outputs: list[Path] | None = None
    output_dir: Path | None = None
    overlap: float = 0.5
    largest_component: bool = False
    device: str = "auto"
    force: bool = False
    job_file: Path | None = field(default=None, compare=False, repr=False)

    command = "segment"

    @classmethod
    def from_dict(
        cls, data: dict[str, Any], base_dir: str | Path, source: str | Path | None = None
    ) -> SegmentJob:
        """Validate a job dict; relative paths are resolved against `base_dir`."""
        keys = {f for f in cls.__dataclass_fields__ if f != "job_file"} | {"command", "schema"}
        r = _Reader(data, Path(base_dir).resolve(), Path(source) if source else None, keys)
        _check_header(r, "segment")
        items = r.typed("inputs", (list,), "a list of image paths (each a path or a list of channel paths)")
        if not items:
            r.fail("inputs", "needs at least one input volume")
        inputs = [r.channels(f"inputs[{i}]", item) for i, item in enumerate(items)]
        outputs_raw = r.typed("outputs", (list,), "a list of output file paths", None)
        outputs = (
            None if outputs_raw is None else [r.path(f"outputs[{i}]", p) for i, p in enumerate(outputs_raw)]
        )
        output_dir = r.path("output_dir", default=None)
        if (outputs is None) == (output_dir is None):
            r.fail(
                "outputs" if outputs is None else "output_dir",
                "give exactly one of 'outputs' (a list of files) or 'output_dir' (a folder)",
            )
        if outputs is not None and len(outputs) != len(inputs):
            r.fail("outputs", f"has {len(outputs)} paths for {len(inputs)} inputs")
        job = cls(
            base_model=r.reference("base_model"),
            inputs=inputs,
            adapter=r.reference("adapter", None),
            outputs=outputs,
            output_dir=output_dir,
            overlap=r.number("overlap", 0.5, low=0.0, high=1.0, high_open=True),
            largest_component=r.boolean("largest_component", False),
            device=r.device("device"),
            force=r.boolean("force", False),
            job_file=Path(source) if source else None,
        )
        paths = job.output_paths()
        duplicates = sorted({str(p) for p in paths if paths.count(p) > 1})
        if duplicates:
            r.fail(
                "outputs" if outputs is not None else "output_dir",
                f"two inputs would write the same file {duplicates[0]}",
            )
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
        return {
            "schema": JOB_SCHEMA,
            "command": "segment",
            "base_model": self.base_model,
            "adapter": self.adapter,
            "inputs": [_channels_out(c) for c in self.inputs],
            "outputs": None if self.outputs is None else [str(p) for p in self.outputs],
            "output_dir": str(self.output_dir) if self.output_dir else None,
            "overlap": self.overlap,
            "largest_component": self.largest_component,
            "device": self.device,
            "force": self.force,
        }


JOB_CLASSES: dict[str, type[FinetuneJob] | type[SegmentJob]] = {
    "finetune": FinetuneJob,
    "segment": SegmentJob,
}


def load_job(path: str | Path) -> FinetuneJob | SegmentJob:
    """Read a job file and return the job of its "command"."""
    path = Path(path)
    data = _read_json(path)
    if not isinstance(data, dict):
        raise ConfigError(f"a job must be a JSON object, not {type(data).__name__}", path)
    command = data.get("command", _MISSING)
    if command is _MISSING:
        raise ConfigError('key \'command\': missing (required; "finetune" or "segment")', path)
    if command not in JOB_CLASSES:
        raise ConfigError(f"key 'command': must be one of {', '.join(JOB_CLASSES)}; got {command!r}", path)
    return JOB_CLASSES[command].from_dict(data, path.parent, path)


# ----------------------------------------------------------------------------------------- events
# Per event kind: required keys -> allowed JSON types. Every event also has "event" and "time".
# JSON types: "string", "integer" (no booleans), "number" (integers too), "boolean", "object",
# "array", "null". Non-finite numbers are not JSON: sinks write them as null.
EVENT_SCHEMA: dict[str, dict[str, tuple[str, ...]]] = {
    "started": {
        "command": ("string",),
        "device": ("string",),
        "total": ("integer",),
        "parameters": ("object", "null"),
    },
    "progress": {
        "iteration": ("integer",),
        "total": ("integer",),
        "loss": ("number", "null"),
        "val_dice": ("object", "null"),
        "eta_s": ("number", "null"),
        "lr": ("number", "null"),
        "message": ("string", "null"),
    },
    "checkpoint": {"iteration": ("integer",), "path": ("string",)},
    "log": {"level": ("string",), "message": ("string",)},
    "done": {"outputs": ("object",), "metrics": ("object",)},
    "error": {
        "kind": ("string",),
        "message": ("string",),
        "path": ("string", "null"),
        "exit_code": ("integer",),
    },
}
# Keys an event may omit (the contract gives "parameters" only for finetune).
EVENT_OPTIONAL: dict[str, frozenset[str]] = {"started": frozenset({"parameters"})}
PARAMETERS_KEYS = {
    "total": ("integer",),
    "trainable": ("integer",),
    "trainable_percent": ("number",),
    "head": ("integer",),
}
LOG_LEVELS = ("info", "warning")
COMMANDS = ("finetune", "segment")


def json_type_ok(value: Any, kind: str) -> bool:
    """Whether `value` is of the JSON type named `kind`."""
    if kind == "null":
        return value is None
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if kind == "string":
        return isinstance(value, str)
    if kind == "object":
        return isinstance(value, dict)
    if kind == "array":
        return isinstance(value, list)
    raise ValueError(f"unknown JSON type {kind!r}")


def _check_fields(obj: dict, spec: dict[str, tuple[str, ...]], optional: frozenset[str], where: str) -> None:
    for key, kinds in spec.items():
        if key not in obj:
            if key in optional:
                continue
            raise ValueError(f"{where}: missing key {key!r}")
        if not any(json_type_ok(obj[key], k) for k in kinds):
            raise ValueError(f"{where}: key {key!r} must be {' or '.join(kinds)}, got {obj[key]!r}")


def validate_event(obj: dict) -> None:
    """Raise ValueError with the reason when `obj` is not a valid "tcurlora.events/1" event."""
    if not isinstance(obj, dict):
        raise ValueError(f"an event must be a JSON object, got {type(obj).__name__}")
    kind = obj.get("event")
    if kind not in EVENT_SCHEMA:
        raise ValueError(f"unknown event kind {kind!r}; expected one of {', '.join(EVENT_SCHEMA)}")
    where = f"{kind} event"
    if "time" not in obj or not json_type_ok(obj["time"], "number"):
        raise ValueError(f"{where}: key 'time' must be a number (unix seconds), got {obj.get('time')!r}")
    spec = EVENT_SCHEMA[kind]
    unknown = sorted(set(obj) - set(spec) - {"event", "time"})
    if unknown:
        raise ValueError(f"{where}: unknown key {unknown[0]!r}")
    _check_fields(obj, spec, EVENT_OPTIONAL.get(kind, frozenset()), where)
    if kind == "started":
        if obj["command"] not in COMMANDS:
            raise ValueError(f"{where}: command must be one of {', '.join(COMMANDS)}, got {obj['command']!r}")
        if obj.get("parameters") is not None:
            _check_fields(obj["parameters"], PARAMETERS_KEYS, frozenset(), f"{where} parameters")
    elif kind == "progress":
        if obj["iteration"] < 0 or obj["total"] < 0 or obj["iteration"] > obj["total"]:
            raise ValueError(f"{where}: need 0 <= iteration <= total, got {obj['iteration']}/{obj['total']}")
        for name, score in (obj["val_dice"] or {}).items():
            if not (json_type_ok(score, "number") or score is None):
                raise ValueError(f"{where}: val_dice[{name!r}] must be a number or null, got {score!r}")
    elif kind == "log" and obj["level"] not in LOG_LEVELS:
        raise ValueError(f"{where}: level must be one of {', '.join(LOG_LEVELS)}, got {obj['level']!r}")


def parse_event_line(line: str) -> dict | None:
    """The event on one stdout line; None for lines that are not JSON objects (stray library output).

    A line that is a JSON object but not a valid event raises ValueError: the worker and its reader
    disagree, which is a bug to surface, not to skip.
    """
    text = line.strip()
    if not text.startswith("{"):
        return None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError:
        return None
    validate_event(obj)
    return obj
