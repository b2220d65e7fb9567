"""Image file names, defined once: the supported extensions, a name's stem and extension, the case
name of a channel file, and the name of a segmentation output. No heavy imports (the job schema and
the Slicer-facing helpers use it)."""

from __future__ import annotations

import re
from pathlib import Path

# Longer extensions before their tails (".seg.nrrd" before ".nrrd", ".nii.gz" before ".nii").
IMAGE_EXTENSIONS = (".nii.gz", ".nii", ".seg.nrrd", ".nrrd", ".nhdr", ".mha", ".mhd")
SEGMENTATION_SUFFIX = "_seg"
CHECKPOINT_SUFFIX = ".checkpoint"  # OUTPUT.checkpoint: the folder a training run keeps beside its output
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
