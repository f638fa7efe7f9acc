"""DiffScope: watch what happens inside a text-to-image diffusion pipeline, and what acceleration costs.

Gradio UI only: layout, events and formatting. Every number comes from `analysis` (one `generate` call per
event), every figure from `viz.plotly_figs`. The pipeline is loaded once, at import, from
$DIFFSCOPE_MODEL ("default" = the embedded shapes-world model). `build_demo(pipe)` builds the UI for any
pipeline, so tests can run it on a tiny random one.

Events (all usable from `gradio_client`):
- /generate: one capture run (probes attached, no timing) -> image, four signal figures;
- /compare: baseline vs the ticked techniques, timed (warm-up + median of repeats) -> images, metrics,
  counters;
- /tokens: the prompt's tokens, with words the default model has never seen;
- /export: the last run as a zip (run.json, images, signals.npz; same files as the CLI).
"""
from __future__ import annotations

import math
import os
import shutil
import tempfile
from pathlib import Path

import gradio as gr
import numpy as np

from analysis.models import load_pipeline
from analysis.run import RunConfig, generate
from viz import plotly_figs as P

SCHEDULERS = ("ddim", "dpm", "euler")
NORM_CHOICES = [("per-token min-max", "per-token"), ("shared scale", "shared")]
EXAMPLES = ["a large red circle on the left", "a small blue square at the top and a yellow triangle on the right"]
CSS = """
#diffscope-title h1 {margin-bottom: 0}
#diffscope-status {min-height: 2.5em}
/* small models make small images: scale them up without blurring */
#diffscope-image img, #diffscope-compare img {image-rendering: pixelated; width: 100%; height: 100%; object-fit: contain}
"""
THEME = gr.themes.Soft(primary_hue="indigo")


# --- helpers (formatting only) --------------------------------------------------------------------------

def _model_name(pipe) -> str:
    return getattr(pipe, "diffscope_name", "custom")


def _technique_choices() -> list[tuple[str, str]]:
    from analysis.accel import list_techniques

    out = []
    for name in sorted(list_techniques()):
        label = "steps (half the steps: plain step reduction)" if name == "steps" else name
        out.append((label, name))
    return out


def _technique_configs(names, steps: int) -> tuple:
    from analysis.accel import parse_accel

    configs = []
    for name in names or []:
        spec = f"steps:steps={max(1, int(steps) // 2)}" if name == "steps" else name
        configs.append(parse_accel(spec))
    return tuple(configs)


def _config(prompt, negative, seed, steps, guidance, scheduler, **extra) -> RunConfig:
    if prompt is None or not str(prompt).strip():
        raise gr.Error("Please enter a prompt.", title="No prompt")
    if seed is None or steps is None or guidance is None:
        raise gr.Error("Seed, steps and guidance must all be set.")
    if float(seed) != int(seed) or int(seed) < 0:
        raise gr.Error(f"The seed must be a whole number of at least 0, got {seed}.")
    try:
        return RunConfig(prompt=str(prompt).strip(), negative_prompt=negative or "", seed=int(seed),
                         steps=int(steps), guidance=float(guidance), scheduler=scheduler or "ddim", **extra)
    except ValueError as err:
        raise gr.Error(str(err), title="Invalid setting") from None


def _first_image(images) -> np.ndarray:
    arr = np.asarray(images)
    return arr[0] if arr.ndim == 4 else arr


def _fmt_s(x) -> str:
    return "n/a" if x is None else f"{x:.3f} s"


def _fmt_psnr(x) -> str:
    if x is None:
        return "n/a"
    return "∞ (identical)" if math.isinf(x) else f"{x:.2f} dB"


def _fidelity_text(fidelity) -> str:
    if not fidelity:
        return ""
    overall = fidelity.get("overall")
    base = fidelity.get("baseline")
    if overall is None:
        return ""
    text = f"prompt fidelity {overall:.0%}"
    if base is not None:
        text += f" (full compute {base:.0%})"
    return text


def _attention_fig(result, step, layer, norm, overlay, alpha, special):
    if result is None:
        return P.empty_figure("Generate an image to see its cross-attention maps.")
    maps = (result.signals or {}).get("attention_maps")
    tokens = result.tokens[0] if result.tokens else []
    image = _first_image(result.image) if overlay else None
    return P.cross_attention_figure(maps, tokens, step=None if step is None else int(step), layer=layer or P.MEAN_LAYER,
                                    norm=norm or "per-token", image=image, alpha=float(alpha),
                                    special=bool(special), timesteps=result.timesteps)


