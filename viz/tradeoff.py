"""The live quality-versus-latency plot: this session's runs, the step-reduction frontier of the current prompt
and seed, and the shipped default-model sweep drawn faintly behind. Plotly for the app, matplotlib for slides.

Inputs are plain dicts (no torch):
- `runs`: rows with id, label, technique (family), latency_s, speedup, psnr_db (inf allowed), ssim, fidelity
  (0-1 or None), ideal_speedup, and `current` (the run on screen) / `same_baseline` (measured against the
  baseline now on screen; others are drawn hollow);
- `frontier`: rows with steps, latency_s, psnr_db, ssim, fidelity (the last one is the full-compute run);
- `shipped`: per-setting summary rows of a sweep (setting, technique, speedup, psnr_db, fidelity). Their
  latencies were measured on another day and machine load, so they are placed at
  `baseline_latency_s / speedup`: on this machine's current clock, by their measured speed-up;
- `y`: "psnr" (closeness to full compute), "fidelity" (prompt fidelity) or "clip" (CLIP score; shapes-CLIP on
  the default model). Shipped points carry their 95% bootstrap interval where the sweep has one
  (`<key>_low`, `<key>_high`), drawn as error bars.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from viz import numbers
from viz.colours import STEP_REDUCTION, family_colour

Y_AXES = {"psnr": ("psnr_db", "PSNR vs full compute (dB)"), "fidelity": ("fidelity", "prompt fidelity (%)"),
          "clip": ("clip_score", "CLIP score")}


def _finite(x) -> float:
    if x is None:
        return math.nan
    if isinstance(x, str):
        return math.inf if x.strip().lower() in ("inf", "+inf", "infinity") else float(x)
    return float(x)


def y_values(rows: Sequence[dict], y: str) -> np.ndarray:
    key = Y_AXES[y][0]
    vals = np.array([_finite(r.get(key)) for r in rows], dtype=float)
    return vals * 100.0 if y == "fidelity" else vals


def shipped_interval(rows: Sequence[dict], y: str, values: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(below, above) error-bar lengths from the rows' 95% intervals on this axis; None where they have none."""
    key = Y_AXES[y][0]
    if not rows or not all(r.get(f"{key}_low") is not None and r.get(f"{key}_high") is not None for r in rows):
        return None
    scale = 100.0 if y == "fidelity" else 1.0
    low = np.array([_finite(r[f"{key}_low"]) for r in rows]) * scale
    high = np.array([_finite(r[f"{key}_high"]) for r in rows]) * scale
    return np.maximum(values - low, 0), np.maximum(high - values, 0)


def psnr_cap(*groups: Sequence[dict]) -> float:
    """Where PSNR = inf (identical to full compute) is drawn: 5 dB above the best finite value."""
    finite = [v for g in groups for v in y_values(g, "psnr") if math.isfinite(v)]
    return (max(finite) + 5.0) if finite else 60.0


def prepare(runs: Sequence[dict], frontier: Sequence[dict] | None, shipped: Sequence[dict] | None,
            baseline_latency_s: float | None, y: str) -> dict:
    """Everything both renderers draw, as arrays: one place for the inf cap and the shipped rescaling."""
    if y not in Y_AXES:
        raise ValueError(f"y must be one of {', '.join(Y_AXES)}, got {y!r}")
    frontier = list(frontier or [])
    shipped_rows = [r for r in (shipped or []) if _finite(r.get("speedup")) > 0] if baseline_latency_s else []
    cap = psnr_cap(runs, frontier, shipped_rows) if y == "psnr" else None

    def ys(rows):
        v = y_values(rows, y)
        return np.where(np.isinf(v), cap, v) if cap is not None else v

    return {
        "cap": cap,
        "runs": list(runs), "runs_x": np.array([_finite(r["latency_s"]) for r in runs]), "runs_y": ys(runs),
        "frontier": frontier, "frontier_x": np.array([_finite(r["latency_s"]) for r in frontier]),
        "frontier_y": ys(frontier),
        "shipped": shipped_rows,
        "shipped_x": np.array([baseline_latency_s / _finite(r["speedup"]) for r in shipped_rows]),
        "shipped_y": ys(shipped_rows),
        "shipped_err": shipped_interval(shipped_rows, y, ys(shipped_rows)),
        "y_title": Y_AXES[y][1],
    }


