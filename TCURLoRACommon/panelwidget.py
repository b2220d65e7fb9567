"""The lifecycle both panels share, as a mixin of their ScriptedLoadableModuleWidget: the Slicer-version check,
loading the .ui, the parameter node across scene closes and module switches, the background run's timer and
its Start/Cancel button, closing and reloading. Each widget keeps its own wiring and fills in the hooks.

Qt and the backend are imported where they are used: the module scripts import this before the version check
(Slicer 5.8, Python 3.9, must still show its message), and slicer-core tests import it without Qt. The
decisions are the Qt-free functions of TCURLoRACommon.lifecycle.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import slicer

from TCURLoRACommon.lifecycle import POLL_MS, is_active, poll, shutdown_active


def describe_module(parent: Any, title: str, helpText: str) -> None:
    """What the Modules list and Help show for a TCURLoRA module: its own title and help, shared rest."""
    from slicer.i18n import tr as _

    parent.title = title
    parent.categories = [_("Segmentation")]
    parent.dependencies = []
    parent.contributors = ["The TCURLoRA developers"]
    parent.helpText = helpText
    parent.acknowledgementText = _("Method: He et al., tCURLoRA, MICCAI 2025 (arXiv 2501.02227).")


def poll_timer(slot: Callable[[], None]) -> Any:
    """A QTimer that calls `slot` every POLL_MS while it is started."""
    import qt

    timer = qt.QTimer()
    timer.setInterval(POLL_MS)
    timer.timeout.connect(slot)
    return timer


class RunPanelMixin:
    """Listed before ScriptedLoadableModuleWidget in the widget's bases, so that its cleanup, enter, exit and
    onReload are the ones Slicer calls. The widget provides `start()`, `finishRun()` and `refreshLists()`."""

    refreshListsOnNewScene = True  # refresh the panel's lists when a new scene opens while it is shown

    def initPanel(self, runButtonName: str, idleText: str, failedText: str) -> None:
        """From the widget's __init__: no UI until setup, no run; the timer that polls the run.

        `runButtonName`: the .ui button that starts a run and reads Cancel while it works; `idleText` its
        text otherwise; `failedText` the title of an error raised while polling.
        """
        self.logic = None
        self.ui = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self.run = None
        self.runButtonName = runButtonName
        self.runButtonIdleText = idleText
        self.runFailedText = failedText
        self.timer = poll_timer(self.onTimer)

    def setupPanel(self, uiPath: str, logicClass: Callable[[], Any]) -> bool:
        """The version check first, then the .ui, the logic, the bounded log, Run on and the scene observers.

        False when this Slicer cannot run TCURLoRA: the reason is shown in the panel and setup stops there.
        """
        import qt

        from TCURLoRACommon.compat import unsupported_message

        problem = unsupported_message()
        if problem:  # Slicer 5.8 (Python 3.9): say what to do instead of failing further down
            label = qt.QLabel(problem)
            label.wordWrap = True
            self.layout.addWidget(label)
            self.layout.addStretch(1)
            return False
        from TCURLoRACommon.runs import LOG_MAX_LINES

        uiWidget = slicer.util.loadUI(uiPath)
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = logicClass()
        self.ui.logTextEdit.setMaximumBlockCount(LOG_MAX_LINES)
        self.ui.runOnComboBox.currentTextChanged.connect(self.updateRemoteRows)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        return True

    def cleanup(self) -> None:
        """Slicer closes or the module reloads: stop the run (seconds at most), its timer and the observers."""
        shutdown_active([self.run])
        self.timer.stop()
        self.removeObservers()

    def confirmClose(self) -> bool:
        """Whether closing (or reloading) may stop what runs; a panel whose run is worth keeping asks."""
        return True

    def onReload(self) -> None:
        """Reload the module and the packages it imports lazily (its Lib, TCURLoRACommon, tcurlora)."""
        from TCURLoRACommon.reloading import forget_packages

        if not self.confirmClose():
            return
        forget_packages()
        super().onReload()

    # --- parameter node across module switches and scene closes ---------------------------------------------
    def enter(self) -> None:
        if self.ui is None:  # setup stopped at the version check
            return
        self.initializeParameterNode()
        self.refreshLists()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None

    def onSceneStartClose(self, caller, event) -> None:
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()
            if self.refreshListsOnNewScene:
                self.refreshLists()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())

    def parameterNode(self) -> Any:
        """The panel's parameter node; after the scene was closed while the user was in another module the
        widget holds none, and the new scene's is used."""
        return self._parameterNode or self.logic.getParameterNode()

    def setParameterNode(self, inputParameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.updateRemoteRows()
            self.showParameterNode()

    def showParameterNode(self) -> None:
        """What else the panel shows from a newly connected parameter node (beyond connectGui)."""

    def refreshLists(self) -> None:
        """Re-read what the panel lists from the model library (on enter and on a new scene)."""

    def updateRemoteRows(self, *_args) -> None:
        """The remote-host rows only with "Run on: remote host"."""
        from TCURLoRACommon.runon import remote_row_visibility

        for name, visible in remote_row_visibility(self.ui.runOnComboBox.currentText).items():
            getattr(self.ui, name).visible = visible

    # --- the background run ---------------------------------------------------------------------------------
    def runButton(self) -> Any:
        return getattr(self.ui, self.runButtonName)

    def startOrCancel(self, stoppingText: str, failedText: str) -> None:
        """The run button: cancel the run that works (saying `stoppingText`), else `start()` with its errors
        shown under `failedText`."""
        if is_active(self.run):
            self.run.cancel()  # SIGTERM to the worker; a remote one stops its run on the host too
            self.ui.logTextEdit.appendPlainText(stoppingText)
            return
        with slicer.util.tryWithErrorDisplay(failedText, waitCursor=True):
            self.start()

    def startPolling(self) -> None:
        """The run has started: the button reads Cancel and the timer polls it."""
        from slicer.i18n import tr as _

        self.runButton().text = _("Cancel")
        self.timer.start()

    def onTimer(self) -> None:
        with slicer.util.tryWithErrorDisplay(self.runFailedText):
            try:
                self.pollRun()
            except Exception:
                self.timer.stop()  # a raising timer would raise again every tick
                self.runButton().text = self.runButtonIdleText
                raise

    def pollRun(self) -> None:
        tick = poll(self.run)
        for line in tick.lines:
            self.ui.logTextEdit.appendPlainText(line)
        self.ui.progressBar.maximum, self.ui.progressBar.value = tick.progress
        self.showRunDetails()
        if tick.finished:
            self.timer.stop()
            self.runButton().text = self.runButtonIdleText
            self.finishRun()

    def showRunDetails(self) -> None:
        """What else the panel shows on each tick of a working run (fine-tuning: the time left)."""
