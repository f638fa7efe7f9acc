"""Data preparation shared by the plotly (interactive) and matplotlib (export) figures. Pure numpy/PIL.

Inputs are the schema-shaped signal dicts of docs/signals.md (RunResult.signals[...]) or the dicts that
`analysis.report.load_run` rebuilds from a saved run; arrays may be float16 and may hold NaN for steps a
technique skipped.
"""
from __future__ import annotations

import math
import re
import warnings
from typing import Any, Sequence

import numpy as np

SPECIAL_TOKENS = ("<|startoftext|>", "<|endoftext|>", "<s>", "</s>", "[CLS]", "[SEP]")
PAD = "<pad>"
NORM_MODES = {"per-token": "per-token min-max (each map stretched to 0-1)",
              "shared": "shared scale (0 to the largest value shown)"}
MEAN_LAYER = "mean of all layers"

_ROLE_SHADES = {"encoder": ["#08306b", "#2171b5", "#4292c6", "#6baed6", "#9ecae1"],
                "bottleneck": ["#238b45", "#41ab5d", "#74c476"],
                "decoder": ["#67000d", "#cb181d", "#ef3b2c", "#fb6a4a", "#fc9272"]}
PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf"]


def layer_label(name: str) -> str:
    """'down_blocks.1.attentions.0.transformer_blocks.1.attn2' -> 'down1.a0.t1.attn2'."""
    s = name
    s = re.sub(r"down_blocks\.(\d+)", r"down\1", s)
    s = re.sub(r"up_blocks\.(\d+)", r"up\1", s)
    s = s.replace("mid_block", "mid")
    s = re.sub(r"\.attentions\.(\d+)", r".a\1", s)
    s = re.sub(r"\.transformer_blocks\.(\d+)", r".t\1", s)
    return s


def block_role(block: str, roles: dict | None = None) -> str:
    if roles and block in roles:
        return roles[block]
    if block.startswith("down"):
        return "encoder"
    if block.startswith("mid"):
        return "bottleneck"
    return "decoder"


def block_colours(blocks: Sequence[str], roles: dict | None = None) -> dict[str, str]:
    """One colour per block, shades of its role's hue (encoder blue, bottleneck green, decoder red)."""
    out: dict[str, str] = {}
    count: dict[str, int] = {}
    for b in blocks:
        role = block_role(b, roles)
        shades = _ROLE_SHADES.get(role, PALETTE)
        out[b] = shades[count.get(role, 0) % len(shades)]
        count[role] = count.get(role, 0) + 1
    return out


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


def nearest_index(values: Sequence[int], value: int | None) -> int:
    """Index of the kept step nearest to `value` (None: the last one)."""
    values = list(values)
    if not values:
        raise ValueError("no steps were kept")
    if value is None:
        return len(values) - 1
    return int(np.argmin([abs(v - value) for v in values]))


