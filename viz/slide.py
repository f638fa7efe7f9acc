"""A one-slide summary of a run, 16:9 and readable when projected: the prompt, full-compute and accelerated
images with their difference, the numbers, and the trade-off plot with this run marked. Matplotlib, no pyplot."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg", force=False)
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from viz import export  # noqa: E402
from viz.images import difference_image, first_image  # noqa: E402
from viz.tradeoff import tradeoff_axes  # noqa: E402

SLIDE_INCHES = (13.333, 7.5)  # PowerPoint / Keynote 16:9


@export.styled
def summary_slide(prompt: str, label: str, baseline_image: np.ndarray, image: np.ndarray,
                  numbers: Sequence[tuple[str, str]], runs: Sequence[dict], frontier: Sequence[dict] | None = None,
                  shipped: Sequence[dict] | None = None, baseline_latency_s: float | None = None,
                  y: str = "psnr", footer: str = "") -> Figure:
    """numbers: (name, value) pairs shown as a table, e.g. ("speed-up (measured / ideal)", "1.31x / 1.45x")."""
    fig = Figure(figsize=SLIDE_INCHES, dpi=150)
    fig.text(0.03, 0.95, f"“{prompt}”", fontsize=24, weight="bold", va="top")
    fig.text(0.03, 0.885, label, fontsize=18, color="#444", va="top")
    base, acc = first_image(baseline_image), first_image(image)
    diff, top = difference_image(base, acc)
    panels = ((base, "full compute"), (acc, "accelerated"), (diff, f"difference (max {top:.0f}/255)"))
    for i, (img, title) in enumerate(panels):
        ax = fig.add_axes((0.03 + i * 0.155, 0.44, 0.145, 0.36))
        ax.imshow(img, interpolation="nearest")
        ax.set_title(title, fontsize=15)
        ax.set_axis_off()
    table = fig.add_axes((0.03, 0.05, 0.45, 0.34))
    table.set_axis_off()
    for row, (name, value) in enumerate(numbers[:8]):
        yy = 1 - (row + 0.5) / max(len(numbers[:8]), 6)
        table.text(0.0, yy, name, fontsize=16, color="#444", va="center")
        table.text(0.62, yy, value, fontsize=16, weight="bold", va="center")
    ax = fig.add_axes((0.56, 0.12, 0.41, 0.72))
    tradeoff_axes(ax, runs, frontier, shipped, baseline_latency_s, y=y, fontsize=15)
    ax.set_title("quality vs latency", fontsize=17)
    if footer:
        fig.text(0.97, 0.015, footer, fontsize=11, color="#777", ha="right")
    return fig


@export.styled
def tradeoff_figure(runs: Sequence[dict], frontier: Sequence[dict] | None = None,
                    shipped: Sequence[dict] | None = None, baseline_latency_s: float | None = None,
                    y: str = "psnr") -> Figure:
    """The trade-off plot alone, for the figure pack."""
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    tradeoff_axes(fig.add_subplot(), runs, frontier, shipped, baseline_latency_s, y=y, fontsize=11)
    return fig


def figure_slide(png: str | Path, title: str, caption: str, footer: str = "") -> Figure:
    """A 16:9 slide around one saved figure (e.g. an observation): title, the figure at full height, a caption."""
    import textwrap

    from matplotlib.image import imread

    fig = Figure(figsize=SLIDE_INCHES, dpi=150)
    fig.text(0.03, 0.95, title, fontsize=24, weight="bold", va="top")
    image = imread(str(png))
    ax = fig.add_axes((0.03, 0.17, 0.94, 0.70))
    ax.imshow(image)
    ax.set_axis_off()
    fig.text(0.03, 0.13, "\n".join(textwrap.wrap(caption, 125)), fontsize=13, color="#333", va="top")
    if footer:
        fig.text(0.97, 0.02, footer, fontsize=11, color="#888", ha="right")
    return fig
