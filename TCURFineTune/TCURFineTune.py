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

from TCURLoRACommon.jobs import DEVICES, JOB_DEFAULTS  # standard library only, Python 3.9 safe
from TCURLoRACommon.lifecycle import is_active, shutdown_active
from TCURLoRACommon.panelwidget import RunPanelMixin, describe_module, poll_timer
from TCURLoRACommon.remote import DEFAULT_COMMAND, RUN_ON, THIS_COMPUTER


class TCURFineTune(ScriptedLoadableModule):
    def __init__(self, parent) -> None:
        ScriptedLoadableModule.__init__(self, parent)
        describe_module(
            self.parent,
            _("TCUR Fine-Tune"),
            _(
                "Adapt a pretrained 3D segmentation network to your labeled cases with tCURLoRA (tensor CUR "
                "low-rank adapters) or LoRA. The adapter is saved in the model library for TCUR Segmenter."
            ),
        )
        slicer.app.connect("startupCompleted()", registerSampleData)


def registerSampleData() -> None:
    """Generated labeled cases in the Sample Data module (made on click: no download)."""
    from TCURLoRACommon.compat import unsupported_message

    if unsupported_message():
        return
    from TCURLoRACommon.sampledata import register_sample_data

    register_sample_data(os.path.join(os.path.dirname(__file__), "Resources", "Icons", "TCURFineTune.png"))


@parameterNodeWrapper
class TCURFineTuneParameterNode:
    """Everything the panel shows, saved with the scene; the job settings default to the job's defaults."""

    baseModel: str = ""
    trainingVolumes: list[vtkMRMLScalarVolumeNode]
    trainingSegmentations: list[vtkMRMLSegmentationNode]
    labelVolume: vtkMRMLScalarVolumeNode
    prefill: bool = False
    useUnlabeled: bool = False  # also learn from the scene's volumes without a segmentation (mean teacher)
    method: Annotated[str, Choice(["tcur", "lora"])] = JOB_DEFAULTS.method
    rank: Annotated[int, WithinRange(1, 64)] = JOB_DEFAULTS.rank
    iterations: Annotated[int, WithinRange(1, 100000)] = JOB_DEFAULTS.iterations
    patchSize: str = ""
    device: Annotated[str, Choice(list(DEVICES))] = JOB_DEFAULTS.device
    adapterName: str = "my-adapter"
    resumeJob: str = ""
    batchSize: Annotated[int, WithinRange(1, 64)] = JOB_DEFAULTS.batch_size
    learningRate: Annotated[float, WithinRange(0.0, 1.0)] = 0.0  # 0 and "" below: the job's default
    valFraction: Annotated[float, WithinRange(0.0, 0.9)] = JOB_DEFAULTS.val_fraction
    seed: Annotated[int, WithinRange(0, 1000000)] = JOB_DEFAULTS.seed
    headLearningRate: Annotated[float, WithinRange(0.0, 1.0)] = 0.0
    trainModules: str = ""
    spacing: str = "auto"
    runOn: Annotated[str, Choice(list(RUN_ON))] = THIS_COMPUTER
    remoteHost: str = ""
    remoteCommand: str = DEFAULT_COMMAND
    sshConfig: str = ""


class CloseGuard(qt.QObject):
    """Asks before the main window closes while a fine-tuning runs (`ask()` False keeps Slicer open)."""

    def __init__(self, ask) -> None:
        qt.QObject.__init__(self)
        self.ask = ask

    def eventFilter(self, watched, event) -> bool:
        if event.type() == qt.QEvent.Close and not self.ask():
            event.ignore()
            return True  # Slicer stays open, the run goes on
        return False


