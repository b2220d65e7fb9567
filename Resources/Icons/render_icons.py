"""Draw the extension and module icons (128x128 PNG). Run: python Resources/Icons/render_icons.py

(The extension's screenshots must be captured in a running Slicer; nothing here draws them.)
"""

from __future__ import annotations

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


if __name__ == "__main__":
    draw_icons()
