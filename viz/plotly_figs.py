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

Inside the accelerated run (marks from `analysis.accel.technique_marks`, pruned tokens from the signal
"atedm_pruning"): `convergence_figure(gate_step=)`, `drift_figure(key_steps=)`,
`token_rank_figure(pruned=)`, `cross_attention_figure(reused_steps=, head=)`, `step_strip_figure(marks)`
and `self_attention_figure(...)`. Every figure takes `title_prefix` ("full compute", "accelerated") so the
app can show both runs side by side. All these arguments default to None: the figure is then unchanged.
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
                           colorscale: str = "Inferno", head: int | None = None,
                           reused_steps: Sequence[int] | None = None, title_prefix: str | None = None) -> go.Figure:
    """Heat-map grid: one panel per token of `tokens` (the prompt's tokens, padding excluded; start/end
    tokens with special=True). `image` (H, W, 3) uint8 puts each map over the generated image with
    opacity `alpha`. `step` is a denoising step index (the nearest kept step is shown).

    head: None = the mean over heads; an index = that head of `layer` (needs the signal's cross_heads).
    reused_steps: steps whose cross-attention was not computed (reuse R steps, T-GATE after its gate;
    `analysis.accel.reused_attention_steps`): when the shown step is one, a badge names the step whose map it is."""
    if not attention_maps or not attention_maps.get("cross"):
        return empty_figure("No cross-attention maps were captured.")
    maps, shown_step, source = D.cross_maps_shown(attention_maps, layer, step, head, prompt, reused_steps)
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
    head_name = "mean over heads" if head is None else f"head {head}"
    badge = "" if source is None else f" · <b>REUSED</b> (map of step {source})"
    fig.update_layout(
        **{**_LAYOUT, "margin": dict(l=30, r=30, t=105, b=30 if source is None else 55)},
        height=max(280, 190 * rows + 120) + (0 if source is None else 25),
        title=dict(text=D.with_prefix(f"Cross-attention per token · {layer_name} · {head_name} · "
                                      f"{_step_title(shown_step, timesteps)}{badge}", title_prefix)
                        + f"<br><sup>normalisation: {NORM_MODES[norm]}</sup>", x=0.01),
    )
    if source is not None:
        fig.add_annotation(text=f"♻ reused: not computed at step {shown_step}, map of step {source}",
                           name="reused-badge", showarrow=False, xref="paper", yref="paper", x=1.0, y=0.0,
                           # under the maps: above them it collides with the title or the token labels in a narrow panel
                           xanchor="right", yanchor="top", yshift=-8, bgcolor="#fde2c8", bordercolor="#e6550d",
                           borderwidth=1, font=dict(size=11, color="#7f2704"))
    return fig


# --- convergence -----------------------------------------------------------------------------------------

def convergence_figure(conv: dict, log_y: bool = False, gate_step: int | None = None,
                       title_prefix: str | None = None) -> go.Figure:
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
            x=steps, y=D.nanmean0(arr), mode="lines+markers", name="mean over layers", legendgroup="mean",
            showlegend=(col == 1), line=dict(width=3.5, color="black"),
            hovertemplate="mean<br>step %{x}: %{y:.4g}<extra></extra>",
        ), row=1, col=col)
    fig.update_xaxes(title_text="denoising step t", **_int_ticks(len(steps)))
    fig.update_yaxes(title_text="L2 distance to step t−1", row=1, col=1)
    if log_y:
        fig.update_yaxes(type="log")
    if gate_step is not None:
        for col in (1, 2):
            # an annotation on the first panel only: plotly labels an empty annotation "new text"
            label = dict(annotation_text=f"T-GATE gate (step {gate_step})", annotation_position="top right",
                         annotation_font=dict(size=11, color="#e6550d")) if col == 1 else {}
            fig.add_vline(x=gate_step, line=dict(color="#e6550d", width=2, dash="dash"), row=1, col=col, **label)
    fig.update_layout(**_LAYOUT, height=430,
                      title=dict(text=D.with_prefix("Cross-attention convergence (T-GATE)", title_prefix), x=0.01),
                      legend=dict(font=dict(size=10)))
    return fig


# --- feature drift ---------------------------------------------------------------------------------------

