"""Image grids with captions (matplotlib), for sample sheets and slides."""
from __future__ import annotations

import textwrap

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def image_grid_figure(images: list[np.ndarray], captions: list[str], cols: int = 6, wrap: int = 22, title: str | None = None):
    """A grid of uint8 images, each with its (wrapped) caption underneath."""
    rows = max(1, -(-len(images) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.9, rows * 2.45), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, text in zip(axes.flat, images, captions):
        ax.imshow(image, interpolation="nearest")
        ax.set_title("\n".join(textwrap.wrap(text, wrap)), fontsize=6.5, y=-0.02, va="top")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig
