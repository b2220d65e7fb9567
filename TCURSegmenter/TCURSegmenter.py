"""TCURSegmenter: segment volumes with an adapted model from the TCURLoRA model library.

Qt widgets and wiring only; the work lives in TCURSegmenterLib and TCURLoRACommon (Qt-free, tested headless).
"""

from __future__ import annotations

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

from TCURLoRACommon.jobs import (  # standard library only, Python 3.9 safe
    DEVICES,
    LARGEST_COMPONENT_CHOICES,
    SEGMENT_DEFAULTS,
)
from TCURLoRACommon.lifecycle import is_active
from TCURLoRACommon.panelwidget import RunPanelMixin, describe_module
from TCURLoRACommon.remote import DEFAULT_COMMAND, RUN_ON, THIS_COMPUTER


class TCURSegmenter(ScriptedLoadableModule):
    def __init__(self, parent) -> None:
        ScriptedLoadableModule.__init__(self, parent)
        describe_module(
            self.parent,
            _("TCUR Segmenter"),
            _(
                "Segment a volume (or every volume of the scene) with an adapter trained in TCUR Fine-Tune. "
                "The work runs in a background process, here or on a GPU server over SSH (Run on); "
                "Apply turns into Cancel."
            ),
        )


@parameterNodeWrapper
class TCURSegmenterParameterNode:
    inputVolume: vtkMRMLScalarVolumeNode
    allVolumes: bool = False
    adapterPath: str = ""
    outputSegmentation: vtkMRMLSegmentationNode
    device: Annotated[str, Choice(list(DEVICES))] = SEGMENT_DEFAULTS.device
    overlap: Annotated[float, WithinRange(0.0, 0.9)] = SEGMENT_DEFAULTS.overlap
    # a choice, not the former bool `largestComponent`: a scene saved with that one keeps it unread
    largestComponentClasses: Annotated[str, Choice(list(LARGEST_COMPONENT_CHOICES))] = (
        SEGMENT_DEFAULTS.largest_component
    )
    testTimeAugmentation: bool = SEGMENT_DEFAULTS.tta
    runOn: Annotated[str, Choice(list(RUN_ON))] = THIS_COMPUTER
    remoteHost: str = ""
    remoteCommand: str = DEFAULT_COMMAND
    sshConfig: str = ""


