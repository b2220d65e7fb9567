"""`tcurlora suggest`: the uncertainty scores, and the command on real hippocampus MRI with the built-in base."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from tcurlora.cli import build_parser, main
from tcurlora.filenames import JOB_SCHEMA, RANKING_SCHEMA
from tcurlora.jobs.event_schema import parse_event_line
from tcurlora.suggest import flip_disagreement, rank, score_probabilities

BASE = "unetr-small-acdc-brats"


def probabilities(*voxels: list[float]) -> torch.Tensor:
    """(K, n, 1, 1) from per-voxel class distributions."""
    return torch.tensor(voxels, dtype=torch.float32).T.reshape(len(voxels[0]), len(voxels), 1, 1)


def test_entropy_is_zero_when_certain_one_when_uniform_and_ignores_background():
    certain = score_probabilities(probabilities([0, 1, 0], [1, 0, 0], [1, 0, 0]))
    assert certain["entropy"] == pytest.approx(0.0, abs=1e-6) and certain["foreground_voxels"] == 1
    uniform_fg = score_probabilities(probabilities([1 / 3, 1 / 3, 1 / 3], [0.98, 0.01, 0.01]))
    assert uniform_fg["entropy"] == pytest.approx(1.0, abs=1e-6)  # the background voxel does not dilute it
    half = score_probabilities(probabilities([0.0, 0.5, 0.5], [1, 0, 0]))
    assert half["entropy"] == pytest.approx(math.log(2) / math.log(3), abs=1e-6)


def test_no_predicted_foreground_scores_one_minus_the_highest_foreground_probability():
    faint = score_probabilities(probabilities([0.7, 0.3, 0.0], [0.9, 0.1, 0.0]))
    nothing = score_probabilities(probabilities([1.0, 0.0, 0.0], [0.99, 0.01, 0.0]))
    assert faint["foreground_voxels"] == nothing["foreground_voxels"] == 0
    assert faint["entropy"] == pytest.approx(0.7) and nothing["entropy"] == pytest.approx(0.99)
    assert nothing["entropy"] > faint["entropy"]  # the less the model sees, the more it should be labeled


def test_flip_disagreement_zero_for_the_same_prediction_one_for_disjoint_foregrounds():
    p = probabilities([0, 1], [1, 0], [1, 0])
    assert flip_disagreement(p, [p.clone(), p.clone()]) == pytest.approx(0.0)
    moved = probabilities([1, 0], [1, 0], [0, 1])
    assert flip_disagreement(p, [moved]) == pytest.approx(1.0)
    assert flip_disagreement(p, [p, moved]) == pytest.approx(0.5)


def test_rank_sorts_most_uncertain_first_and_keeps_input_order_on_ties():
    entries = [
        {"volume": "a", "entropy": 0.2},
        {"volume": "b", "entropy": 0.9},
        {"volume": "c", "entropy": 0.2},
    ]
    ranked = rank(entries, "entropy")
    assert [e["volume"] for e in ranked] == ["b", "a", "c"]
    assert [e["rank"] for e in ranked] == [1, 2, 3] and [e["score"] for e in ranked] == [0.9, 0.2, 0.2]


@pytest.fixture(scope="module")
def volumes(hippocampus_dir, tmp_path_factory) -> list[Path]:
    """Two real hippocampus volumes and a copy of the first with NaN voxels (for the error test)."""
    folder = tmp_path_factory.mktemp("suggest")
    images = [hippocampus_dir / "imagesTr" / f"hippocampus_{i:03d}.nii.gz" for i in (1, 3)]
    source = sitk.ReadImage(str(images[0]))
    array = sitk.GetArrayFromImage(source).astype(np.float32)
    array[0, 0, :3] = np.nan
    broken = sitk.GetImageFromArray(array)
    broken.CopyInformation(source)
    sitk.WriteImage(broken, str(folder / "nan.nii.gz"))
    return [*images, folder / "nan.nii.gz"]


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    stream = io.StringIO()
    args = build_parser().parse_args(argv)
    from tcurlora.commands.suggest import main as suggest_main

    code = suggest_main(args, stream=stream)
    return code, stream.getvalue(), capsys.readouterr().err


def test_json_ranking_on_real_volumes(volumes, capsys):
    code, out, err = run(
        [
            "suggest",
            str(volumes[0]),
            str(volumes[1]),
            "--base-model",
            BASE,
            "--json",
            "--threads",
            "1",
            "--device",
            "cpu",
        ],
        capsys,
    )
    assert code == 0, err
    document = json.loads(out)  # stdout holds the JSON document alone; progress went to stderr
    assert document["schema"] == RANKING_SCHEMA and document["score"] == "entropy"
    ranking = document["ranking"]
    assert sorted(e["volume"] for e in ranking) == sorted(str(v) for v in volumes[:2])
    assert [e["rank"] for e in ranking] == [1, 2]
    scores = [e["score"] for e in ranking]
    assert scores == sorted(scores, reverse=True) and scores[0] > scores[1]
    for entry in ranking:
        assert set(entry) == {"rank", "score", "volume", "entropy", "foreground_voxels", "max_foreground"}
        assert entry["score"] == entry["entropy"] and 0.0 < entry["score"] <= 1.0
        assert entry["foreground_voxels"] > 0  # the base predicts some of its classes on these MRIs
    assert "scored hippocampus_001.nii.gz" in err

    code, table, _ = run(
        [
            "suggest",
            str(volumes[1]),
            str(volumes[0]),
            "--base-model",
            BASE,
            "--top",
            "1",
            "--threads",
            "1",
            "--device",
            "cpu",
        ],
        capsys,
    )
    lines = table.strip().splitlines()
    assert code == 0 and len(lines) == 2 and lines[0].split()[:2] == ["rank", "entropy"]
    assert lines[1].split()[0] == "1" and lines[1].endswith(
        ranking[0]["volume"]
    )  # the same order, any input order
    assert float(lines[1].split()[1]) == pytest.approx(scores[0], abs=1e-4)


def test_job_file_runs_through_the_worker_protocol(volumes, tmp_path, capsys):
    job = tmp_path / "job.json"
    job.write_text(
        json.dumps(
            {
                "schema": JOB_SCHEMA,
                "command": "suggest",
                "base_model": BASE,
                "inputs": [str(volumes[0])],
                "score": "flips",
                "device": "cpu",
                "threads": 1,
            }
        )
    )
    code, out, _ = run(["suggest", "--job", str(job)], capsys)
    events = [parse_event_line(line) for line in out.splitlines()]  # each one validated against the schema
    assert code == 0 and [e["event"] for e in events] == ["started", "log", "progress", "done"]
    assert events[0]["command"] == "suggest"
    (entry,) = events[-1]["outputs"]["ranking"]
    assert entry["volume"] == str(volumes[0]) and entry["score"] == entry["flips"]
    assert 0.0 <= entry["flips"] <= 1.0 and "entropy" in entry


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["MISSING"], "input volume not found"),
        (["NAN"], "image has 3 NaN or infinite voxels"),
        (["GOOD", "--top", "0"], "key 'top': must be >= 1"),
        (["GOOD", "--score", "votes"], "invalid choice"),
    ],
)
def test_bad_inputs_exit_2_naming_the_file(volumes, tmp_path, capsys, argv, message):
    names = {"MISSING": str(tmp_path / "missing.nii.gz"), "NAN": str(volumes[2]), "GOOD": str(volumes[0])}
    full = ["suggest", *[names.get(a, a) for a in argv], "--base-model", BASE, "--device", "cpu"]
    if "--score" in argv:  # argparse refuses a choice itself, with exit 2
        with pytest.raises(SystemExit) as exit_info:
            build_parser().parse_args(full)
        assert exit_info.value.code == 2 and message in capsys.readouterr().err
        return
    code = main(full)
    err = capsys.readouterr().err
    assert code == 2 and message in err, err
    if argv[0] in ("MISSING", "NAN"):
        assert names[argv[0]] in err


def test_json_cannot_be_combined_with_events(volumes, capsys):
    code = main(["suggest", str(volumes[0]), "--base-model", BASE, "--json", "--events"])
    assert code == 2 and "--json cannot be combined with --events" in capsys.readouterr().err
