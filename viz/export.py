"""Static matplotlib versions of the app's figures, for lab slides and papers.

Same inputs as the plotly figures (`viz.attention_figs`, `viz.signal_figs`, `viz.plotly_figs`; schema-shaped
dicts, docs/signals.md), a `matplotlib.figure.Figure` out; `save(fig, "fig.pdf")` or `fig.savefig(...)` writes
PNG/PDF/SVG. Figures are built without pyplot (no global state, nothing to close, safe in threads) in a clean
sans-serif style.

    from analysis.report import load_run
    from viz import export
    data, signals = load_run("out/run1")
    export.save(export.convergence_figure(signals["cross_attn_convergence"]), "convergence.pdf")
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg", force=False)
import matplotlib.patches  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from viz import _attention_data as A  # noqa: E402
from viz import _data as D  # noqa: E402
from viz import _signal_data as S  # noqa: E402
from viz._attention_data import MEAN_LAYER, NORM_MODES  # noqa: E402

STYLE = {
    "font.family": "sans-serif",
    "font.sans-serif": ["Inter", "IBM Plex Sans", "Helvetica", "Arial", "DejaVu Sans"],
    "font.size": 9,
    "axes.titlesize": 9,
    "axes.labelsize": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": False,
    "legend.fontsize": 7,
    "legend.frameon": False,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "figure.dpi": 100,
    "savefig.dpi": 200,
    "savefig.bbox": "tight",
    "pdf.fonttype": 42,  # embed TrueType: text stays editable in Illustrator/Keynote
    "svg.fonttype": "none",
}


def styled(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with matplotlib.rc_context(STYLE):
            return fn(*args, **kwargs)

    return wrapper


def save(fig: Figure, path: str | Path, dpi: int = 200) -> Path:
    """Write `fig` to `path`; the format follows the suffix (.png, .pdf, .svg)."""
    path = Path(path)
    with matplotlib.rc_context(STYLE):
        fig.savefig(path, dpi=dpi, bbox_inches="tight")
    return path


def _message(text: str) -> Figure:
    fig = Figure(figsize=(5, 1.5))
    ax = fig.add_subplot()
    ax.axis("off")
    ax.text(0.5, 0.5, text, ha="center", va="center", color="#666")
    return fig


def _step_title(step: int, timesteps) -> str:
    if timesteps is not None and 0 <= step < len(timesteps):
        return f"step {step} (t={timesteps[step]:g})"
    return f"step {step}"


def _grid(n: int, cols: int, cell: float = 1.6, extra_w: float = 0.8, extra_h: float = 0.7):
    rows, ncols = D.grid_shape(n, cols)
    fig = Figure(figsize=(ncols * cell + extra_w, rows * (cell + 0.25) + extra_h), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, ncols, squeeze=False)).ravel()
    for ax in axes[n:]:
        ax.axis("off")
    return fig, axes


@styled
def cross_attention_figure(attention_maps: dict, tokens: Sequence[str], step: int | None = None,
                           layer: str = MEAN_LAYER, prompt: int = 0, norm: str = "per-token",
                           image: np.ndarray | None = None, alpha: float = 0.55, special: bool = False,
                           cols: int = 6, timesteps: Sequence[float] | None = None, cmap: str = "inferno",
                           head: int | None = None, reused_steps: Sequence[int] | None = None,
                           title_prefix: str | None = None) -> Figure:
    if not attention_maps or not attention_maps.get("cross"):
        return _message("No cross-attention maps were captured.")
    maps, shown, source = A.cross_maps_shown(attention_maps, layer, step, head, prompt, reused_steps)
    entries = [(i, lab) for i, lab in A.token_entries(tokens, special=special) if i < maps.shape[0]]
    if not entries:
        return _message("The prompt has no tokens to show.")
    values, zmin, zmax = A.normalise(np.stack([maps[i] for i, _ in entries]), norm)
    fig, axes = _grid(len(entries), cols)
    img = None
    if image is not None:
        img = np.asarray(image)
    mappable = None
    for ax, (_, lab), m in zip(axes, entries, values):
        if img is not None:
            ax.imshow(img, extent=(0, 1, 1, 0), interpolation="bilinear")
            mappable = ax.imshow(m, extent=(0, 1, 1, 0), cmap=cmap, vmin=zmin, vmax=zmax, alpha=alpha,
                                 interpolation="bilinear")
        else:
            mappable = ax.imshow(m, cmap=cmap, vmin=zmin, vmax=zmax, interpolation="nearest")
        ax.set_title(lab)
        ax.set_xticks([])
        ax.set_yticks([])
        for s in ax.spines.values():
            s.set_visible(False)
    bar = fig.colorbar(mappable, ax=list(axes[:len(entries)]), shrink=0.8, pad=0.02)
    bar.set_label("0-1 per token" if norm == "per-token" else "attention mass")
    layer_name = "mean of all layers" if layer in (None, MEAN_LAYER) else D.layer_label(layer)
    head_name = "mean over heads" if head is None else f"head {head}"
    badge = "" if source is None else f" · REUSED (map of step {source})"
    fig.suptitle(D.with_prefix(f"Cross-attention per token · {layer_name} · {head_name} · "
                               f"{_step_title(shown, timesteps)}{badge}", title_prefix)
                 + f"\nnormalisation: {NORM_MODES[norm]}", fontsize=9)
    return fig


@styled
def convergence_figure(conv: dict, log_y: bool = False, gate_step: int | None = None,
                       title_prefix: str | None = None) -> Figure:
    if not conv or not conv.get("layers"):
        return _message("No cross-attention convergence was captured.")
    steps = list(conv["steps"])
    fig = Figure(figsize=(7.5, 2.8), layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, key, title in ((axes[0], "output_l2", r"attention output $\|C_t - C_{t-1}\|_2$"),
                           (axes[1], "probs_l2", r"attention probabilities $\|P_t - P_{t-1}\|_2$")):
        arr = np.asarray(conv.get(key, []), dtype=np.float64)
        if arr.size:
            for i, layer in enumerate(conv["layers"]):
                ax.plot(steps, arr[i], lw=0.9, alpha=0.55, color=D.PALETTE[i % len(D.PALETTE)],
                        label=D.layer_label(layer))
            ax.plot(steps, S.nanmean0(arr), lw=2.4, color="black", marker="o", ms=3, label="mean over layers")
        ax.set_title(title)
        ax.set_xlabel("denoising step t")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if log_y:
            ax.set_yscale("log")
        if gate_step is not None:
            ax.axvline(gate_step, color="#e6550d", lw=1.5, ls="--", label=f"T-GATE gate (step {gate_step})")
    axes[0].set_ylabel("L2 distance to step t-1")
    axes[1].legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.suptitle(D.with_prefix("Cross-attention convergence (T-GATE)", title_prefix), fontsize=10)
    return fig


@styled
def drift_figure(drift: dict, log_y: bool = False, key_steps: Sequence[int] | None = None,
                 title_prefix: str | None = None, measure: str = "relative") -> Figure:
    if not drift or not drift.get("blocks"):
        return _message("No feature drift was captured.")
    roles = drift.get("role", {})
    measure = S.drift_measure(drift, measure)
    blocks, colours, mse, frob = S.drift_arrays(drift, measure)
    fig = Figure(figsize=(8, 3.6), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2, width_ratios=[1.3, 1])
    if mse.size:
        x = np.arange(1, mse.shape[1] + 1)
        for i, b in enumerate(blocks):
            role = D.block_role(b, roles)
            ax1.plot(x, mse[i], color=colours[b], lw=1.5, marker="o", ms=2.5,
                     ls="--" if role == "bottleneck" else "-", label=f"{b} ({role})")
        ax1.set_xlabel("denoising step t")
        ax1.set_ylabel(r"$\|F_t - F_{t-1}\| / \|F_{t-1}\|$" if measure == "relative" else r"MSE$(F_t, F_{t-1})$")
        ax1.set_title("feature change between steps")
        if log_y:
            ax1.set_yscale("log")
        ax1.xaxis.set_major_locator(MaxNLocator(integer=True))
        for i, k in enumerate(k for k in (key_steps or ()) if 1 <= k <= mse.shape[1]):
            ax1.axvline(k, color="#31a354", lw=1, ls=":", label="key step (encoder runs)" if i == 0 else None)
        fig.legend(*ax1.get_legend_handles_labels(), loc="outside lower center", ncols=4)
    if frob.size:
        data = [row[np.isfinite(row)] for row in frob]
        bp = ax2.boxplot(data, patch_artist=True, widths=0.6, medianprops=dict(color="black"))
        for patch, b in zip(bp["boxes"], blocks):
            patch.set_facecolor(colours[b])
            patch.set_alpha(0.6)
        ax2.set_xticks(range(1, len(blocks) + 1), blocks, rotation=40, ha="right")
        ax2.set_ylabel(r"$\|F_t\|_F$")
        ax2.set_title("Frobenius norm per step, per block")
    fig.suptitle(D.with_prefix("Feature drift per UNet block (encoder blue, bottleneck green, decoder red)",
                               title_prefix), fontsize=10)
    return fig


@styled
def token_rank_figure(token_rank: dict, step: int | None = None, prompt: int = 0,
                      layers: Sequence[str] | None = None, cols: int = 6,
                      timesteps: Sequence[float] | None = None, pruned: dict | None = None,
                      title_prefix: str | None = None) -> Figure:
    if not token_rank or not token_rank.get("layers"):
        return _message("No token ranks were captured.")
    maps, shown = S.token_rank_maps(token_rank, step, prompt, layers)
    fig, axes = _grid(len(maps), cols)
    finite = np.concatenate([m[np.isfinite(m)].ravel() for _, m in maps])
    vmax = max(float(np.percentile(finite, 99)) if finite.size else 1.0, 1.0)
    im = None
    for ax, (layer, m) in zip(axes, maps):
        im = ax.imshow(m, cmap="viridis", vmin=0, vmax=vmax, interpolation="nearest")
        py, px = D.pruned_cells(pruned, layer, shown, prompt)
        if py.size:  # one open square per pruned token
            ax.scatter(px, py, marker="s", s=max(2.0, (60 / max(m.shape)) ** 2), facecolors="none",
                       edgecolors="#ff2d2d", linewidths=0.6)
        ax.set_title(D.layer_label(layer), fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(im, ax=list(axes[:len(maps)]), shrink=0.8, pad=0.02).set_label("importance x N (1 = uniform)")
    note = "\nred squares: tokens AT-EDM pruned at this step" if pruned else ""
    fig.suptitle(D.with_prefix(f"Token importance (G-WPR) · {_step_title(shown, timesteps)}", title_prefix) + note,
                 fontsize=10)
    return fig


@styled
def token_rank_summary_figure(token_rank: dict, prompt: int | None = None) -> Figure:
    if not token_rank or not token_rank.get("layers"):
        return _message("No token ranks were captured.")
    layers, steps, ent = S.token_rank_concentration(token_rank, prompt)
    fig = Figure(figsize=(max(4, 0.35 * len(steps) + 2.5), 0.3 * len(layers) + 1.4), layout="constrained")
    ax = fig.add_subplot()
    im = ax.imshow(ent, aspect="auto", cmap="cividis", interpolation="nearest")
    ax.set_yticks(range(len(layers)), [D.layer_label(l) for l in layers])
    ax.set_xticks(range(len(steps)), steps)
    ax.set_xlabel("denoising step")
    fig.colorbar(im, ax=ax).set_label("normalised entropy")
    ax.set_title("Token-importance concentration (1 = uniform)")
    return fig


@styled
def counters_figure(counters: dict, title: str = "Work actually skipped") -> Figure:
    rows = D.counter_rows(counters)
    if not rows:
        return _message("No counters: no technique was active.")
    numeric = [r for r in rows if r[2] is not None]
    fig = Figure(figsize=(6, 0.3 * len(numeric) + 1.2), layout="constrained")
    ax = fig.add_subplot()
    labels = [f"{r[0]} · {r[1]}" for r in numeric]
    plugins = list(dict.fromkeys(r[0] for r in numeric))
    colours = [D.PALETTE[plugins.index(r[0]) % len(D.PALETTE)] for r in numeric]
    ax.barh(range(len(numeric)), [r[2] for r in numeric], color=colours)
    ax.set_yticks(range(len(numeric)), labels)
    ax.invert_yaxis()
    for i, r in enumerate(numeric):
        ax.annotate(r[3].split(" (")[0], (r[2], i), xytext=(3, 0), textcoords="offset points", va="center",
                    fontsize=7)
    ax.set_title(title)
    return fig


@styled
def step_strip_figure(marks: dict, current_step: int | None = None, title_prefix: str | None = None) -> Figure:
    """What each technique did per step (analysis.accel.technique_marks), as in viz.plotly_figs."""
    from matplotlib.colors import ListedColormap

    rows = D.step_strip_rows(marks or {})
    if not rows:
        return _message("No technique with per-step marks is active.")
    steps = int(marks["steps"])
    z = np.array([[D.STRIP_CODES[state] for state in states] for _, states, _ in rows])
    fig = Figure(figsize=(max(4.0, 0.28 * steps + 2.5), 0.35 * len(rows) + 1.0), layout="constrained")
    ax = fig.add_subplot()
    cmap = ListedColormap(["#e8e8e8", "#6baed6", "#fd8d3c", "#cb181d", "#fcae91"])
    ax.imshow(z, cmap=cmap, vmin=-0.5, vmax=4.5, aspect="auto", interpolation="nearest")
    for r, (_, _, letters) in enumerate(rows):
        for c, letter in enumerate(letters):
            ax.text(c, r, letter, ha="center", va="center", fontsize=7)
    if current_step is not None and 0 <= current_step < steps:
        ax.add_patch(matplotlib.patches.Rectangle((current_step - 0.5, -0.5), 1, len(rows), fill=False, lw=2))
    ax.set_yticks(range(len(rows)), [label for label, _, _ in rows])
    ax.set_xticks(range(steps), range(steps), fontsize=7)
    ax.set_xlabel("denoising step")
    ax.set_title(D.with_prefix("What each technique did, per step", title_prefix))
    return fig


@styled
def self_attention_figure(attention_maps: dict, step: int | None = None, layer: str | None = MEAN_LAYER,
                          pixel: tuple[float, float] = (0, 0), head: int | None = None, prompt: int = 0,
                          image: np.ndarray | None = None, alpha: float = 0.6, timesteps: Sequence[float] | None = None,
                          reused_steps: Sequence[int] | None = None, cmap: str = "inferno",
                          title_prefix: str | None = None) -> Figure:
    """Where one query pixel looks (see viz.attention_figs.self_attention_figure for the arguments)."""
    if not attention_maps or not attention_maps.get("self"):
        return _message("No self-attention maps were captured.")
    image_hw = None if image is None else tuple(np.asarray(image).shape[:2])
    m, shown, cell, source = A.self_map_shown(attention_maps, step, layer, pixel, head, prompt, image_hw, reused_steps)
    fig = Figure(figsize=(3.6, 3.4), layout="constrained")
    ax = fig.add_subplot()
    if image is not None:
        ax.imshow(np.asarray(image), extent=(0, 1, 1, 0), interpolation="bilinear")
        im = ax.imshow(m, extent=(0, 1, 1, 0), cmap=cmap, vmin=0, alpha=alpha, interpolation="bilinear")
        ax.plot([(pixel[1] + 0.5) / image_hw[1]], [(pixel[0] + 0.5) / image_hw[0]], "x", color="#00e5ff", ms=10, mew=2.5)
    else:
        im = ax.imshow(m, cmap=cmap, vmin=0, interpolation="nearest")
        ax.plot([cell[1]], [cell[0]], "x", color="#00e5ff", ms=10, mew=2.5)
    ax.set_xticks([])
    ax.set_yticks([])
    fig.colorbar(im, ax=ax, shrink=0.8).set_label("attention mass")
    layer_name = "mean of all layers" if layer in (None, MEAN_LAYER) else D.layer_label(layer)
    head_name = "mean over heads" if head is None else f"head {head}"
    badge = "" if source is None else f" · REUSED (map of step {source})"
    fig.suptitle(D.with_prefix(f"Self-attention of one query{badge}", title_prefix)
                 + f"\n{layer_name} · {head_name} · {_step_title(shown, timesteps)}", fontsize=9)
    return fig
