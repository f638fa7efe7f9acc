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


def word_maps_figure(rows: list[dict], alpha: float = 0.6, title: str | None = None):
    """One row per model: its image, then each word's cross-attention map over it (each map min-max to 0-1).

    rows: dicts with "label", "image" (H, W, 3) uint8, "words" and "maps" (n_words, H, W), the same words in
    every row, so that a column compares one word across models.
    """
    words = rows[0]["words"]
    fig, axes = plt.subplots(len(rows), len(words) + 1, figsize=(1.45 * (len(words) + 1) + 0.6, 1.6 * len(rows)),
                             squeeze=False)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    for r, row in enumerate(rows):
        axes[r, 0].imshow(row["image"], interpolation="nearest")
        axes[r, 0].set_ylabel("\n".join(textwrap.wrap(row["label"], 16)), fontsize=7)
        for c, (word, m) in enumerate(zip(row["words"], row["maps"]), start=1):
            span = float(m.max() - m.min())
            axes[r, c].imshow(row["image"], interpolation="nearest")
            axes[r, c].imshow((m - m.min()) / span if span > 0 else np.zeros_like(m), cmap="inferno", alpha=alpha,
                              vmin=0, vmax=1, interpolation="bilinear")
            if r == 0:
                axes[r, c].set_title(word, fontsize=8)
    axes[0, 0].set_title("image", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def step_pairs_figure(rows: list[dict], gain: float = 4.0, title: str | None = None):
    """What halving the steps changes, one row per model: for each prompt the full-step image, the half-step
    image and their absolute difference (x `gain`, so a 16-level change is a visible 64).

    rows: dicts with "label" and "pairs", a list of (full (H, W, 3) uint8, half (H, W, 3) uint8, psnr_db).
    """
    n = len(rows[0]["pairs"])
    fig, axes = plt.subplots(len(rows), 3 * n, figsize=(1.05 * 3 * n + 0.6, 1.25 * len(rows) + 0.5), squeeze=False)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    for r, row in enumerate(rows):
        axes[r, 0].set_ylabel("\n".join(textwrap.wrap(row["label"], 16)), fontsize=7)
        for p, (full, half, db) in enumerate(row["pairs"]):
            diff = np.clip(np.abs(full.astype(np.int16) - half.astype(np.int16)) * gain, 0, 255).astype(np.uint8)
            for c, (image, name) in enumerate(((full, "full"), (half, "half"), (diff, f"|diff| x{gain:g}"))):
                axes[r, 3 * p + c].imshow(image, interpolation="nearest")
                axes[r, 3 * p + c].set_title(f"{name}" + (f"\n{db:.1f} dB" if c == 2 else ""), fontsize=6)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig
