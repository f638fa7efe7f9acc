"""Data shaping for the attention-map figures (cross-attention per token, self-attention of one query), shared
by `viz.attention_figs` (plotly) and `viz.export` (matplotlib). Pure numpy.

Input: the "attention_maps" signal of docs/signals.md (`steps` kept, `cross` / `cross_heads` / `self` /
`self_heads` arrays per layer); maps a technique left uncomputed are NaN, and `reused_steps` (from
`analysis.accel.reused_attention_steps`) names the step whose map the UNet used there.
"""
from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np

from viz._data import nearest_index, resize

SPECIAL_TOKENS = ("<|startoftext|>", "<|endoftext|>", "<s>", "</s>", "[CLS]", "[SEP]")
PAD = "<pad>"
NORM_MODES = {"per-token": "per-token min-max (each map stretched to 0-1)",
              "shared": "shared scale (0 to the largest value shown)"}
MEAN_LAYER = "mean of all layers"


def token_entries(tokens: Sequence[str], special: bool = False) -> list[tuple[int, str]]:
    """(index into the token axis, display label) of the tokens worth showing: never padding; start/end
    tokens only with special=True. Repeated words get their position appended."""
    entries = []
    for i, tok in enumerate(tokens):
        if tok == PAD or (not special and tok in SPECIAL_TOKENS):
            continue
        entries.append((i, tok))
    seen: dict[str, int] = {}
    for _, tok in entries:
        seen[tok] = seen.get(tok, 0) + 1
    return [(i, f"{tok} #{i}" if seen[tok] > 1 else tok) for i, tok in entries]


def normalise(maps: np.ndarray, mode: str) -> tuple[np.ndarray, float, float]:
    """(maps, zmin, zmax) for display. per-token: each map min-max to 0..1; shared: raw values on one
    scale 0..max."""
    maps = np.asarray(maps, dtype=np.float32)
    if mode not in NORM_MODES:
        raise ValueError(f"normalisation must be one of {', '.join(NORM_MODES)}, got {mode!r}")
    if mode == "per-token":
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a map a technique left unobserved is all NaN
            lo = np.nanmin(maps, axis=(-2, -1), keepdims=True)
            hi = np.nanmax(maps, axis=(-2, -1), keepdims=True)
            out = (maps - lo) / np.where(hi - lo > 0, hi - lo, 1)
        return out.astype(np.float32), 0.0, 1.0
    finite = maps[np.isfinite(maps)]
    top = float(finite.max()) if finite.size else 1.0
    return maps, 0.0, top if top > 0 else 1.0


def cross_layers(attention_maps: dict) -> list[str]:
    return list((attention_maps or {}).get("cross", {}) or {})


def cross_maps(attention_maps: dict, layer: str, step: int | None, prompt: int = 0) -> tuple[np.ndarray, int]:
    """(n_tokens, h, w) float32 maps of one cross-attention layer at the kept step nearest `step`, and that
    step. layer=MEAN_LAYER averages every layer, resized to the finest resolution kept."""
    steps = list(attention_maps.get("steps", []))
    si = nearest_index(steps, step)
    cross = attention_maps.get("cross") or {}
    if not cross:
        raise ValueError("no cross-attention maps were captured")
    if layer == MEAN_LAYER or layer is None:
        arrays = [np.asarray(a[si, prompt], dtype=np.float32) for a in cross.values()]
        h = max(a.shape[-2] for a in arrays)
        w = max(a.shape[-1] for a in arrays)
        up = [np.stack([resize(m, (h, w)) for m in a]) for a in arrays]
        with np.errstate(all="ignore"):
            stack = np.stack(up)
            valid = ~np.isnan(stack).all(axis=(1, 2, 3))
            maps = stack[valid].mean(axis=0) if valid.any() else stack[0]
    else:
        if layer not in cross:
            raise ValueError(f"layer {layer!r} was not captured")
        maps = np.asarray(cross[layer][si, prompt], dtype=np.float32)
    return maps, steps[si]


def cross_head_maps(attention_maps: dict, layer: str, step: int | None, head: int, prompt: int = 0) -> tuple[np.ndarray, int]:
    """(n_tokens, h, w) maps of one head of one cross-attention layer at the kept step nearest `step`."""
    heads = (attention_maps.get("cross_heads") or {}).get(layer)
    if heads is None:
        raise ValueError(f"per-head cross-attention maps of {layer!r} were not kept (memory budget or cross_heads=False)")
    steps = list(attention_maps.get("steps", []))
    si = nearest_index(steps, step)
    if not 0 <= head < heads.shape[2]:
        raise ValueError(f"head must be between 0 and {heads.shape[2] - 1}, got {head}")
    return np.asarray(heads[si, prompt, head], dtype=np.float32), steps[si]