def _hover(r: dict) -> str:
    p = _finite(r.get("psnr_db"))
    psnr = numbers.psnr(p)
    fid = r.get("fidelity")
    ideal = r.get("ideal_speedup")
    return (f"<b>#{r.get('id', '')} {r.get('label', '')}</b><br>latency {_finite(r['latency_s']):.3f} s · "
            f"speed-up {_finite(r.get('speedup')):.2f}×" + (f" (ideal {ideal:.2f}×)" if ideal else "")
            + f"<br>PSNR {psnr} · fidelity {'n/a' if fid is None else f'{fid:.0%}'}"
            + ("" if r.get("clip_score") is None else f" · CLIP score {r['clip_score']:.1f}"))


def tradeoff_figure(runs: Sequence[dict], frontier: Sequence[dict] | None = None,
                    shipped: Sequence[dict] | None = None, baseline_latency_s: float | None = None,
                    y: str = "psnr", height: int = 420):
    """Plotly figure of the trade-off; see the module docstring for the inputs."""
    import plotly.graph_objects as go

    d = prepare(runs, frontier, shipped, baseline_latency_s, y)
    fig = go.Figure()
    if d["shipped"]:
        fams = [r.get("technique", "?") for r in d["shipped"]]
        fig.add_trace(go.Scatter(
            x=d["shipped_x"].tolist(), y=d["shipped_y"].tolist(), mode="markers", name="shipped sweep (default model)",
            marker=dict(size=7, color=[family_colour(f) for f in fams], opacity=0.22),
            error_y=None if d["shipped_err"] is None else dict(
                type="data", symmetric=False, array=d["shipped_err"][1].tolist(),
                arrayminus=d["shipped_err"][0].tolist(), color="rgba(120,120,120,0.35)", thickness=1, width=0),
            text=[f"{r.get('setting', '')}<br>sweep median: speed-up {_finite(r['speedup']):.2f}×" for r in d["shipped"]],
            hovertemplate="%{text}<extra>shipped sweep</extra>"))
    if len(d["frontier"]) > 1:  # measured so far: the full-compute point alone until the first step count lands
        fig.add_trace(go.Scatter(
            x=d["frontier_x"].tolist(), y=d["frontier_y"].tolist(), mode="lines+markers+text", name="step reduction (this prompt, seed)",
            line=dict(color=family_colour(STEP_REDUCTION), dash="dash", width=2), marker=dict(size=6, symbol="circle-open"),
            text=[str(r["steps"]) for r in d["frontier"]], textposition="top center", textfont=dict(size=10),
            hovertemplate="%{text} steps<br>latency %{x:.3f} s<br>%{y:.1f}<extra>step reduction</extra>"))
    if d["frontier"]:
        base_x, base_y = d["frontier_x"][-1], d["frontier_y"][-1]
        fig.add_trace(go.Scatter(x=[float(base_x)], y=[float(base_y)], mode="markers", name="full compute",
                                 marker=dict(size=16, symbol="star", color="black"),
                                 hovertemplate="full compute<br>latency %{x:.3f} s<extra></extra>"))
    for fam in dict.fromkeys(r["technique"] for r in d["runs"]):
        idx = [i for i, r in enumerate(d["runs"]) if r["technique"] == fam]
        rows = [d["runs"][i] for i in idx]
        fig.add_trace(go.Scatter(
            x=d["runs_x"][idx].tolist(), y=d["runs_y"][idx].tolist(), mode="markers", name=fam,
            customdata=[r.get("id") for r in rows],
            marker=dict(size=[18 if r.get("current") else 11 for r in rows], color=family_colour(fam),
                        symbol=["circle" if r.get("same_baseline", True) else "circle-open" for r in rows],
                        line=dict(width=[3 if r.get("current") else 1 for r in rows],
                                  color=["black" if r.get("current") else "white" for r in rows])),
            text=[_hover(r) for r in rows], hovertemplate="%{text}<extra></extra>"))
    if d["cap"] is not None:
        fig.add_hline(y=d["cap"], line=dict(color="#bbb", width=1, dash="dot"),
                      annotation_text="∞: identical to full compute", annotation_position="top left",
                      annotation_font=dict(size=10, color="#888"))
    fig.update_xaxes(title_text="latency (s, this machine)", rangemode="tozero")
    fig.update_yaxes(title_text=d["y_title"])
    fig.update_layout(template="plotly_white", height=height, margin=dict(l=60, r=20, t=50, b=50),
                      title=dict(text="Quality vs latency · ● this session, ◌ other prompts/seeds", x=0.01,
                                 font=dict(size=14)),
                      legend=dict(orientation="h", y=-0.22), hovermode="closest",
                      font=dict(family="Inter, IBM Plex Sans, Helvetica, Arial, sans-serif", size=12))
    return fig


