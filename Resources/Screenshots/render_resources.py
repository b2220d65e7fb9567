"""Draw the extension and module icons (128x128 PNG) and a layout rendering of each module's .ui file.

The layout figures are drawn from the .ui files themselves (widget order, labels, sections); they are
labelled as layout renderings, not screenshots of a running Slicer. Run: python Resources/Screenshots/render_resources.py
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyBboxPatch, Polygon  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
BLUE, ORANGE, GREY = "#1f5f9f", "#e69f00", "#4d4d4d"


def _canvas():
    figure = plt.figure(figsize=(1.28, 1.28), dpi=100)
    axes = figure.add_axes((0, 0, 1, 1))
    axes.set_xlim(0, 128)
    axes.set_ylim(0, 128)
    axes.axis("off")
    return figure, axes


def _tensor(axes, x: float, y: float, size: float, slices: int, core: bool) -> None:
    """A stack of frontal slices (a third-order tensor), the middle core highlighted."""
    step = size * 0.18
    for i in reversed(range(slices)):
        dx, dy = i * step, i * step
        color = ORANGE if core and i == slices // 2 else BLUE
        axes.add_patch(
            Polygon(
                [
                    (x + dx, y + dy),
                    (x + dx + size, y + dy),
                    (x + dx + size, y + dy + size),
                    (x + dx, y + dy + size),
                ],
                closed=True,
                facecolor=color,
                edgecolor="white",
                lw=1.5,
            )
        )


def draw_icons() -> None:
    figure, axes = _canvas()
    _tensor(axes, 14, 14, 64, 4, core=True)
    axes.text(122, 6, "tCUR", ha="right", va="bottom", fontsize=13, weight="bold", color=GREY)
    figure.savefig(ROOT / "Resources/Icons/TCURLoRA.png", transparent=True)
    plt.close(figure)

    figure, axes = _canvas()
    _tensor(axes, 10, 30, 56, 3, core=True)
    axes.annotate("", xy=(120, 64), xytext=(84, 64), arrowprops={"arrowstyle": "-|>", "lw": 4, "color": GREY})
    axes.text(64, 4, "fine-tune", ha="center", va="bottom", fontsize=11, weight="bold", color=GREY)
    figure.savefig(ROOT / "TCURFineTune/Resources/Icons/TCURFineTune.png", transparent=True)
    plt.close(figure)

    figure, axes = _canvas()
    axes.add_patch(
        FancyBboxPatch(
            (14, 24), 100, 90, boxstyle="round,pad=2,rounding_size=30", fc="#d9d9d9", ec=GREY, lw=2
        )
    )
    axes.add_patch(
        FancyBboxPatch((40, 50), 24, 34, boxstyle="round,pad=1,rounding_size=12", fc=ORANGE, ec="white", lw=2)
    )
    axes.add_patch(
        FancyBboxPatch((68, 50), 22, 30, boxstyle="round,pad=1,rounding_size=11", fc=BLUE, ec="white", lw=2)
    )
    axes.text(64, 4, "segment", ha="center", va="bottom", fontsize=11, weight="bold", color=GREY)
    figure.savefig(ROOT / "TCURSegmenter/Resources/Icons/TCURSegmenter.png", transparent=True)
    plt.close(figure)


def _rows(widget: ET.Element, depth: int, out: list[tuple[int, str, str]]) -> None:
    """(depth, kind, text) for every visible widget, in layout order."""
    cls, name = widget.get("class"), widget.get("name")
    text = next((p.findtext("string") for p in widget.findall("property") if p.get("name") == "text"), None)
    if cls == "ctkCollapsibleButton":
        collapsed = any(p.get("name") == "collapsed" for p in widget.findall("property"))
        out.append((depth, "section", f"{'▸' if collapsed else '▾'} {text}"))
        if collapsed:
            return
        depth += 1
    elif cls == "QLabel":
        out.append((depth, "label", text or ""))
    elif cls == "QPushButton":
        out.append((depth, "button", text or name))
    elif cls == "QCheckBox":
        out.append((depth, "check", f"☐ {text}"))
    elif cls in ("qMRMLNodeComboBox", "QComboBox", "QLineEdit", "QSpinBox", "QDoubleSpinBox"):
        items = [i.findtext("property/string") for i in widget.findall("item")]
        out.append((depth, "field", " / ".join(i for i in items if i) or name))
    elif cls in ("QTableWidget", "QPlainTextEdit", "QProgressBar"):
        out.append(
            (
                depth,
                "box",
                {
                    "QTableWidget": "table: volume | segmentation",
                    "QPlainTextEdit": "log",
                    "QProgressBar": "progress ▰▰▰▱▱▱  ETA",
                }[cls],
            )
        )
    for child in widget.iter():
        if child is not widget and child.tag == "widget" and _direct(widget, child):
            _rows(child, depth, out)


def _direct(parent: ET.Element, child: ET.Element) -> bool:
    """True when `child` is the nearest widget below `parent` (layouts and items in between)."""
    stack = list(parent)
    while stack:
        node = stack.pop(0)
        if node is child:
            return True
        if node.tag != "widget":
            stack.extend(list(node))
    return False


def draw_layout(module: str) -> None:
    root = ET.parse(ROOT / module / "Resources/UI" / f"{module}.ui").getroot().find("widget")
    flat: list[tuple[int, str, str]] = []
    _rows(root, 0, flat)
    rows: list[tuple[int, str, str]] = []
    for row in flat:  # a form label and its field share one line
        if row[1] == "field" and rows and rows[-1][1] == "label" and rows[-1][0] == row[0]:
            rows[-1] = (row[0], "labelled", f"{rows[-1][2]}\t{row[2]}")
        else:
            rows.append(row)
    height = 0.32 * len(rows) + 1.0
    figure = plt.figure(figsize=(5.2, height), dpi=110)
    axes = figure.add_axes((0, 0, 1, 1))
    axes.set_xlim(0, 100)
    axes.set_ylim(-len(rows) - 2, 1)
    axes.axis("off")
    axes.text(
        2,
        0,
        f"Layout rendering of {module}.ui (drawn from the .ui file; not a Slicer screenshot)",
        fontsize=7,
        style="italic",
        color=GREY,
        va="center",
    )
    for i, (depth, kind, text) in enumerate(rows, start=1):
        x, y = 3 + depth * 3, -i
        if kind == "section":
            axes.add_patch(
                FancyBboxPatch((x, y - 0.38), 95 - x, 0.76, boxstyle="square,pad=0", fc=BLUE, ec="none")
            )
            axes.text(x + 1, y, text, color="white", fontsize=8, weight="bold", va="center")
        elif kind == "labelled":
            caption, field = text.split("\t")
            axes.text(x, y, caption, fontsize=8, va="center")
            axes.add_patch(
                FancyBboxPatch(
                    (x + 30, y - 0.33),
                    65 - x,
                    0.66,
                    boxstyle="round,pad=0,rounding_size=0.2",
                    fc="white",
                    ec="#9a9a9a",
                    lw=0.8,
                )
            )
            axes.text(x + 31.5, y, field, fontsize=7.5, va="center", color=GREY)
        elif kind == "label":
            axes.text(x, y, text, fontsize=8, va="center")
        else:
            face = {"button": "#e8e8e8", "check": "white", "field": "white", "box": "#f4f4f4"}[kind]
            start = x + (30 if kind == "field" else 0)
            axes.add_patch(
                FancyBboxPatch(
                    (start, y - 0.33),
                    95 - start,
                    0.66,
                    boxstyle="round,pad=0,rounding_size=0.2",
                    fc=face,
                    ec="#9a9a9a",
                    lw=0.8,
                )
            )
            axes.text(
                start + 1.5, y, text, fontsize=7.5, va="center", color=GREY if kind == "field" else "black"
            )
    figure.savefig(ROOT / "Resources/Screenshots" / f"{module}_layout.png")
    plt.close(figure)


if __name__ == "__main__":
    draw_icons()
    for name in ("TCURFineTune", "TCURSegmenter"):
        draw_layout(name)
