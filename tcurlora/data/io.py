"""Read and write medical volumes with SimpleITK, keeping the geometry exactly.

Supported: NIfTI (.nii, .nii.gz), NRRD (.nrrd, .nhdr), MetaImage (.mha, .mhd) and Slicer
segmentations (.seg.nrrd, whose segment names and label values live in the NRRD header).
Every problem a user can fix is raised as InputError / OutputExistsError naming the file.
"""

from __future__ import annotations

import gzip
import re
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path

import nibabel
import numpy as np
import SimpleITK as sitk

from tcurlora.errors import InputError, OutputExistsError, OutputWriteError
from tcurlora.filenames import IMAGE_EXTENSIONS, is_image_file, split_extension
from tcurlora.fsutil import atomic_file
from tcurlora.outputs import SEGMENTATION_MARK, SEGMENTATION_MARK_KEYS, check_segmentation_output

_SEGMENT_KEY = re.compile(r"^Segment(\d+)_(\w+)$")


def file_extension(path: str | Path) -> str:
    """The supported extension of `path` in lower case (".nii.gz", ".seg.nrrd", ...), or InputError."""
    if not is_image_file(path):
        supported = ", ".join(IMAGE_EXTENSIONS)
        raise InputError(
            f"unsupported file type {Path(path).suffix or '(none)'!r}; use one of {supported}", path
        )
    return split_extension(path)[1].lower()


def file_stem(path: str | Path) -> str:
    """The file name without its (possibly double) image extension; InputError for other files."""
    file_extension(path)
    return split_extension(path)[0]


def _check_nifti_complete(path: Path, what: str) -> None:
    """SimpleITK zero-fills truncated NIfTI data silently; check the byte count (and gzip CRC) first."""
    try:
        header = nibabel.Nifti1Image.from_filename(str(path)).header
        expected = int(header.get_data_offset()) + int(
            np.prod(header.get_data_shape(), dtype=np.int64) * header.get_data_dtype().itemsize
        )
    except Exception as error:  # noqa: BLE001 - nibabel raises many types for a bad header
        raise InputError(f"cannot read {what} (corrupt or not a NIfTI file): {error}", path) from error
    try:
        if path.name.lower().endswith(".gz"):
            available = 0
            with gzip.open(path, "rb") as stream:
                while chunk := stream.read(1 << 22):
                    available += len(chunk)
        else:
            available = path.stat().st_size
    except (OSError, EOFError, zlib.error) as error:
        raise InputError(
            f"cannot read {what} (truncated or corrupt compressed data): {error}", path
        ) from error
    if available < expected:
        raise InputError(f"{what} file is truncated: {available} of {expected} bytes", path)


def _read(path: str | Path, what: str) -> sitk.Image:
    path = Path(path)
    file_extension(path)
    if not path.exists():
        raise InputError(f"{what} file not found", path)
    if not path.is_file():
        raise InputError(f"{what} path is not a file", path)
    if file_extension(path) in (".nii", ".nii.gz"):
        _check_nifti_complete(path, what)
    try:
        image = sitk.ReadImage(str(path))
        # Force the voxel data to be decoded now: a truncated file must fail here, not later.
        sitk.GetArrayViewFromImage(image)
    except RuntimeError as error:
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        useful = [line for line in lines if "won't be written" not in line and not line.startswith("Reason:")]
        reason = (useful or lines or ["unknown reader error"])[-1]
        raise InputError(
            f"cannot read {what} (corrupt, truncated or not an image): {reason}", path
        ) from error
    if image.GetDimension() not in (3, 4):
        raise InputError(f"{what} has {image.GetDimension()} dimensions; a 3D volume is required", path)
    return image


def count_nonfinite(path: str | Path) -> int:
    """Number of NaN/inf voxels in a readable image file, as stored on disk.

    SimpleITK's NIfTI reader turns NaN into 0 silently, so NIfTI files are counted with nibabel.
    """
    path = Path(path)
    if file_extension(path) in (".nii", ".nii.gz"):
        proxy = nibabel.load(str(path)).dataobj
        if not np.issubdtype(proxy.dtype, np.floating) and not np.issubdtype(proxy.dtype, np.complexfloating):
            return 0
        return int(np.count_nonzero(~np.isfinite(np.asarray(proxy))))
    values = sitk.GetArrayViewFromImage(read_image(path))
    if not np.issubdtype(values.dtype, np.floating):
        return 0
    return int(np.count_nonzero(~np.isfinite(values)))


