"""The fine-tune panel's live curves: one table row per progress event, a series per column, in the real
MRML scene; other events and missing values do not break the table."""

from __future__ import annotations

import math

from TCURLoRACommon.curves import TrainingCurves


def test_progress_events_become_rows_and_the_nodes_go_with_remove(mrml) -> None:
    curves = TrainingCurves(["Anterior", "Posterior"], name="run")
    assert curves.columns == ["iteration", "loss", "val Dice Anterior", "val Dice Posterior"]
    assert [s.GetYColumnName() for s in curves.series] == curves.columns[1:]
    curves.add({"event": "progress", "iteration": 1, "loss": 1.5})
    curves.add({"event": "log", "message": "not a row"})
    curves.add({"event": "progress", "iteration": 2, "loss": 1.25, "val_dice": {"Anterior": 0.5}})
    rows = curves.rows()
    assert [r[:2] for r in rows] == [[1.0, 1.5], [2.0, 1.25]]
    assert math.isnan(rows[0][2]) and rows[1][2] == 0.5 and math.isnan(rows[1][3])
    assert mrml.GetFirstNodeByName("run table") is curves.table
    curves.remove()
    assert mrml.GetFirstNodeByName("run table") is None and mrml.GetFirstNodeByName("run chart") is None