def drift_figure(drift: dict, log_y: bool = False, key_steps: Sequence[int] | None = None,
                 title_prefix: str | None = None, measure: str = "relative") -> go.Figure:
    """Left: change between consecutive steps' block outputs, coloured by encoder / bottleneck / decoder:
    relative to the block's feature norm (default, so blocks of different scale compare) or the raw MSE of
    Faster-Diffusion's Fig. 3a (`measure="mse"`). Right: per-block box plot of the Frobenius norm over steps
    (Fig. 3b).
    key_steps: Faster-Diffusion's key steps (marks["fastdiff"]["key_steps"]), drawn as dotted vertical lines
    on the MSE panel (the encoder runs there; at the other steps its features are reused)."""
    if not drift or not drift.get("blocks"):
        return empty_figure("No feature drift was captured.")
    roles = drift.get("role", {})
    measure = D.drift_measure(drift, measure)
    blocks, colours, mse, frob = D.drift_arrays(drift, measure)
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
    fig.update_xaxes(title_text="denoising step t", row=1, col=1, **_int_ticks(mse.shape[-1] if mse.size else 0))
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
        fig.add_annotation(text="key steps (encoder runs): " + ", ".join(map(str, key_steps)), showarrow=False,
                           xref="x domain", yref="y domain", x=0.01, y=1.0, xanchor="left", yanchor="bottom",
                           font=dict(size=10, color="#31a354"), name="key-steps")
    fig.update_layout(**_LAYOUT, height=460, legend=dict(font=dict(size=10)),
                      title=dict(text=D.with_prefix("Feature drift per UNet block (encoder blue · bottleneck green · "
                                                    "decoder red)", title_prefix), x=0.01))
    return fig


# --- token rank ------------------------------------------------------------------------------------------

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
    maps, shown = D.token_rank_maps(token_rank, step, prompt, layers)
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
    fig.update_layout(**{**_LAYOUT, "margin": dict(l=30, r=30, t=105, b=30)}, height=max(280, 200 * rows + 120),
                      title=dict(text=D.with_prefix(f"Token importance (G-WPR) · {_step_title(shown, timesteps)}",
                                                    title_prefix) + (f"<br><sup>{sub}</sup>" if sub else ""), x=0.01),
                      legend=dict(orientation="h", x=1.0, xanchor="right", y=1.02, yanchor="bottom"))
    return fig


def token_rank_summary_figure(token_rank: dict, prompt: int | None = None, title_prefix: str | None = None) -> go.Figure:
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
                      title=dict(text=D.with_prefix("Token-importance concentration per layer and step "
                                                    "(1 = uniform, lower = a few tokens dominate)", title_prefix), x=0.01))
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

def counters_figure(counters: dict, title: str = "Work actually skipped", title_prefix: str | None = None) -> go.Figure:
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
    fig.update_layout(**_LAYOUT, height=int(height), title=dict(text=D.with_prefix(title, title_prefix), x=0.01),
                      showlegend=False)
    return fig


# --- inside the accelerated run ------------------------------------------------------------------------

_STRIP_COLOURS = [[0.0, "#e8e8e8"], [0.2, "#e8e8e8"], [0.2, "#6baed6"], [0.4, "#6baed6"], [0.4, "#fd8d3c"],
                  [0.6, "#fd8d3c"], [0.6, "#cb181d"], [0.8, "#cb181d"], [0.8, "#fcae91"], [1.0, "#fcae91"]]
_STRIP_LEGEND = ("grey: computed · blue (S): computed and cached · orange (R / –): reused, not computed · "
                 "red (P): tokens pruned · pink (d): DSAP early step (prunes less)")


def step_strip_figure(marks: dict, current_step: int | None = None, title_prefix: str | None = None) -> go.Figure:
    """One row per technique, one cell per denoising step, saying what the technique did there (from
    `analysis.accel.technique_marks`): reuse C/R, T-GATE compute/cache/reuse for cross- and self-attention,
    Faster-Diffusion key (K) or skipped (–) encoder, AT-EDM full (P) or DSAP-early (d) pruning.
    current_step: the step the other views show, outlined."""
    rows = D.step_strip_rows(marks or {})
    if not rows:
        return empty_figure("No technique with per-step marks is active.", height=160)
    steps = int(marks["steps"])
    z = [[D.STRIP_CODES[state] for state in states] for _, states, _ in rows]
    text = [letters for _, _, letters in rows]
    labels = [label for label, _, _ in rows]
    fig = go.Figure(go.Heatmap(
        z=z, x=list(range(steps)), y=labels, text=text, texttemplate="%{text}", zmin=-0.5, zmax=4.5,
        colorscale=_STRIP_COLOURS, showscale=False, xgap=2, ygap=3, textfont=dict(size=11),
        customdata=[states for _, states, _ in rows],
        hovertemplate="%{y}<br>step %{x}: %{customdata}<extra></extra>",
    ))
    if current_step is not None and 0 <= current_step < steps:
        fig.add_shape(type="rect", x0=current_step - 0.5, x1=current_step + 0.5, y0=-0.5, y1=len(rows) - 0.5,
                      line=dict(color="black", width=2.5), name="current-step")
    fig.update_xaxes(title_text="denoising step", **_int_ticks(steps), showgrid=False)
    fig.update_yaxes(autorange="reversed", showgrid=False, automargin=True)
    fig.update_layout(**{**_LAYOUT, "margin": dict(l=60, r=30, t=80, b=50)}, height=150 + 40 * len(rows),
                      title=dict(text=D.with_prefix("What each technique did, per step", title_prefix)
                                      + f"<br><sup>{_STRIP_LEGEND}</sup>", x=0.01))
    return fig