def read_image(path: str | Path) -> sitk.Image:
    """Read an image volume (3D, 4D or multi-component) as SimpleITK read it."""
    return _read(path, "image")


def split_channels(image: sitk.Image) -> list[sitk.Image]:
    """The 3D scalar channels of a 3D, 4D (channels last axis) or vector image."""
    if image.GetDimension() == 4:
        size = list(image.GetSize())
        channels = []
        for index in range(size[3]):
            channels.append(sitk.Extract(image, size[:3] + [0], [0, 0, 0, index]))
        return channels
    if image.GetNumberOfComponentsPerPixel() > 1:
        return [
            sitk.VectorIndexSelectionCast(image, index)
            for index in range(image.GetNumberOfComponentsPerPixel())
        ]
    return [image]


def read_channels(paths: str | Path | Sequence[str | Path]) -> list[sitk.Image]:
    """All channels of one case: one file per channel, or one 4D/vector file."""
    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    if not paths:
        raise InputError("no image file given")
    channels: list[sitk.Image] = []
    for path in paths:
        channels.extend(split_channels(read_image(path)))
    return channels


def reference_image(paths: str | Path | Sequence[str | Path]) -> sitk.Image:
    """The 3D grid of a case (its first channel): what a segmentation must be written on."""
    return read_channels(paths)[0]


def _segment_fields(image: sitk.Image) -> dict[int, dict[str, str]]:
    segments: dict[int, dict[str, str]] = {}
    for key in image.GetMetaDataKeys():
        match = _SEGMENT_KEY.match(key)
        if match:
            segments.setdefault(int(match.group(1)), {})[match.group(2)] = image.GetMetaData(key)
    return segments


def _read_segmentation(path: Path, image: sitk.Image) -> tuple[sitk.Image, dict[int, str]]:
    """Flatten a Slicer .seg.nrrd (one or more layers) to one labelmap and its segment names."""
    segments = _segment_fields(image)
    layers = split_channels(image)
    reference = layers[0]
    if not segments:
        label = sitk.Cast(reference, sitk.sitkUInt16)
        return label, {}
    try:
        entries = [
            (
                number,
                fields.get("Name", f"Segment_{number}"),
                int(fields.get("LabelValue", number + 1)),
                int(fields.get("Layer", 0)),
            )
            for number, fields in sorted(segments.items())
        ]
    except ValueError as error:
        raise InputError(f"bad segment header (LabelValue/Layer must be integers): {error}", path) from error
    if any(layer >= len(layers) or layer < 0 for _, _, _, layer in entries):
        raise InputError(f"a segment names a layer that the file does not have ({len(layers)} layers)", path)
    arrays = [sitk.GetArrayViewFromImage(layer) for layer in layers]
    if len(layers) == 1:
        names = {value: name for _, name, value, _ in entries}
        flat = arrays[0].astype(np.uint16)
    else:
        # Overlapping segments on separate layers: give each its own value, later segments on top.
        flat = np.zeros(arrays[0].shape, dtype=np.uint16)
        names = {}
        for new_value, (_, name, value, layer) in enumerate(entries, start=1):
            flat[arrays[layer] == value] = new_value
            names[new_value] = name
    label = sitk.GetImageFromArray(flat)
    label.CopyInformation(reference)
    return label, names


def read_label(path: str | Path) -> tuple[sitk.Image, dict[int, str]]:
    """Read a labelmap; for a Slicer .seg.nrrd also its {label value: segment name}, else {}."""
    path = Path(path)
    image = _read(path, "label")
    if file_extension(path) == ".seg.nrrd" or _segment_fields(image):
        return _read_segmentation(path, image)
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError("label must be a single 3D volume (one component, no 4th axis)", path)
    return image, {}


def check_output_free(path: str | Path, force: bool) -> Path:
    """Raise OutputExistsError if `path` (a file or folder) exists and `force` is false."""
    path = Path(path)
    if path.exists() and not force:
        raise OutputExistsError('output exists; use --force (or "force": true) to overwrite', path)
    return path


def check_labelmap_output(path: str | Path, force: bool) -> str:
    """Check a labelmap output path before any work: supported, writable type, not a folder, free.

    Returns its extension.
    """
    path = Path(path)
    extension = file_extension(path)
    if extension in (".nhdr", ".mhd"):
        raise InputError(
            "detached-header formats cannot be written atomically; use .nrrd, .mha or .nii.gz", path
        )
    if path.is_dir():
        raise InputError("output path is a folder; give a file name", path)
    check_segmentation_output(path, force)  # free, or (force) a segmentation tcurlora wrote; writable
    return extension


