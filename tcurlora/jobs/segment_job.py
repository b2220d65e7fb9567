"""The segmentation and suggestion jobs (`tcurlora segment`, `tcurlora suggest`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tcurlora.filenames import JOB_SCHEMA, segmentation_output_name
from tcurlora.jobs.fields import (
    LARGEST_COMPONENT,
    PATH_SCHEMA,
    SUGGEST_SCORES,
    channels_out,
    parse_inputs,
    parse_paths,
)
from tcurlora.jobs.job_reading import BASE_HELP, DEVICE_HELP, THREADS, fail, read_job_json, read_job_values
from tcurlora.settings import SettingError, setting
from tcurlora.settings import dump_fields as _dump_fields

# Mirror test-time augmentation, declared alike for segment and suggest (their predictions are the same).
TTA = {
    "kind": "boolean",
    "flag": "--no-tta",
    "cli": {"help": "one plain pass: no mirror test-time augmentation (about half the time)"},
    "help": "average the predictions over the mirrorings the adapter was trained with (about 2x the "
    "inference time); false: one plain pass",
}


@dataclass
class SegmentJob:
    """Everything `tcurlora segment` needs. Exactly one of `outputs` / `output_dir` is given."""

    base_model: str = setting(kind="reference", help=BASE_HELP, flag="--base-model")
    inputs: list[list[Path]] = setting(
        kind="custom",
        parse=parse_inputs,
        schema={"type": "array", "items": {"$ref": "#/$defs/channels"}, "minItems": 1},
        help="the volumes to segment, each one path or a list of channel paths",
    )
    adapter: str | None = setting(
        None, "reference", help="adapter folder (default: the base model alone)", flag="--adapter"
    )
    outputs: list[Path] | None = setting(
        None,
        "custom",
        parse=parse_paths,
        schema={"type": "array", "items": PATH_SCHEMA},
        help="one output file per input (or give output_dir)",
    )
    output_dir: Path | None = setting(
        None, "path", help="folder for the outputs, named INPUT_seg + extension (or give outputs)"
    )
    overlap: float = setting(
        0.5,
        "number",
        minimum=0.0,
        maximum=1.0,
        exclusive_maximum=True,
        flag="--overlap",
        help="sliding-window overlap in [0, 1)",
    )
    largest_component: bool | str = setting(
        "auto",
        **LARGEST_COMPONENT,
        flag="--largest-component",
        cli={
            "action": "store_const",
            "const": True,
            "help": "keep only the largest connected component of every class (default: the classes that "
            "were one piece in every training label of the adapter)",
        },
        negation=("--no-largest-component", False, "keep every connected component of every class"),
    )
    tta: bool = setting(True, **TTA)
    device: str = setting("auto", "device", help=DEVICE_HELP, flag="--device")
    threads: int | str = setting("auto", **THREADS)
    force: bool = setting(False, "boolean", help="overwrite existing outputs", flag="--force")
    job_file: Path | None = field(default=None, compare=False, repr=False)

    command = "segment"
    ONE_OF = (
        (
            "outputs",
            "output_dir",
            "give exactly one of 'outputs' (a list of files) or 'output_dir' (a folder)",
        ),
    )

    @classmethod
    def from_dict(
        cls, data: dict[str, Any], base_dir: str | Path, source: str | Path | None = None
    ) -> SegmentJob:
        """Validate a job dict; relative paths are resolved against `base_dir`."""
        source = Path(source) if source else None
        try:
            values = read_job_values(cls, data, base_dir, "segment")
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
            fail(error, source)
        return job

    @classmethod
    def from_file(cls, path: str | Path) -> SegmentJob:
        path = Path(path)
        return cls.from_dict(read_job_json(path), path.parent, path)

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

    base_model: str = setting(kind="reference", help=BASE_HELP, flag="--base-model")
    inputs: list[list[Path]] = setting(
        kind="custom",
        parse=parse_inputs,
        schema={"type": "array", "items": {"$ref": "#/$defs/channels"}, "minItems": 1},
        help="the volumes to rank, each one path or a list of channel paths",
    )
    adapter: str | None = setting(
        None, "reference", help="adapter folder (default: the base model alone)", flag="--adapter"
    )
    score: str = setting(
        "entropy",
        "choice",
        choices=SUGGEST_SCORES,
        flag="--score",
        help="entropy: mean predictive entropy inside the predicted foreground (one pass); flips: share of "
        "the predicted foreground whose label changes under mirroring along each axis (four passes)",
    )
    top: int | None = setting(
        None,
        "integer",
        minimum=1,
        help="report only the K most uncertain volumes",
        flag="--top",
        cli={"metavar": "K"},
    )
    overlap: float = setting(
        0.5,
        "number",
        minimum=0.0,
        maximum=1.0,
        exclusive_maximum=True,
        flag="--overlap",
        help="sliding-window overlap in [0, 1)",
    )
    tta: bool = setting(True, **TTA)
    device: str = setting("auto", "device", help=DEVICE_HELP, flag="--device")
    threads: int | str = setting("auto", **THREADS)
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
            values = read_job_values(cls, data, base_dir, "suggest")
        except SettingError as error:
            fail(error, source)
        return cls(**values, job_file=source)

    @classmethod
    def from_file(cls, path: str | Path) -> SuggestJob:
        path = Path(path)
        return cls.from_dict(read_job_json(path), path.parent, path)

    def to_dict(self) -> dict[str, Any]:
        """The job as JSON-able dict, absolute paths; `from_dict(to_dict())` gives the same job."""
        data = {"schema": JOB_SCHEMA, "command": self.command, **_dump_fields(self)}
        data["inputs"] = [channels_out(c) for c in self.inputs]
        return data
