"""Live training curves (loss, validation Dice per class) as MRML table + plot nodes, saved with the scene."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import slicer
import vtk


class TrainingCurves:
    """A table with one row per progress event and a plot chart of its columns."""

    def __init__(self, label_names: Sequence[str], name: str = "TCURLoRA training") -> None:
        scene = slicer.mrmlScene
        self.label_names = list(label_names)
        self.table = scene.AddNewNodeByClass("vtkMRMLTableNode", f"{name} table")
        self.columns = ["iteration", "loss", *[f"val Dice {n}" for n in self.label_names]]
        for column in self.columns:
            array = vtk.vtkDoubleArray()
            array.SetName(column)
            self.table.AddColumn(array)
        self.chart = scene.AddNewNodeByClass("vtkMRMLPlotChartNode", f"{name} chart")
        self.chart.SetTitle("Training loss and validation Dice")
        self.chart.SetXAxisTitle("iteration")
        self.series = []
        for column in self.columns[1:]:
            series = scene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", column)
            series.SetAndObserveTableNodeID(self.table.GetID())
            series.SetXColumnName("iteration")
            series.SetYColumnName(column)
            series.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeScatter)
            self.chart.AddAndObservePlotSeriesNodeID(series.GetID())
            self.series.append(series)

    def add(self, event: dict[str, Any]) -> None:
        """Append a progress event as a row (missing values as NaN, so the curves simply skip them)."""
        if event.get("event") != "progress":
            return
        dice = event.get("val_dice") or {}
        values = [event.get("iteration"), event.get("loss"), *[dice.get(n) for n in self.label_names]]
        table = self.table.GetTable()
        row = table.InsertNextBlankRow()
        for column, value in enumerate(values):
            table.SetValue(row, column, vtk.vtkVariant(float("nan") if value is None else float(value)))
        table.Modified()

    def rows(self) -> list[list[float]]:
        """The table's values, row by row."""
        table = self.table.GetTable()
        return [
            [table.GetValue(r, c).ToDouble() for c in range(table.GetNumberOfColumns())]
            for r in range(table.GetNumberOfRows())
        ]

    def remove(self) -> None:
        """Delete the nodes from the scene."""
        for node in [*self.series, self.chart, self.table]:
            slicer.mrmlScene.RemoveNode(node)
