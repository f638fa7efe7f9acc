"""Interactive plotly figures of the attention maps. Pure functions: the "attention_maps" signal
(docs/signals.md) in, a `plotly.graph_objects.Figure` with an explicit height out. No torch.

- `cross_attention_figure`: one heat map per prompt token (padding excluded) at a chosen step and layer,
  optionally over the generated image; the normalisation mode is named on the colour bar and the title.
- `self_attention_figure`: where one query pixel looks, over every key, optionally over the image.

Inside the accelerated run: `reused_steps` (`analysis.accel.reused_attention_steps`) badges a step whose
attention was not computed with the step whose map the UNet used, and `head=` shows one head. Every figure takes
`title_prefix` ("full compute", "accelerated") so the app can show both runs side by side.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from viz import _attention_data as A
from viz import _data as D
from viz._attention_data import MEAN_LAYER, NORM_MODES
from viz.plotly_base import LAYOUT, empty_figure, png_data_uri, step_title


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
    maps, shown_step, source = A.cross_maps_shown(attention_maps, layer, step, head, prompt, reused_steps)
    entries = A.token_entries(tokens, special=special)
    entries = [(i, lab) for i, lab in entries if i < maps.shape[0]]
    if not entries:
        return empty_figure("The prompt has no tokens to show.")
    sel = np.stack([maps[i] for i, _ in entries])
    values, zmin, zmax = A.normalise(sel, norm)
    rows, ncols = D.grid_shape(len(entries), cols)
    fig = make_subplots(rows=rows, cols=ncols, subplot_titles=[lab for _, lab in entries],
                        horizontal_spacing=0.02, vertical_spacing=0.08 if rows > 1 else 0.02)
    side = None
    if image is not None:
        img = np.asarray(image)
        side = min(max(img.shape[0], img.shape[1]), 128)
        uri = png_data_uri(D.resize_image(img, side))
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
        **{**LAYOUT, "margin": dict(l=30, r=30, t=105, b=30 if source is None else 55)},
        height=max(280, 190 * rows + 120) + (0 if source is None else 25),
        title=dict(text=D.with_prefix(f"Cross-attention per token · {layer_name} · {head_name} · "
                                      f"{step_title(shown_step, timesteps)}{badge}", title_prefix)
                        + f"<br><sup>normalisation: {NORM_MODES[norm]}</sup>", x=0.01),
    )
    if source is not None:
        fig.add_annotation(text=f"♻ reused: not computed at step {shown_step}, map of step {source}",
                           name="reused-badge", showarrow=False, xref="paper", yref="paper", x=1.0, y=0.0,
                           # under the maps: above them it collides with the title or the token labels in a narrow panel
                           xanchor="right", yanchor="top", yshift=-8, bgcolor="#fde2c8", bordercolor="#e6550d",
                           borderwidth=1, font=dict(size=11, color="#7f2704"))
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
    m, shown, cell, source = A.self_map_shown(attention_maps, step, layer, pixel, head, prompt, image_hw, reused_steps)
    fig = go.Figure()
    if image is not None:
        img = np.asarray(image)
        side = min(max(img.shape[0], img.shape[1]), 256)
        fig.add_trace(go.Image(source=png_data_uri(D.resize_image(img, side)), hoverinfo="skip"))
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
    fig.update_layout(**{**LAYOUT, "margin": dict(l=30, r=30, t=90, b=30)}, height=460,
                      title=dict(text=D.with_prefix(f"Self-attention of one query · {layer_name} · {head_name} · "
                                                    f"{step_title(shown, timesteps)}{badge}", title_prefix)
                                      + f"<br><sup>{where} (query cell {cell} of the layer's grid); "
                                        f"where it attends, summing to 1</sup>", x=0.01))
    return fig
