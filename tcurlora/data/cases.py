"""Labeled cases: from a Decathlon folder (dataset.json) or from job-file entries."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tcurlora.errors import InputError
from tcurlora.filenames import case_id_from_path
from tcurlora.jsonio import read_json_object


@dataclass
class Case:
    """One labeled (or unlabeled) volume: one image file per channel, or one 4D file.

    `label_map` optionally maps label values in the file to class indices (unlisted values -> 0).
    """

    id: str
    images: list[Path]
    label: Path | None
    label_map: dict[int, int] | None = None


def _resolve(base_dir: Path, value: str, where: str, source: Path) -> Path:
    if not isinstance(value, str) or not value:
        raise InputError(f"{where}: expected a file path, got {value!r}", source)
    path = Path(value).expanduser()
    return path if path.is_absolute() else (base_dir / path).resolve()


def _image_list(base_dir: Path, value: Any, where: str, source: Path) -> list[Path]:
    values = value if isinstance(value, list) else [value]
    if not values:
        raise InputError(f"{where}: empty image list", source)
    return [_resolve(base_dir, item, where, source) for item in values]


def _case_id(images: list[Path], label: Path | None) -> str:
    from tcurlora.data.io import file_stem  # lazily: io needs nibabel, the Slicer panels import this module

    if label is not None:
        return file_stem(label)
    stem = file_stem(images[0])  # InputError for an unsupported file type
    return case_id_from_path(images[0]) if len(images) > 1 else stem


def _select(
    cases: list[Case], num_cases: int | None, case_ids: Sequence[str] | None, source: Path
) -> list[Case]:
    if case_ids is not None:
        by_id = {case.id: case for case in cases}
        missing = [case_id for case_id in case_ids if case_id not in by_id]
        if missing:
            raise InputError(f"case ids not found: {', '.join(missing)}", source)
        cases = [by_id[case_id] for case_id in case_ids]
    if num_cases is not None:
        if num_cases < 1:
            raise InputError(f"num_cases must be at least 1, got {num_cases}", source)
        cases = cases[:num_cases]
    if not cases:
        raise InputError("no cases found", source)
    return cases


def _dataset_json(folder: Path) -> dict[str, Any]:
    path = folder / "dataset.json"
    if not path.is_file():
        raise InputError("not a Decathlon folder: dataset.json not found", path)
    return read_json_object(path, "dataset.json")


def cases_from_decathlon(
    folder: str | Path, *, num_cases: int | None = None, case_ids: Sequence[str] | None = None
) -> list[Case]:
    """Labeled cases of a Decathlon folder's `training` list, in file order.

    An entry's "image" is one file (3D, or 4D with channels on the last axis) or a list of
    per-channel files (`_0000`, `_0001`, ...). Paths are relative to the folder.
    """
    folder = Path(folder).expanduser().resolve()
    data = _dataset_json(folder)
    source = folder / "dataset.json"
    entries = data.get("training")
    if not isinstance(entries, list):
        raise InputError("dataset.json has no 'training' list", source)
    cases = []
    for index, entry in enumerate(entries):
        cases.append(_case_from_entry(entry, folder, f"training[{index}]", source))
    return _select(cases, num_cases, case_ids, source)


def _case_from_entry(entry: Any, base_dir: Path, where: str, source: Path) -> Case:
    """One {"image", "label", optional "id" and "label_map"} entry, paths relative to base_dir."""
    if not isinstance(entry, Mapping) or "image" not in entry:
        raise InputError(f"{where}: expected an object with 'image' and 'label'", source)
    images = _image_list(base_dir, entry["image"], where, source)
    label = _resolve(base_dir, entry["label"], where, source) if entry.get("label") else None
    raw_map = entry.get("label_map")
    label_map = {int(k): int(v) for k, v in raw_map.items()} if isinstance(raw_map, Mapping) else None
    case_id = str(entry["id"]) if entry.get("id") else _case_id(images, label)
    return Case(id=case_id, images=images, label=label, label_map=label_map)


def dataset_label_names(folder: str | Path) -> list[str]:
    """Names of classes 1..N from dataset.json `labels` (background excluded)."""
    folder = Path(folder).expanduser().resolve()
    data = _dataset_json(folder)
    source = folder / "dataset.json"
    labels = data.get("labels")
    if not isinstance(labels, Mapping) or not labels:
        raise InputError("dataset.json has no 'labels' object", source)
    try:
        by_value = {int(key): str(name) for key, name in labels.items()}
    except ValueError as error:
        raise InputError(f"dataset.json 'labels' keys must be integers: {error}", source) from error
    values = sorted(value for value in by_value if value != 0)
    if values != list(range(1, len(values) + 1)):
        raise InputError(
            f"dataset.json label values must be 0..N without gaps, got {sorted(by_value)}", source
        )
    return [by_value[value] for value in values]


def cases_from_list(items: Iterable[Mapping[str, Any]], base_dir: str | Path) -> list[Case]:
    """Cases from job-file entries {"id", "image": str | [str, ...], "label"}; paths relative to base_dir."""
    base_dir = Path(base_dir).expanduser().resolve()
    cases = []
    for index, item in enumerate(items):
        cases.append(_case_from_entry(item, base_dir, f"cases[{index}]", base_dir))
    if not cases:
        raise InputError("the case list is empty", base_dir)
    ids = [case.id for case in cases]
    duplicates = sorted({case_id for case_id in ids if ids.count(case_id) > 1})
    if duplicates:
        raise InputError(f"duplicate case ids: {', '.join(duplicates)}", base_dir)
    return cases
