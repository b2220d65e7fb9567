"""The fine-tuning job (`tcurlora finetune`, TCUR Fine-Tune): every setting declared once."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tcurlora.adapters.methods.registry import METHODS, conv_targets_on
from tcurlora.filenames import JOB_SCHEMA
from tcurlora.jobs.cli_args import cases_from_flags, names_from_flags, patch_size_arg, spacing_arg
from tcurlora.jobs.fields import (
    MAX_ALPHA,
    MAX_BATCH_SIZE,
    MAX_ITERATIONS,
    MAX_PATCH_SIDE,
    MAX_SEED,
    PATH_SCHEMA,
    SELECTIONS,
    UNLABELED_LOSSES,
    check_alpha,
    check_label_names,
    check_regexes,
    check_seed,
    dump_cases,
    parse_cases,
    parse_colors,
    parse_patch_size,
    parse_spacing,
    parse_unlabeled,
)
from tcurlora.jobs.job_reading import (
    BASE_HELP,
    DEVICE_HELP,
    RATE,
    THREADS,
    JobCase,
    fail,
    read_job_json,
    read_job_values,
)
from tcurlora.settings import SettingError, setting
from tcurlora.settings import dump_fields as _dump_fields


@dataclass
class FinetuneJob:
    """Everything `tcurlora finetune` needs. Exactly one of `cases` / `data` is given."""

    base_model: str = setting(kind="reference", help=BASE_HELP, flag="--base-model", slicer=True)
    output: Path = setting(kind="path", help="adapter folder to write", flag="--output", aliases=("-o",))
    cases: list[JobCase] | None = setting(
        None,
        "custom",
        parse=parse_cases,
        dump=dump_cases,
        schema={"type": "array", "items": {"$ref": "#/$defs/case"}, "minItems": 1},
        help="the labeled training cases (or give 'data')",
        flag="--case",
        aliases=("--cases",),
        cli={
            "nargs": 2,
            "action": "append",
            "metavar": ("IMAGE", "LABEL"),
            "help": "one labeled case (repeat the flag); IMAGE may list channel files separated by commas",
        },
        from_cli=cases_from_flags,
    )
    data: Path | None = setting(
        None,
        "path",
        help="training cases from a Decathlon folder (dataset.json), instead of 'cases'",
        flag="--data",
    )
    num_cases: int | None = setting(
        None, "integer", minimum=1, help="use only the first N cases of 'data'", flag="--num-cases"
    )
    case_ids: list[str] | None = setting(None, "strings", help="use only these case ids of 'data'")
    label_names: list[str] | None = setting(
        None,
        "strings",
        check=check_label_names,
        help="class names for label values 1..N",
        flag="--labels",
        dest="labels",
        cli={"metavar": "NAME"},
        from_cli=names_from_flags,
    )
    label_colors: list[list[float]] | None = setting(
        None,
        "custom",
        parse=parse_colors,
        schema={
            "type": "array",
            "items": {
                "type": "array",
                "items": {"type": "number", "minimum": 0, "maximum": 1},
                "minItems": 3,
                "maxItems": 3,
            },
        },
        help="one [r, g, b] color (0..1) per label name",
    )
    method: str = setting(
        "tcur", "choice", choices=METHODS, help="adaptation method", flag="--method", slicer=True
    )
    rank: int = setting(8, "integer", minimum=1, help="adapter rank", flag="--rank", slicer=True)
    alpha: float | None = setting(
        None,
        "number",
        check=check_alpha,
        schema={"exclusiveMinimum": 0, "maximum": MAX_ALPHA},
        help="adapter scale (default: the method's)",
        flag="--alpha",
    )
    selection: str = setting(
        "topnorm", "choice", choices=SELECTIONS, help="tCUR index selection", flag="--selection"
    )
    conv_targets: bool | None = setting(
        None,
        "boolean",
        flag="--conv-targets",
        help="adapt the encoder/decoder Conv3d kernels too (tcur, lora; the default for tcur)",
        negation=(
            "--no-conv-targets",
            False,
            "adapt only the transformer's linear layers (tCURLoRA as in the paper)",
        ),
    )
    iterations: int = setting(
        500,
        "integer",
        minimum=1,
        maximum=MAX_ITERATIONS,
        help="training steps (at most 1,000,000)",
        flag="--iterations",
        slicer=True,
    )
    batch_size: int = setting(
        2,
        "integer",
        minimum=1,
        maximum=MAX_BATCH_SIZE,
        help="patches per step",
        flag="--batch-size",
        slicer=True,
    )
    learning_rate: float | None = setting(
        None,
        **RATE,
        help="learning rate of the adapter (default: the method's)",
        flag="--lr",
        dest="lr",
        slicer=True,
    )
    head_learning_rate: float | None = setting(
        None,
        **RATE,
        help="learning rate of a new segmentation head (default 5e-3)",
        flag="--head-lr",
        dest="head_lr",
        slicer=True,
    )
    modules_learning_rate: float | None = setting(
        None,
        **RATE,
        help="learning rate of the train_modules (default 3e-3)",
        flag="--modules-lr",
        dest="modules_lr",
    )
    train_modules: list[str] | None = setting(
        None,
        "strings",
        check=check_regexes,
        flag="--train-modules",
        cli={"metavar": "REGEX"},
        slicer=True,
        help="extra modules trained in full (full-matched module names; 'decoder' = every decoderN block, "
        "the tCURLoRA authors' setting), saved in the adapter (default for tcur: the full-resolution blocks, "
        "UNETR encoder1 + decoder2; for other methods none)",
        negation=("--no-train-modules", [], "no extra trained modules (tCURLoRA alone, as in the paper)"),
    )
    spacing: list[float] | str | None = setting(
        None,
        "custom",
        parse=parse_spacing,
        flag="--spacing",
        cli={"type": spacing_arg},
        slicer=True,
        schema={
            "anyOf": [
                {"enum": ["auto", "base"]},
                {
                    "type": "array",
                    "items": {"type": "number", "exclusiveMinimum": 0},
                    "minItems": 3,
                    "maxItems": 3,
                },
            ]
        },
        help="working spacing in mm (e.g. 1 or 1,1,1.5), 'base' (the base model's) or 'auto' (default: the "
        "cases' median spacing, coarsened until the labeled structure fits in a patch, within 2/3..1 x the "
        "base's); saved in the adapter, used by segment",
    )
    patch_size: list[int] | None = setting(
        None,
        "custom",
        parse=parse_patch_size,
        flag="--patch-size",
        cli={"type": patch_size_arg},
        slicer=True,
        schema={
            "type": "array",
            "items": {"type": "integer", "minimum": 1, "maximum": MAX_PATCH_SIDE},
            "minItems": 3,
            "maxItems": 3,
        },
        help="e.g. 96 or 96,96,64 (default: the base model's)",
    )
    seed: int = setting(
        0,
        "integer",
        minimum=0,
        check=check_seed,
        schema={"maximum": MAX_SEED},
        help="random seed",
        flag="--seed",
        slicer=True,
    )
    val_fraction: float = setting(
        0.0,
        "number",
        minimum=0.0,
        maximum=1.0,
        exclusive_maximum=True,
        flag="--val-fraction",
        slicer=True,
        help="fraction of cases held out for validation",
    )
    val_case_ids: list[str] | None = setting(
        None, "strings", help="case ids held out for validation (instead of val_fraction)"
    )
    early_stopping: int = setting(
        4,
        "integer",
        minimum=0,
        maximum=MAX_ITERATIONS,
        flag="--early-stopping",
        cli={"metavar": "N"},
        help="with a validation split: stop after N validations without a better Dice and keep the best "
        "adapter (default 4; 0 = train all iterations, still keeping the best)",
    )
    grad_clip: float | None = setting(
        None,
        "number",
        minimum=0.0,
        exclusive_minimum=True,
        flag="--grad-clip",
        cli={"metavar": "NORM"},
        help="clip the gradient norm to NORM before each step (default: no clipping)",
    )
    unlabeled: list[Path] | None = setting(
        None,
        "custom",
        parse=parse_unlabeled,
        schema={"type": "array", "items": PATH_SCHEMA},
        flag="--unlabeled",
        cli={"nargs": "+", "metavar": "PATH"},
        help="unlabeled volumes for semi-supervised (mean teacher) training: image files, or folders of "
        "them (a Decathlon folder: its imagesTr)",
    )
    unlabeled_weight: float = setting(
        0.1,
        "number",
        minimum=0.0,
        flag="--unlabeled-weight",
        cli={"metavar": "W"},
        help="weight of the mean-teacher consistency loss on the unlabeled volumes (ramped up over the "
        "first 40 percent of the iterations)",
    )
    unlabeled_loss: str = setting(
        "consistency",
        "choice",
        choices=UNLABELED_LOSSES,
        flag="--unlabeled-loss",
        help="with unlabeled volumes: consistency (mean squared difference of the student's and the "
        "teacher's class probabilities, the student seeing noise) or pseudo_label (cross-entropy towards "
        "the teacher's confident classes, the student seeing a strongly perturbed view)",
    )
    ema_decay: float = setting(
        0.99,
        "number",
        minimum=0.0,
        maximum=1.0,
        exclusive_maximum=True,
        flag="--ema-decay",
        help="with unlabeled volumes: decay of the teacher's exponential moving average of the trained weights",
    )
    keep_teacher: bool = setting(
        False,
        "boolean",
        flag="--keep-teacher",
        help="with unlabeled volumes: validate and save the teacher (the moving average) instead of the student",
    )
    checkpoint_every: int = setting(
        50,
        "integer",
        minimum=0,
        maximum=MAX_ITERATIONS,
        help="iterations between checkpoints (default 50; 0 = none)",
        flag="--checkpoint-every",
        slicer=True,
    )
    device: str = setting("auto", "device", help=DEVICE_HELP, flag="--device", override=True, slicer=True)
    amp: bool = setting(True, "boolean", help="no mixed precision on CUDA", flag="--no-amp", slicer=True)
    threads: int | str = setting("auto", override=True, **THREADS)
    force: bool = setting(
        False, "boolean", help="replace an existing adapter folder", flag="--force", override=True
    )
    resume: bool = setting(
        False, "boolean", help="continue from the last checkpoint", flag="--resume", override=True
    )
    job_file: Path | None = field(default=None, compare=False, repr=False)

    command = "finetune"
    ONE_OF = (("cases", "data", "give exactly one of 'cases' (a list) or 'data' (a folder)"),)
    DATA_ONLY = ("num_cases", "case_ids")  # only with 'data'
    # (key, other, other's value, problem): when `key` is given, `other` must keep that value.
    REPLACES = (
        ("val_case_ids", "val_fraction", 0.0, "give either 'val_fraction' or 'val_case_ids', not both"),
    )

    @classmethod
    def from_dict(
        cls, data: dict[str, Any], base_dir: str | Path, source: str | Path | None = None
    ) -> FinetuneJob:
        """Validate a job dict; relative paths are resolved against `base_dir`."""
        source = Path(source) if source else None
        try:
            values = read_job_values(cls, data, base_dir, "finetune")
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
            fail(error, source)
        return cls(**values, job_file=source)

    @property
    def uses_conv_targets(self) -> bool:
        """Conv3d kernels adapted too (see conv_targets_on)."""
        return conv_targets_on(self.method, self.conv_targets)

    @classmethod
    def from_file(cls, path: str | Path) -> FinetuneJob:
        path = Path(path)
        return cls.from_dict(read_job_json(path), path.parent, path)

    def to_dict(self) -> dict[str, Any]:
        """The job as JSON-able dict, absolute paths; `from_dict(to_dict())` gives the same job."""
        return {"schema": JOB_SCHEMA, "command": self.command, **_dump_fields(self)}
