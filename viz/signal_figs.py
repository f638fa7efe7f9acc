"""Interactive plotly figures of the per-step probe signals. Pure functions: schema-shaped data in
(docs/signals.md), a `plotly.graph_objects.Figure` with an explicit height out. No torch.

- `convergence_figure`: T-GATE's cross-attention convergence, output_l2 and probs_l2 per layer + the mean.
- `drift_figure`: Faster-Diffusion feature drift: change per block over steps (coloured by role) and a box
  plot of the per-step Frobenius norm per block (their Fig. 3b).
- `token_rank_figure` / `token_rank_summary_figure`: G-WPR token importance maps per layer at a step, and
  its concentration (normalised entropy) per layer and step.

Inside the accelerated run (marks from `analysis.accel.technique_marks`, pruned tokens from the signal
"atedm_pruning"): `convergence_figure(gate_step=)`, `drift_figure(key_steps=)`, `token_rank_figure(pruned=)`.
Every figure takes `title_prefix` ("full compute", "accelerated") so the app can show both runs side by side.
All these arguments default to None: the figure is then unchanged.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from viz import _data as D
from viz import _signal_data as S
from viz.plotly_base import LAYOUT, empty_figure, int_ticks, step_title


def convergence_figure(conv: dict, log_y: bool = False, gate_step: int | None = None,
                       title_prefix: str | None = None, gate_label: str | None = None) -> go.Figure:
    """output_l2 and probs_l2 per attn2 layer over steps (thin), and their mean over layers (thick).
    gate_step: T-GATE's gate (marks["tgate"]["gate_step"]), drawn as a vertical line on both panels; from
    that step on cross-attention is cached, so the accelerated run has no distances there."""
    if not conv or not conv.get("layers"):
        return empty_figure("No cross-attention convergence was captured.")
    steps = list(conv["steps"])
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.1,
                        subplot_titles=("output ‖C<sub>t</sub> − C<sub>t−1</sub>‖₂",
                                        "probabilities ‖P<sub>t</sub> − P<sub>t−1</sub>‖₂"))
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
            x=steps, y=S.nanmean0(arr), mode="lines+markers", name="mean over layers", legendgroup="mean",
            showlegend=(col == 1), line=dict(width=3.5, color="black"),
            hovertemplate="mean<br>step %{x}: %{y:.4g}<extra></extra>",
        ), row=1, col=col)
    fig.update_xaxes(title_text="denoising step t", **int_ticks(len(steps)))
    fig.update_yaxes(title_text="L2 distance to step t−1", row=1, col=1)
    if log_y:
        fig.update_yaxes(type="log")
    if gate_step is not None:
        for col in (1, 2):
            # an annotation on the first panel only: plotly labels an empty annotation "new text"
            label = dict(annotation_text=f"{gate_label or 'T-GATE gate'} (step {gate_step})", annotation_position="top right",
                         annotation_font=dict(size=11, color="#e6550d")) if col == 1 else {}
            fig.add_vline(x=gate_step, line=dict(color="#e6550d", width=2, dash="dash"), row=1, col=col, **label)
    fig.update_layout(**LAYOUT, height=430,
                      title=dict(text=D.with_prefix("Cross-attention convergence (T-GATE)", title_prefix), x=0.01),
                      legend=dict(font=dict(size=10)))
    return fig


def drift_figure(drift: dict, log_y: bool = False, key_steps: Sequence[int] | None = None,
                 title_prefix: str | None = None, measure: str = "relative", key_label: str | None = None) -> go.Figure:
    """Left: change between consecutive steps' block outputs, coloured by encoder / bottleneck / decoder:
    relative to the block's feature norm (default, so blocks of different scale compare) or the raw MSE of
    Faster-Diffusion's Fig. 3a (`measure="mse"`). Right: per-block box plot of the Frobenius norm over steps
    (Fig. 3b).
    key_steps: Faster-Diffusion's key steps (marks["fastdiff"]["key_steps"]), drawn as dotted vertical lines
    on the MSE panel (the encoder runs there; at the other steps its features are reused)."""
    if not drift or not drift.get("blocks"):
        return empty_figure("No feature drift was captured.")
    roles = drift.get("role", {})
    measure = S.drift_measure(drift, measure)
    blocks, colours, mse, frob = S.drift_arrays(drift, measure)
    fig = make_subplots(rows=1, cols=2, column_widths=[0.58, 0.42], horizontal_spacing=0.1,
                        subplot_titles=("relative change per step" if measure == "relative" else "change between steps (MSE)",
                                        "Frobenius norm per block"))
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
    fig.update_xaxes(title_text="denoising step t", row=1, col=1, **int_ticks(mse.shape[-1] if mse.size else 0))
    fig.update_yaxes(title_text="‖F<sub>t</sub> − F<sub>t−1</sub>‖ / ‖F<sub>t−1</sub>‖" if measure == "relative"
                     else "MSE(F<sub>t</sub>, F<sub>t−1</sub>)", row=1, col=1)
    fig.update_yaxes(title_text="‖F<sub>t</sub>‖<sub>F</sub>", row=1, col=2)
    fig.update_xaxes(tickangle=-40, row=1, col=2)
    if log_y:
        fig.update_yaxes(type="log", row=1, col=1)
    if key_steps is not None:
        n = mse.shape[-1] if mse.size else 0
        for k in key_steps:
            if 1 <= k <= n:  # the MSE axis runs over steps 1..n (distance to the previous step)
                fig.add_vline(x=k, line=dict(color="#31a354", width=1.5, dash="dot"), row=1, col=1)
        fig.add_annotation(text=f"{key_label or 'key steps (encoder runs)'}: " + ", ".join(map(str, key_steps)), showarrow=False,
                           xref="x domain", yref="y domain", x=0.01, y=1.0, xanchor="left", yanchor="bottom",
                           font=dict(size=10, color="#31a354"), name="key-steps")
    fig.update_layout(**LAYOUT, height=460, legend=dict(font=dict(size=10)),
                      title=dict(text=D.with_prefix("Feature drift per UNet block (encoder blue · bottleneck green · "
                                                    "decoder red)", title_prefix), x=0.01))
    return fig


def token_rank_figure(token_rank: dict, step: int | None = None, prompt: int = 0,
                      layers: Sequence[str] | None = None, cols: int = 5,
                      timesteps: Sequence[float] | None = None, pruned: dict | None = None,
                      title_prefix: str | None = None) -> go.Figure:
    """G-WPR importance of each spatial token, one map per self-attention layer, at the kept step nearest
    `step`; values are importance x number of tokens (1 = uniform), on one shared scale.
    pruned: the run's "atedm_pruning" signal; the tokens AT-EDM pruned at the shown step are outlined (one
    open square per pruned token) on the layer whose map ranked them."""
    if not token_rank or not token_rank.get("layers"):
        return empty_figure("No token ranks were captured.")
    maps, shown = S.token_rank_maps(token_rank, step, prompt, layers)
    rows, ncols = D.grid_shape(len(maps), cols)
    # every token-rank layer is an attn1: the suffix only crowds a half-width panel's titles
    fig = make_subplots(rows=rows, cols=ncols, subplot_titles=[D.layer_label(l).removesuffix(".attn1") for l, _ in maps],
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
        py, px = D.pruned_cells(pruned, layer, shown, prompt)
        if py.size:
            fig.add_trace(go.Scatter(
                x=px, y=py, mode="markers", name="pruned by AT-EDM", legendgroup="pruned",
                showlegend=not any(t.name == "pruned by AT-EDM" for t in fig.data),
                marker=dict(symbol="square-open", size=max(3, min(12, 150 // max(m.shape))), color="#ff2d2d",
                            line=dict(width=1)),
                hovertemplate=f"{D.layer_label(layer)}<br>x=%{{x}} y=%{{y}}<br>pruned by AT-EDM<extra></extra>",
            ), row=r + 1, col=c + 1)
    for i in range(1, rows * ncols + 1):
        suffix = "" if i == 1 else str(i)
        fig.layout[f"yaxis{suffix}"].update(scaleanchor=f"x{suffix}", autorange="reversed", showticklabels=False,
                                            showgrid=False)
        fig.layout[f"xaxis{suffix}"].update(showticklabels=False, showgrid=False, constrain="domain")
    params = token_rank.get("params") or {}
    sub = ", ".join(f"{k}={v}" for k, v in params.items())
    if pruned:
        sub = (sub + " · " if sub else "") + "red squares: tokens AT-EDM pruned at this step"
    fig.update_layout(**{**LAYOUT, "margin": dict(l=30, r=30, t=105, b=30)}, height=max(280, 200 * rows + 120),
                      title=dict(text=D.with_prefix(f"Token importance (G-WPR) · {step_title(shown, timesteps)}",
                                                    title_prefix) + (f"<br><sup>{sub}</sup>" if sub else ""), x=0.01),
                      legend=dict(orientation="h", x=1.0, xanchor="right", y=1.02, yanchor="bottom"))
    return fig


def token_rank_summary_figure(token_rank: dict, prompt: int | None = None, title_prefix: str | None = None) -> go.Figure:
    """Heat map, layers x steps, of how concentrated token importance is (normalised entropy)."""
    if not token_rank or not token_rank.get("layers"):
        return empty_figure("No token ranks were captured.", height=260)
    layers, steps, ent = S.token_rank_concentration(token_rank, prompt)
    fig = go.Figure(go.Heatmap(
        z=ent, x=steps, y=[D.layer_label(l) for l in layers], colorscale="Cividis",
        colorbar=dict(title=dict(text="normalised<br>entropy", side="right"), thickness=12),
        hovertemplate="%{y}<br>step %{x}<br>entropy %{z:.3f}<extra></extra>",
    ))
    fig.update_xaxes(title_text="denoising step", **int_ticks(len(steps)))
    fig.update_yaxes(autorange="reversed")
    fig.update_layout(**LAYOUT, height=max(260, 28 * len(layers) + 140),
                      title=dict(text=D.with_prefix("Token-importance concentration per layer and step "
                                                    "(1 = uniform, lower = a few tokens dominate)", title_prefix), x=0.01))
    return fig
