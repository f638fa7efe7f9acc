"""DiffScope: flip a training-free acceleration technique or turn its knob, and watch the image, its quality and
its latency move against the same-seed full-compute image, with the trade-off plotted beside the images.

Gradio UI only: layout and wiring. The handlers are `ui.handlers.Handlers` methods, what they show is
formatted by `ui/results.py`; runs come from `analysis.live` (cached baselines, timed accelerated runs, the
pipeline lock, Stop), figures from `viz`. `build_demo(pipe)` builds the UI for any pipeline, so tests run it on a
tiny random one; the module-level app loads $DIFFSCOPE_MODEL ("default" = the embedded shapes-world model).

Events usable from gradio_client (state is per session; the client keeps its own session):
- /run: the request + every technique setting -> full-compute, accelerated and difference images, numbers,
  trade-off plot, runs table, status. Changing a technique toggle or knob in the browser fires the same event.
- /frontier, /inside: the chained follow-ups (step-reduction frontier; probe runs for the "Inside" tabs);
- /equal_latency, /measure, /stop, /export, /show_run, /tokens, /availability, /load_model.
"""
from __future__ import annotations

import os
from types import SimpleNamespace

import gradio as gr

from analysis import live
from analysis.catalog import SCHEDULERS
from analysis.model_pool import ModelPool, allowlist_from, capacity_from
from ui import inputs
from ui.handlers import MAX_GUIDANCE, MAX_STEPS, Handlers
from ui.handlers import STORE, ZERO_GPU, on_device, spaces  # noqa: F401  (the app's server state, read by tests)
from ui.inside import InsideTabs
from ui.results import RUN_COLUMNS, Y_CHOICES
from ui.techniques import TechniquePanel

# Kept attention maps per instrumented run (the default model needs ~50 MiB with per-head maps); a session
# keeps signals of 2 baselines and 2 runs, the store 8 sessions: at most 2 GiB of signals in all.
PROBE_BUDGET_MB = 64
EXAMPLES = [["a large red circle on the left", "0"],
            ["a small blue square at the top and a yellow triangle on the right", "1"],
            ["a large green triangle in the center", "2"],
            # the default model's world (shapes-v3) draws up to three objects
            ["a large purple square on the left and a small orange circle at the top and a small green triangle "
             "on the right", "3"]]
CSS = """
#diffscope-title h1 {margin-bottom: 0}
.diffscope-image img {image-rendering: pixelated; object-fit: contain}
.diffscope-unavailable {color: #b45309; font-size: 0.9em}
"""
THEME = gr.themes.Soft(primary_hue="indigo")
ATTENTION_CHOICES = [("fused (SDPA, today's baseline)", "fused"),
                     ("explicit (probabilities materialised, as in the papers' time)", "explicit")]
TOKEN_COLOURS = {"special": "#d0d0d0", "unknown word": "#f59e0b", "cut off": "#ef4444"}
# Events that run the pipeline share one queue slot per kind: live runs, and the follow-ups after them.
LIVE = dict(concurrency_limit=1, concurrency_id="live")
FOLLOW_UP = dict(concurrency_limit=1, concurrency_id="follow-up", show_progress="hidden")
QUIET = dict(api_visibility="private", show_progress="hidden")


def build_demo(pipe_or_pool, probes=None) -> gr.Blocks:
    """The DiffScope UI over a `ModelPool` (the models this server offers), or over one pipeline (tests).
    `probes` defaults to `analysis.probes.default_probes()`."""
    from analysis.probes import default_probes

    probes = tuple(default_probes(budget_mb=PROBE_BUDGET_MB) if probes is None else probes)
    pool = pipe_or_pool if isinstance(pipe_or_pool, ModelPool) else ModelPool.of(pipe_or_pool)
    h = Handlers(pool, TechniquePanel())
    with gr.Blocks(title="DiffScope", delete_cache=DELETE_CACHE) as demo:
        gr.Markdown("# DiffScope\nSwitch a training-free acceleration technique on, turn its knobs, and watch the "
                    "image, its quality and its latency move against the same-seed full-compute image.",
                    elem_id="diffscope-title")
        with gr.Row():
            with gr.Column(scale=2, min_width=340):
                ui = _controls(h, pool)
            with gr.Column(scale=3, min_width=420):
                ui.__dict__.update(_results())
        ui.inside = InsideTabs(h.models, pool.default, probes, h.session_of)
        h.export_cache = ui.export_files.GRADIO_CACHE
        _wire_runs(demo, h, ui)
        _wire_the_rest(demo, h, ui)
    return demo


