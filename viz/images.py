"""Image helpers for the side-by-side view: a difference heat map and pixel-exact upscaling. Pure numpy."""
from __future__ import annotations

import numpy as np


def first_image(images) -> np.ndarray:
    """(B, H, W, 3) -> the first image; (H, W, 3) unchanged."""
    arr = np.asarray(images)
    return arr[0] if arr.ndim == 4 else arr


def upscale(img: np.ndarray, min_side: int = 256) -> np.ndarray:
    """Nearest-neighbour upscaling by a whole factor, so a 64 px image stays crisp on screen and in slides."""
    img = np.asarray(img)
    factor = max(1, -(-min_side // max(1, min(img.shape[:2]))))
    return img.repeat(factor, axis=0).repeat(factor, axis=1) if factor > 1 else img


def difference_image(reference: np.ndarray, image: np.ndarray, vmax: float | None = None,
                     colormap: str = "magma") -> tuple[np.ndarray, float]:
    """|reference - image|, the largest channel difference per pixel, as an RGB heat map (uint8).

    vmax: the difference drawn brightest (0-255 scale); None = the largest difference present (at least 1, so
    identical images draw black). Returns (heat map, vmax used)."""
    from matplotlib import colormaps

    a = np.asarray(reference, dtype=np.int16)
    b = np.asarray(image, dtype=np.int16)
    if a.shape != b.shape:
        raise ValueError(f"images differ in shape: {a.shape} vs {b.shape}")
    diff = np.abs(a - b).max(axis=-1).astype(np.float32)
    top = float(max(1.0, diff.max() if vmax is None else vmax))
    rgb = colormaps[colormap](np.clip(diff / top, 0, 1))[..., :3]
    return (rgb * 255).round().astype(np.uint8), top