def tradeoff_axes(ax, runs: Sequence[dict], frontier: Sequence[dict] | None = None,
                  shipped: Sequence[dict] | None = None, baseline_latency_s: float | None = None,
                  y: str = "psnr", fontsize: float = 12) -> None:
    """Draw the trade-off into a matplotlib Axes (slides, figure packs): the same layers as the plotly one."""
    d = prepare(runs, frontier, shipped, baseline_latency_s, y)
    if d["shipped"]:
        ax.scatter(d["shipped_x"], d["shipped_y"], s=18, alpha=0.22, linewidths=0,
                   c=[family_colour(r.get("technique", "?")) for r in d["shipped"]], label="shipped sweep")
        if d["shipped_err"] is not None:
            ax.errorbar(d["shipped_x"], d["shipped_y"], yerr=np.vstack(d["shipped_err"]), fmt="none",
                        ecolor="#999", alpha=0.35, lw=0.8)
    if d["frontier"]:
        ax.plot(d["frontier_x"], d["frontier_y"], "--o", color=family_colour(STEP_REDUCTION), mfc="none", ms=5, lw=1.6,
                label="step reduction")
        for x, yy, r in zip(d["frontier_x"], d["frontier_y"], d["frontier"]):
            ax.annotate(str(r["steps"]), (x, yy), xytext=(0, 5), textcoords="offset points", ha="center",
                        fontsize=fontsize * 0.7, color="#555")
        ax.scatter([d["frontier_x"][-1]], [d["frontier_y"][-1]], marker="*", s=220, color="black", zorder=4,
                   label="full compute")
    for fam in dict.fromkeys(r["technique"] for r in d["runs"]):
        idx = [i for i, r in enumerate(d["runs"]) if r["technique"] == fam]
        ax.scatter(d["runs_x"][idx], d["runs_y"][idx], s=70, color=family_colour(fam), edgecolor="white",
                   zorder=3, label=fam)
    for i, r in enumerate(d["runs"]):
        if r.get("current"):
            ax.scatter([d["runs_x"][i]], [d["runs_y"][i]], s=260, facecolor="none", edgecolor="black", lw=2.2,
                       zorder=5, label="this run")
    if d["cap"] is not None:
        ax.axhline(d["cap"], color="#bbb", lw=0.8, ls=":")
        ax.annotate("∞: identical", (0.01, d["cap"]), xycoords=("axes fraction", "data"), va="bottom",
                    fontsize=fontsize * 0.7, color="#888")
    ax.set_xlabel("latency (s)", fontsize=fontsize)
    ax.set_ylabel(d["y_title"], fontsize=fontsize)
    ax.tick_params(labelsize=fontsize * 0.85)
    ax.set_xlim(left=0)
    ax.legend(fontsize=fontsize * 0.7, frameon=False, loc="lower right")