def _controls(h: Handlers, pool: ModelPool) -> SimpleNamespace:
    """The request, the techniques panel and the buttons (left column)."""
    ui = SimpleNamespace()
    ui.prompt = gr.Textbox(label="Prompt", value=EXAMPLES[0][0], lines=2, max_lines=4)
    ui.tokens = gr.HighlightedText(label="Tokens", show_legend=True, combine_adjacent=False, color_map=TOKEN_COLOURS)
    ui.token_warning = gr.Markdown()
    ui.negative = gr.Textbox(label="Negative prompt", value="", lines=1)
    with gr.Row():
        ui.seed = gr.Textbox(label="Seed", value="0", max_lines=1, info="a whole number from 0 to 2^63-1")
        ui.scheduler = gr.Dropdown(label="Scheduler", choices=list(SCHEDULERS), value="ddim")
    with gr.Row():
        ui.steps = inputs.Slider(label="Steps", minimum=1, maximum=MAX_STEPS, step=1, value=20)
        ui.knob_steps = gr.State(20)  # the step count the step-dependent knobs were last set for
        ui.guidance = inputs.Slider(label="Guidance scale", minimum=0, maximum=MAX_GUIDANCE, step=0.5, value=5.0)
    with gr.Row():
        ui.run_btn = gr.Button("Generate", variant="primary")
        ui.stop_btn = gr.Button("Stop", variant="stop")
    gr.Examples(EXAMPLES, [ui.prompt, ui.seed], label="Examples (default model)")
    gr.Markdown("### Techniques\nEach toggle or knob re-runs only the accelerated generation.")
    h.panel.render()
    with gr.Row():
        ui.measure_btn = gr.Button("Measure carefully", size="sm", interactive=False)
        ui.export_btn = gr.Button("Export figures + slide", size="sm")
    ui.export_files = gr.File(label="Export", file_count="multiple", interactive=False, height=90)
    with gr.Accordion("Model and attention backend", open=len(pool.labels) > 1):
        ui.model_box = gr.Dropdown(label="Model", choices=pool.labels, value=pool.default,
                                   info="the models this server offers (set by its operator)")
        ui.model_status = gr.Markdown(f"Model: **{pool.default}**")
        ui.attention = gr.Radio(ATTENTION_CHOICES, value="fused", label="Attention backend",
                                info="of the baseline and every technique: the papers measured against explicit "
                                     "attention; today's pipelines run a fused kernel")
    return ui


def _results() -> dict:
    """The images, numbers, trade-off plot and runs table (right column)."""
    image = dict(type="numpy", interactive=False, format="png", height=260, elem_classes="diffscope-image")
    with gr.Row():
        out = {"full_img": gr.Image(label="Full compute", **image), "acc_img": gr.Image(label="Accelerated", **image),
               "diff_img": gr.Image(label="Difference |full - accelerated|", **image)}
    out["numbers"] = gr.Markdown()
    out["y_axis"] = gr.Radio(label="Quality axis", choices=Y_CHOICES, value="psnr")
    out["tradeoff_plot"] = gr.Plot(label="Quality vs latency", elem_id="diffscope-tradeoff")
    out["runs"] = gr.Dataframe(headers=RUN_COLUMNS, label="Runs of this session (select one to show it)",
                               interactive=False, max_height=220, wrap=True)
    out["status"] = gr.Markdown()
    return out


def _wire_runs(demo: gr.Blocks, h: Handlers, ui: SimpleNamespace) -> None:
    """Generate (and every technique change), its follow-ups, a new step count, equal latency, Stop."""
    request_inputs = [ui.prompt, ui.negative, ui.seed, ui.steps, ui.guidance, ui.scheduler, ui.model_box,
                      ui.attention]
    live_inputs = request_inputs + [ui.y_axis] + h.panel.inputs()
    live_outputs = [ui.full_img, ui.acc_img, ui.diff_img, ui.numbers, ui.tradeoff_plot, ui.runs, ui.status,
                    ui.measure_btn]
    run_event = gr.on(
        triggers=[ui.run_btn.click, ui.prompt.submit, ui.seed.submit, ui.guidance.release, ui.scheduler.input,
                  ui.negative.submit, ui.attention.input] + h.panel.triggers(),
        fn=h.run_live, inputs=live_inputs, outputs=live_outputs, api_name="run", trigger_mode="always_last", **LIVE)
    follow_up_outputs = [ui.tradeoff_plot, ui.numbers, ui.runs]
    frontier_event = run_event.success(h.run_frontier, ui.y_axis, follow_up_outputs, api_name="frontier", **FOLLOW_UP)
    inside_event = frontier_event.then(ui.inside.refresh, ui.inside.inputs, ui.inside.outputs, api_name="inside",
                                       **FOLLOW_UP)
    # A new step count: knobs at their defaults follow it, set ones are clamped (with a note); then the run.
    steps_event = ui.steps.release(h.steps_changed, [ui.steps, ui.knob_steps] + h.panel.inputs(),
                                   [ui.knob_steps] + h.panel.step_knobs(), trigger_mode="always_last", **QUIET)
    steps_event.then(h.availability, [ui.model_box, ui.steps] + h.panel.inputs(), h.panel.availability_outputs(),
                     api_name="availability_after_steps", queue=False, **QUIET)
    steps_run = steps_event.success(h.run_live, live_inputs, live_outputs, api_visibility="private", **LIVE)
    # (no Inside refresh on this chain: typing a step count and clicking Generate fires both chains, and a
    # second refresh would send the Inside step slider's stale value against its new maximum)
    steps_frontier = steps_run.success(h.run_frontier, ui.y_axis, follow_up_outputs, api_visibility="private",
                                       **FOLLOW_UP)
    eq = h.panel.equal_latency_button.click(h.equal_latency, None, h.panel.steps_outputs(), api_name="equal_latency",
                                            **LIVE)
    eq.success(h.run_live, live_inputs, live_outputs, api_visibility="private", **LIVE)
    measure_event = ui.measure_btn.click(h.measure, ui.y_axis, [ui.numbers, ui.runs], api_name="measure", **LIVE)
    ui.stop_btn.click(h.stop, None, ui.status, api_name="stop", queue=False,
                      cancels=[run_event, frontier_event, inside_event, steps_run, steps_frontier, measure_event])