class TCURFineTuneWidget(RunPanelMixin, ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Qt wiring only: the shared lifecycle is RunPanelMixin's, every decision a tested function of
    TCURFineTuneLib / TCURLoRACommon."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.initPanel("startButton", _("Start"), _("Fine-tuning failed."))
        self.closeGuard = None
        self.suggestRun = None  # "Suggest next case": ranks unlabeled volumes beside a training run
        self.suggestTimer = poll_timer(self.onSuggestTimer)

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        if not self.setupPanel(self.resourcePath("UI/TCURFineTune.ui"), TCURFineTuneLogic):
            return
        self.ui.casesTable.setHorizontalHeaderLabels([_("Volume"), _("Segmentation")])
        self.ui.casesTable.horizontalHeader().setSectionResizeMode(qt.QHeaderView.Stretch)
        self.ui.addBundleButton.clicked.connect(self.onAddBundle)
        self.ui.addPairButton.clicked.connect(self.onAddPair)
        self.ui.pairByStudyButton.clicked.connect(self.onPairByStudy)
        self.ui.removePairButton.clicked.connect(self.onRemovePair)
        self.ui.labelNewCaseButton.clicked.connect(self.onLabelNewCase)
        self.ui.suggestButton.clicked.connect(self.onSuggestNextCase)
        self.ui.startButton.clicked.connect(self.onStartOrCancel)
        self.ui.resumeButton.clicked.connect(self.onResume)
        self.ui.baseModelComboBox.currentIndexChanged.connect(self.onBaseModelChanged)
        from TCURFineTuneLib.interrupted import sweep_stale_staging

        sweep_stale_staging()  # what runs killed in earlier sessions left in the library
        mainWindow = slicer.util.mainWindow()
        if mainWindow is not None:
            self.closeGuard = CloseGuard(self.confirmClose)
            mainWindow.installEventFilter(self.closeGuard)
        self.initializeParameterNode()  # first: refreshModels writes the default base model into it
        self.refreshModels()

    def cleanup(self) -> None:
        shutdown_active([self.suggestRun])
        self.suggestTimer.stop()
        RunPanelMixin.cleanup(self)  # the training run keeps what Resume needs
        if self.closeGuard is not None and slicer.util.mainWindow() is not None:
            slicer.util.mainWindow().removeEventFilter(self.closeGuard)
            self.closeGuard = None

    def confirmClose(self) -> bool:
        """True when nothing runs, or the user agrees to stop the run (its checkpoint is kept for Resume)."""
        from TCURFineTuneLib.run import closing_question

        question = closing_question(self.run)
        return question is None or slicer.util.confirmYesNoDisplay(question)

    def showParameterNode(self) -> None:
        self.updateCasesTable()
        self.updateResumeButton()

    def refreshLists(self) -> None:
        self.refreshModels()

    # --- base models and library -------------------------------------------------------------
    def refreshModels(self) -> None:
        from tcurlora import library
        from TCURLoRACommon.models import base_model_choices, choose_base_model

        combo = self.ui.baseModelComboBox
        wanted = self._parameterNode.baseModel if self._parameterNode else ""
        choices = base_model_choices(extra=[wanted] if wanted else [])
        chosen = choose_base_model(choices, wanted)
        combo.blockSignals(True)
        combo.clear()
        for label, reference in choices:
            combo.addItem(label, reference)
        combo.setCurrentIndex(combo.findData(chosen))
        combo.blockSignals(False)
        if self._parameterNode and self._parameterNode.baseModel != chosen:
            self._parameterNode.baseModel = chosen  # the signals were blocked: store what is shown
        self.ui.prefillAdapterComboBox.clear()
        for entry in library.list_adapters():
            self.ui.prefillAdapterComboBox.addItem(entry.name, str(entry.path))
        self.ui.libraryFolderLabel.text = _("Model library: {folder}").format(folder=library.library_root())

    def onBaseModelChanged(self, index: int) -> None:
        if self._parameterNode and index >= 0:
            self._parameterNode.baseModel = self.ui.baseModelComboBox.itemData(index) or ""

    def onAddBundle(self) -> None:
        from TCURLoRACommon.models import remember_model_folder

        folder = qt.QFileDialog.getExistingDirectory(self.parent, _("MONAI bundle or model folder"))
        if not folder:
            return
        with slicer.util.tryWithErrorDisplay(_("Not a usable base model folder.")):
            self._parameterNode.baseModel = str(remember_model_folder(folder))  # Segmenter finds it too
            self.refreshModels()

    # --- training cases ----------------------------------------------------------------------
    def pairs(self):
        from TCURFineTuneLib.cases import pairs_from_lists

        node = self._parameterNode
        return pairs_from_lists(node.trainingVolumes, node.trainingSegmentations)

    def setPairs(self, pairs) -> None:
        self._parameterNode.trainingVolumes = [p.volume for p in pairs]
        self._parameterNode.trainingSegmentations = [p.segmentation for p in pairs]
        self.updateCasesTable()

    def updateCasesTable(self) -> None:
        from TCURFineTuneLib.cases import classes_text

        pairs = self.pairs()
        table = self.ui.casesTable
        table.setRowCount(len(pairs))
        for row, pair in enumerate(pairs):
            for column, node in enumerate((pair.volume, pair.segmentation)):
                table.setItem(row, column, qt.QTableWidgetItem(node.GetName() if node else _("(none)")))
        self.ui.classesLabel.text = classes_text(pairs)

    def onAddPair(self) -> None:
        from TCURFineTuneLib.cases import add_pair

        with slicer.util.tryWithErrorDisplay(_("Cannot add this case.")):
            self.setPairs(
                add_pair(
                    self.pairs(),
                    self.ui.volumeSelector.currentNode(),
                    self.ui.segmentationSelector.currentNode(),
                )
            )

    def onPairByStudy(self) -> None:
        from TCURFineTuneLib.cases import merge_pairs, pair_by_study

        found = pair_by_study()
        if not found:  # keep the table as it is
            slicer.util.infoDisplay(_("No volume has a segmentation in its study."))
            return
        self.setPairs(merge_pairs(self.pairs(), found))

    def onRemovePair(self) -> None:
        rows = {index.row() for index in self.ui.casesTable.selectedIndexes()}
        self.setPairs([p for i, p in enumerate(self.pairs()) if i not in rows])

    def onLabelNewCase(self) -> None:
        from TCURFineTuneLib.cases import class_colors, class_names

        from TCURLoRACommon import scene

        volume = self._parameterNode.labelVolume
        if volume is None:
            slicer.util.errorDisplay(_("Choose the volume to label."))
            return
        with slicer.util.tryWithErrorDisplay(_("Add labeled cases first, they define the classes.")):
            pairs = self.pairs()
            names = class_names(pairs)
            colors = class_colors(pairs, names)
            segmentation = scene.new_label_segmentation(volume, names, colors)
        if self._parameterNode.prefill and self.ui.prefillAdapterComboBox.currentIndex >= 0:
            with slicer.util.tryWithErrorDisplay(_("Pre-fill failed.")):
                self.prefill(volume, segmentation)
        self.openSegmentEditor(volume, segmentation)

    def prefill(self, volume, segmentation) -> None:
        """Fill the new segmentation with the adapter's prediction (blocking, with a progress dialog)."""
        from tcurlora.library import read_adapter
        from TCURLoRACommon.dependencies import ensure_for_method
        from TCURLoRACommon.models import resolve_base_model
        from TCURLoRACommon.segment_run import SegmentVolumesRun

        entry = read_adapter(self.ui.prefillAdapterComboBox.currentData)
        if not ensure_for_method(entry.method):
            return
        run = SegmentVolumesRun(
            [volume],
            resolve_base_model(entry.base_model_id, [self._parameterNode.baseModel]),
            entry.path,
            entry.label_names,
            entry.label_colors,
            self._parameterNode.device,
            [segmentation],
        ).start()
        dialog = slicer.util.createProgressDialog(
            labelText=_("Pre-filling with {name}...").format(name=entry.name)
        )
        try:
            while not run.finished:
                run.update()
                dialog.value = int(100 * run.fraction())
                slicer.app.processEvents()
                if dialog.wasCanceled and not run.worker.cancelled:
                    run.cancel()
                qt.QThread.msleep(100)
        finally:
            dialog.close()
            run.remove_workdir()
        if run.state == "failed":
            raise RuntimeError(run.error_text())

    def onSuggestNextCase(self) -> None:
        """Rank the unlabeled volumes in the background (TCURFineTuneLib.suggest); a second click cancels."""
        if is_active(self.suggestRun):
            self.suggestRun.cancel()
            return
        from TCURFineTuneLib.suggest import suggestion_run

        from tcurlora.library import read_adapter
        from TCURLoRACommon.dependencies import ensure_for_method

        with slicer.util.tryWithErrorDisplay(_("Could not rank the volumes."), waitCursor=True):
            adapter = self.ui.prefillAdapterComboBox.currentData
            if not ensure_for_method(read_adapter(adapter).method if adapter else None):
                return
            self.suggestRun = suggestion_run(
                self.pairs(),
                self.ui.prefillAdapterComboBox.currentData,
                self._parameterNode.baseModel,
                self._parameterNode.device,
            ).start()
            self.ui.suggestButton.text = _("Cancel suggestion")
            self.ui.logTextEdit.appendPlainText(_("Ranking the volumes without a segmentation..."))
            self.suggestTimer.start()

    def onSuggestTimer(self) -> None:
        """Poll the ranking; when done, label the most uncertain volume through "label a new case"."""
        run = self.suggestRun
        with slicer.util.tryWithErrorDisplay(_("Suggesting the next case failed.")):
            run.update()
            if not run.finished:
                return
            self.suggestTimer.stop()
            self.ui.suggestButton.text = _("Suggest next case")
            if run.state != "done":
                if run.state == "failed":
                    raise RuntimeError(run.error_text())
                return
            for line in run.ranking_lines():
                self.ui.logTextEdit.appendPlainText(line)
            self._parameterNode.labelVolume = run.top
            self._parameterNode.prefill = True
            self.onLabelNewCase()

    @staticmethod
    def openSegmentEditor(volume, segmentation) -> None:
        slicer.util.selectModule("SegmentEditor")
        editor = slicer.modules.segmenteditor.widgetRepresentation().self().editor
        editor.setSegmentationNode(segmentation)
        editor.setSourceVolumeNode(volume)

    # --- run -----------------------------------------------------------------------------------
    def onStartOrCancel(self) -> None:
        self.startOrCancel(_("Stopping (the last checkpoint is kept)..."), _("Fine-tuning could not start."))

    def start(self, device: str | None = None) -> None:
        from TCURFineTuneLib.panel import settings_from_parameters
        from TCURFineTuneLib.run import discard_interrupted

        from TCURLoRACommon.dependencies import ensure_for_method
        from TCURLoRACommon.remote import remote_from_parameters

        settings = settings_from_parameters(self._parameterNode)  # input errors before any install
        remote = remote_from_parameters(self._parameterNode)
        if device:
            settings.device = device
        if not ensure_for_method(settings.method):
            return
        self.ui.logTextEdit.clear()
        from TCURFineTuneLib.cases import unlabeled_for_job

        pairs = self.pairs()
        unlabeled = unlabeled_for_job(pairs, self._parameterNode.useUnlabeled)
        run = self.logic.start(pairs, settings, self._parameterNode.adapterName, remote, unlabeled)
        discard_interrupted(self._parameterNode.resumeJob)  # a new run replaces the one left to resume
        self.startRun(run)

    def onResume(self) -> None:
        from TCURFineTuneLib.run import FineTuneRun, job_method

        from TCURLoRACommon.dependencies import ensure_for_method

        with slicer.util.tryWithErrorDisplay(_("Could not resume the training."), waitCursor=True):
            if not ensure_for_method(job_method(self._parameterNode.resumeJob)):
                return
            self.startRun(FineTuneRun.resume(self._parameterNode.resumeJob).start())
            self.ui.logTextEdit.appendPlainText(_("Resuming from the last checkpoint..."))

    def startRun(self, run) -> None:
        self.run = run
        self.parameterNode().resumeJob = ""
        self.updateResumeButton()
        self.showChart()
        self.startPolling()

    def updateResumeButton(self) -> None:
        """Resume for this scene's interrupted run, or one from an earlier session (Slicer closed meanwhile)."""
        from TCURFineTuneLib.interrupted import resume_candidate

        if self._parameterNode is None:
            return
        running = is_active(self.run)
        job = "" if running else resume_candidate(self._parameterNode.resumeJob)
        if job != self._parameterNode.resumeJob and not running:
            self._parameterNode.resumeJob = job
        self.ui.resumeButton.visible = bool(job)

    def showChart(self) -> None:
        if self.run.curves is None:
            return
        layoutManager = slicer.app.layoutManager()
        layoutManager.setLayout(slicer.vtkMRMLLayoutNode.SlicerLayoutConventionalPlotView)
        plotWidget = layoutManager.plotWidget(0)
        plotWidget.mrmlPlotViewNode().SetPlotChartNodeID(self.run.curves.chart.GetID())

    def showRunDetails(self) -> None:
        self.ui.etaLabel.text = self.run.eta_text()

    def finishRun(self) -> None:
        """Show how the run ended (TCURFineTuneLib.run.finish_run decides and cleans up)."""
        from TCURFineTuneLib.run import finish_run

        outcome = finish_run(self.run, slicer.util.confirmYesNoDisplay)
        if outcome.message:
            self.ui.logTextEdit.appendPlainText(outcome.message)
        if outcome.retry is not None:  # the same exported job on the CPU: no scene node needed
            self.startRun(outcome.retry)
            return
        if outcome.resume_job:
            self.parameterNode().resumeJob = outcome.resume_job
        self.updateResumeButton()
        if outcome.state == "done":
            self.refreshModels()
            slicer.util.infoDisplay(
                _("Adapter '{name}' is in the model library.").format(name=self.run.adapter.name)
            )
        elif outcome.error:
            slicer.util.errorDisplay(_("Fine-tuning failed: {error}").format(error=outcome.error))


class TCURFineTuneLogic(ScriptedLoadableModuleLogic):
    """Thin Slicer-side entry: the parameter node, and starting a run (see TCURFineTuneLib)."""

    def getParameterNode(self):
        return TCURFineTuneParameterNode(super().getParameterNode())

    def start(self, pairs, settings, adapterName: str, remote=None, unlabeled=()):
        from TCURFineTuneLib.run import FineTuneRun

        return FineTuneRun(pairs, settings, adapterName, remote=remote, unlabeled=unlabeled).start()


class TCURFineTuneTest(ScriptedLoadableModuleTest):
    """Runs the Qt-free bodies of TCURFineTuneLib.testing, the same ones CI runs headless."""

    def setUp(self) -> None:
        slicer.mrmlScene.Clear()

    def runTest(self) -> None:
        from TCURFineTuneLib import testing

        from TCURLoRACommon.testdata import run_self_tests

        run_self_tests(testing.ALL_TESTS, self.setUp, self.delayDisplay)
        self.delayDisplay("TCURFineTune tests passed")
