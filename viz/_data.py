"""Data shaping every figure family shares (layer labels, block roles and colours, kept-step lookup, resizing,
panel grids, title prefixes) and the rows of the run-summary figures (quality vs latency, counters, what each
technique did per step). Pure numpy/PIL. The attention-map data lives in `viz._attention_data`, the per-step
probe data (convergence, drift, token rank) in `viz._signal_data`.

Inputs are the schema-shaped signal dicts of docs/signals.md (RunResult.signals[...]) or the dicts that
`analysis.report.load_run` rebuilds from a saved run; arrays may be float16 and may hold NaN for steps a
technique skipped.
"""
from __future__ import annotations

import math
import re
from typing import Sequence

import numpy as np

from viz.numbers import count

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


def grid_shape(n: int, cols: int) -> tuple[int, int]:
    cols = max(1, min(cols, n))
    return math.ceil(n / cols), cols


def with_prefix(title: str, prefix: str | None) -> str:
    """'Full compute · <title>' when a prefix is given (the app shows full compute and accelerated side by side)."""
    return f"{prefix} · {title}" if prefix else title


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
    return count(x)


# --- inside the accelerated run (technique marks, analysis.accel.marks) ----------------------------------

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