def _wire_the_rest(demo: gr.Blocks, h: Handlers, ui: SimpleNamespace) -> None:
    """Availability notes, the quality axis, the runs table, export, the model, the token view, unload."""
    knobs = h.panel.inputs()
    availability = dict(fn=h.availability, inputs=[ui.model_box, ui.steps] + knobs,
                        outputs=h.panel.availability_outputs(), queue=False)
    gr.on(triggers=h.panel.triggers(), api_name="availability", show_progress="hidden", **availability)
    demo.load(api_visibility="private", **availability)
    ui.y_axis.input(h.redraw_tradeoff, ui.y_axis, ui.tradeoff_plot, **QUIET)
    ui.runs.select(h.show_run, ui.y_axis, [ui.full_img, ui.acc_img, ui.diff_img, ui.numbers, ui.tradeoff_plot],
                   api_name="show_run")
    ui.export_btn.click(h.export, ui.y_axis, ui.export_files, api_name="export")
    # Loading a model may evict another from the pool: in the "live" queue, between runs.
    model_event = ui.model_box.input(h.load_model, ui.model_box, [ui.model_status, ui.inside.reading],
                                     api_name="load_model", **LIVE)
    tokens = dict(fn=h.tokens_view, inputs=[ui.prompt, ui.model_box], outputs=[ui.tokens, ui.token_warning])
    model_event.success(**tokens, **QUIET)
    model_event.success(**availability, **QUIET)
    ui.prompt.change(api_name="tokens", show_progress="hidden", **tokens)
    demo.load(**tokens, **QUIET)
    demo.unload(h.on_unload)


# The app takes no files: every upload is refused (Gradio answers 413), so no visitor can fill the disk.
LAUNCH_SETTINGS = {"max_file_size": 0}
# Exports live in Gradio's temp folder and are removed an hour after they were made (checked every 10 min).
DELETE_CACHE = (600, 3600)


def model_pool(models_flag: str | None = None, capacity_flag: int | None = None) -> ModelPool:
    """The operator's model allowlist and pool size (flags, else environment; see analysis/model_pool.py)."""
    return ModelPool(allowlist_from(models_flag), capacity_from(capacity_flag))


def _startup(pool: ModelPool) -> ModelPool:
    """Load the first offered model before the first visitor, and warm its code paths."""
    pipe = pool.get(pool.default)
    if os.environ.get("DIFFSCOPE_WARMUP", "1") != "0":
        live.warm_up(pipe, live.Request(model=pool.default, prompt=EXAMPLES[0][0]), steps=live.STARTUP_WARM_STEPS,
                     techniques=False)
    return pool


def _launch_args(argv=None):
    import argparse

    p = argparse.ArgumentParser(prog="python app.py", description="Serve the DiffScope app.")
    p.add_argument("--models", default=None, metavar="LABEL=SOURCE,...",
                   help="the models visitors may choose (default: $DIFFSCOPE_MODELS, else $DIFFSCOPE_MODEL, else "
                        "'default'); SOURCE is default, an alias, a Hub id or a folder; visitors see only LABEL")
    p.add_argument("--max-pipelines", type=int, default=None, metavar="N",
                   help="pipelines kept loaded (default: $DIFFSCOPE_MAX_PIPELINES, else 1 on a Space, 2 elsewhere)")
    args = p.parse_args(argv)
    try:
        return model_pool(args.models, args.max_pipelines)
    except ValueError as err:
        p.error(str(err))


if __name__ == "__main__":
    demo = build_demo(_startup(_launch_args()))
    demo.queue(max_size=32)  # explicit: on ZeroGPU, Gradio's implicit default queue holds a single request
    demo.launch(theme=THEME, css=CSS, **LAUNCH_SETTINGS)
