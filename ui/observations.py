"""The "Observations" tab: each paper's key observation on the default model, over many prompts and seeds,
from the shipped output of `python -m analysis observations` (assets/results/observations-<steps>/). Static:
it reads files, runs nothing, and says how to regenerate it for any model."""
from __future__ import annotations

import json
from pathlib import Path

import gradio as gr

from analysis.eval.sweep_results import SHIPPED_DIR

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


def observations_dir(steps: int = 20, directory: Path | None = None) -> Path:
    return (directory or SHIPPED_DIR) / f"observations-{steps}"


def summary_markdown(data: dict) -> str:
    """Where the figures come from, and the sensitivity verdict in words."""
    lines = [f"Model **{data['model']}**, {data['units']} prompt x seed units ({data['prompts']} prompts, seeds "
             f"{', '.join(map(str, data['seeds']))}), {data['steps']} {data['scheduler'].upper()} steps, guidance "
             f"{data['guidance']}. Bands: {data['band']}."]
    verdict = data.get("sensitivity", {}).get("verdict", {}).get("reuse")
    if verdict:
        positive = verdict.get("positive_exponent_without_last_at") or []
        lines.append(
            f"Reusing maps: a positive growth exponent (interval above 0, final step left out) "
            f"{'appears at t = ' + ', '.join(map(str, positive)) if positive else 'appears at no step'}; "
            f"the smallest final deviation follows reuse at t = {verdict.get('smallest_final_deviation_at')}; "
            f"steps that amplify a deviation: {', '.join(map(str, verdict.get('amplifying_steps') or [])) or 'none'}.")
    lines.append("Regenerate for any model: `python -m analysis observations --model M --out DIR`.")
    return "\n\n".join(lines)


def render(steps: int = 20, directory: Path | None = None) -> None:
    """Lay the tab out inside the current Blocks (nothing to wire: it only shows files)."""
    folder = observations_dir(steps, directory)
    with gr.Tab("Observations"):
        if not (folder / "observations.json").exists():
            gr.Markdown(f"No observations are shipped for {steps} steps (`python -m analysis observations --ship`).")
            return
        gr.Markdown(summary_markdown(json.loads((folder / "observations.json").read_text())))
        for name, title, caption in FIGURES:
            png, svg = (folder / "figures" / f"{name}.{ext}" for ext in ("png", "svg"))
            if png.exists():
                gr.Markdown(f"#### {title}\n{caption}")
                gr.Image(str(png), show_label=False, interactive=False, format="png")
                files = [str(p) for p in (png, svg) if p.exists()]
                gr.File(files, label="PNG / SVG", file_count="multiple", interactive=False, height=80)
