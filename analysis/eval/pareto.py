"""Pareto frontiers of latency against one quality axis, and the comparison with the step-reduction ladder at
equal measured latency (the frontier report)."""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from analysis.accel import ladder_families

# quality axis -> True when higher is better
AXES: dict[str, bool] = {"psnr_db": True, "ssim": True, "fidelity": True, "clip_score": True, "kid_renders": False}


def _finite_or_inf(x) -> float | None:
    if x is None:
        return None
    x = float(x)
    return None if math.isnan(x) else x


def pareto_front(rows: Sequence[dict], axis: str, latency: str = "latency_s") -> list[dict]:
    """Rows not dominated on (lower latency, better `axis`), sorted by latency. A row is dominated when
    another is at least as fast and at least as good, and strictly better in one. Rows missing either value
    are left out; +inf PSNR (identical to full compute) counts as the best possible."""
    higher = AXES[axis]
    pts = []
    for r in rows:
        lat, q = _finite_or_inf(r.get(latency)), _finite_or_inf(r.get(axis))
        if lat is None or q is None:
            continue
        pts.append((lat, q if higher else -q, r))
    front = []
    for lat, q, r in pts:
        dominated = any(l2 <= lat and q2 >= q and (l2 < lat or q2 > q) for l2, q2, _ in pts)
        if not dominated:
            front.append((lat, r))
    front.sort(key=lambda x: x[0])
    out, seen = [], set()
    for _, r in front:  # exact duplicates (same latency and quality) appear once
        key = (r.get(latency), r.get(axis), r.get("setting"))
        if key not in seen:
            seen.add(key)
            out.append(r)
    return out


def ladder_at(ladder: Sequence[dict], latency: float, axis: str, latency_key: str = "latency_s") -> float | None:
    """The step-reduction ladder's quality at `latency`, linearly interpolated between its settings (the
    baseline frontier); None outside the ladder's latency range or without two finite points."""
    pts = sorted((float(r[latency_key]), float(r[axis])) for r in ladder
                 if r.get(latency_key) is not None and r.get(axis) is not None and math.isfinite(float(r[axis])))
    if len(pts) < 2 or not pts[0][0] <= latency <= pts[-1][0]:
        return None
    xs, ys = zip(*pts)
    return float(np.interp(latency, xs, ys))


def versus_ladder(summary: Sequence[dict], axes: Sequence[str] = tuple(AXES),
                  latency_key: str = "relative_latency") -> list[dict]:
    """For every non-ladder setting: its quality minus the ladder's at the same latency, per axis (positive =
    better than step reduction for higher-is-better axes; for kid_renders, negative = better). The ladder ends
    at full compute (the baseline row). By default latency is relative to the interleaved full-compute
    timing (median of latency / baseline latency per row), which a drifting shared machine cannot bias."""
    ladder = [r for r in summary if r.get("technique") in ladder_families()]
    out = []
    for r in summary:
        if r.get("technique") in ladder_families() or r.get(latency_key) is None:
            continue
        row = {"setting": r["setting"], "technique": r["technique"], latency_key: r[latency_key],
               "speedup": r.get("speedup")}
        for axis in axes:
            ref = ladder_at(ladder, float(r[latency_key]), axis, latency_key)
            q = _finite_or_inf(r.get(axis))
            row[f"{axis}_vs_steps"] = None if ref is None or q is None or math.isinf(q) else q - ref
        out.append(row)
    return out


def best_at_matched_latency(summary: Sequence[dict], target: dict, tolerance: float = 0.1,
                            latency_key: str = "relative_latency", exclude=("peer", "baseline")) -> dict:
    """Per quality axis, our best setting (not a peer, not full compute) whose latency is within `tolerance`
    (relative) of `target`'s: {axis: (setting, value) or None}. For the peers' side-by-side comparison."""
    lat = target.get(latency_key)
    out: dict = {}
    for axis, higher in AXES.items():
        best = None
        for r in summary:
            q, l2 = _finite_or_inf(r.get(axis)), r.get(latency_key)
            if r.get("technique") in exclude or q is None or l2 is None or lat is None:
                continue
            if abs(l2 - lat) > tolerance * lat:
                continue
            if best is None or (q > best[1] if higher else q < best[1]):
                best = (r["setting"], q)
        out[axis] = best
    return out
