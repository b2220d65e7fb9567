"""TCURSegmenter: segment volumes with an adapted model from the TCURLoRA model library.

Qt widgets and wiring only; the work lives in TCURSegmenterLib and TCURLoRACommon (Qt-free, tested headless).
"""

from __future__ import annotations

from typing import Annotated

import qt
import slicer
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.i18n import tr as _
from slicer.parameterNodeWrapper import Choice, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

POLL_MS = 200


class TCURSegmenter(ScriptedLoadableModule):
    def __init__(self, parent) -> None:
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("TCUR Segmenter")
        self.parent.categories = [_("Segmentation")]
        self.parent.dependencies = []
        self.parent.contributors = ["The TCURLoRA developers"]
        self.parent.helpText = _(
            "Segment a volume (or every volume of the scene) with an adapter trained in TCUR Fine-Tune. "
            "The work runs in a background process; Apply turns into Cancel."
        )
        self.parent.acknowledgementText = _("Method: He et al., tCURLoRA, MICCAI 2025 (arXiv 2501.02227).")


@parameterNodeWrapper
class TCURSegmenterParameterNode:
    inputVolume: vtkMRMLScalarVolumeNode
    allVolumes: bool = False
    adapterPath: str = ""
    outputSegmentation: vtkMRMLSegmentationNode
    device: Annotated[str, Choice(["auto", "cuda", "cpu"])] = "auto"


class TCURSegmenterWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self.run = None
        self.adapters = []
        self.timer = qt.QTimer()
        self.timer.setInterval(POLL_MS)
        self.timer.timeout.connect(self.onTimer)

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/TCURSegmenter.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = TCURSegmenterLogic()
        self.ui.adapterComboBox.currentIndexChanged.connect(self.onAdapterChanged)
        self.ui.refreshButton.clicked.connect(self.refreshAdapters)
        self.ui.removeAdapterButton.clicked.connect(self.onRemoveAdapter)
        self.ui.applyButton.clicked.connect(self.onApplyOrCancel)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.initializeParameterNode()
        self.refreshAdapters()

    def cleanup(self) -> None:
        if self.run is not None and not self.run.finished:
            self.run.cancel()
        self.timer.stop()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()
        self.refreshAdapters()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None

    def onSceneStartClose(self, caller, event) -> None:
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            self._parameterNode.inputVolume = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")

    def setParameterNode(self, inputParameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)

    def refreshAdapters(self) -> None:
        from tcurlora import library

        self.adapters = library.list_adapters()
        wanted = self._parameterNode.adapterPath if self._parameterNode else ""
        combo = self.ui.adapterComboBox
        combo.blockSignals(True)
        combo.clear()
        for entry in self.adapters:
            combo.addItem(entry.name, str(entry.path))
        combo.setCurrentIndex(max(combo.findData(wanted), 0) if self.adapters else -1)
        combo.blockSignals(False)
        self.onAdapterChanged(combo.currentIndex)

    def onAdapterChanged(self, index: int) -> None:
        from TCURSegmenterLib.logic import adapter_summary

        if index < 0 or index >= len(self.adapters):
            self.ui.adapterInfoLabel.text = _(
                "No adapter in the model library yet: train one in TCUR Fine-Tune."
            )
            self.ui.applyButton.enabled = False
            return
        entry = self.adapters[index]
        self.ui.adapterInfoLabel.text = adapter_summary(entry)
        self.ui.applyButton.enabled = True
        if self._parameterNode:
            self._parameterNode.adapterPath = str(entry.path)

    def onRemoveAdapter(self) -> None:
        from tcurlora import library

        index = self.ui.adapterComboBox.currentIndex
        if index < 0 or index >= len(self.adapters):
            return
        entry = self.adapters[index]
        if slicer.util.confirmOkCancelDisplay(
            _("Delete adapter '{name}' ({path})?").format(name=entry.name, path=entry.path)
        ):
            library.remove_adapter(entry.name)
            self.refreshAdapters()

    def onApplyOrCancel(self) -> None:
        if self.run is not None and not self.run.finished:
            self.run.cancel()
            return
        self.start()

    def start(self, device: str | None = None) -> None:
        from TCURLoRACommon.dependencies import ensure_dependencies

        if not ensure_dependencies("TCURLoRA"):
            return
        from TCURSegmenterLib.logic import volumes_to_segment

        from tcurlora.errors import TCURLoRAError

        node = self._parameterNode
        entry = self.adapters[self.ui.adapterComboBox.currentIndex]
        volumes = volumes_to_segment() if node.allVolumes else [v for v in [node.inputVolume] if v]
        targets = None if node.allVolumes else [node.outputSegmentation]
        self.ui.logTextEdit.clear()
        try:
            with slicer.util.WaitCursor():
                self.run = self.logic.start(volumes, entry, device or node.device, targets)
        except TCURLoRAError as error:
            slicer.util.errorDisplay(str(error))
            return
        self.ui.applyButton.text = _("Cancel")
        self.timer.start()

    def onTimer(self) -> None:
        for event in self.run.update():
            if event["event"] == "log" or (event["event"] == "progress" and event.get("message")):
                self.ui.logTextEdit.appendPlainText(event.get("message") or "")
        self.ui.progressBar.value = int(100 * self.run.fraction())
        if not self.run.finished:
            return
        self.timer.stop()
        self.ui.applyButton.text = _("Apply")
        run = self.run
        if run.state == "done":
            if not self._parameterNode.allVolumes:
                self._parameterNode.outputSegmentation = run.segmentations[0]
            slicer.util.setSliceViewerLayers(background=run.volumes[0], fit=True)
            self.ui.logTextEdit.appendPlainText(
                _("Done: {n} segmentation(s).").format(n=len(run.segmentations))
            )
        elif run.state == "cancelled":
            self.ui.logTextEdit.appendPlainText(_("Cancelled."))
        else:
            reason = run.cpu_fallback_reason()
            if reason and slicer.util.confirmYesNoDisplay(reason):
                run.remove_workdir()
                self.start(device="cpu")
                return
            slicer.util.errorDisplay(_("Segmentation failed: {error}").format(error=run.error_text()))
        run.remove_workdir()


class TCURSegmenterLogic(ScriptedLoadableModuleLogic):
    """Thin Slicer-side entry: the parameter node, and starting a run (see TCURSegmenterLib)."""

    def getParameterNode(self):
        return TCURSegmenterParameterNode(super().getParameterNode())

    def start(self, volumes, adapter, device: str, targets=None):
        from TCURSegmenterLib.logic import start_segmentation

        return start_segmentation(volumes, adapter, device, targets)


class TCURSegmenterTest(ScriptedLoadableModuleTest):
    """Runs the Qt-free bodies of TCURSegmenterLib.testing, the same ones CI runs headless."""

    def setUp(self) -> None:
        slicer.mrmlScene.Clear()

    def runTest(self) -> None:
        import tempfile
        from pathlib import Path

        from TCURSegmenterLib import testing

        from TCURLoRACommon.testdata import find_data, isolated_library

        data = find_data("hippocampus")
        if data is None:
            self.delayDisplay("Skipped: hippocampus data not found (set TCURLORA_DATA)")
            return
        for body in testing.ALL_TESTS:
            self.setUp()
            self.delayDisplay(body.__name__)
            with tempfile.TemporaryDirectory() as folder, isolated_library(Path(folder) / "library"):
                body(data, Path(folder) / "work")
        self.delayDisplay("TCURSegmenter tests passed")