class TCURSegmenterWidget(RunPanelMixin, ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Qt wiring only: the shared lifecycle is RunPanelMixin's, every decision a tested function of
    TCURSegmenterLib / TCURLoRACommon."""

    refreshListsOnNewScene = False  # the adapter list is the library's, not the scene's

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.initPanel("applyButton", _("Apply"), _("Segmentation failed."))
        self.adapters = []

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        if not self.setupPanel(self.resourcePath("UI/TCURSegmenter.ui"), TCURSegmenterLogic):
            return
        self.ui.adapterComboBox.currentIndexChanged.connect(self.onAdapterChanged)
        self.ui.refreshButton.clicked.connect(self.refreshAdapters)
        self.ui.removeAdapterButton.clicked.connect(self.onRemoveAdapter)
        self.ui.importAdapterButton.clicked.connect(self.onImportAdapter)
        self.ui.exportAdapterButton.clicked.connect(self.onExportAdapter)
        self.ui.applyButton.clicked.connect(self.onApplyOrCancel)
        self.initializeParameterNode()
        self.refreshAdapters()

    def onSceneStartClose(self, caller, event) -> None:
        if is_active(self.run):  # its volumes are about to go
            self.run.cancel()
            self.ui.logTextEdit.appendPlainText(_("The scene was closed: segmentation cancelled."))
        RunPanelMixin.onSceneStartClose(self, caller, event)

    def initializeParameterNode(self) -> None:
        RunPanelMixin.initializeParameterNode(self)
        if not self._parameterNode.inputVolume:
            self._parameterNode.inputVolume = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")

    def refreshLists(self) -> None:
        self.refreshAdapters()

    def refreshAdapters(self) -> None:
        from TCURSegmenterLib.logic import choose_adapter

        from tcurlora import library

        self.adapters = library.list_adapters()
        wanted = self._parameterNode.adapterPath if self._parameterNode else ""
        combo = self.ui.adapterComboBox
        combo.blockSignals(True)
        combo.clear()
        for entry in self.adapters:
            combo.addItem(entry.name, str(entry.path))
        combo.setCurrentIndex(choose_adapter(self.adapters, wanted))
        combo.blockSignals(False)
        self.onAdapterChanged(combo.currentIndex)

    def selectedAdapter(self):
        index = self.ui.adapterComboBox.currentIndex
        return self.adapters[index] if 0 <= index < len(self.adapters) else None

    def onAdapterChanged(self, index: int) -> None:
        from TCURSegmenterLib.logic import adapter_summary

        entry = self.adapters[index] if 0 <= index < len(self.adapters) else None
        self.ui.adapterInfoLabel.text = (
            adapter_summary(entry)
            if entry
            else _("No adapter in the model library yet: train one in TCUR Fine-Tune, or import one.")
        )
        self.ui.applyButton.enabled = entry is not None
        self.ui.exportAdapterButton.enabled = entry is not None
        self.ui.removeAdapterButton.enabled = entry is not None
        if self._parameterNode and entry is not None:
            self._parameterNode.adapterPath = str(entry.path)

    def onRemoveAdapter(self) -> None:
        from tcurlora import library

        entry = self.selectedAdapter()
        if entry is None:
            return
        if slicer.util.confirmOkCancelDisplay(
            _("Delete adapter '{name}' ({path})?").format(name=entry.name, path=entry.path)
        ):
            with slicer.util.tryWithErrorDisplay(_("Could not remove the adapter.")):
                library.remove_adapter(entry.name)
            self.refreshAdapters()

    def onImportAdapter(self) -> None:
        from tcurlora.filenames import ADAPTER_ARCHIVE_SUFFIX
        from TCURLoRACommon.adapters import import_adapter

        path = qt.QFileDialog.getOpenFileName(
            self.parent,
            _("Import adapter"),
            "",
            _("TCURLoRA adapter (*{suffix} *.zip)").format(suffix=ADAPTER_ARCHIVE_SUFFIX),
        )
        if not path:
            return
        with slicer.util.tryWithErrorDisplay(_("Could not import the adapter."), waitCursor=True):
            entry = import_adapter(path)
            if self._parameterNode:
                self._parameterNode.adapterPath = str(entry.path)
            self.refreshAdapters()
            self.ui.logTextEdit.appendPlainText(_("Imported adapter '{name}'.").format(name=entry.name))

    def onExportAdapter(self) -> None:
        from tcurlora.filenames import ADAPTER_ARCHIVE_SUFFIX
        from TCURLoRACommon.adapters import export_adapter

        entry = self.selectedAdapter()
        if entry is None:
            return
        path = qt.QFileDialog.getSaveFileName(
            self.parent,
            _("Export adapter"),
            entry.name + ADAPTER_ARCHIVE_SUFFIX,
            _("TCURLoRA adapter (*{suffix})").format(suffix=ADAPTER_ARCHIVE_SUFFIX),
        )
        if not path:
            return
        with slicer.util.tryWithErrorDisplay(_("Could not export the adapter."), waitCursor=True):
            written = export_adapter(entry, path)
            self.ui.logTextEdit.appendPlainText(_("Adapter saved as {path}").format(path=written))

    def onApplyOrCancel(self) -> None:
        self.startOrCancel(_("Stopping..."), _("Segmentation could not start."))

    def start(self, device: str | None = None) -> None:
        from TCURSegmenterLib.logic import volumes_and_targets

        from TCURLoRACommon.dependencies import ensure_for_method
        from TCURLoRACommon.remote import remote_from_parameters

        entry = self.selectedAdapter()
        if entry is None:
            raise ValueError(_("Choose an adapter first."))
        node = self._parameterNode
        volumes, targets = volumes_and_targets(node)
        remote = remote_from_parameters(node)  # input errors before any install
        if not ensure_for_method(entry.method):
            return
        self.ui.logTextEdit.clear()
        if remote is not None:
            self.ui.logTextEdit.appendPlainText(_("Connecting to {host}...").format(host=remote.host))
        self.run = self.logic.start(
            volumes,
            entry,
            device or node.device,
            targets,
            node.overlap,
            LARGEST_COMPONENT_CHOICES[node.largestComponentClasses],
            remote,
            node.testTimeAugmentation,
        )
        self.startPolling()

    def finishRun(self) -> None:
        """Show the segmentations, or why there are none (a retry on the CPU when the GPU failed)."""
        run = self.run
        if run.state == "done":
            if self._parameterNode and not self._parameterNode.allVolumes:
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
                with slicer.util.tryWithErrorDisplay(_("Segmentation could not start.")):
                    self.start(device="cpu")
                return
            slicer.util.errorDisplay(_("Segmentation failed: {error}").format(error=run.error_text()))
        run.remove_workdir()


class TCURSegmenterLogic(ScriptedLoadableModuleLogic):
    """Thin Slicer-side entry: the parameter node, and starting a run (see TCURSegmenterLib)."""

    def getParameterNode(self):
        return TCURSegmenterParameterNode(super().getParameterNode())

    def start(
        self,
        volumes,
        adapter,
        device: str,
        targets=None,
        overlap=0.5,
        largestComponent="auto",
        remote=None,
        testTimeAugmentation=True,
    ):
        """`remote`: TCURLoRACommon.remote.RemoteSettings to run on that host over SSH, None for here;
        `largestComponent`: the segment job's largest_component (true, false or "auto")."""
        from TCURSegmenterLib.logic import start_segmentation

        return start_segmentation(
            volumes,
            adapter,
            device,
            targets,
            overlap,
            largestComponent,
            remote=remote,
            tta=testTimeAugmentation,
        )


class TCURSegmenterTest(ScriptedLoadableModuleTest):
    """Runs the Qt-free bodies of TCURSegmenterLib.testing, the same ones CI runs headless."""

    def setUp(self) -> None:
        slicer.mrmlScene.Clear()

    def runTest(self) -> None:
        from TCURSegmenterLib import testing

        from TCURLoRACommon.testdata import run_self_tests

        run_self_tests(testing.ALL_TESTS, self.setUp, self.delayDisplay)
        self.delayDisplay("TCURSegmenter tests passed")
