"""User errors exit 2 with a message naming the file and the value, before any work; messages say
what they mean; segment writes the names the job schema promises."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from safetensors.torch import save_file
from trust_testing import TINY, hippo_case, kinds, run, tiny_job, write_job

from tcurlora.adapter_integrity import seal
from tcurlora.filenames import ADAPTER_CONFIG_FILE, BUNDLE_SAFETENSORS_FILE
from tcurlora.jobs.schema import SegmentJob


def finetune_job(capsys, tmp_path: Path, job: dict) -> tuple[int, list[dict], str]:
    code, events, _, err = run(capsys, "finetune", "--job", write_job(tmp_path / "job.json", job))
    return code, events, err


def assert_user_error(code: int, events: list[dict], *parts: str, path: Path | None = None) -> None:
    assert code == 2, events
    assert events and events[-1]["event"] == "error" and events[-1]["exit_code"] == 2, events
    assert "progress" not in kinds(events), "must fail before the first iteration"
    for part in parts:
        assert part in events[-1]["message"], events[-1]
    if path is not None:
        assert events[-1]["path"] == str(path), events[-1]


@pytest.mark.parametrize(
    ("change", "parts"),
    [
        ({"seed": 2**63}, ("key 'seed'", "at most 2^63 - 1")),
        ({"alpha": -1e300}, ("key 'alpha'", "must be > 0")),
        ({"alpha": 0}, ("key 'alpha'", "must be > 0")),
        ({"label_names": ["a", "a"]}, ("key 'label_names[1]'", "duplicate class name 'a'")),
        ({"label_names": ["a", " "]}, ("key 'label_names[1]'", "must not be empty")),
    ],
    ids=["seed", "alpha-huge", "alpha-zero", "duplicate-labels", "empty-label"],
)
def test_bad_values_in_a_job_file_exit_2_naming_the_key(tmp_path, capsys, hippocampus_dir, change, parts):
    code, events, _ = finetune_job(capsys, tmp_path, tiny_job(hippocampus_dir, tmp_path / "a", **change))
    assert_user_error(code, events, *parts, path=tmp_path / "job.json")


@pytest.mark.parametrize(
    ("label_map", "part"),
    [
        ({"1": 1.9}, "got float 1.9"),
        ({"1": True}, "got bool True"),
        ({"x": 1}, "got 'x'"),
        ({"1": -1}, "got int -1"),
    ],
)
def test_label_map_values_must_be_whole_numbers(tmp_path, capsys, hippocampus_dir, label_map, part):
    case = {**hippo_case(hippocampus_dir), "label_map": label_map}
    code, events, _ = finetune_job(capsys, tmp_path, tiny_job(hippocampus_dir, tmp_path / "a", cases=[case]))
    assert_user_error(code, events, "key 'cases[0].label_map[", part, path=tmp_path / "job.json")


def test_a_label_map_fault_is_blamed_on_the_label_map(tmp_path, capsys, hippocampus_dir):
    case = {**hippo_case(hippocampus_dir), "label_map": {"1": 1, "2": 5}}
    code, events, _ = finetune_job(capsys, tmp_path, tiny_job(hippocampus_dir, tmp_path / "a", cases=[case]))
    assert_user_error(
        code, events, "case 'hippocampus_001': label_map", "maps to class 5", "classes are 0..2"
    )
    assert events[-1]["path"] != case["label"]


def test_seed_flag_beyond_64_bits_and_a_non_utf8_job_file(tmp_path, capsys, hippocampus_dir):
    case = hippo_case(hippocampus_dir)
    code, events, out, err = run(
        capsys,
        "finetune",
        "--base-model",
        TINY,
        "--case",
        case["image"],
        case["label"],
        "--seed",
        str(2**64),
        "-o",
        tmp_path / "a",
        "--events",
    )
    assert_user_error(code, events, "key 'seed'")
    job = tmp_path / "latin1.json"
    job.write_bytes(
        json.dumps(
            tiny_job(hippocampus_dir, tmp_path / "a", label_names=["Ä", "B"]), ensure_ascii=False
        ).encode("latin-1")
    )
    code, events, out, err = run(capsys, "finetune", "--job", job)
    assert code == 2 and "Traceback" not in err
    assert events == [events[-1]] and events[-1]["kind"] == "config_error", "an error event on the protocol"
    assert "not UTF-8 text" in events[-1]["message"] and events[-1]["path"] == str(job)


def test_rank_above_every_layer_and_val_fraction_holding_out_nothing(tmp_path, capsys, hippocampus_dir):
    code, events, _ = finetune_job(capsys, tmp_path, tiny_job(hippocampus_dir, tmp_path / "a", rank=100_000))
    assert_user_error(code, events, "key 'rank': 100000 is larger than any adapted layer allows")
    code, events, _ = finetune_job(
        capsys, tmp_path, tiny_job(hippocampus_dir, tmp_path / "a", val_fraction=0.4)
    )
    assert_user_error(code, events, "key 'val_fraction'", "holds out no case", path=tmp_path / "job.json")
    assert not (tmp_path / "a").exists()


def test_a_rank_clipped_on_small_layers_is_recorded(tiny_adapter):
    record = json.loads((tiny_adapter / ADAPTER_CONFIG_FILE).read_text())
    assert record["rank"] == 4
    assert record["effective_ranks"] and all(0 < r < 4 for r in record["effective_ranks"].values())


def test_human_errors_go_to_stderr_for_every_command(tmp_path, capsys, hippocampus_dir):
    missing = tmp_path / "missing.nii.gz"
    for argv in (
        ["finetune", "--base-model", TINY, "--case", missing, missing, "-o", tmp_path / "a"],
        ["segment", missing, "--base-model", TINY, "-o", tmp_path / "s.nii.gz"],
        ["evaluate", missing, missing],
        ["info", tmp_path / "nothing"],
    ):
        code, _, out, err = run(capsys, *argv)
        assert code == 2 and "error" in err and str(missing.name if argv[0] != "info" else "nothing") in err
        assert "error" not in out, argv[0]


def nan_copy(image: str, path: Path) -> Path:
    volume = sitk.Cast(sitk.ReadImage(image), sitk.sitkFloat32)
    array = sitk.GetArrayFromImage(volume)
    array[5, 5, 5] = np.nan
    bad = sitk.GetImageFromArray(array)
    bad.CopyInformation(volume)
    sitk.WriteImage(bad, str(path))
    return path


def test_segment_refuses_what_finetune_refuses_and_odd_output_names(tmp_path, capsys, hippocampus_dir):
    nan = nan_copy(hippo_case(hippocampus_dir)["image"], tmp_path / "nan.nii.gz")
    code, events, _, _ = run(
        capsys, "segment", nan, "--base-model", TINY, "-o", tmp_path / "s.nii.gz", "--events"
    )
    assert_user_error(code, events, "image has 1 NaN or infinite voxels", path=nan)
    assert kinds(events) == ["error"] and not (tmp_path / "s.nii.gz").exists()
    image = hippo_case(hippocampus_dir)["image"]
    code, events, _, _ = run(
        capsys, "segment", image, "--base-model", TINY, "-o", tmp_path / "x.txt", "--events"
    )
    assert_user_error(code, events, "'.txt', which is not a label format")
    code, events, _, _ = run(
        capsys, "segment", image, image, "--base-model", TINY, "-o", tmp_path / "y.nii.gz", "--events"
    )
    assert_user_error(code, events, "names one image file but there are 2 inputs")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nan.nii.gz"], "no folder made"


def two_channel_bundle(folder: Path) -> Path:
    from monai.networks.nets import UNet

    network = {
        "_target_": "UNet",
        "spatial_dims": 3,
        "in_channels": 2,
        "out_channels": 3,
        "channels": [4, 8],
        "strides": [2],
        "num_res_units": 0,
    }
    (folder / "configs").mkdir(parents=True)
    (folder / "models").mkdir()
    meta = {"name": "two", "network_data_format": {"inputs": {"image": {"spatial_shape": [32, 32, 32]}}}}
    (folder / "configs" / "inference.json").write_text(json.dumps({"network_def": network}))
    (folder / "configs" / "metadata.json").write_text(json.dumps(meta))
    params = {k: v for k, v in network.items() if k != "_target_"}
    torch.manual_seed(0)
    save_file(
        {k: v.contiguous() for k, v in UNet(**params).state_dict().items()},
        str(folder / BUNDLE_SAFETENSORS_FILE),
    )
    return folder


def test_segment_writes_the_names_the_job_schema_promises(tmp_path, capsys, hippocampus_dir):
    image = hippo_case(hippocampus_dir)["image"]
    inputs = tmp_path / "in"
    inputs.mkdir()
    for channel in ("0000", "0001"):
        shutil.copy(image, inputs / f"c2_{channel}.nii.gz")
    bundle = two_channel_bundle(tmp_path / "bundle")
    out = tmp_path / "out"
    code, events, _, _ = run(
        capsys, "segment", inputs, "--channels", "2", "--base-model", bundle, "-o", out, "--events"
    )
    assert code == 0, events[-1]
    promised = SegmentJob.from_dict(
        {
            "command": "segment",
            "base_model": str(bundle),
            "inputs": [[str(inputs / "c2_0000.nii.gz"), str(inputs / "c2_0001.nii.gz")]],
            "output_dir": str(out),
        },
        tmp_path,
    )
    assert promised.output_paths() == [out / "c2_seg.nii.gz"]
    assert events[-1]["outputs"]["segmentations"] == [str(out / "c2_seg.nii.gz")]
    assert sorted(p.name for p in out.iterdir()) == ["c2_seg.nii.gz"]


def changed_image(image: str, path: Path, change) -> Path:
    """A copy of `image` whose voxel array (float64) is `change(array)`; the grid is kept."""
    volume = sitk.ReadImage(image)
    changed = sitk.GetImageFromArray(change(sitk.GetArrayFromImage(volume).astype(np.float64)))
    changed.CopyInformation(volume)
    sitk.WriteImage(changed, str(path))
    return path


def test_segment_refuses_complex_overflowing_and_absurdly_spaced_images(tmp_path, capsys, hippocampus_dir):
    image = hippo_case(hippocampus_dir)["image"]
    complex_image = changed_image(
        image, tmp_path / "complex.nii.gz", lambda a: (a + 1j * a).astype(np.complex64)
    )
    huge = changed_image(image, tmp_path / "huge.nii.gz", lambda a: a * 1e300)
    tiny_spacing = changed_image(image, tmp_path / "tiny.mha", lambda a: a)
    volume = sitk.ReadImage(str(tiny_spacing))
    volume.SetSpacing((1e-300, 1.0, 1.0))
    sitk.WriteImage(volume, str(tiny_spacing))
    for path, part in [
        (complex_image, "image has complex voxels (complex of 32-bit float)"),
        (huge, "beyond the float32 range"),
        (tiny_spacing, "image spacing [1e-300, 1.0, 1.0] mm is outside 0.01..100 mm"),
    ]:
        output = tmp_path / "seg.nii.gz"
        code, events, _, _ = run(capsys, "segment", path, "--base-model", TINY, "-o", output, "--events")
        assert_user_error(code, events, part, path=path)
        assert not output.exists()


def test_finetune_refuses_a_constant_image_naming_it(tmp_path, capsys, hippocampus_dir):
    blank = changed_image(hippo_case(hippocampus_dir)["image"], tmp_path / "blank.nii.gz", np.zeros_like)
    case = {**hippo_case(hippocampus_dir), "image": str(blank)}
    code, events, _ = finetune_job(capsys, tmp_path, tiny_job(hippocampus_dir, tmp_path / "a", cases=[case]))
    assert_user_error(code, events, "image is constant (every voxel is 0)", path=blank)
    assert not (tmp_path / "a").exists()


def test_absurd_working_spacings_are_refused(tmp_path, capsys, hippocampus_dir, tiny_adapter):
    for spacing in ([1e-300, 1, 1], [1, 1, 1e6]):
        code, events, _ = finetune_job(
            capsys, tmp_path, tiny_job(hippocampus_dir, tmp_path / "a", spacing=spacing)
        )
        assert_user_error(
            code, events, "key 'spacing'", "is outside 0.01..100 mm", path=tmp_path / "job.json"
        )
    crafted = shutil.copytree(tiny_adapter, tmp_path / "crafted")
    record = json.loads((crafted / ADAPTER_CONFIG_FILE).read_text())
    record["preprocessing"]["spacing"] = [1e-300, 1.0, 1.0]
    (crafted / ADAPTER_CONFIG_FILE).write_text(json.dumps(seal(record)))
    output = tmp_path / "seg.nii.gz"
    code, events, _, _ = run(
        capsys,
        "segment",
        hippo_case(hippocampus_dir)["image"],
        "--base-model",
        TINY,
        "--adapter",
        crafted,
        "-o",
        output,
        "--events",
    )
    assert_user_error(
        code,
        events,
        "working spacing: spacing [1e-300, 1.0, 1.0] mm is outside 0.01..100 mm",
        path=crafted / ADAPTER_CONFIG_FILE,
    )
    assert not output.exists()