def _rank_fig(result, step):
    if result is None:
        return P.empty_figure("Generate an image to see token importance.")
    return P.token_rank_figure((result.signals or {}).get("token_rank"), step=None if step is None else int(step),
                               timesteps=result.timesteps)


# --- the UI ---------------------------------------------------------------------------------------------

def build_demo(pipe, probes=None) -> gr.Blocks:
    """The DiffScope UI around `pipe`. `probes` defaults to `analysis.probes.default_probes()`."""
    if probes is None:
        from analysis.probes import default_probes

        probes = default_probes()
    probes = tuple(probes)
    model = _model_name(pipe)
    technique_choices = _technique_choices()

    def tokens_view(prompt):
        """The prompt as the text encoder sees it: (token, label) spans, and a warning for words the default
        model has never seen (they reach it as single characters)."""
        prompt = (prompt or "").strip()
        if not prompt:
            return [], ""
        tok = pipe.tokenizer
        unknown = []
        if model == "default":
            from analysis.toy.tokenizer import unknown_words

            unknown = unknown_words(tok, prompt)
        unknown_set = {w.lower() for w in unknown}
        spans = [(tok.bos_token or "<|startoftext|>", "special")]
        for word in prompt.split():
            label = "unknown word" if word.lower() in unknown_set else None
            for piece in tok.tokenize(word):
                spans.append((" ", None))
                spans.append((piece.replace("</w>", ""), label))
        spans += [(" ", None), (tok.eos_token or "<|endoftext|>", "special")]
        n_tokens = sum(1 for text, _ in spans if text != " ")
        warning = ""
        if unknown:
            warning = ("⚠️ The default model has never seen " + ", ".join(f"**{w}**" for w in unknown)
                       + ": it reaches the model as single characters, so expect it to be ignored.")
        if n_tokens > tok.model_max_length:
            warning += (f" ⚠️ The prompt has {n_tokens} tokens; the text encoder keeps the first "
                        f"{tok.model_max_length}.")
        return spans, warning.strip()

    def run_generate(prompt, negative, seed, steps, guidance, scheduler, step_norm, overlay, alpha, special,
                     conv_log, drift_log, progress=gr.Progress(track_tqdm=True)):
        config = _config(prompt, negative, seed, steps, guidance, scheduler, probes=probes)
        progress(0, desc="generating")
        try:
            result = generate(pipe, config, measure_latency=False)
        except ValueError as err:
            raise gr.Error(str(err)) from None
        signals = result.signals or {}
        maps = signals.get("attention_maps") or {}
        layers = [P.MEAN_LAYER] + list((maps.get("cross") or {}))
        last = config.accel_steps - 1
        attn = _attention_fig(result, last, P.MEAN_LAYER, step_norm, overlay, alpha, special)
        conv = P.convergence_figure(signals.get("cross_attn_convergence"), log_y=bool(conv_log))
        drift = P.drift_figure(signals.get("feature_drift"), log_y=bool(drift_log))
        rank = _rank_fig(result, last)
        rank_summary = P.token_rank_summary_figure(signals.get("token_rank"))
        kept = maps.get("steps") or []
        note = ""
        if maps.get("reductions"):
            note = " Capture budget: " + "; ".join(map(str, maps["reductions"])) + "."
        elif kept and len(kept) < config.accel_steps:
            note = f" Attention maps kept at {len(kept)} of {config.accel_steps} steps (memory budget)."
        if maps.get("dropped_layers"):
            note += " Not captured (budget): " + ", ".join(map(str, maps["dropped_layers"])) + "."
        fid = _fidelity_text(result.fidelity)
        status = (f"**{model}** · {config.steps} steps · {config.scheduler} · seed {config.seed} · "
                  f"instrumented run {_fmt_s(result.instrumented_latency_s)} (probes attached: not a speed "
                  f"measurement; use **Compare**)." + (f" {fid.capitalize()}." if fid else "") + note)
        return (_first_image(result.image), attn, conv, drift, rank, rank_summary,
                gr.update(minimum=0, maximum=max(last, 0), value=max(last, 0), step=1),
                gr.update(choices=layers, value=P.MEAN_LAYER), status, result)

    def run_compare(prompt, negative, seed, steps, guidance, scheduler, techniques, repeats,
                    progress=gr.Progress(track_tqdm=True)):
        if not techniques:
            raise gr.Error("Tick at least one technique under Techniques to compare against full compute.")
        try:
            accel = _technique_configs(techniques, steps or 1)
        except ValueError as err:
            raise gr.Error(str(err), title="Invalid technique") from None
        config = _config(prompt, negative, seed, steps, guidance, scheduler, accel=accel,
                         repeats=int(repeats or 1))
        progress(0, desc="timing baseline and accelerated runs")
        try:
            result = generate(pipe, config, measure_latency=True)
        except ValueError as err:
            raise gr.Error(str(err)) from None
        sp = result.speedup
        rows = [
            ("Latency, full compute", _fmt_s(result.baseline_latency_s)),
            ("Latency, accelerated", _fmt_s(result.latency_s)),
            ("Speed-up", "n/a" if sp is None else f"{sp:.2f}×"),
            ("PSNR vs full compute", _fmt_psnr(result.psnr_db)),
            ("SSIM vs full compute", "n/a" if result.ssim is None else f"{result.ssim:.4f}"),
        ]
        fid = _fidelity_text(result.fidelity)
        if fid:
            rows.append(("Prompt fidelity", fid.replace("prompt fidelity ", "")))
        names = ", ".join(f"`{n}`" for n in result.config.get("accel", {}))
        table = "\n".join(f"| {k} | {v} |" for k, v in rows)
        metrics = (f"**Techniques:** {names} · median of {config.repeats} timed run(s) after a warm-up\n\n"
                   f"| Measure | Value |\n|---|---|\n{table}")
        return ((_first_image(result.baseline_image), _first_image(result.image)), metrics,
                P.counters_figure(result.counters), result)

    def run_export(result):
        if result is None:
            raise gr.Error("Generate or compare first: there is no run to export.")
        from analysis.report import write_run

        work = Path(tempfile.mkdtemp(prefix="diffscope-export-"))
        write_run(result, work / "run")
        archive = shutil.make_archive(str(work / "diffscope-run"), "zip", root_dir=work / "run")
        return archive

    with gr.Blocks(title="DiffScope") as demo:
        last_run = gr.State(None)
        gr.Markdown("# DiffScope\nLook inside a text-to-image diffusion model step by step, and see what "
                    f"training-free acceleration saves and costs. Model: **{model}**.", elem_id="diffscope-title")
        with gr.Row():
            with gr.Column(scale=2, min_width=320):
                prompt = gr.Textbox(label="Prompt", value=EXAMPLES[0], lines=2, max_lines=4,
                                    placeholder="a large red circle on the left")
                tokens = gr.HighlightedText(label="Tokens", show_legend=True, combine_adjacent=False,
                                            color_map={"special": "#d0d0d0", "unknown word": "#f59e0b"})
                token_warning = gr.Markdown()
                negative = gr.Textbox(label="Negative prompt", value="", lines=1)
                with gr.Row():
                    seed = gr.Number(label="Seed", value=0, precision=0, minimum=0)
                    scheduler = gr.Dropdown(label="Scheduler", choices=list(SCHEDULERS), value="ddim")
                with gr.Row():
                    steps = gr.Slider(label="Steps", minimum=1, maximum=100, step=1, value=20)
                    guidance = gr.Slider(label="Guidance scale", minimum=0, maximum=20, step=0.5, value=5.0)
                generate_btn = gr.Button("Generate", variant="primary")
                with gr.Accordion("Techniques", open=False):
                    techniques = gr.CheckboxGroup(label="Techniques", choices=technique_choices, value=[],
                                                  info="Each at its paper defaults. Compare times the full-compute "
                                                       "baseline and the accelerated run in this process.")
                    repeats = gr.Slider(label="Timed repeats", minimum=1, maximum=10, step=1, value=3)
                    compare_btn = gr.Button("Compare", variant="secondary")
            with gr.Column(scale=3, min_width=320):
                image = gr.Image(label="Generated image (full compute)", type="numpy", interactive=False,
                                 height=360, format="png", elem_id="diffscope-image")
                status = gr.Markdown(elem_id="diffscope-status")
                with gr.Row():
                    export_btn = gr.Button("Export run (.zip)", size="sm")
                    export_file = gr.File(label="Run export", interactive=False, height=80)
        with gr.Tabs():
            with gr.Tab("Cross-attention"):
                with gr.Row():
                    step = gr.Slider(label="Step", minimum=0, maximum=19, step=1, value=19)
                    layer = gr.Dropdown(label="Layer", choices=[P.MEAN_LAYER], value=P.MEAN_LAYER)
                    norm = gr.Radio(label="Normalisation", choices=NORM_CHOICES, value="per-token")
                with gr.Row():
                    overlay = gr.Checkbox(label="Overlay on image", value=True)
                    alpha = gr.Slider(label="Overlay alpha", minimum=0.0, maximum=1.0, step=0.05, value=0.55)
                    special = gr.Checkbox(label="Show start/end tokens", value=False)
                attn_plot = gr.Plot(label="Cross-attention maps")
            with gr.Tab("Convergence"):
                conv_log = gr.Checkbox(label="Log scale (convergence)", value=True)
                conv_plot = gr.Plot(label="Cross-attention convergence")
            with gr.Tab("Feature drift"):
                drift_log = gr.Checkbox(label="Log scale (drift)", value=False)
                drift_plot = gr.Plot(label="Feature drift")
            with gr.Tab("Token rank"):
                gr.Markdown("Maps follow the **Step** slider of the Cross-attention tab.")
                rank_plot = gr.Plot(label="Token importance maps")
                rank_summary = gr.Plot(label="Token importance concentration")
            with gr.Tab("Compare"):
                compare_images = gr.ImageSlider(label="Full compute vs accelerated", type="numpy", format="png",
                                                elem_id="diffscope-compare", max_height=420)
                compare_metrics = gr.Markdown()
                counters_plot = gr.Plot(label="Counters")

        gpu = dict(concurrency_limit=1, concurrency_id="pipeline")
        prompt.change(tokens_view, prompt, [tokens, token_warning], api_name="tokens", show_progress="hidden")
        demo.load(tokens_view, prompt, [tokens, token_warning], api_visibility="private", show_progress="hidden")
        generate_btn.click(
            run_generate,
            [prompt, negative, seed, steps, guidance, scheduler, norm, overlay, alpha, special, conv_log, drift_log],
            [image, attn_plot, conv_plot, drift_plot, rank_plot, rank_summary, step, layer, status, last_run],
            api_name="generate", **gpu,
        )
        prompt.submit(
            run_generate,
            [prompt, negative, seed, steps, guidance, scheduler, norm, overlay, alpha, special, conv_log, drift_log],
            [image, attn_plot, conv_plot, drift_plot, rank_plot, rank_summary, step, layer, status, last_run],
            api_visibility="private", **gpu,
        )
        compare_btn.click(
            run_compare, [prompt, negative, seed, steps, guidance, scheduler, techniques, repeats],
            [compare_images, compare_metrics, counters_plot, last_run], api_name="compare", **gpu,
        )

        def rerender_step(result, step_v, layer_v, norm_v, overlay_v, alpha_v, special_v):
            return (_attention_fig(result, step_v, layer_v, norm_v, overlay_v, alpha_v, special_v),
                    _rank_fig(result, step_v))

        def rerender_attention(result, step_v, layer_v, norm_v, overlay_v, alpha_v, special_v):
            return _attention_fig(result, step_v, layer_v, norm_v, overlay_v, alpha_v, special_v)

        view_inputs = [last_run, step, layer, norm, overlay, alpha, special]
        step.release(rerender_step, view_inputs, [attn_plot, rank_plot], api_name="render_step",
                     show_progress="hidden")
        for control in (layer, norm, overlay, special):
            control.input(rerender_attention, view_inputs, attn_plot, api_visibility="private",
                          show_progress="hidden")
        alpha.release(rerender_attention, view_inputs, attn_plot, api_visibility="private", show_progress="hidden")
        conv_log.input(lambda r, lg: P.convergence_figure(((r.signals or {}) if r else {}).get("cross_attn_convergence"),
                                                          log_y=lg), [last_run, conv_log], conv_plot,
                       api_visibility="private", show_progress="hidden")
        drift_log.input(lambda r, lg: P.drift_figure(((r.signals or {}) if r else {}).get("feature_drift"), log_y=lg),
                        [last_run, drift_log], drift_plot, api_visibility="private", show_progress="hidden")
        export_btn.click(run_export, last_run, export_file, api_name="export")
    return demo


PIPE = load_pipeline(os.environ.get("DIFFSCOPE_MODEL", "default"))
demo = build_demo(PIPE)

if __name__ == "__main__":
    demo.launch(theme=THEME, css=CSS)
