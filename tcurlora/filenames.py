"""File names and format tags, defined once: every file tcurlora writes or reads by name (adapter, model and
checkpoint folders, reports), the format tag inside each, and the image-name rules (supported extensions, a
name's stem, the case name of a channel file, the name of a segmentation output). Standard library only:
the job schema and the Slicer modules import it, and neither may pull in torch."""

from __future__ import annotations

import re
from pathlib import Path

# An adapter folder (`tcurlora finetune -o`); the tuple's order is the order error messages list them in.
ADAPTER_CONFIG_FILE = "adapter_config.json"
ADAPTER_WEIGHTS_FILE = "adapter.safetensors"
TRAINING_LOG_FILE = "training_log.jsonl"  # one JSON record per iteration, in adapter and model folders alike
ADAPTER_FILES = (ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE, TRAINING_LOG_FILE)
ADAPTER_ARCHIVE_SUFFIX = ".tcuradapter.zip"  # one file per adapter to share it (export / import in the panel)

# A model folder (a built-in base model, or `tcurlora pretrain -o`).
MODEL_SPEC_FILE = "model.json"
MODEL_WEIGHTS_FILE = "model.safetensors"
MODEL_CARD_FILE = "MODEL_CARD.md"
MODEL_FILES = frozenset({MODEL_SPEC_FILE, MODEL_WEIGHTS_FILE, TRAINING_LOG_FILE, MODEL_CARD_FILE})

# A MONAI bundle's weights, relative to the bundle folder (MONAI's naming, not ours).
BUNDLE_SAFETENSORS_FILE = "models/model.safetensors"
BUNDLE_TORCH_FILE = "models/model.pt"
BUNDLE_WEIGHT_FILES = (BUNDLE_SAFETENSORS_FILE, BUNDLE_TORCH_FILE)

# The checkpoint folder OUTPUT.checkpoint a training run keeps beside its output until it finishes.
CHECKPOINT_SUFFIX = ".checkpoint"
CHECKPOINT_FILE = "checkpoint.json"  # fine-tuning: iteration, losses, the job it belongs to
BEST_WEIGHTS_FILE = "best_adapter.safetensors"
TEACHER_WEIGHTS_FILE = "teacher.safetensors"  # the mean teacher's EMA tensors (semi-supervised)
PRETRAIN_STATE_FILE = "training_state.json"  # pretraining: iteration, sampler and recipe
OPTIMIZER_FILE = "optimizer.pt"  # optimizer and scheduler state (torch.save of tensors; loaded weights_only)

# A federation's folder OUTPUT.federation: the FLARE workspace, and the last finished round under state/.
FEDERATION_SUFFIX = ".federation"
FEDERATION_STATE_DIR = "state"
FEDERATION_STATE_FILE = "state.json"  # rounds done, the history of rounds
FEDERATION_WEIGHTS_FILE = "global.safetensors"  # the global adapter tensors after that round

# The model library ($TCURLORA_HOME) and the panels' own records.
DOWNLOAD_RECORD_FILE = (
    "tcurlora_download.json"  # in a downloaded Model Zoo bundle: what was fetched from where
)
MODEL_FOLDERS_FILE = "model_folders.json"  # base-model folders added from the panel
INTERRUPTED_RUNS_FILE = "interrupted_runs.json"  # fine-tuning runs the panel offers to resume
RUN_INFO_FILE = "run.json"  # next to a run's job.json: what the panel needs to resume it (the adapter's name)

# Reports.
DEMO_SUMMARY_FILE = "summary.json"
BENCH_REPORT_FILE = "report.json"
BENCH_MARKDOWN_FILE = "report.md"

# Format tags: the "format" or "schema" key of each JSON file above, checked on reading.
JOB_SCHEMA = "tcurlora.job/1"
EVENT_SCHEMA_NAME = "tcurlora.events/1"
ADAPTER_FORMAT = "tcurlora.adapter/1"
MODEL_FORMAT = "tcurlora.model/1"
PRETRAIN_RECIPE_FORMAT = "tcurlora.pretrain/1"
PRETRAIN_STATE_FORMAT = "tcurlora.pretrain-state/1"
EVALUATION_SCHEMA = "tcurlora.evaluation/1"
RANKING_SCHEMA = "tcurlora.suggest/1"
BENCH_SCHEMA = "tcurlora.bench/1"
BENCH_REPORT_SCHEMA = "tcurlora.bench-report/1"

# Longer extensions before their tails (".seg.nrrd" before ".nrrd", ".nii.gz" before ".nii").
IMAGE_EXTENSIONS = (".nii.gz", ".nii", ".seg.nrrd", ".nrrd", ".nhdr", ".mha", ".mhd")
SEGMENTATION_SUFFIX = "_seg"
_CHANNEL_SUFFIX = re.compile(r"_\d{4}$")
# Detached-header formats cannot be replaced atomically: their segmentations get the one-file kind.
_ONE_FILE_EXTENSION = {".nhdr": ".nrrd", ".mhd": ".mha"}


def split_extension(path: str | Path) -> tuple[str, str]:
    """("case_01", ".nii.gz") for "dir/case_01.nii.gz"; known image extensions first, else the suffix."""
    name = Path(path).name
    for ext in IMAGE_EXTENSIONS:
        if name.lower().endswith(ext):
            return name[: -len(ext)], name[-len(ext) :]
    suffix = Path(name).suffix
    return (name[: -len(suffix)] if suffix else name), suffix


def is_image_file(path: str | Path) -> bool:
    """True when the file name ends in a known volume extension."""
    return Path(path).name.lower().endswith(IMAGE_EXTENSIONS)


def case_id_from_path(path: str | Path) -> str:
    """The case name of an image file: its stem without a `_0000` channel suffix."""
    stem, _ = split_extension(path)
    return _CHANNEL_SUFFIX.sub("", stem)


def segmentation_output_name(channels: list[Path] | list[str]) -> str:
    """The file name of the segmentation of one input: case name + "_seg" + the input's extension.

    "case1.nrrd" -> "case1_seg.nrrd"; channel files ["c2_0000.nii.gz", "c2_0001.nii.gz"] ->
    "c2_seg.nii.gz" (the case name, without the channel suffix); "vol.mhd" -> "vol_seg.mha";
    an unknown extension -> ".nii.gz".
    """
    first = Path(channels[0])
    stem, ext = split_extension(first)
    if len(channels) > 1:
        stem = _CHANNEL_SUFFIX.sub("", stem)
    ext = _ONE_FILE_EXTENSION.get(ext.lower(), ext) if is_image_file(first) else ".nii.gz"
    return f"{stem}{SEGMENTATION_SUFFIX}{ext}"


def checkpoint_dir(output: str | Path) -> Path:
    """The checkpoint folder of a fine-tuning (an adapter) or a pretraining (a model folder): OUTPUT.checkpoint."""
    output = Path(output)
    return output.with_name(output.name + CHECKPOINT_SUFFIX)


# Model weights stored as int8: the safetensors metadata key that names the storage format, its one value,
# and the suffix of the float32 scale tensor stored beside each quantized tensor.
WEIGHTS_FORMAT_KEY = "tcurlora_weights"
INT8_WEIGHTS_FORMAT = "tcurlora.int8/1"
INT8_SCALE_SUFFIX = ".int8_scale"
