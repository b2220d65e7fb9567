"""An adapter names its base model by id (`name@version` for a bundle, the model id of a library
model); the Slicer side finds the folder to load, with the same id rule as the backend's loaders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tcurlora.errors import InputError
from tcurlora.library import library_root
from TCURLoRACommon.models import (
    base_model_choices,
    check_model_folder,
    model_id_of_folder,
    remember_model_folder,
    resolve_base_model,
)


@pytest.fixture(scope="module")
def tiny_base():
    from tcurlora.models.registry import load_base_model

    return load_base_model("preset:unetr-tiny")


def zoo_bundle(folder: Path, name: str) -> Path:
    """An exported bundle made to look like one from the MONAI model zoo (no id of ours in its metadata)."""
    meta_path = folder / "configs" / "metadata.json"
    meta = json.loads(meta_path.read_text())
    del meta["tcurlora_model_id"]
    meta["name"] = name
    meta_path.write_text(json.dumps(meta))
    return folder


def test_bundle_and_model_folder_ids_agree_with_the_backend(tiny_base, tmp_path: Path, monkeypatch) -> None:
    from tcurlora.models.bundle import export_bundle, load_bundle
    from tcurlora.models.registry import load_base_model, save_model_folder

    monkeypatch.setenv("TCURLORA_HOME", str(tmp_path / "home"))
    models = library_root() / "models"
    bundle = zoo_bundle(export_bundle(tiny_base, models / "spleen_bundle", version="1.2.0"), "Spleen CT")
    loaded = load_bundle(bundle)
    assert loaded.model_id == "Spleen CT@1.2.0" == model_id_of_folder(bundle)
    assert resolve_base_model(loaded.model_id) == str(bundle)

    folder = save_model_folder(models / "my_model", tiny_base.model, tiny_base.spec, model_id="my-base-v2")
    assert load_base_model(folder).model_id == "my-base-v2" == model_id_of_folder(folder)
    assert resolve_base_model("my-base-v2") == str(folder)

    elsewhere = zoo_bundle(export_bundle(tiny_base, tmp_path / "added" / "other", version="3"), "Other")
    other_id = load_bundle(elsewhere).model_id
    assert other_id == "Other@3"
    with pytest.raises(InputError, match="neither built in nor in the model library"):
        resolve_base_model(other_id)
    assert resolve_base_model(other_id, extra=[str(elsewhere)]) == str(elsewhere)
    # "Add MONAI bundle folder..." remembers the folder in the library: the Segmenter finds it later
    assert remember_model_folder(elsewhere) == elsewhere.resolve()
    assert remember_model_folder(elsewhere) == elsewhere.resolve()  # once only
    assert resolve_base_model(other_id) == str(elsewhere.resolve())
    assert [r for _, r in base_model_choices()].count(str(elsewhere.resolve())) == 1
    assert ("other (folder)", str(elsewhere.resolve())) in base_model_choices()
    with pytest.raises(InputError, match="not a base model folder"):
        remember_model_folder(tmp_path)


def test_builtin_and_errors(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("TCURLORA_HOME", str(tmp_path / "home"))
    assert resolve_base_model("unetr-small-acdc-brats") == "unetr-small-acdc-brats"
    with pytest.raises(InputError, match="does not name its base model"):
        resolve_base_model(None)
    with pytest.raises(InputError, match=str(tmp_path / "home" / "models")):
        resolve_base_model("zoo_model@0.5")
    with pytest.raises(InputError, match="not a base model folder"):
        check_model_folder(tmp_path)
