"""The "predicts nothing" regression on real hippocampus MRI with the built-in base model.

Diagnosis (docs/benchmarks.md): at the base's 1.5 mm a 1 mm hippocampus keeps a third of its
voxels, and a new head learning at 5e-3 never leaves the all-background solution within a user's
run; every low-parameter method predicted no voxel. The defaults now adapt at the cases' own spacing
("auto") with a head learning rate of 5e-2. Both methods below must predict the structure on cases
they did not see. (The old settings' empty prediction is measured in docs/benchmarks.md, not re-run here: it
guards no current behaviour and cost minutes of the suite. Head-only also leaves the empty solution now, but too
slowly for a test: ~0.16 Dice after 600 steps.)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from tcurlora.data.cases import cases_from_decathlon
from tcurlora.jobs.cancel import CancelToken
from tcurlora.jobs.events import RecordingSink
from tcurlora.jobs.schema import FinetuneJob

pytestmark = pytest.mark.slow

TRAIN, HELD_OUT = slice(0, 6), slice(6, 8)


def adapt_and_predict(cases, tmp_path: Path, name: str, **settings) -> tuple[list[np.ndarray], dict]:
    """Fine-tune the built-in base on the training cases; predictions and adapter record on held-out ones."""
    from tcurlora.adapters.io import read_adapter_config
    from tcurlora.finetuning import run_finetune
    from tcurlora.infer import predict_volume
    from tcurlora.segmentation import load_segmentation_model

    job = FinetuneJob(
        base_model="unetr-small-acdc-brats",
        output=tmp_path / name,
        cases=cases[TRAIN],
        label_names=["Anterior", "Posterior"],
        checkpoint_every=0,
        device="cpu",
        seed=0,
        **settings,
    )
    run_finetune(job, RecordingSink(), CancelToken())
    model, spec, _, _ = load_segmentation_model(job.base_model, str(job.output))
    predictions = [predict_volume(model, case.images, spec, overlap=0.25)[0] for case in cases[HELD_OUT]]
    return predictions, read_adapter_config(job.output)


def dice(prediction: np.ndarray, reference: np.ndarray, label: int) -> float:
    p, r = prediction == label, reference == label
    return 2.0 * float((p & r).sum()) / max(1, int(p.sum() + r.sum()))


@pytest.fixture(scope="module")
def hippocampus_cases(hippocampus_dir):
    return cases_from_decathlon(hippocampus_dir)[:8]


# The anterior class appears around step 150-180 of this recipe (the loss drops there), so 150 steps were on the
# edge: the fp16 base predicted it on both held-out cases, the int8 base (weights within 1% of it) not yet on one.
# 200 steps clear that edge with either.
ITERATIONS = 200


def test_default_recipe_predicts_the_hippocampus(hippocampus_cases, tmp_path):
    predictions, record = adapt_and_predict(hippocampus_cases, tmp_path, "new", iterations=ITERATIONS)
    assert record["method"] == "tcur" and record["train_modules"] == ["encoder1", "decoder2"]
    assert record["preprocessing"]["spacing"] == [1.0, 1.0, 1.0]  # "auto": the cases' own 1 mm
    references = [sitk.GetArrayFromImage(sitk.ReadImage(str(c.label))) for c in hippocampus_cases[HELD_OUT]]
    scores = []
    for prediction, reference in zip(predictions, references, strict=True):
        assert prediction.shape == reference.shape
        for label in (1, 2):
            assert (prediction == label).sum() > 0, f"class {label} not predicted"  # the issue: empty output
            scores.append(dice(prediction, reference, label))
    # 200 steps are a fraction of the default 500 (mean Dice 0.81 on the test split): a start, not the end
    assert sum(scores) / len(scores) > 0.15, scores
