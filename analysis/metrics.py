"""Closeness of an image to the same-seed full-compute image: PSNR and SSIM (no weights needed).

Learned and model-specific measures (LPIPS, CLIP score, shapes-world prompt fidelity) are scorers in
analysis/eval/quality.py. JSON output of these numbers goes through analysis/jsonsafe.py (PSNR +inf -> "inf")."""
from __future__ import annotations

import math

import numpy as np
from skimage.metrics import peak_signal_noise_ratio, structural_similarity


def psnr(reference: np.ndarray, image: np.ndarray) -> float:
    """PSNR in dB over uint8 images; identical images give +inf."""
    if np.array_equal(reference, image):
        return math.inf
    return float(peak_signal_noise_ratio(reference, image, data_range=255))


def ssim(reference: np.ndarray, image: np.ndarray) -> float:
    """Mean SSIM over a batch of (B, H, W, 3) or one (H, W, 3) uint8 image."""
    ref = reference.reshape((-1,) + reference.shape[-3:])
    img = image.reshape((-1,) + image.shape[-3:])
    win = min(7, ref.shape[1] - (1 - ref.shape[1] % 2), ref.shape[2] - (1 - ref.shape[2] % 2))
    return float(np.mean([structural_similarity(a, b, channel_axis=-1, data_range=255, win_size=win) for a, b in zip(ref, img)]))