def _segment_metadata(
    names: Mapping[int, str], colors: Mapping[int, Sequence[float]] | None
) -> dict[str, str]:
    meta = {
        "Segmentation_MasterRepresentation": "Binary labelmap",
        "Segmentation_ContainedRepresentationNames": "Binary labelmap|",
        "Segmentation_ReferenceImageExtentOffset": "0 0 0",
    }
    for number, (value, name) in enumerate(sorted(names.items())):
        color = (colors or {}).get(value)
        prefix = f"Segment{number}_"
        meta[prefix + "ID"] = f"Segment_{value}"
        meta[prefix + "Name"] = str(name)
        meta[prefix + "NameAutoGenerated"] = "0"
        meta[prefix + "LabelValue"] = str(int(value))
        meta[prefix + "Layer"] = "0"
        meta[prefix + "Color"] = " ".join(f"{c:g}" for c in color) if color else "0.5 0.5 0.5"
        meta[prefix + "ColorAutoGenerated"] = "0" if color else "1"
        meta[prefix + "Tags"] = "|"
    return meta


def write_labelmap(
    array_zyx: np.ndarray,
    reference: sitk.Image,
    path: str | Path,
    *,
    force: bool = False,
    names: Mapping[int, str] | None = None,
    colors: Mapping[int, Sequence[float]] | None = None,
) -> Path:
    """Write a labelmap on exactly the reference grid, atomically (fsutil.atomic_file).

    `array_zyx` is indexed [z, y, x] like sitk.GetArrayFromImage(reference). The file type comes
    from the extension; for .seg.nrrd, `names`/`colors` ({value: name}, {value: (r, g, b)}) become
    Slicer segment header keys.
    """
    path = Path(path)
    extension = check_labelmap_output(path, force)
    array = np.asarray(array_zyx)
    expected = tuple(reversed(reference.GetSize()[:3]))
    if array.shape != expected:
        raise ValueError(
            f"labelmap shape {array.shape} does not match the reference grid {expected} (z, y, x)"
        )
    if array.size and (array.min() < 0 or not np.array_equal(array, np.round(array))):
        raise ValueError("labelmap values must be non-negative integers")
    dtype = np.uint8 if array.size == 0 or array.max() < 256 else np.uint16
    label = sitk.GetImageFromArray(array.astype(dtype))
    label.SetSpacing(reference.GetSpacing()[:3])
    label.SetOrigin(reference.GetOrigin()[:3])
    direction = np.asarray(reference.GetDirection()).reshape(reference.GetDimension(), -1)[:3, :3]
    label.SetDirection(tuple(float(v) for v in direction.ravel()))
    for key in SEGMENTATION_MARK_KEYS[:2]:  # recognised later by --force (outputs.py)
        label.SetMetaData(key, SEGMENTATION_MARK)
    if extension == ".seg.nrrd":
        values = names or {int(v): f"Segment_{int(v)}" for v in np.unique(array) if v > 0}
        for key, value in _segment_metadata(values, colors).items():
            label.SetMetaData(key, value)
    with atomic_file(path, suffix=extension) as temp:
        try:
            sitk.WriteImage(label, str(temp), useCompression=True)
        except RuntimeError as error:
            reason = str(error).strip().splitlines()[-1]
            raise OutputWriteError(f"cannot write the labelmap: {reason}; nothing was left", path) from error
        check_written(temp, array.astype(dtype), path)
    return path


def check_written(temp: Path, expected_zyx: np.ndarray, final: Path) -> None:
    """OutputWriteError unless `temp` reads back as exactly `expected_zyx`.

    ITK's NIfTI writer only prints "wrote only N of M bytes" on a full disk and succeeds, and its
    reader zero-fills the missing voxels: the byte count is checked first, then every voxel.
    """
    problem = None
    try:
        if file_extension(temp) in (".nii", ".nii.gz"):
            _check_nifti_complete(temp, "written labelmap")
        written = sitk.GetArrayFromImage(sitk.ReadImage(str(temp)))
        if written.shape != expected_zyx.shape or not np.array_equal(written, expected_zyx):
            problem = "it does not read back as written"
    except (InputError, RuntimeError, OSError) as error:
        problem = str(error.problem if isinstance(error, InputError) else error).strip().splitlines()[-1]
    if problem is not None:
        raise OutputWriteError(
            f"the labelmap was not written completely (disk full?): {problem}; nothing was left", final
        )
