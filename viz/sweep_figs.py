"""Figures of a sweep (analysis/eval/sweep.py) and of the sensitivity analysis (analysis/eval/sensitivity.py):
interactive plotly for the app and the HTML report, matplotlib for slides (large fonts, the Okabe-Ito
colour-blind-safe palette, error bars = quartiles over prompts and seeds; fidelity: +- one standard error over
prompts; CLIP score and KID: 95% bootstrap intervals over prompts). Functions take plain rows and return figures; `write_all` / `write_sensitivity` save them.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import plotly.graph_objects as go

from viz.colours import SENSITIVITY_COLOURS, STEP_REDUCTION, family_colour, family_marker

AXIS_LABELS = {"psnr_db": "PSNR to full compute (dB)", "ssim": "SSIM to full compute",
               "fidelity": "prompt fidelity (attribute accuracy)", "clip_score": "CLIP score (shapes-CLIP)",
               "kid_renders": "KID to true renders (shapes-CLIP; lower = better)"}
LATENCY_LABELS = {"relative_latency": "latency relative to full compute (interleaved, median)",
                  "latency_s": "latency per image (s, median)"}
LATENCY_LABEL = LATENCY_LABELS["relative_latency"]
SLIDE_FONT = 16


def _num(x) -> float | None:
    if x is None or x == "inf":
        return math.inf if x == "inf" else None
    try:
        return float(x)
    except (TypeError, ValueError):
        return None


def _plot_value(row: dict, axis: str, cap: float) -> float | None:
    v = _num(row.get(axis))
    if v is None:
        return None
    return min(v, cap) if math.isinf(v) else v


def _cap(summary: Sequence[dict], axis: str) -> float:
    """+inf PSNR (identical to full compute) is drawn at 5 dB above the best finite value."""
    finite = [_num(r.get(axis)) for r in summary]
    finite = [v for v in finite if v is not None and math.isfinite(v)]
    return (max(finite) + 5) if finite else 60.0


def _errors(row: dict, axis: str, value: float, cap: float) -> tuple[float, float]:
    low, high = _num(row.get(f"{axis}_low")), _num(row.get(f"{axis}_high"))
    if low is not None and high is not None:  # a 95% bootstrap interval (the judge's measures)
        return max(0.0, value - low), max(0.0, high - value)
    if axis == "fidelity":
        se = _num(row.get("fidelity_se")) or 0.0
        return se, se
    lo, hi = _num(row.get(f"{axis}_q25")), _num(row.get(f"{axis}_q75"))
    if lo is None or hi is None:
        return 0.0, 0.0
    return max(0.0, value - min(lo, cap)), max(0.0, min(hi, cap) - value)


def _groups(summary: Sequence[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in summary:
        out.setdefault(r["technique"], []).append(r)
    return out


def tradeoff_figure(summary: Sequence[dict], axis: str = "psnr_db", shipped: Sequence[dict] = (),
                    latency: str = "relative_latency") -> go.Figure:
    """Quality on `axis` against median latency, one trace per technique family; the step-reduction ladder is a
    line (the frontier to beat) and full compute a star. `shipped` rows, if given, are drawn faintly behind."""
    cap = _cap(summary, axis)
    fig = go.Figure()
    if shipped:
        pts = [(r[latency], _plot_value(r, axis, cap)) for r in shipped if r.get(latency) is not None]
        pts = [p for p in pts if p[1] is not None]
        fig.add_trace(go.Scatter(x=[p[0] for p in pts], y=[p[1] for p in pts], mode="markers", name="shipped sweep",
                                 marker=dict(color="#999999", size=7, opacity=0.3), hoverinfo="skip"))
    for family, rows in _groups(summary).items():
        rows = sorted((r for r in rows if r.get(latency) is not None and _plot_value(r, axis, cap) is not None),
                      key=lambda r: r[latency])
        if not rows:
            continue
        ys = [_plot_value(r, axis, cap) for r in rows]
        err = [_errors(r, axis, y, cap) for r, y in zip(rows, ys)]
        xerr = [(r[latency] - (_num(r.get(f"{latency}_q25")) or r[latency]),
                 (_num(r.get(f"{latency}_q75")) or r[latency]) - r[latency]) for r in rows]
        style = dict(mode="lines+markers", line=dict(color="#000000", width=2, dash="dash")) if family == STEP_REDUCTION else \
            dict(mode="markers")
        marker = dict(color=family_colour(family), size=16 if family == "baseline" else 10,
                      symbol="star" if family == "baseline" else "circle")
        fig.add_trace(go.Scatter(
            x=[r[latency] for r in rows], y=ys, name="step reduction" if family == STEP_REDUCTION else family,
            text=[r["setting"] for r in rows], marker=marker, **style,
            error_y=dict(type="data", symmetric=False, array=[e[1] for e in err], arrayminus=[e[0] for e in err],
                         thickness=1),
            error_x=dict(type="data", symmetric=False, array=[e[1] for e in xerr], arrayminus=[e[0] for e in xerr],
                         thickness=1),
            hovertemplate="%{text}<br>latency %{x:.3f}<br>" + axis + " %{y:.3f}<extra></extra>"))
    fig.update_layout(template="plotly_white", height=520, title=f"{AXIS_LABELS[axis]} against latency",
                      xaxis_title=LATENCY_LABELS[latency], yaxis_title=AXIS_LABELS[axis], legend_title="technique")
    return fig


def tradeoff_figure_mpl(summary: Sequence[dict], axis: str = "psnr_db", latency: str = "relative_latency"):
    """The slide version of `tradeoff_figure` (matplotlib Figure)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cap = _cap(summary, axis)
    with plt.rc_context({"font.size": SLIDE_FONT, "axes.titlesize": SLIDE_FONT + 2, "axes.labelsize": SLIDE_FONT,
                         "legend.fontsize": SLIDE_FONT - 3}):
        fig, ax = plt.subplots(figsize=(10, 6.5), layout="constrained")
        for family, rows in _groups(summary).items():
            rows = sorted((r for r in rows if r.get(latency) is not None and _plot_value(r, axis, cap) is not None),
                          key=lambda r: r[latency])
            if not rows:
                continue
            xs = [r[latency] for r in rows]
            ys = [_plot_value(r, axis, cap) for r in rows]
            err = list(zip(*[_errors(r, axis, y, cap) for r, y in zip(rows, ys)]))
            colour = family_colour(family)
            if family == STEP_REDUCTION:
                ax.errorbar(xs, ys, yerr=err, color=colour, ls="--", lw=2, marker="o", ms=6, capsize=3,
                            label="step reduction (baseline frontier)")
            elif family == "baseline":
                ax.plot(xs, ys, marker="*", ms=20, color=colour, ls="none", label="full compute")
            else:
                ax.errorbar(xs, ys, yerr=err, color=colour, ls="none", marker=family_marker(family), ms=9,
                            capsize=3, label=family)
        ax.set_xlabel(LATENCY_LABELS[latency])
        ax.set_ylabel(AXIS_LABELS[axis])
        ax.set_title(f"{AXIS_LABELS[axis].split(' (')[0]} vs latency")
        ax.grid(alpha=0.3)
        ax.legend(loc="best", frameon=False)
    return fig


