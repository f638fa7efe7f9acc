"""Interactive plotly figures for the app. Pure functions: schema-shaped data in (docs/signals.md), a
`plotly.graph_objects.Figure` out, with an explicit height. No torch.

- `cross_attention_figure`: one heat map per prompt token (padding excluded) at a chosen step and layer,
  optionally over the generated image; the normalisation mode is named on the colour bar and the title.
- `convergence_figure`: T-GATE's cross-attention convergence, output_l2 and probs_l2 per layer + the mean.
- `drift_figure`: Faster-Diffusion feature drift: MSE per block over steps (coloured by role) and a box
  plot of the per-step Frobenius norm per block (their Fig. 3b).
- `token_rank_figure` / `token_rank_summary_figure`: G-WPR token importance maps per layer at a step, and
  its concentration (normalised entropy) per layer and step.
- `tradeoff_figure`: quality (PSNR, SSIM) against latency; baseline and the step-reduction curve marked.
- `counters_figure`: work skipped, per technique, as bars and a table.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from viz import _data as D
from viz._data import MEAN_LAYER, NORM_MODES  # noqa: F401  (re-exported for the app)

FONT = dict(family="Inter, IBM Plex Sans, Helvetica, Arial, sans-serif", size=12)
_LAYOUT = dict(template="plotly_white", font=FONT, margin=dict(l=60, r=30, t=70, b=50))


def empty_figure(message: str, height: int = 300) -> go.Figure:
    """A blank figure carrying a message (no run yet, nothing captured)."""
    fig = go.Figure()
    fig.add_annotation(text=message, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper",
                       font=dict(size=14, color="#666"))
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    fig.update_layout(**_LAYOUT, height=height)
    return fig


def _int_ticks(n: int) -> dict:
    """Whole-number ticks for a step axis (plotly would otherwise show 1.5, 2.5 on short runs)."""
    return dict(tick0=0, dtick=1) if n <= 25 else dict(tickformat="d")


def _step_title(step: int, timesteps: Sequence[float] | None) -> str:
    if timesteps is not None and 0 <= step < len(timesteps):
        return f"step {step} (t={timesteps[step]:g})"
    return f"step {step}"


def _png_data_uri(img: np.ndarray) -> str:
    """The image as an inline PNG (a fraction of the size of a JSON pixel array)."""
    import base64
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.asarray(img, dtype=np.uint8)[..., :3]).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


# --- cross-attention maps -------------------------------------------------------------------------------

def cross_attention_figure(attention_maps: dict, tokens: Sequence[str], step: int | None = None,
                           layer: str = MEAN_LAYER, prompt: int = 0, norm: str = "per-token",
                           image: np.ndarray | None = None, alpha: float = 0.55, special: bool = False,
                           cols: int = 5, timesteps: Sequence[float] | None = None,
                           colorscale: str = "Inferno") -> go.Figure:
    """Heat-map grid: one panel per token of `tokens` (the prompt's tokens, padding excluded; start/end
    tokens with special=True). `image` (H, W, 3) uint8 puts each map over the generated image with
    opacity `alpha`. `step` is a denoising step index (the nearest kept step is shown)."""
    if not attention_maps or not attention_maps.get("cross"):
        return empty_figure("No cross-attention maps were captured.")
    maps, shown_step = D.cross_maps(attention_maps, layer, step, prompt)
    entries = D.token_entries(tokens, special=special)
    entries = [(i, lab) for i, lab in entries if i < maps.shape[0]]
    if not entries:
        return empty_figure("The prompt has no tokens to show.")
    sel = np.stack([maps[i] for i, _ in entries])
    values, zmin, zmax = D.normalise(sel, norm)
    rows, ncols = D.grid_shape(len(entries), cols)
    fig = make_subplots(rows=rows, cols=ncols, subplot_titles=[lab for _, lab in entries],
                        horizontal_spacing=0.02, vertical_spacing=0.08 if rows > 1 else 0.02)
    side = None
    if image is not None:
        img = np.asarray(image)
        side = min(max(img.shape[0], img.shape[1]), 128)
        uri = _png_data_uri(D.resize_image(img, side))
    bar_title = "0-1 per token" if norm == "per-token" else "attention mass"
    for k, (_, lab) in enumerate(entries):
        r, c = divmod(k, ncols)
        m = values[k]
        if side is not None:
            fig.add_trace(go.Image(source=uri, hoverinfo="skip"), row=r + 1, col=c + 1)
            m = D.resize(m, (side, side))
        fig.add_trace(go.Heatmap(
            z=m, zmin=zmin, zmax=zmax, colorscale=colorscale, opacity=alpha if side is not None else 1.0,
            showscale=(k == 0), colorbar=dict(title=dict(text=bar_title, side="right"), thickness=12, len=0.8),
            name=lab,
            hovertemplate=f"{lab}<br>x=%{{x}} y=%{{y}}<br>value=%{{z:.3f}}<extra></extra>",
        ), row=r + 1, col=c + 1)
        if side is None:
            fig.update_yaxes(autorange="reversed", row=r + 1, col=c + 1)
    n_axes = rows * ncols
    for i in range(1, n_axes + 1):
        suffix = "" if i == 1 else str(i)
        fig.layout[f"yaxis{suffix}"].update(scaleanchor=f"x{suffix}", showticklabels=False, showgrid=False)
        fig.layout[f"xaxis{suffix}"].update(showticklabels=False, showgrid=False, constrain="domain")
    layer_name = "mean of all layers" if layer in (None, MEAN_LAYER) else D.layer_label(layer)
    fig.update_layout(
        **{**_LAYOUT, "margin": dict(l=30, r=30, t=105, b=30)},
        height=max(280, 190 * rows + 120),
        title=dict(text=f"Cross-attention per token · {layer_name} · {_step_title(shown_step, timesteps)}"
                        f"<br><sup>normalisation: {NORM_MODES[norm]}</sup>", x=0.01),
    )
    return fig


# --- convergence -----------------------------------------------------------------------------------------

def convergence_figure(conv: dict, log_y: bool = False) -> go.Figure:
    """output_l2 and probs_l2 per attn2 layer over steps (thin), and their mean over layers (thick)."""
    if not conv or not conv.get("layers"):
        return empty_figure("No cross-attention convergence was captured.")
    steps = list(conv["steps"])
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.1,
                        subplot_titles=("attention output ‖C<sub>t</sub> − C<sub>t−1</sub>‖₂",
                                        "attention probabilities ‖P<sub>t</sub> − P<sub>t−1</sub>‖₂"))
    for col, key in ((1, "output_l2"), (2, "probs_l2")):
        arr = np.asarray(conv.get(key, []), dtype=np.float64)
        if arr.size == 0:
            continue
        for i, layer in enumerate(conv["layers"]):
            fig.add_trace(go.Scatter(
                x=steps, y=arr[i], mode="lines", name=D.layer_label(layer), legendgroup=layer,
                showlegend=(col == 1), line=dict(width=1.2, color=D.PALETTE[i % len(D.PALETTE)]), opacity=0.6,
                hovertemplate=f"{D.layer_label(layer)}<br>step %{{x}}: %{{y:.4g}}<extra></extra>",
            ), row=1, col=col)
        fig.add_trace(go.Scatter(
            x=steps, y=D.nanmean0(arr), mode="lines+markers", name="mean over layers", legendgroup="mean",
            showlegend=(col == 1), line=dict(width=3.5, color="black"),
            hovertemplate="mean<br>step %{x}: %{y:.4g}<extra></extra>",
        ), row=1, col=col)
    fig.update_xaxes(title_text="denoising step t", **_int_ticks(len(steps)))
    fig.update_yaxes(title_text="L2 distance to step t−1", row=1, col=1)
    if log_y:
        fig.update_yaxes(type="log")
    fig.update_layout(**_LAYOUT, height=430, title=dict(text="Cross-attention convergence (T-GATE)", x=0.01),
                      legend=dict(font=dict(size=10)))
    return fig


# --- feature drift ---------------------------------------------------------------------------------------

def drift_figure(drift: dict, log_y: bool = False) -> go.Figure:
    """Left: MSE between consecutive steps' block outputs (Faster-Diffusion Fig. 3a), coloured by
    encoder / bottleneck / decoder. Right: per-block box plot of the Frobenius norm over steps (Fig. 3b)."""
    if not drift or not drift.get("blocks"):
        return empty_figure("No feature drift was captured.")
    roles = drift.get("role", {})
    blocks, colours, mse, frob = D.drift_arrays(drift)
    fig = make_subplots(rows=1, cols=2, column_widths=[0.58, 0.42], horizontal_spacing=0.1,
                        subplot_titles=("feature change between steps (MSE)", "Frobenius norm per step, per block"))
    if mse.size:
        x = list(range(1, mse.shape[1] + 1))
        for i, b in enumerate(blocks):
            role = D.block_role(b, roles)
            fig.add_trace(go.Scatter(
                x=x, y=mse[i], mode="lines+markers", name=f"{b} ({role})", legendgroup=b,
                line=dict(color=colours[b], width=2, dash="solid" if role != "bottleneck" else "dash"),
                marker=dict(size=5), hovertemplate=f"{b} ({role})<br>step %{{x}}: %{{y:.4g}}<extra></extra>",
            ), row=1, col=1)
    if frob.size:
        for i, b in enumerate(blocks):
            fig.add_trace(go.Box(
                y=frob[i], name=b, legendgroup=b, showlegend=False, marker_color=colours[b], boxpoints="all",
                jitter=0.3, pointpos=0, hovertemplate=f"{b}<br>%{{y:.4g}}<extra></extra>",
            ), row=1, col=2)
    fig.update_xaxes(title_text="denoising step t", row=1, col=1, **_int_ticks(mse.shape[-1] if mse.size else 0))
    fig.update_yaxes(title_text="MSE(F<sub>t</sub>, F<sub>t−1</sub>)", row=1, col=1)
    fig.update_yaxes(title_text="‖F<sub>t</sub>‖<sub>F</sub>", row=1, col=2)
    fig.update_xaxes(tickangle=-40, row=1, col=2)
    if log_y:
        fig.update_yaxes(type="log", row=1, col=1)
    fig.update_layout(**_LAYOUT, height=460, legend=dict(font=dict(size=10)),
                      title=dict(text="Feature drift per UNet block (encoder blue · bottleneck green · decoder red)",
                                 x=0.01))
    return fig


# --- token rank ------------------------------------------------------------------------------------------

def token_rank_figure(token_rank: dict, step: int | None = None, prompt: int = 0,
                      layers: Sequence[str] | None = None, cols: int = 5,
                      timesteps: Sequence[float] | None = None) -> go.Figure:
    """G-WPR importance of each spatial token, one map per self-attention layer, at the kept step nearest
    `step`; values are importance x number of tokens (1 = uniform), on one shared scale."""
    if not token_rank or not token_rank.get("layers"):
        return empty_figure("No token ranks were captured.")
    maps, shown = D.token_rank_maps(token_rank, step, prompt, layers)
    rows, ncols = D.grid_shape(len(maps), cols)
    fig = make_subplots(rows=rows, cols=ncols, subplot_titles=[D.layer_label(l) for l, _ in maps],
                        horizontal_spacing=0.03, vertical_spacing=0.1 if rows > 1 else 0.02)
    finite = np.concatenate([m[np.isfinite(m)].ravel() for _, m in maps]) if maps else np.array([1.0])
    zmax = float(np.percentile(finite, 99)) if finite.size else 1.0
    for k, (layer, m) in enumerate(maps):
        r, c = divmod(k, ncols)
        fig.add_trace(go.Heatmap(
            z=m, zmin=0, zmax=max(zmax, 1.0), colorscale="Viridis", showscale=(k == 0),
            colorbar=dict(title=dict(text="importance × N<br>(1 = uniform)", side="right"), thickness=12, len=0.8),
            hovertemplate=f"{D.layer_label(layer)}<br>x=%{{x}} y=%{{y}}<br>%{{z:.2f}}× uniform<extra></extra>",
        ), row=r + 1, col=c + 1)
    for i in range(1, rows * ncols + 1):
        suffix = "" if i == 1 else str(i)
        fig.layout[f"yaxis{suffix}"].update(scaleanchor=f"x{suffix}", autorange="reversed", showticklabels=False,
                                            showgrid=False)
        fig.layout[f"xaxis{suffix}"].update(showticklabels=False, showgrid=False, constrain="domain")
    params = token_rank.get("params") or {}
    sub = ", ".join(f"{k}={v}" for k, v in params.items())
    fig.update_layout(**{**_LAYOUT, "margin": dict(l=30, r=30, t=105, b=30)}, height=max(280, 200 * rows + 120),
                      title=dict(text=f"Token importance (G-WPR) · {_step_title(shown, timesteps)}"
                                      + (f"<br><sup>{sub}</sup>" if sub else ""), x=0.01))
    return fig


def token_rank_summary_figure(token_rank: dict, prompt: int | None = None) -> go.Figure:
    """Heat map, layers x steps, of how concentrated token importance is (normalised entropy)."""
    if not token_rank or not token_rank.get("layers"):
        return empty_figure("No token ranks were captured.", height=260)
    layers, steps, ent = D.token_rank_concentration(token_rank, prompt)
    fig = go.Figure(go.Heatmap(
        z=ent, x=steps, y=[D.layer_label(l) for l in layers], colorscale="Cividis",
        colorbar=dict(title=dict(text="normalised<br>entropy", side="right"), thickness=12),
        hovertemplate="%{y}<br>step %{x}<br>entropy %{z:.3f}<extra></extra>",
    ))
    fig.update_xaxes(title_text="denoising step", **_int_ticks(len(steps)))
    fig.update_yaxes(autorange="reversed")
    fig.update_layout(**_LAYOUT, height=max(260, 28 * len(layers) + 140),
                      title=dict(text="Token-importance concentration per layer and step "
                                      "(1 = uniform, lower = a few tokens dominate)", x=0.01))
    return fig


# --- quality vs latency ----------------------------------------------------------------------------------

def tradeoff_figure(rows: Sequence[dict], title: str = "Quality vs latency") -> go.Figure:
    """rows: dicts with technique (label), latency_s, psnr_db (number or "inf"), ssim, speedup, and
    optionally kind ('baseline' | 'steps' | 'technique'; guessed from the label when absent) and steps.
    The baseline is a black star, plain step reduction a dashed grey curve, techniques coloured markers."""
    data = D.tradeoff_rows(rows)
    if not data:
        return empty_figure("No runs to compare yet.")
    cap = D.psnr_cap(data)
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.1,
                        subplot_titles=("PSNR vs full compute (dB, higher is better)", "SSIM vs full compute"))

    def psnr_y(r):
        return cap if math.isinf(r["psnr_db"]) else r["psnr_db"]

    def hover(r):
        p = "∞ (identical)" if math.isinf(r["psnr_db"]) else f"{r['psnr_db']:.2f} dB"
        sp = f"{r['speedup']:.2f}×" if math.isfinite(r["speedup"]) else "n/a"
        return (f"<b>{r['label']}</b><br>latency {r['latency_s']:.3f} s · speed-up {sp}<br>PSNR {p}"
                f" · SSIM {r['ssim']:.4f}")

    steps_rows = sorted([r for r in data if r["kind"] == "steps"], key=lambda r: r["latency_s"])
    tech = [r for r in data if r["kind"] == "technique"]
    base = [r for r in data if r["kind"] == "baseline"]
    families = sorted({D.technique_family(r["label"]) for r in tech})
    fam_colour = {f: D.PALETTE[(i + 1) % len(D.PALETTE)] for i, f in enumerate(families)}
    for col, metric in ((1, "psnr"), (2, "ssim")):
        y = (lambda r: psnr_y(r)) if metric == "psnr" else (lambda r: r["ssim"])
        if steps_rows:
            fig.add_trace(go.Scatter(
                x=[r["latency_s"] for r in steps_rows], y=[y(r) for r in steps_rows], mode="lines+markers",
                name="step reduction", legendgroup="steps", showlegend=(col == 1),
                line=dict(color="#888", dash="dash", width=2), marker=dict(size=7, symbol="circle-open"),
                text=[hover(r) for r in steps_rows], hovertemplate="%{text}<extra></extra>",
            ), row=1, col=col)
        for fam in families:
            rs = [r for r in tech if D.technique_family(r["label"]) == fam]
            fig.add_trace(go.Scatter(
                x=[r["latency_s"] for r in rs], y=[y(r) for r in rs], mode="markers", name=fam,
                legendgroup=fam, showlegend=(col == 1), marker=dict(size=11, color=fam_colour[fam],
                                                                    line=dict(width=1, color="white")),
                text=[hover(r) for r in rs], hovertemplate="%{text}<extra></extra>",
            ), row=1, col=col)
        if base:
            fig.add_trace(go.Scatter(
                x=[r["latency_s"] for r in base], y=[y(r) for r in base], mode="markers+text",
                name="baseline (full compute)", legendgroup="baseline", showlegend=(col == 1),
                marker=dict(size=16, symbol="star", color="black"), text=["baseline"] * len(base),
                textposition="bottom center", hovertext=[hover(r) for r in base],
                hovertemplate="%{hovertext}<extra></extra>",
            ), row=1, col=col)
    if any(math.isinf(r["psnr_db"]) for r in data):
        fig.add_hline(y=cap, line=dict(color="#bbb", width=1, dash="dot"), row=1, col=1,
                      annotation_text="∞ (identical to full compute)", annotation_position="top left",
                      annotation_font=dict(size=10, color="#888"))
    fig.update_xaxes(title_text="latency (s, median)")
    fig.update_yaxes(title_text="PSNR (dB)", row=1, col=1)
    fig.update_yaxes(title_text="SSIM", row=1, col=2)
    fig.update_layout(**_LAYOUT, height=460, title=dict(text=title, x=0.01), hovermode="closest")
    return fig


# --- counters --------------------------------------------------------------------------------------------

def counters_figure(counters: dict, title: str = "Work actually skipped") -> go.Figure:
    """Bars of the numeric counters of each plug-in (per-step lists summed) above a table of all of them."""
    rows = D.counter_rows(counters)
    if not rows:
        return empty_figure("No counters: no technique was active.", height=220)
    numeric = [r for r in rows if r[2] is not None]
    fig = make_subplots(rows=2 if numeric else 1, cols=1,
                        specs=([[{"type": "xy"}], [{"type": "table"}]] if numeric else [[{"type": "table"}]]),
                        row_heights=[0.55, 0.45] if numeric else None, vertical_spacing=0.08)
    if numeric:
        plugins = list(dict.fromkeys(r[0] for r in numeric))
        for i, p in enumerate(plugins):
            rs = [r for r in numeric if r[0] == p]
            fig.add_trace(go.Bar(
                y=[f"{p} · {r[1]}" for r in rs], x=[r[2] for r in rs], orientation="h", name=p,
                marker_color=D.PALETTE[i % len(D.PALETTE)], text=[r[3].split(" (")[0] for r in rs],
                textposition="auto", hovertemplate="%{y}: %{x:,}<extra></extra>",
            ), row=1, col=1)
        fig.update_yaxes(autorange="reversed", row=1, col=1)
    fig.add_trace(go.Table(
        header=dict(values=["plug-in", "counter", "value"], fill_color="#eef", align="left",
                    font=dict(size=12)),
        cells=dict(values=[[r[0] for r in rows], [r[1] for r in rows], [r[3] for r in rows]], align="left",
                   font=dict(size=11), height=24),
    ), row=2 if numeric else 1, col=1)
    n_bar = len(numeric)
    height = (max(220, 26 * n_bar + 120) if numeric else 0) + 26 * len(rows) + 120
    fig.update_layout(**_LAYOUT, height=int(height), title=dict(text=title, x=0.01), showlegend=False)
    return fig