def self_attention_figure(attention_maps: dict, step: int | None = None, layer: str | None = MEAN_LAYER,
                          pixel: tuple[float, float] = (0, 0), head: int | None = None, prompt: int = 0,
                          image: np.ndarray | None = None, alpha: float = 0.6,
                          timesteps: Sequence[float] | None = None, reused_steps: Sequence[int] | None = None,
                          colorscale: str = "Inferno", title_prefix: str | None = None) -> go.Figure:
    """Where one query pixel looks: the self-attention of the query cell holding `pixel` over every key, at
    the kept step nearest `step`, in `layer` (MEAN_LAYER: every layer at the pixel's own cell, averaged).

    pixel = (row, col): in image pixels when `image` (H, W, 3) is given (the map is drawn over it and the
    pixel marked), else in the layer's kept query grid. head: None = mean over heads, an index = that head
    (needs the signal's self_heads). reused_steps: steps whose self-attention was not computed (reuse scope
    self/both, T-GATE's cached self-attention), badged like `cross_attention_figure`."""
    if not attention_maps or not attention_maps.get("self"):
        return empty_figure("No self-attention maps were captured.")
    image_hw = None if image is None else tuple(np.asarray(image).shape[:2])
    m, shown, cell, source = D.self_map_shown(attention_maps, step, layer, pixel, head, prompt, image_hw, reused_steps)
    fig = go.Figure()
    if image is not None:
        img = np.asarray(image)
        side = min(max(img.shape[0], img.shape[1]), 256)
        fig.add_trace(go.Image(source=_png_data_uri(D.resize_image(img, side)), hoverinfo="skip"))
        z = D.resize(m, (side, side))
        mark = ((pixel[0] + 0.5) * side / image_hw[0] - 0.5, (pixel[1] + 0.5) * side / image_hw[1] - 0.5)
    else:
        z = m
        mark = (float(cell[0]), float(cell[1]))
    fig.add_trace(go.Heatmap(
        z=z, colorscale=colorscale, opacity=alpha if image is not None else 1.0, zmin=0,
        colorbar=dict(title=dict(text="attention mass", side="right"), thickness=12, len=0.8),
        hovertemplate="key x=%{x} y=%{y}<br>%{z:.4f}<extra></extra>", name="self-attention",
    ))
    fig.add_trace(go.Scatter(x=[mark[1]], y=[mark[0]], mode="markers", name="query pixel", showlegend=False,
                             marker=dict(symbol="x-thin", size=16, line=dict(width=3, color="#00e5ff")),
                             hovertemplate="query pixel<extra></extra>"))
    if image is None:
        fig.update_yaxes(autorange="reversed")
    fig.update_yaxes(scaleanchor="x", showticklabels=False, showgrid=False)
    fig.update_xaxes(showticklabels=False, showgrid=False, constrain="domain")
    layer_name = "mean of all layers" if layer in (None, MEAN_LAYER) else D.layer_label(layer)
    head_name = "mean over heads" if head is None else f"head {head}"
    badge = "" if source is None else f" · <b>REUSED</b> (map of step {source})"
    where = f"pixel (row {pixel[0]:g}, col {pixel[1]:g})" if image is not None else f"cell {cell}"
    fig.update_layout(**{**_LAYOUT, "margin": dict(l=30, r=30, t=90, b=30)}, height=460,
                      title=dict(text=D.with_prefix(f"Self-attention of one query · {layer_name} · {head_name} · "
                                                    f"{_step_title(shown, timesteps)}{badge}", title_prefix)
                                      + f"<br><sup>{where} (query cell {cell} of the layer's grid); "
                                        f"where it attends, summing to 1</sup>", x=0.01))
    return fig