def _policy_steps(policy: str) -> list[int]:
    return [i for i, c in enumerate(policy) if c == "R"]




def _sensitivity_series(result: dict) -> tuple[dict[str, dict], float]:
    """Per perturbation kind: steps t, median final deviation, its distances to the quartiles, growth rate;
    and the highest upper quartile (where the policies' R-step markers go above the curves)."""
    series, top = {}, 0.0
    for kind in sorted({r["kind"] for r in result["curve"]}):
        rows = [r for r in result["curve"] if r["kind"] == kind]
        med = [r["final_deviation"] for r in rows]
        series[kind] = {"t": [r["t"] for r in rows], "median": med,
                        "below": [m - r["final_deviation_q25"] for m, r in zip(med, rows)],
                        "above": [r["final_deviation_q75"] - m for m, r in zip(med, rows)],
                        "exponent": [r["exponent"] if r["exponent"] is not None else float("nan") for r in rows],
                        "exponent_without_last": [float("nan") if r.get("exponent_without_last") is None
                                                  else r["exponent_without_last"] for r in rows]}
        top = max(top, max((r["final_deviation_q75"] for r in rows), default=0))
    return series, top


def _factor_series(result: dict) -> dict[str, dict]:
    """Per kind: steps s, mean log factor and its distances to the interval ends (0 where no interval)."""
    out = {}
    for kind in sorted({f["kind"] for f in result.get("step_factors", [])}):
        fs = [f for f in result["step_factors"] if f["kind"] == kind and f["log_factor"] is not None]
        out[kind] = {"step": [f["step"] for f in fs], "mean": [f["log_factor"] for f in fs],
                     "below": [f["log_factor"] - (f["log_factor_low"] if f["log_factor_low"] is not None else f["log_factor"]) for f in fs],
                     "above": [(f["log_factor_high"] if f["log_factor_high"] is not None else f["log_factor"]) - f["log_factor"] for f in fs]}
    return out


