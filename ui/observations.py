"""The "Observations" tab: each paper's key observation on the default model, over many prompts and seeds,
from the shipped output of `python -m analysis observations` (assets/results/observations-<steps>/). Static:
it reads files, runs nothing, and says how to regenerate it for any model."""
from __future__ import annotations

import json
from pathlib import Path

import gradio as gr

from analysis.eval.observations import shipped_dir
from viz.observation_figs import FIGURES


def observations_dir(steps: int = 20, directory: Path | None = None) -> Path:
    return shipped_dir(steps, directory)


def pack_files(steps: int = 20, directory: Path | None = None) -> list[Path]:
    """The shipped observation figures (PNG, SVG, 16:9 slide) for the app's export pack; [] if none shipped."""
    folder = observations_dir(steps, directory) / "figures"
    return sorted(folder.glob("*.png")) + sorted(folder.glob("*.svg")) if folder.exists() else []


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
            png, svg, slide = (folder / "figures" / f"{name}{end}" for end in (".png", ".svg", "-slide.png"))
            if png.exists():
                gr.Markdown(f"#### {title}\n{caption}")
                gr.Image(str(png), show_label=False, interactive=False, format="png")
                files = [str(p) for p in (png, svg, slide) if p.exists()]
                gr.File(files, label="PNG / SVG / 16:9 slide", file_count="multiple", interactive=False, height=80)
