"""Data shaping for the per-step probe figures (T-GATE's cross-attention convergence, Faster-Diffusion's feature
drift, G-WPR token importance), shared by `viz.signal_figs` (plotly) and `viz.export` (matplotlib). Pure numpy.

Inputs: the "cross_attn_convergence", "feature_drift" and "token_rank" signals of docs/signals.md; arrays may
be float16 and hold NaN for steps a technique skipped.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from viz._data import block_colours, nearest_index


def nanmean0(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    with np.errstate(all="ignore"):
        count = np.sum(~np.isnan(a), axis=0)
        return np.where(count > 0, np.nansum(a, axis=0) / np.maximum(count, 1), np.nan)


DRIFT_MEASURES = ("relative", "mse")


def drift_measure(drift: dict, measure: str = "relative") -> str:
    """The change measure a drift figure draws: `measure` where the signal has it, else the raw MSE (runs saved
    before the relative change existed)."""
    if measure not in DRIFT_MEASURES:
        raise ValueError(f"drift measure must be one of {', '.join(DRIFT_MEASURES)}, got {measure!r}")
    return measure if measure in drift else "mse"


def drift_arrays(drift: dict, measure: str = "mse") -> tuple[list[str], dict[str, str], np.ndarray, np.ndarray]:
    """(blocks, colour per block, change (blocks, steps-1), frobenius (blocks, steps)) of a feature_drift signal;
    the change is `measure` ("mse" or "relative", see analysis/probes/drift.py)."""
    blocks = list(drift["blocks"])
    colours = block_colours(blocks, drift.get("role", {}))
    change = np.asarray(drift.get(measure, []), dtype=np.float64)
    frob = np.asarray(drift.get("frobenius", []), dtype=np.float64)
    return blocks, colours, change, frob


def token_rank_maps(token_rank: dict, step: int | None, prompt: int = 0,
                    layers: Sequence[str] | None = None) -> tuple[list[tuple[str, np.ndarray]], int]:
    """[(layer, (h, w) importance x h*w, so 1 = uniform)] at the kept step nearest `step`, and that step."""
    steps = list(token_rank.get("steps", []))
    si = nearest_index(steps, step)
    out = []
    for layer in layers or token_rank.get("layers", []):
        s = np.asarray(token_rank["scores"][layer][si, prompt], dtype=np.float32)
        out.append((layer, s * s.size))
    return out, steps[si]


def token_rank_concentration(token_rank: dict, prompt: int | None = None) -> tuple[list[str], list[int], np.ndarray]:
    """(layers, steps, normalised entropy (n_layers, n_steps)); 1 = importance spread uniformly over the
    tokens, 0 = one token holds all of it. prompt=None averages the prompts."""
    layers = list(token_rank.get("layers", []))
    steps = list(token_rank.get("steps", []))
    rows = []
    for layer in layers:
        s = np.asarray(token_rank["scores"][layer], dtype=np.float64)
        if prompt is not None:
            s = s[:, prompt:prompt + 1]
        flat = s.reshape(s.shape[0], s.shape[1], -1)
        n = flat.shape[-1]
        total = flat.sum(-1, keepdims=True)
        p = flat / np.where(total > 0, total, 1)
        with np.errstate(all="ignore"):
            h = -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1)), 0.0), axis=-1)
            h = h / (math.log(n) if n > 1 else 1.0)
        h = np.where(np.isnan(flat).any(-1), np.nan, h)
        with np.errstate(all="ignore"):
            rows.append(np.nanmean(h, axis=1))
    return layers, steps, np.array(rows, dtype=np.float64).reshape(len(layers), len(steps))
