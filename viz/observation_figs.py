"""Figures of `python -m analysis observations` (analysis/eval/observations.py): data in, matplotlib figures
out, one per paper's observation, sized for slides (Okabe-Ito colours, bands = interquartile range)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from viz.colours import FAMILY_COLOURS, RANKING_COLOURS, ROLE_COLOURS, SENSITIVITY_COLOURS

MAP_CHANGE_COLOUR = FAMILY_COLOURS["tgate"]  # the map change is what T-GATE's gate reads
from viz.sweep_figs import SLIDE_FONT, _policy_steps, _save_mpl


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _band(ax, x, b: dict, colour: str, label: str, lw: float = 2.0) -> None:
    ax.plot(x, b["median"], color=colour, lw=lw, marker="o", ms=3, label=label)
    ax.fill_between(x, b["q25"], b["q75"], color=colour, alpha=0.2, lw=0)


def _per_step_figure(steps, series, marks, ylabel: str, title: str, background=()):
    """Bands over denoising steps (log y): series = [(label, band, colour)], marks = [(step, label, colour,
    linestyle)] as vertical lines (one legend entry per label), background = thin grey medians."""
    plt = _plt()
    with plt.rc_context({"font.size": SLIDE_FONT, "legend.fontsize": SLIDE_FONT - 5}):
        fig, ax = plt.subplots(figsize=(10, 5.5), layout="constrained")
        for b in background:
            ax.plot(steps, b["median"], color="#BBBBBB", lw=1)
        for label, b, colour in series:
            _band(ax, steps, b, colour, label)
        seen = set()
        for step, label, colour, style in marks:
            ax.axvline(step, color=colour, ls=style, lw=1.4, label=None if label in seen else label)
            seen.add(label)
        ax.set_yscale("log")
        ax.set_xlabel("denoising step t")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.legend(frameon=False)
        ax.grid(alpha=0.3)
    return fig


def map_change_figure(result: dict):
    mc, gate = result["map_change"], result["tgate_gate_step"]
    return _per_step_figure(mc["steps"], [("mean of layers (grey: each layer)", mc["mean_of_layers"], MAP_CHANGE_COLOUR)],
                            [(gate, f"T-GATE gate (step {gate})", "#000000", "--")],
                            "||P_t - P_t-1|| (cross-attention map)",
                            f"Cross-attention maps converge ({result['units']} units; median, IQR)",
                            background=mc["per_layer"].values())


def drift_figure(result: dict):
    rd = result["relative_drift"]
    return _per_step_figure(rd["steps"], [(role, b, ROLE_COLOURS[role]) for role, b in rd["per_role"].items()],
                            [(k, "Faster-Diffusion key steps", "#31a354", ":") for k in result["fastdiff_key_steps"] if k >= 1],
                            "||F_t - F_t-1|| / ||F_t-1||",
                            f"Relative feature change per UNet part ({result['units']} units; median, IQR)")


def sensitivity_figure(result: dict):
    plt = _plt()
    s = result["sensitivity"]
    curve = [r for r in s["curve"] if r["kind"] == "reuse"]
    factors = [f for f in s["step_factors"] if f["kind"] == "reuse" and f["log_factor"] is not None]
    with plt.rc_context({"font.size": SLIDE_FONT, "legend.fontsize": SLIDE_FONT - 5}):
        fig, (ax, ax2) = plt.subplots(2, 1, figsize=(10, 9), sharex=True, layout="constrained")
        t = [r["t"] for r in curve]
        med = np.array([r["final_deviation"] for r in curve])
        ax.errorbar(t, med, yerr=[med - [r["final_deviation_q25"] for r in curve],
                                  np.array([r["final_deviation_q75"] for r in curve]) - med],
                    color=SENSITIVITY_COLOURS["reuse"], marker="o", capsize=3, label="reuse step t-1's maps at t")
        top = max((r["final_deviation_q75"] for r in curve), default=1.0)
        for i, (name, policy) in enumerate(s["policies"].items()):
            steps = _policy_steps(policy)
            ax.plot(steps, [top * (1.1 + 0.08 * i)] * len(steps), ls="none", marker="v", ms=10,
                    color=["#009E73", "#CC79A7"][i % 2], label=f"{name}: R steps")
        ax.set_ylabel("final latent deviation")
        ax.set_title(f"Which steps can reuse maps ({s['units']} units, median and quartiles)")
        ax.legend(frameon=False)
        ax.grid(alpha=0.3)
        x = [f["step"] for f in factors]
        y = np.array([f["log_factor"] for f in factors])
        low = np.array([f["log_factor_low"] if f["log_factor_low"] is not None else f["log_factor"] for f in factors])
        high = np.array([f["log_factor_high"] if f["log_factor_high"] is not None else f["log_factor"] for f in factors])
        ax2.errorbar(x, y, yerr=[y - low, high - y], color=SENSITIVITY_COLOURS["reuse"], marker="o", capsize=3)
        ax2.axhline(0, color="#999999", lw=1)
        ax2.set_xlabel("step")
        ax2.set_ylabel("ln(d_s / d_s-1)\n(> 0: the step amplifies)")
        ax2.grid(alpha=0.3)
    return fig


def similarity_figure(result: dict):
    plt = _plt()
    sim = result["map_similarity"]
    with plt.rc_context({"font.size": SLIDE_FONT}):
        fig, ax = plt.subplots(figsize=(7.5, 6.5), layout="constrained")
        m = np.asarray(sim["median"], dtype=float)
        im = ax.imshow(m, cmap="viridis", vmin=float(np.nanmin(m)), vmax=1.0, origin="upper")
        ticks = list(range(0, len(sim["steps"]), max(1, len(sim["steps"]) // 10)))
        ax.set_xticks(ticks, [sim["steps"][i] for i in ticks])
        ax.set_yticks(ticks, [sim["steps"][i] for i in ticks])
        ax.set_xlabel("step")
        ax.set_ylabel("step")
        ax.set_title("Cross-attention map similarity (cosine, mean of layers)")
        fig.colorbar(im, ax=ax, shrink=0.8)
    return fig


def pruning_figure(result: dict, image: np.ndarray | None = None):
    plt = _plt()
    pr = result["pruning"]
    masks = pr["masks"]
    with plt.rc_context({"font.size": SLIDE_FONT - 2, "legend.fontsize": SLIDE_FONT - 5}):
        fig = plt.figure(figsize=(13, 5.5), layout="constrained")
        grid = fig.add_gridspec(1, 2, width_ratios=[1.25, 1])
        left = grid[0].subgridspec(1, len(masks) + (image is not None))
        panels = ([("full compute", image)] if image is not None else []) + list(masks.items())
        for i, (name, data) in enumerate(panels):
            ax = fig.add_subplot(left[i])
            if name == "full compute":
                ax.imshow(data)
            else:
                ax.imshow(np.asarray(data["pruned"], dtype=float), cmap="gray_r", vmin=0, vmax=1)
                ax.set_xlabel(f"{data['layer']}\nstep {data['step']}", fontsize=SLIDE_FONT - 8)
            ax.set_title(name if name == "full compute" else f"{name} (black: pruned)", fontsize=SLIDE_FONT - 6)
            ax.set_xticks([])
            ax.set_yticks([])
        ax = fig.add_subplot(grid[1])
        for ranking, b in pr["quality"].items():
            _band(ax, b["ratios"], b, RANKING_COLOURS.get(ranking, "#000000"), ranking)
        ax.set_xlabel("pruning ratio")
        ax.set_ylabel("PSNR to full compute (dB)")
        ax.set_title(f"AT-EDM rankings ({pr['units']} units)")
        ax.legend(frameon=False)
        ax.grid(alpha=0.3)
    return fig


def versus_steps_figure(result: dict):
    plt = _plt()
    rows = result.get("versus_steps") or []
    with plt.rc_context({"font.size": SLIDE_FONT - 2, "legend.fontsize": SLIDE_FONT - 6}):
        fig, ax = plt.subplots(figsize=(11, 0.38 * max(len(rows), 4) + 1.5), layout="constrained")
        y = np.arange(len(rows))
        measured = [r["psnr_db"] - r["steps_psnr_at_measured"] for r in rows]
        counted = [r["psnr_db"] - r["steps_psnr_at_counted"] for r in rows]
        ax.barh(y - 0.2, measured, height=0.38, color="#0072B2", label="at equal measured speed-up")
        ax.barh(y + 0.2, counted, height=0.38, color="#E69F00", label="at equal counted work (ideal speed-up)")
        ax.set_yticks(y, [f"{r['setting']} ({r['measured_speedup']:.2f}x / {r['counted_speedup']:.2f}x)" for r in rows])
        ax.invert_yaxis()
        ax.axvline(0, color="#000000", lw=1)
        ax.set_xlabel("PSNR minus step reduction's PSNR (dB; > 0: better than fewer steps)")
        ax.set_title("Each technique against step reduction")
        ax.legend(frameon=False, loc="lower left")
        ax.grid(alpha=0.3, axis="x")
    return fig


def write_all(result: dict, directory: Path, image: np.ndarray | None = None) -> list[Path]:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    figures = {"map_change": map_change_figure(result), "relative_drift": drift_figure(result),
               "sensitivity": sensitivity_figure(result), "map_similarity": similarity_figure(result),
               "pruning": pruning_figure(result, image)}
    if result.get("versus_steps"):
        figures["versus_steps"] = versus_steps_figure(result)
    paths = []
    for name, fig in figures.items():
        paths += [p for p in _save_mpl(fig, directory / name) if p.suffix != ".pdf"]
    for pdf in directory.glob("*.pdf"):  # PNG for the app and slides, SVG for editing
        pdf.unlink()
    return paths


# The app's Observations tab and the slides share these titles and captions.
FIGURES = (
    ("map_change", "T-GATE: cross-attention maps converge",
     "Change of each cross-attention map between consecutive steps (grey: each layer; colour: mean of layers, "
     "median and interquartile band over prompts and seeds). The dashed line is T-GATE's gate."),
    ("relative_drift", "Faster-Diffusion: encoder and decoder features",
     "Relative change of each UNet part's output between steps (||F_t - F_t-1|| / ||F_t-1||), so parts of "
     "different width compare; dotted lines are Faster-Diffusion's key steps, where the encoder runs."),
    ("sensitivity", "HURRY: which steps can reuse maps",
     "Top: the final latent deviation after reusing step t-1's maps at step t, with the HURRY / PHAST R steps "
     "above. Bottom: how much each step amplifies (> 0) or damps (< 0) a deviation already present."),
    ("map_similarity", "Step-by-step similarity of the cross-attention maps",
     "Cosine between two steps' maps (mean of layers, median over units): where one step's maps could stand "
     "in for another's."),
    ("pruning", "AT-EDM: what each ranking prunes, and what it costs",
     "Left: the tokens G-WPR, cross-attention and random (one draw per layer) rankings prune in one run. "
     "Right: PSNR to full compute against the pruning ratio per ranking (median and interquartile band)."),
    ("versus_steps", "Each technique against step reduction",
     "PSNR minus the step ladder's PSNR at the same measured speed-up and at the same counted work."),
)


def write_slides(folder: Path) -> list[Path]:
    """A 16:9 slide per figure under `folder/figures` (`<name>-slide.png`), titled and captioned as in the app."""
    from viz.slide import figure_slide

    folder = Path(folder)
    paths = []
    for name, title, caption in FIGURES:
        png = folder / "figures" / f"{name}.png"
        if png.exists():
            path = folder / "figures" / f"{name}-slide.png"
            figure_slide(png, title, caption, footer="DiffScope observations").savefig(path, dpi=150)
            paths.append(path)
    return paths
