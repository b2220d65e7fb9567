"""TCURFineTune: adapt a pretrained 3D segmentation model to a few labeled cases of the scene.

Qt widgets and wiring only; the work lives in TCURFineTuneLib and TCURLoRACommon (Qt-free, tested headless).
"""

from __future__ import annotations

import os
from typing import Annotated

import qt
import slicer
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.i18n import tr as _
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

POLL_MS = 200


class TCURFineTune(ScriptedLoadableModule):
    def __init__(self, parent) -> None:
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("TCUR Fine-Tune")
        self.parent.categories = [_("Segmentation")]
        self.parent.dependencies = []
        self.parent.contributors = ["The TCURLoRA developers"]
        self.parent.helpText = _(
            "Adapt a pretrained 3D segmentation network to your labeled cases with tCURLoRA (tensor CUR "
            "low-rank adapters) or LoRA. The adapter is saved in the model library for TCUR Segmenter."
        )
        self.parent.acknowledgementText = _("Method: He et al., tCURLoRA, MICCAI 2025 (arXiv 2501.02227).")


@parameterNodeWrapper
class TCURFineTuneParameterNode:
    """Everything the panel shows, saved with the scene."""

    baseModel: str = ""
    trainingVolumes: list[vtkMRMLScalarVolumeNode]
    trainingSegmentations: list[vtkMRMLSegmentationNode]
    labelVolume: vtkMRMLScalarVolumeNode
    prefill: bool = False
    method: Annotated[str, Choice(["tcur", "lora"])] = "tcur"
    rank: Annotated[int, WithinRange(1, 64)] = 8
    iterations: Annotated[int, WithinRange(1, 100000)] = 200
    patchSize: str = ""
    device: Annotated[str, Choice(["auto", "cuda", "cpu"])] = "auto"
    adapterName: str = "my-adapter"
    batchSize: Annotated[int, WithinRange(1, 64)] = 2
    learningRate: Annotated[float, WithinRange(0.0, 1.0)] = 0.0
    valFraction: Annotated[float, WithinRange(0.0, 0.9)] = 0.0
    seed: Annotated[int, WithinRange(0, 1000000)] = 0


class TCURFineTuneWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self.run = None
        self.timer = qt.QTimer()
        self.timer.setInterval(POLL_MS)
        self.timer.timeout.connect(self.onTimer)

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/TCURFineTune.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = TCURFineTuneLogic()
        self.ui.casesTable.setHorizontalHeaderLabels([_("Volume"), _("Segmentation")])
        self.ui.casesTable.horizontalHeader().setSectionResizeMode(qt.QHeaderView.Stretch)
        self.ui.addBundleButton.clicked.connect(self.onAddBundle)
        self.ui.addPairButton.clicked.connect(self.onAddPair)
        self.ui.pairByStudyButton.clicked.connect(self.onPairByStudy)
        self.ui.removePairButton.clicked.connect(self.onRemovePair)
        self.ui.labelNewCaseButton.clicked.connect(self.onLabelNewCase)
        self.ui.startButton.clicked.connect(self.onStartOrCancel)
        self.ui.baseModelComboBox.currentIndexChanged.connect(self.onBaseModelChanged)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.refreshModels()
        self.initializeParameterNode()

    def cleanup(self) -> None:
        if self.run is not None and not self.run.finished:
            self.run.cancel()
        self.timer.stop()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()
        self.refreshModels()

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

    def setParameterNode(self, inputParameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.updateCasesTable()

    # --- base models and library -------------------------------------------------------------
    def refreshModels(self) -> None:
        from tcurlora import library
        from TCURLoRACommon.models import base_model_choices

        combo = self.ui.baseModelComboBox
        wanted = self._parameterNode.baseModel if self._parameterNode else ""
        combo.blockSignals(True)
        combo.clear()
        for label, reference in base_model_choices(extra=[wanted] if wanted else []):
            combo.addItem(label, reference)
        index = combo.findData(wanted)
        combo.setCurrentIndex(max(index, 0))
        combo.blockSignals(False)
        self.ui.prefillAdapterComboBox.clear()
        for entry in library.list_adapters():
            self.ui.prefillAdapterComboBox.addItem(entry.name, str(entry.path))
        self.ui.libraryFolderLabel.text = _("Model library: {folder}").format(folder=library.library_root())

    def onBaseModelChanged(self, index: int) -> None:
        if self._parameterNode and index >= 0:
            self._parameterNode.baseModel = self.ui.baseModelComboBox.itemData(index) or ""

    def onAddBundle(self) -> None:
        folder = qt.QFileDialog.getExistingDirectory(self.parent, _("MONAI bundle folder"))
        if not folder:
            return
        if not os.path.isdir(os.path.join(folder, "configs")):
            slicer.util.errorDisplay(
                _("{folder} is not a MONAI bundle: it has no configs/ folder").format(folder=folder)
            )
            return
        self._parameterNode.baseModel = folder
        self.refreshModels()

    # --- training cases ----------------------------------------------------------------------
    def pairs(self):
        from TCURFineTuneLib.cases import TrainingPair

        node = self._parameterNode
        return [
            TrainingPair(v, s) for v, s in zip(node.trainingVolumes, node.trainingSegmentations, strict=False)
        ]

    def setPairs(self, pairs) -> None:
        self._parameterNode.trainingVolumes = [p.volume for p in pairs]
        self._parameterNode.trainingSegmentations = [p.segmentation for p in pairs]
        self.updateCasesTable()

    def updateCasesTable(self) -> None:
        from TCURFineTuneLib.cases import class_names

        from tcurlora.errors import InputError

        pairs = self.pairs()
        table = self.ui.casesTable
        table.setRowCount(len(pairs))
        for row, pair in enumerate(pairs):
            for column, node in enumerate((pair.volume, pair.segmentation)):
                table.setItem(row, column, qt.QTableWidgetItem(node.GetName() if node else _("(none)")))
        try:
            text = (
                _("Classes: {names}").format(names=", ".join(class_names(pairs)))
                if pairs
                else _("Classes: none")
            )
        except InputError as error:
            text = _("Problem: {error}").format(error=error)
        self.ui.classesLabel.text = text

    def onAddPair(self) -> None:
        from TCURFineTuneLib.cases import TrainingPair

        volume, segmentation = (
            self.ui.volumeSelector.currentNode(),
            self.ui.segmentationSelector.currentNode(),
        )
        if volume is None:
            slicer.util.errorDisplay(_("Choose a volume first."))
            return
        if segmentation is None:
            slicer.util.errorDisplay(
                _(
                    "Volume '{name}' has no segmentation: choose one, or create it with 'Label a new case'."
                ).format(name=volume.GetName())
            )
            return
        self.setPairs([*self.pairs(), TrainingPair(volume, segmentation)])

    def onPairByStudy(self) -> None:
        from TCURFineTuneLib.cases import pair_by_study

        found = pair_by_study()
        if not found:
            slicer.util.infoDisplay(_("No volume has a segmentation in its study."))
        self.setPairs(found)

    def onRemovePair(self) -> None:
        rows = {index.row() for index in self.ui.casesTable.selectedIndexes()}
        self.setPairs([p for i, p in enumerate(self.pairs()) if i not in rows])

    def onLabelNewCase(self) -> None:
        from TCURFineTuneLib.cases import class_colors, class_names

        from tcurlora.errors import InputError
        from TCURLoRACommon import scene

        volume = self._parameterNode.labelVolume
        if volume is None:
            slicer.util.errorDisplay(_("Choose the volume to label."))
            return
        pairs = self.pairs()
        try:
            names = class_names(pairs)
            colors = class_colors(pairs, names)
        except InputError as error:
            slicer.util.errorDisplay(
                _("Add labeled cases first, they define the classes: {error}").format(error=error)
            )
            return
        segmentation = scene.new_label_segmentation(volume, names, colors)
        if self._parameterNode.prefill and self.ui.prefillAdapterComboBox.currentIndex >= 0:
            self.prefill(volume, segmentation)
        self.openSegmentEditor(volume, segmentation)

    def prefill(self, volume, segmentation) -> None:
        """Fill the new segmentation with the adapter's prediction (blocking, with a progress dialog)."""
        from tcurlora.library import read_adapter
        from TCURLoRACommon.segmenting import SegmentVolumesRun

        entry = read_adapter(self.ui.prefillAdapterComboBox.currentData)
        run = SegmentVolumesRun(
            [volume],
            entry.base_model_id,
            entry.path,
            entry.label_names,
            entry.label_colors,
            self._parameterNode.device,
            [segmentation],
        ).start()
        dialog = slicer.util.createProgressDialog(
            labelText=_("Pre-filling with {name}...").format(name=entry.name)
        )
        while not run.finished:
            run.update()
            slicer.app.processEvents()
            if dialog.wasCanceled:
                run.cancel()
            qt.QThread.msleep(100)
        dialog.close()
        if run.state == "failed":
            slicer.util.errorDisplay(_("Pre-fill failed: {error}").format(error=run.error_text()))
        run.remove_workdir()

    @staticmethod
    def openSegmentEditor(volume, segmentation) -> None:
        slicer.util.selectModule("SegmentEditor")
        editor = slicer.modules.segmenteditor.widgetRepresentation().self().editor
        editor.setSegmentationNode(segmentation)
        editor.setSourceVolumeNode(volume)

    # --- run -----------------------------------------------------------------------------------
    def settings(self):
        from TCURLoRACommon.jobs import FineTuneSettings

        node = self._parameterNode
        patch = [int(v) for v in node.patchSize.replace("x", ",").split(",") if v.strip()] or None
        if patch is not None and len(patch) != 3:
            raise ValueError(_("Patch size needs three numbers, e.g. 96,96,96."))
        return FineTuneSettings(
            base_model=node.baseModel,
            method=node.method,
            rank=node.rank,
            iterations=node.iterations,
            patch_size=tuple(patch) if patch else None,
            device=node.device,
            batch_size=node.batchSize,
            learning_rate=node.learningRate or None,
            seed=node.seed,
            val_fraction=node.valFraction,
        )

    def onStartOrCancel(self) -> None:
        if self.run is not None and not self.run.finished:
            self.run.cancel()
            return
        self.start()

    def start(self, device: str | None = None) -> None:
        from TCURLoRACommon.dependencies import ensure_dependencies

        if not ensure_dependencies("TCURLoRA"):
            return
        from tcurlora.errors import TCURLoRAError

        settings = self.settings()
        if device:
            settings.device = device
        self.ui.logTextEdit.clear()
        try:
            with slicer.util.WaitCursor():
                self.run = self.logic.start(self.pairs(), settings, self._parameterNode.adapterName)
        except TCURLoRAError as error:
            slicer.util.errorDisplay(str(error))
            return
        self.showChart()
        self.ui.startButton.text = _("Cancel")
        self.timer.start()

    def showChart(self) -> None:
        if self.run.curves is None:
            return
        layoutManager = slicer.app.layoutManager()
        layoutManager.setLayout(slicer.vtkMRMLLayoutNode.SlicerLayoutConventionalPlotView)
        plotWidget = layoutManager.plotWidget(0)
        plotWidget.mrmlPlotViewNode().SetPlotChartNodeID(self.run.curves.chart.GetID())

    def onTimer(self) -> None:
        for event in self.run.update():
            self.showEvent(event)
        self.ui.progressBar.value = int(100 * self.run.fraction())
        self.ui.etaLabel.text = self.run.eta_text()
        if self.run.finished:
            self.timer.stop()
            self.ui.startButton.text = _("Start")
            self.finishRun()

    def showEvent(self, event: dict) -> None:
        kind = event["event"]
        if kind == "log":
            self.ui.logTextEdit.appendPlainText(event["message"])
        elif kind == "started":
            params = event.get("parameters") or {}
            self.ui.logTextEdit.appendPlainText(
                _("Training on {device}: {trainable} trainable parameters ({percent:.3f}%)").format(
                    device=event["device"],
                    trainable=params.get("trainable", "?"),
                    percent=params.get("trainable_percent", 0.0),
                )
            )
        elif kind == "progress" and event.get("message"):
            self.ui.logTextEdit.appendPlainText(event["message"])
        elif kind == "checkpoint":
            self.ui.logTextEdit.appendPlainText(_("Checkpoint at iteration {i}").format(i=event["iteration"]))

    def finishRun(self) -> None:
        run = self.run
        if run.state == "done":
            self.ui.logTextEdit.appendPlainText(_("Adapter saved: {path}").format(path=run.adapter.path))
            self.refreshModels()
            slicer.util.infoDisplay(
                _("Adapter '{name}' is in the model library.").format(name=run.adapter.name)
            )
        elif run.state == "cancelled":
            self.ui.logTextEdit.appendPlainText(_("Cancelled; nothing was added to the model library."))
        else:
            reason = run.cpu_fallback_reason()
            if reason and slicer.util.confirmYesNoDisplay(reason):
                run.remove_workdir()
                self.start(device="cpu")
                return
            slicer.util.errorDisplay(_("Fine-tuning failed: {error}").format(error=run.error_text()))
        run.remove_workdir()


class TCURFineTuneLogic(ScriptedLoadableModuleLogic):
    """Thin Slicer-side entry: the parameter node, and starting a run (see TCURFineTuneLib)."""

    def getParameterNode(self):
        return TCURFineTuneParameterNode(super().getParameterNode())

    def start(self, pairs, settings, adapterName: str):
        from TCURFineTuneLib.run import FineTuneRun

        return FineTuneRun(pairs, settings, adapterName).start()


class TCURFineTuneTest(ScriptedLoadableModuleTest):
    """Runs the Qt-free bodies of TCURFineTuneLib.testing, the same ones CI runs headless."""

    def setUp(self) -> None:
        slicer.mrmlScene.Clear()

    def runTest(self) -> None:
        import tempfile
        from pathlib import Path

        from TCURFineTuneLib import testing

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
        self.delayDisplay("TCURFineTune tests passed")
