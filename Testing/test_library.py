"""The model library lists only complete adapters and names, installs and removes them safely."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from tcurlora import library
from tcurlora.errors import InputError
from tcurlora.filenames import ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TCURLORA_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def make_adapter(folder: Path, names: list[str], weights: bool = True, config: str | None = None) -> Path:
    folder.mkdir(parents=True)
    text = config or json.dumps(
        {
            "method": "tcur",
            "rank": 8,
            "label_names": names,
            "label_colors": [[1.0, 0.0, 0.0]] * len(names),
            "base_model_id": "tcurlora-unetr-small",
            "metrics": {"val_dice": {n: 0.8 for n in names}},
        }
    )
    (folder / ADAPTER_CONFIG_FILE).write_text(text)
    if weights:
        save_file({"core": torch.zeros(2, 2)}, str(folder / ADAPTER_WEIGHTS_FILE))
    return folder


def test_root_follows_environment(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert library.library_root() == home
    assert library.adapters_dir() == home / "adapters"
    monkeypatch.setenv("TCURLORA_HOME", "")
    assert library.library_root() == Path("~/.tcurlora").expanduser()


def test_lists_only_complete_adapters(home: Path) -> None:
    assert library.list_adapters() == []
    root = home / "adapters"
    make_adapter(root / "hippo", ["Anterior", "Posterior"])
    make_adapter(root / "no_weights", ["A"], weights=False)
    make_adapter(root / "bad_json", ["A"], config="{not json")
    make_adapter(root / ".staging-x-1234", ["A"])
    (root / "stray.txt").write_text("x")
    entries = library.list_adapters()
    assert [e.name for e in entries] == ["hippo"]
    entry = entries[0]
    assert entry.path == root / "hippo"
    assert entry.label_names == ["Anterior", "Posterior"]
    assert entry.label_colors == [[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]]
    assert entry.metrics == {"val_dice": {"Anterior": 0.8, "Posterior": 0.8}}
    assert (entry.base_model_id, entry.method, entry.rank) == ("tcurlora-unetr-small", "tcur", 8)


def test_read_adapter_names_the_missing_file(tmp_path: Path) -> None:
    folder = make_adapter(tmp_path / "a", ["A"], weights=False)
    with pytest.raises(InputError, match="adapter.safetensors is missing") as info:
        library.read_adapter(folder)
    assert info.value.path == str(folder)
    broken = make_adapter(tmp_path / "b", ["A"], config="[1, 2]")
    with pytest.raises(InputError, match="not a JSON object"):
        library.read_adapter(broken)


def test_unique_path_is_safe_and_free(home: Path) -> None:
    root = home / "adapters"
    assert library.unique_adapter_path("my hippo/v1") == root / "my_hippo_v1"
    assert library.unique_adapter_path("../..") == root / "adapter"
    make_adapter(root / "hippo", ["A"])
    (root / "hippo_2").mkdir()
    assert library.unique_adapter_path("hippo") == root / "hippo_3"


def test_install_moves_staged_folder_in_one_piece(home: Path) -> None:
    staged = make_adapter(library.staging_path("hippo"), ["A", "B"])
    assert library.list_adapters() == []
    make_adapter(home / "adapters" / "hippo", ["X"])
    entry = library.install_adapter(staged, "hippo")
    assert entry.name == "hippo_2" and entry.label_names == ["A", "B"]
    assert not staged.exists()
    assert [e.name for e in library.list_adapters()] == ["hippo", "hippo_2"]


def test_install_rejects_incomplete_folder(home: Path, tmp_path: Path) -> None:
    staged = make_adapter(tmp_path / "partial", ["A"], weights=False)
    with pytest.raises(InputError, match="missing"):
        library.install_adapter(staged, "partial")
    assert not (home / "adapters" / "partial").exists()


def test_remove_adapter(home: Path) -> None:
    make_adapter(home / "adapters" / "hippo", ["A"])
    library.remove_adapter("hippo")
    assert library.list_adapters() == []
    assert list((home / "adapters").iterdir()) == []
    with pytest.raises(InputError, match="no such adapter"):
        library.remove_adapter("hippo")
    for bad in ("../etc", "", ".staging-x"):
        with pytest.raises(InputError, match="not an adapter name"):
            library.remove_adapter(bad)