def sensitivity_figure(result: dict) -> go.Figure:
    """Final latent deviation (median, quartiles over prompts) after perturbing step t's attention maps only,
    per perturbation kind, with the R steps of the HURRY / PHAST policies drawn as markers above the curve."""
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=3, cols=1, shared_xaxes=True, vertical_spacing=0.07,
                        subplot_titles=("final latent deviation ||z_end - z_end(full)||",
                                        "growth rate of the deviation from t on (slope of log d_s per step)",
                                        "per-step factor ln(d_s / d_s-1), mean and 95% interval over prompts"))
    series, top = _sensitivity_series(result)
    for kind, d in series.items():
        colour = SENSITIVITY_COLOURS.get(kind)
        fig.add_trace(go.Scatter(x=d["t"], y=d["median"], mode="lines+markers", name=f"{kind}: final deviation",
                                 line=dict(color=colour),
                                 error_y=dict(type="data", symmetric=False, array=d["above"], arrayminus=d["below"])),
                      row=1, col=1)
        fig.add_trace(go.Scatter(x=d["t"], y=d["exponent"], mode="lines+markers",
                                 name=f"{kind}: growth rate", line=dict(color=colour, dash="dot")),
                      row=2, col=1)
        fig.add_trace(go.Scatter(x=d["t"], y=d["exponent_without_last"], mode="lines+markers",
                                 name=f"{kind}: growth rate without the final step", line=dict(color=colour, dash="dash")),
                      row=2, col=1)
    for kind, f in _factor_series(result).items():
        fig.add_trace(go.Scatter(x=f["step"], y=f["mean"], mode="lines+markers", name=f"{kind}: step factor",
                                 line=dict(color=SENSITIVITY_COLOURS.get(kind)),
                                 error_y=dict(type="data", symmetric=False, array=f["above"], arrayminus=f["below"])),
                      row=3, col=1)
    for i, (name, policy) in enumerate(result.get("policies", {}).items()):
        steps = _policy_steps(policy)
        fig.add_trace(go.Scatter(x=steps, y=[top * (1.08 + 0.07 * i)] * len(steps), mode="markers", name=f"{name} R steps",
                                 marker=dict(symbol="triangle-down", size=11, color=["#009E73", "#CC79A7"][i % 2])),
                      row=1, col=1)
    fig.update_xaxes(title_text="perturbed step t (panels 1-2) / step s (panel 3)", row=3, col=1)
    fig.update_yaxes(title_text="deviation", row=1, col=1)
    fig.update_yaxes(title_text="per step", row=2, col=1)
    fig.update_yaxes(title_text="ln factor", row=3, col=1)
    fig.update_layout(template="plotly_white", height=860, title="Sensitivity of the final latent to step t's attention maps")
    return fig


def sensitivity_figure_mpl(result: dict):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series, top = _sensitivity_series(result)
    with plt.rc_context({"font.size": SLIDE_FONT, "legend.fontsize": SLIDE_FONT - 4}):
        factors = _factor_series(result)
        fig, axes = plt.subplots(3 if factors else 2, 1, figsize=(10, 11 if factors else 8), sharex=True,
                                 layout="constrained")
        ax, ax2 = axes[0], axes[1]
        for kind, d in series.items():
            colour = SENSITIVITY_COLOURS.get(kind)
            ax.errorbar(d["t"], d["median"], yerr=[d["below"], d["above"]], color=colour, marker="o", capsize=3,
                        label=f"{kind} at step t")
            ax2.plot(d["t"], d["exponent"], color=colour, marker="o", ls=":", label=f"{kind}, to the end")
            ax2.plot(d["t"], d["exponent_without_last"], color=colour, marker="s", ls="--",
                     label=f"{kind}, without the final step")
        for kind, f in factors.items():
            axes[2].errorbar(f["step"], f["mean"], yerr=[f["below"], f["above"]], color=SENSITIVITY_COLOURS.get(kind),
                             marker="o", capsize=3, label=kind)
        if factors:
            axes[2].axhline(0, color="#999999", lw=1)
            axes[2].set_xlabel("denoising step s")
            axes[2].set_ylabel("per-step factor ln(d_s / d_s-1)")
            axes[2].legend(frameon=False)
            axes[2].grid(alpha=0.3)
        for i, (name, policy) in enumerate(result.get("policies", {}).items()):
            steps = _policy_steps(policy)
            ax.plot(steps, [top * (1.08 + 0.07 * i)] * len(steps), ls="none", marker="v", ms=10,
                    color=["#009E73", "#CC79A7"][i % 2], label=f"{name}: R steps")
        ax.set_ylabel("final latent deviation")
        ax.set_title("Perturbing one step's attention maps")
        ax.legend(frameon=False)
        ax.grid(alpha=0.3)
        ax2.axhline(0, color="#999999", lw=1)
        ax2.set_xlabel("perturbed step t")
        ax2.set_ylabel("growth rate (log d per step)")
        ax2.legend(frameon=False)
        ax2.grid(alpha=0.3)
    return fig


def _save_mpl(fig, stem: Path) -> list[Path]:
    import matplotlib.pyplot as plt

    paths = []
    for ext in ("png", "svg", "pdf"):
        path = stem.with_suffix(f".{ext}")
        fig.savefig(path, dpi=150)
        paths.append(path)
    plt.close(fig)
    return paths


def write_all(summary: Sequence[dict], rows: Sequence[dict], directory: Path, axes=("psnr_db", "ssim", "fidelity", "clip_score", "kid_renders")) -> list[Path]:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for axis in axes:
        if not any(_num(r.get(axis)) is not None for r in summary):
            continue
        html = directory / f"tradeoff-{axis}.html"
        tradeoff_figure(summary, axis).write_html(html, include_plotlyjs="cdn")
        paths += [html] + _save_mpl(tradeoff_figure_mpl(summary, axis), directory / f"tradeoff-{axis}")
    return paths


def write_sensitivity(result: dict, directory: Path) -> list[Path]:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    html = directory / "sensitivity.html"
    sensitivity_figure(result).write_html(html, include_plotlyjs="cdn")
    return [html] + _save_mpl(sensitivity_figure_mpl(result), directory / "sensitivity")