def n_heads(attention_maps: dict, layer: str, kind: str = "cross") -> int:
    """How many per-head maps were kept for `layer` (0 = head-averaged only)."""
    arr = (attention_maps.get("cross_heads" if kind == "cross" else "self_heads") or {}).get(layer)
    return 0 if arr is None else int(arr.shape[2])


def reuse_source(step: int, reused_steps: Sequence[int]) -> int | None:
    """The step whose map a reused step uses: the latest earlier step that computed (None if `step` computed)."""
    reused = set(reused_steps or ())
    if step not in reused:
        return None
    s = step - 1
    while s in reused:
        s -= 1
    return s if s >= 0 else None


def cross_maps_shown(attention_maps: dict, layer: str | None, step: int | None, head: int | None, prompt: int,
                     reused_steps: Sequence[int] | None) -> tuple[np.ndarray, int, int | None]:
    """(maps, shown step, source step or None) for a cross-attention view. At a step whose attention was not
    computed (nothing was captured there), the maps are those of the source step the UNet used instead."""
    if head is not None and layer in (None, MEAN_LAYER):
        raise ValueError("pick one layer to see a single head (heads of different layers are unrelated)")

    def maps_at(s):
        if head is None:
            return cross_maps(attention_maps, layer, s, prompt)
        return cross_head_maps(attention_maps, layer, s, head, prompt)

    maps, shown = maps_at(step)
    source = reuse_source(shown, reused_steps or ())
    if source is not None and np.isnan(maps).all():
        maps, _ = maps_at(source)
    return maps, shown, source


def self_layers(attention_maps: dict) -> list[str]:
    return list((attention_maps or {}).get("self", {}) or {})


def query_cell(pixel: tuple[float, float], grid: tuple[int, int], image_hw: tuple[int, int] | None) -> tuple[int, int]:
    """The query cell of a `grid` that holds `pixel` = (row, col): in image pixels when image_hw is given,
    else already in grid cells."""
    r, c = pixel
    if image_hw is not None:
        r, c = r * grid[0] / image_hw[0], c * grid[1] / image_hw[1]
    return min(max(int(r), 0), grid[0] - 1), min(max(int(c), 0), grid[1] - 1)


def self_attention_map(attention_maps: dict, step: int | None, layer: str, pixel: tuple[float, float],
                       head: int | None = None, prompt: int = 0,
                       image_hw: tuple[int, int] | None = None) -> tuple[np.ndarray, int, tuple[int, int]]:
    """(hk, wk) attention of the query cell holding `pixel` over the keys, the step shown and the query cell.
    layer=MEAN_LAYER averages every self-attention layer's map (each at the pixel's own cell), resized to the
    finest key grid and renormalised to sum to 1."""
    selfs = attention_maps.get("self") or {}
    if not selfs:
        raise ValueError("no self-attention maps were captured")
    steps = list(attention_maps.get("steps", []))
    si = nearest_index(steps, step)

    def one(name: str) -> tuple[np.ndarray, tuple[int, int]]:
        if head is None:
            arr = selfs[name][si, prompt]
        else:
            heads = (attention_maps.get("self_heads") or {}).get(name)
            if heads is None:
                raise ValueError(f"per-head self-attention maps of {name!r} were not kept (memory budget or self_heads=False)")
            if not 0 <= head < heads.shape[2]:
                raise ValueError(f"head must be between 0 and {heads.shape[2] - 1}, got {head}")
            arr = heads[si, prompt, head]
        cell = query_cell(pixel, arr.shape[:2], image_hw)
        return np.asarray(arr[cell], dtype=np.float32), cell

    if layer in (None, MEAN_LAYER):
        if head is not None:
            raise ValueError("pick one layer to see a single head (heads of different layers are unrelated)")
        maps = [one(name)[0] for name in selfs]
        h = max(m.shape[0] for m in maps)
        w = max(m.shape[1] for m in maps)
        up = [resize(m, (h, w)) for m in maps]
        up = [u / u.sum() if np.isfinite(u).all() and u.sum() > 0 else np.full((h, w), np.nan, np.float32) for u in up]
        with np.errstate(all="ignore"):
            mean = np.nanmean(np.stack(up), axis=0)
        return mean.astype(np.float32), steps[si], query_cell(pixel, (h, w), image_hw)
    if layer not in selfs:
        raise ValueError(f"layer {layer!r} was not captured")
    m, cell = one(layer)
    return m, steps[si], cell


def self_map_shown(attention_maps: dict, step: int | None, layer: str | None, pixel, head: int | None, prompt: int,
                   image_hw, reused_steps: Sequence[int] | None):
    """(map, shown step, query cell, source step or None): `self_attention_map`, with the source step's map at
    a step whose self-attention was not computed."""
    m, shown, cell = self_attention_map(attention_maps, step, layer, pixel, head, prompt, image_hw)
    source = reuse_source(shown, reused_steps or ())
    if source is not None and np.isnan(m).all():
        m, _, cell = self_attention_map(attention_maps, source, layer, pixel, head, prompt, image_hw)
    return m, shown, cell, source
