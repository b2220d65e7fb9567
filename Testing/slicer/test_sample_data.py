"""Generated sample cases (Sample Data module, "TCURLoRA"): labeled, each in its own study, ready to train."""

from __future__ import annotations

import numpy as np
import slicer
from TCURFineTuneLib.cases import class_names, pair_by_study

from TCURLoRACommon import scene
from TCURLoRACommon.sampledata import load_generated_cases


def test_generated_cases_are_ready_to_train(mrml) -> None:
    cases = load_generated_cases(3, seed=5)
    assert len(cases) == 3
    pairs = pair_by_study()
    assert [(p.volume, p.segmentation) for p in pairs] == cases
    assert class_names(pairs) == ["organ", "lesion"]
    for volume, segmentation in cases:
        image = slicer.util.arrayFromVolume(volume)
        assert image.shape == (32, 40, 40) and image.max() > 50
        np.testing.assert_allclose(volume.GetSpacing(), (1.5, 1.5, 1.5))
        labels = scene.labelmap_array(segmentation, volume, ["organ", "lesion"])
        assert set(np.unique(labels)) == {0, 1, 2}
        organ = image[labels == 1].mean()
        assert organ > image[labels == 2].mean() and organ > image[(labels == 0) & (image > 0)].mean()
        assert scene.study_of(segmentation) == scene.study_of(volume) != scene.study_of(cases[0][0]) or (
            volume is cases[0][0]
        )
    assert not slicer.util.getNodesByClass("vtkMRMLLabelMapVolumeNode"), "temporary labelmaps left behind"
