"""Compare predicted label volumes with reference ones: Dice and HD95 per case and class, in mm.

Definitions (per class c, prediction P = {voxels == c}, reference R = {voxels == c}):
- Dice = 2 |P ∩ R| / (|P| + |R|); 1.0 when both are empty, 0.0 when only one is.
- Surface of a mask: its voxels with at least one of the 6 face neighbours outside the mask
  (voxels outside the volume count as outside).
- Surface distance of a surface voxel: the Euclidean distance in mm (voxel index times spacing) to
  the nearest surface voxel of the other mask.
- HD95 = the 95th percentile (numpy's linear interpolation) of the POOLED symmetric surface
  distances: the distances from every surface voxel of P to R together with those from every
  surface voxel of R to P. (MONAI's `compute_hausdorff_distance(percentile=95)` instead takes the
  larger of the two directed percentiles; ours is never larger than that.)
- HD95 is NaN when both masks are empty (undefined) and +inf when exactly one is empty.
Means per class: Dice averages over all cases; HD95 averages the finite values and reports how
many cases were infinite. In JSON, NaN and inf are written as null (with the voxel counts beside
them, so a reader can tell the two apart).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from tcurlora.data.geometry import Grid, geometry_difference
from tcurlora.dice import dice_score
from tcurlora.errors import InputError
from tcurlora.filenames import EVALUATION_SCHEMA, SEGMENTATION_SUFFIX, is_image_file, split_extension
from tcurlora.fsutil import atomic_write_text

HD95_DEFINITION = (
    "95th percentile (linear interpolation) of the pooled symmetric surface distances in mm; "
    "surfaces are 6-connected boundary voxels; NaN if both masks are empty, inf if one is"
)


@dataclass
class LabelVolume:
    """An integer label array in (z, y, x) order with the geometry it came with ((x, y, z) order)."""

    path: Path
    array: np.ndarray
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]

    @property
    def grid(self) -> Grid:
        return Grid(self.array.shape[::-1], tuple(self.spacing), tuple(self.origin), tuple(self.direction))


def read_labels(path: str | Path) -> LabelVolume:
    """Read a label volume; non-integer values are an InputError."""
    import SimpleITK as sitk

    path = Path(path)
    if not path.is_file():
        raise InputError("label file not found", path)
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as error:
        raise InputError(f"cannot read label volume ({str(error).strip().splitlines()[-1]})", path) from error
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError("expected a scalar label volume, got a multi-component image", path)
    values = sitk.GetArrayFromImage(image)
    if values.dtype.kind == "f":
        if not np.all(np.isfinite(values)) or not np.array_equal(values, np.round(values)):
            raise InputError("label volume has non-integer values", path)
    array = values.astype(np.int64)
    if array.min(initial=0) < 0:
        raise InputError(f"label volume has negative values (min {array.min()})", path)
    return LabelVolume(path, array, image.GetSpacing(), image.GetOrigin(), image.GetDirection())


def check_same_geometry(prediction: LabelVolume, reference: LabelVolume) -> None:
    """InputError naming both files when size, spacing, origin or direction differ (data/geometry.py)."""
    difference = geometry_difference(prediction.grid, reference.grid)
    if difference:
        raise InputError(
            f"prediction and reference {reference.path} have different geometry: {difference}",
            prediction.path,
        )


def surface(mask: np.ndarray) -> np.ndarray:
    """Boundary voxels of a boolean mask (6-connectivity; outside the volume counts as background)."""
    padded = np.pad(mask, 1, constant_values=False)
    eroded = ndimage.binary_erosion(padded, structure=ndimage.generate_binary_structure(3, 1))
    return (padded & ~eroded)[1:-1, 1:-1, 1:-1]


def directed_surface_distances(
    from_surface: np.ndarray, to_surface: np.ndarray, sampling: tuple
) -> np.ndarray:
    """Distance in mm from each voxel of `from_surface` to the nearest voxel of `to_surface`."""
    distance_map = ndimage.distance_transform_edt(~to_surface, sampling=sampling)
    return distance_map[from_surface]


def foreground_box(mask: np.ndarray) -> tuple[slice, ...]:
    """The smallest box holding every True voxel of a non-empty mask.

    HD95 works inside this box of P | R: exact (every voxel outside is background, as outside the
    volume is, and every surface voxel lies inside), and the distance transforms cover only the box."""
    return tuple(slice(int(idx.min()), int(idx.max()) + 1) for idx in np.nonzero(mask))


def hd95(prediction: np.ndarray, reference: np.ndarray, spacing_zyx: tuple[float, float, float]) -> float:
    """HD95 in mm as defined in the module docstring."""
    has_p, has_r = bool(prediction.any()), bool(reference.any())
    if not has_p and not has_r:
        return math.nan
    if not has_p or not has_r:
        return math.inf
    box = foreground_box(prediction | reference)
    surf_p, surf_r = surface(prediction[box]), surface(reference[box])
    pooled = np.concatenate(
        [
            directed_surface_distances(surf_p, surf_r, spacing_zyx),
            directed_surface_distances(surf_r, surf_p, spacing_zyx),
        ]
    )
    return float(np.percentile(pooled, 95))


def evaluate_pair(prediction: LabelVolume, reference: LabelVolume, classes: dict[int, str]) -> dict[str, Any]:
    """Per class Dice, HD95 and voxel counts for one case."""
    check_same_geometry(prediction, reference)
    spacing_zyx = tuple(float(s) for s in reference.spacing[::-1])
    result = {}
    for value, name in classes.items():
        pred, ref = prediction.array == value, reference.array == value
        result[name] = {
            "dice": dice_score(pred, ref),
            "hd95": hd95(pred, ref, spacing_zyx),
            "prediction_voxels": int(pred.sum()),
            "reference_voxels": int(ref.sum()),
        }
    return result


def class_means(cases: list[dict[str, Any]], names: list[str]) -> dict[str, dict[str, Any]]:
    """Mean Dice per class over cases; mean HD95 over the cases where it is finite (NaN when none),
    with how many were finite and how many infinite."""
    means = {}
    for name in names:
        dice = [c["classes"][name]["dice"] for c in cases]
        hd = [c["classes"][name]["hd95"] for c in cases]
        finite = [h for h in hd if math.isfinite(h)]
        means[name] = {
            "dice": float(np.mean(dice)),
            "hd95": float(np.mean(finite)) if finite else math.nan,
            "hd95_cases": len(finite),
            "hd95_infinite": sum(1 for h in hd if math.isinf(h)),
        }
    return means


def evaluate_pairs(
    pairs: list[tuple[str | Path, str | Path]], label_names: list[str] | None = None
) -> dict[str, Any]:
    """Evaluate (prediction, reference) file pairs.

    Classes are label values 1..N named by `label_names`, or, without names, every nonzero value
    found in any reference or prediction, named "label_<value>".
    """
    if not pairs:
        raise InputError("no prediction/reference pairs to evaluate")
    volumes = [(read_labels(p), read_labels(r)) for p, r in pairs]
    if label_names:
        classes = {i + 1: name for i, name in enumerate(label_names)}
    else:
        values = sorted({int(v) for pair in volumes for vol in pair for v in np.unique(vol.array) if v != 0})
        classes = {v: f"label_{v}" for v in values}
    cases = []
    for prediction, reference in volumes:
        cases.append(
            {
                "id": split_extension(reference.path)[0],
                "prediction": str(prediction.path),
                "reference": str(reference.path),
                "spacing": [float(s) for s in reference.spacing],
                "classes": evaluate_pair(prediction, reference, classes),
            }
        )
    return {
        "schema": EVALUATION_SCHEMA,
        "hd95_definition": HD95_DEFINITION,
        "classes": {str(k): v for k, v in classes.items()},
        "cases": cases,
        "mean": class_means(cases, list(classes.values())),
    }


def match_folders(predictions: str | Path, references: str | Path) -> list[tuple[Path, Path]]:
    """Pair each prediction with the reference of the same file name (a "_seg" suffix is allowed).

    References without a prediction are skipped (evaluating a subset); a prediction without a
    reference is an InputError.
    """
    predictions, references = Path(predictions), Path(references)
    for folder in (predictions, references):
        if not folder.is_dir():
            raise InputError("folder not found", folder)
    by_stem = {
        split_extension(f)[0]: f for f in sorted(references.iterdir()) if f.is_file() and is_image_file(f)
    }
    pairs = []
    for pred in sorted(predictions.iterdir()):
        if not pred.is_file() or not is_image_file(pred) or pred.name.startswith("."):
            continue
        stem = split_extension(pred)[0]
        reference = by_stem.get(stem) or (
            by_stem.get(stem[: -len(SEGMENTATION_SUFFIX)]) if stem.endswith(SEGMENTATION_SUFFIX) else None
        )
        if reference is None:
            raise InputError(f"no reference with the same name in {references}", pred)
        pairs.append((pred, reference))
    if not pairs:
        raise InputError("no prediction volumes in this folder", predictions)
    return pairs


def to_json_text(result: dict[str, Any]) -> str:
    """Strict JSON (NaN and inf as null)."""
    from tcurlora.jobs.events import json_safe

    return json.dumps(json_safe(result), indent=2, allow_nan=False) + "\n"


def _fmt(value: float, digits: int) -> str:
    if math.isnan(value):
        return "n/a"
    return "inf" if math.isinf(value) else f"{value:.{digits}f}"


def to_markdown(result: dict[str, Any]) -> str:
    """A table: one row per case, Dice and HD95 (mm) per class, then the mean row."""
    names = list(result["classes"].values())
    header = "| case | " + " | ".join(f"{n} Dice | {n} HD95 (mm)" for n in names) + " |"
    rule = "|---|" + "---:|---:|" * len(names)
    rows = [header, rule]
    for case in result["cases"]:
        cells = [
            f"{_fmt(case['classes'][n]['dice'], 4)} | {_fmt(case['classes'][n]['hd95'], 2)}" for n in names
        ]
        rows.append(f"| {case['id']} | " + " | ".join(cells) + " |")
    cells = [
        f"**{_fmt(result['mean'][n]['dice'], 4)}** | **{_fmt(result['mean'][n]['hd95'], 2)}**" for n in names
    ]
    rows.append("| **mean** | " + " | ".join(cells) + " |")
    return "\n".join(rows) + f"\n\nHD95: {HD95_DEFINITION}. Mean HD95 over cases with a finite value.\n"


def write_json(result: dict[str, Any], path: str | Path) -> Path:
    return atomic_write_text(path, to_json_text(result))


def write_markdown(result: dict[str, Any], path: str | Path) -> Path:
    return atomic_write_text(path, to_markdown(result))