def resize(a: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a 2-D float map to (h, w); NaN maps stay NaN."""
    a = np.asarray(a, dtype=np.float32)
    if a.shape == tuple(size):
        return a
    if np.isnan(a).all():
        return np.full(size, np.nan, dtype=np.float32)
    from PIL import Image

    img = Image.fromarray(np.nan_to_num(a), mode="F").resize((size[1], size[0]), Image.BILINEAR)
    return np.asarray(img, dtype=np.float32)


def resize_image(img: np.ndarray, side: int) -> np.ndarray:
    img = np.asarray(img)
    if img.shape[0] == side and img.shape[1] == side:
        return img
    from PIL import Image

    return np.asarray(Image.fromarray(img).resize((side, side), Image.BILINEAR))


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


def grid_shape(n: int, cols: int) -> tuple[int, int]:
    cols = max(1, min(cols, n))
    return math.ceil(n / cols), cols


def role_mean(values: np.ndarray, blocks: Sequence[str], roles: dict | None) -> dict[str, np.ndarray]:
    values = np.asarray(values, dtype=np.float64)
    out = {}
    for role in ("encoder", "bottleneck", "decoder"):
        idx = [i for i, b in enumerate(blocks) if block_role(b, roles) == role]
        if idx:
            with np.errstate(all="ignore"):
                out[role] = np.nanmean(values[idx], axis=0)
    return out


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


def nanmean0(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    with np.errstate(all="ignore"):
        count = np.sum(~np.isnan(a), axis=0)
        return np.where(count > 0, np.nansum(a, axis=0) / np.maximum(count, 1), np.nan)


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


# --- quality vs latency rows --------------------------------------------------------------------------

def _num(x: Any) -> float:
    if x is None:
        return math.nan
    if isinstance(x, str):
        return math.inf if x.strip().lower() in ("inf", "+inf", "infinity") else float(x)
    return float(x)


def tradeoff_rows(rows: Sequence[dict]) -> list[dict]:
    """Normalised rows: label, kind ('baseline' | 'steps' | 'technique'), latency_s, psnr_db (inf allowed),
    ssim, speedup (computed from the baseline row when missing)."""
    out = []
    for r in rows:
        label = str(r.get("technique", r.get("label", "?")))
        kind = r.get("kind")
        if kind is None:
            low = label.lower()
            kind = "baseline" if low in ("baseline", "full compute", "none") else (
                "steps" if low.startswith("steps") else "technique")
        out.append({"label": label, "kind": kind, "latency_s": _num(r.get("latency_s")),
                    "psnr_db": _num(r.get("psnr_db")), "ssim": _num(r.get("ssim")),
                    "speedup": _num(r.get("speedup")), "steps": r.get("steps")})
    base = [r for r in out if r["kind"] == "baseline" and math.isfinite(r["latency_s"])]
    if base:
        b = base[0]["latency_s"]
        for r in out:
            if math.isnan(r["speedup"]) and math.isfinite(r["latency_s"]) and r["latency_s"] > 0:
                r["speedup"] = b / r["latency_s"]
    return out


def psnr_cap(rows: Sequence[dict]) -> float:
    """Where to draw PSNR = inf: a little above the best finite PSNR."""
    finite = [r["psnr_db"] for r in rows if math.isfinite(r["psnr_db"])]
    return (max(finite) + 5.0) if finite else 60.0


def technique_family(label: str) -> str:
    return re.split(r"[:\s(]", label, maxsplit=1)[0]


# --- counters --------------------------------------------------------------------------------------------

def counter_rows(counters: dict) -> list[tuple[str, str, float | None, str]]:
    """(plug-in, counter, numeric value or None, display text). Lists (per-step logs) are summed."""
    rows = []
    for plugin, values in (counters or {}).items():
        if not isinstance(values, dict):
            values = {"value": values}
        for key, v in values.items():
            if isinstance(v, (list, tuple, np.ndarray)):
                arr = np.asarray(v)
                if arr.dtype.kind in "biuf" and arr.size:
                    total = float(np.nansum(arr))
                    shown = ", ".join(str(x) for x in arr.ravel()[:12].tolist()) + (" ..." if arr.size > 12 else "")
                    rows.append((plugin, key, total, f"{_fmt(total)} (per step: {shown})"))
                else:
                    rows.append((plugin, key, None, str(list(v))[:120]))
            elif isinstance(v, (bool, np.bool_)):
                rows.append((plugin, key, None, str(bool(v))))
            elif isinstance(v, (int, float, np.integer, np.floating)):
                rows.append((plugin, key, float(v), _fmt(float(v))))
            else:
                rows.append((plugin, key, None, str(v)[:120]))
    return rows


def _fmt(x: float) -> str:
    if math.isfinite(x) and x == int(x):
        return f"{int(x):,}"
    return f"{x:.4g}"


# --- inside the accelerated run (technique marks, analysis.accel.marks) ----------------------------------

def with_prefix(title: str, prefix: str | None) -> str:
    """'Full compute · <title>' when a prefix is given (the app shows full compute and accelerated side by side)."""
    return f"{prefix} · {title}" if prefix else title


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


def self_map_shown(attention_maps: dict, step: int | None, layer: str | None, pixel, head: int | None, prompt: int,
                   image_hw, reused_steps: Sequence[int] | None):
    """(map, shown step, query cell, source step or None): `self_attention_map`, with the source step's map at
    a step whose self-attention was not computed."""
    m, shown, cell = self_attention_map(attention_maps, step, layer, pixel, head, prompt, image_hw)
    source = reuse_source(shown, reused_steps or ())
    if source is not None and np.isnan(m).all():
        m, _, cell = self_attention_map(attention_maps, source, layer, pixel, head, prompt, image_hw)
    return m, shown, cell, source


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


def pruned_cells(pruning: dict | None, layer: str, step: int, prompt: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols) of the tokens AT-EDM pruned in `layer` at `step` (signal "atedm_pruning"); empty when the
    layer was not pruned there."""
    masks = (pruning or {}).get("pruned") or {}
    if layer not in masks or not 0 <= step < masks[layer].shape[0]:
        return np.zeros(0, dtype=int), np.zeros(0, dtype=int)
    rows, cols = np.nonzero(np.asarray(masks[layer][step, prompt]))
    return rows, cols


STRIP_CODES = {"compute": 0, "cache": 1, "reuse": 2, "skip": 2, "prune": 3, "prune-early": 4}


def step_strip_rows(marks: dict) -> list[tuple[str, list[str], list[str]]]:
    """(row label, per-step state, per-step letter) of every technique in `marks` (analysis.accel.marks);
    states are keys of STRIP_CODES."""
    return [tuple(row) for row in marks.get("strip", [])]
