"""Interactive plotly figures of what a run did: the work each technique skipped and what it did at each step.
Pure functions: schema-shaped data in (docs/signals.md), a `plotly.graph_objects.Figure` with an explicit
height out. No torch.

- `counters_figure`: work skipped, per technique, as bars and a table.
- `step_strip_figure`: one row per technique, one cell per denoising step (marks from
  `analysis.accel.technique_marks`).

The attention maps are drawn by `viz.attention_figs`, the per-step probe signals (convergence, drift, token
rank) by `viz.signal_figs`; `viz.plotly_base` holds the shared style and `empty_figure`.
"""
from __future__ import annotations

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from viz import _data as D
from viz.plotly_base import LAYOUT as _LAYOUT
from viz.plotly_base import empty_figure, int_ticks


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
    fig.update_xaxes(title_text="denoising step", **int_ticks(steps), showgrid=False)
    fig.update_yaxes(autorange="reversed", showgrid=False, automargin=True)
    fig.update_layout(**{**_LAYOUT, "margin": dict(l=60, r=30, t=80, b=50)}, height=150 + 40 * len(rows),
                      title=dict(text=D.with_prefix("What each technique did, per step", title_prefix)
                                      + f"<br><sup>{_STRIP_LEGEND}</sup>", x=0.01))
    return fig
