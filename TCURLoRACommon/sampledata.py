"""Generated labeled cases for the Sample Data module ("TCURLoRA" category) and the self-tests.

The cases are made on the computer, not downloaded (tcurlora.synthetic: an MRI-like body with an "organ"
and a "lesion", bias field and noise; numpy and SimpleITK only, both part of Slicer), so trying the
extension needs no data and no network. They are for trying the workflow, not for judging accuracy.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import slicer

from TCURLoRACommon import scene

CATEGORY = "TCURLoRA"
SAMPLE_NAME = "TCURLoRAGeneratedCases"
CLASS_COLORS = [[0.90, 0.62, 0.00], [0.34, 0.71, 0.91]]


def load_generated_cases(count: int = 3, seed: int = 11, shape: tuple[int, int, int] = (32, 40, 40)):
    """`count` labeled cases in the scene, each volume + segmentation in a study of its own."""
    from tcurlora.synthetic import LABEL_NAMES, make_case

    rng = np.random.default_rng(seed)
    hierarchy = slicer.mrmlScene.GetSubjectHierarchyNode()
    loaded = []
    with tempfile.TemporaryDirectory(prefix="tcurlora-sample-") as folder:
        for index in range(count):
            case = make_case(rng, shape)
            name = f"Generated case {index + 1}"
            volume = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
            slicer.util.updateVolumeFromArray(volume, case.image)
            volume.SetSpacing(*case.spacing)
            volume.SetOrigin(*(-0.5 * s * n for s, n in zip(case.spacing, reversed(shape))))
            volume.CreateDefaultDisplayNodes()
            patient = hierarchy.CreateSubjectItem(hierarchy.GetSceneItemID(), name)
            study = hierarchy.CreateStudyItem(patient, "Generated MR")
            hierarchy.SetItemParent(scene.hierarchy_item(volume), study)
            label = slicer.modules.volumes.logic().CreateAndAddLabelVolume(volume, "__tcurlora_sample__")
            try:
                slicer.util.updateVolumeFromArray(label, case.label)
                path = scene.write_volume(label, Path(folder) / f"label{index}.nrrd")
            finally:
                slicer.mrmlScene.RemoveNode(label)
            segmentation = scene.import_labelmap(
                path, volume, list(LABEL_NAMES), CLASS_COLORS, None, f"{name} labels"
            )
            loaded.append((volume, segmentation))
    return loaded


def register_sample_data(icon: str | None = None) -> None:
    """Add "Generated labeled cases" to the Sample Data module (generated on click, nothing downloaded)."""
    import SampleData

    def generate(source) -> None:
        with slicer.util.tryWithErrorDisplay("Could not generate the sample cases.", waitCursor=True):
            cases = load_generated_cases()
            slicer.util.setSliceViewerLayers(background=cases[0][0], fit=True)

    SampleData.SampleDataLogic.registerCustomSampleDataSource(
        category=CATEGORY,
        sampleName=SAMPLE_NAME,
        uris=[],
        fileNames=[],
        nodeNames=[],
        customDownloader=generate,
        thumbnailFileName=icon,
    )
