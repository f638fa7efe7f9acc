"""DiffScope: flip a training-free acceleration technique or turn its knob, and watch the image, its quality and
its latency move against the same-seed full-compute image, with the trade-off plotted beside the images.

Gradio UI only: layout, events and formatting. Runs come from `analysis.live` (cached baselines, timed
accelerated runs, the pipeline lock, Stop), figures from `viz`. `build_demo(pipe)` builds the UI for any
pipeline, so tests run it on a tiny random one; the module-level app loads $DIFFSCOPE_MODEL ("default" = the
embedded shapes-world model).

Events usable from gradio_client (state is per session; the client keeps its own session):
- /run: the request + every technique setting -> full-compute, accelerated and difference images, numbers,
  trade-off plot, runs table, status. Changing a technique toggle or knob in the browser fires the same event.
- /frontier, /inside: the chained follow-ups (step-reduction frontier; probe runs for the "Inside" tabs);
- /equal_latency, /measure, /stop, /export, /show_run, /tokens, /availability, /load_model.
"""
from __future__ import annotations

import functools
import math
import os
import tempfile
from pathlib import Path

import gradio as gr
import numpy as np

from analysis import live
from analysis.catalog import SCHEDULERS
from analysis.model_pool import ModelPool, UnknownModel, allowlist_from, capacity_from
from analysis.run import RunStopped
from ui import inputs
from ui.inputs import SEED_MAX
from ui.inside import InsideTabs, reading_note
from ui.techniques import TechniquePanel, follow_steps, order
from ui.tokens import token_spans, truncation_note
from viz.images import difference_image, first_image, upscale
from viz.plotly_base import empty_figure
from viz.tradeoff import tradeoff_figure

# The widgets' bounds, which the handlers enforce too (an API client can send anything).
MAX_STEPS = 100
MAX_GUIDANCE = 20.0
# Kept attention maps per instrumented run (the default model needs ~50 MiB with per-head maps); a session
# keeps signals of 2 baselines and 2 runs, the store 8 sessions: at most 2 GiB of signals in all.
PROBE_BUDGET_MB = 64
NORM_CHOICES = [("per-token min-max", "per-token"), ("shared scale", "shared")]
VIEWS = ["full compute", "accelerated", "both"]
Y_CHOICES = [("closeness to full compute (PSNR)", "psnr"), ("prompt fidelity", "fidelity"),
             ("CLIP score (shapes-CLIP on the default model)", "clip")]
EXAMPLES = [["a large red circle on the left", "0"],
            ["a small blue square at the top and a yellow triangle on the right", "1"],
            ["a large green triangle in the center", "2"]]
RUN_COLUMNS = ["#", "techniques", "latency (s)", "speed-up", "ideal", "PSNR (dB)", "SSIM", "fidelity", "CLIP score"]
CSS = """
#diffscope-title h1 {margin-bottom: 0}
.diffscope-image img {image-rendering: pixelated; object-fit: contain}
.diffscope-unavailable {color: #b45309; font-size: 0.9em}
"""
THEME = gr.themes.Soft(primary_hue="indigo")

class Models:
    """The models this server offers (an operator's allowlist, `analysis.model_pool`) and the pipelines it
    keeps. Every request names its model, so one visitor's choice never changes another's images. `call`
    runs an `analysis.live` function on a model's pipeline under its lock, on the GPU worker when on a
    ZeroGPU Space."""

    def __init__(self, pool: ModelPool):
        self.pool = pool

    def label(self, model) -> str:
        try:
            return self.pool.check(model)
        except UnknownModel as err:
            raise gr.Error(str(err), title="Model not offered") from None

    def pipe(self, model):
        try:
            return self.pool.get(model)
        except UnknownModel as err:
            raise gr.Error(str(err), title="Model not loaded") from None

    def call(self, model: str, fn_name: str, *args, stop: live.StopToken | None = None):
        pipe = self.pipe(model)
        with live.pipeline_lock(pipe):
            if ZERO_GPU:
                # The worker is another process: the stop token cannot follow it, results come back pickled.
                _DEVICE["pipe"] = pipe
                return on_device(fn_name, *args)
            return getattr(live, fn_name)(pipe, *args, stop=stop)


_DEVICE: dict = {}
try:
    import spaces

    ZERO_GPU = bool(os.environ.get("SPACES_ZERO_GPU"))
except ImportError:
    spaces, ZERO_GPU = None, False


def on_device(fn_name: str, *args):
    """live.<fn_name>(pipe, *args) where the accelerator is; returns plain, picklable data."""
    return getattr(live, fn_name)(_DEVICE["pipe"], *args)


if spaces is not None:
    on_device = spaces.GPU(duration=120)(on_device)


STORE = live.SessionStore()


# --- input parsing: every value checked by the handler itself (ui/inputs.py) ------------------------------

def make_request(models: Models, model, prompt, negative, seed, steps, guidance, scheduler) -> live.Request:
    prompt = inputs.text(prompt, "The prompt")
    if not prompt.strip():
        raise gr.Error("Please enter a prompt.", title="No prompt")
    return live.Request(model=models.label(model), prompt=prompt.strip(),
                        negative_prompt=inputs.text(negative, "The negative prompt"),
                        seed=inputs.whole_number(seed, "The seed", 0, SEED_MAX),
                        steps=inputs.whole_number(steps, "Steps", 1, MAX_STEPS),
                        guidance=inputs.real_number(guidance, "Guidance", 0.0, MAX_GUIDANCE),
                        scheduler=inputs.one_of(scheduler or "ddim", "The scheduler", SCHEDULERS))


def readable_errors(n_outputs: int):
    """Every failure reaches the user as a readable gr.Error; a stopped or superseded run leaves the outputs as
    they are (n_outputs skips) and says so only when the user pressed Stop."""
    def wrap(fn):
        @functools.wraps(fn)
        def handler(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except gr.Error:
                raise
            except RunStopped as err:
                if "superseded" not in str(err):
                    gr.Info(f"Run {err}; every hook is off, the next run starts clean.")
                skips = tuple(gr.skip() for _ in range(n_outputs))
                return skips if n_outputs != 1 else skips[0]
            except ValueError as err:
                raise gr.Error(str(err), title="Invalid setting") from None
            except Exception as err:  # noqa: BLE001 - anything else still deserves a message a person can read
                raise gr.Error(f"{type(err).__name__}: {err}", title="Run failed") from None
        return handler
    return wrap


# --- formatting -------------------------------------------------------------------------------------------

def _pct(x) -> str:
    return "n/a" if x is None else f"{x:.0%}"


def _psnr(x) -> str:
    return "n/a" if x is None else ("∞ (identical)" if math.isinf(x) else f"{x:.1f} dB")


def numbers_markdown(baseline: live.Baseline, run: live.LiveRun | None) -> str:
    lo, hi = baseline.noise
    n = len(baseline.latencies)
    rows = [("latency", f"{baseline.latency_s:.3f} s (median of {n}; spread {lo:.2f}-{hi:.2f}x)",
             "—" if run is None else f"{run.latency_s:.3f} s (1 run, {run.steps_run} steps)")]
    if run is not None:
        ideal = (run.ideal or {}).get("ideal_speedup")
        band = f"noise band {run.speedup_band[0]:.2f}-{run.speedup_band[1]:.2f}x"
        sp = f"**{run.speedup:.2f}x** measured ({band})" + (f" · ideal {ideal:.2f}x from counted work" if ideal else "")
        if run.careful:
            c = run.careful
            sp += (f"<br>careful: **{c['paired_speedup']:.2f}x** (quartiles {c['paired_q1']:.2f}-{c['paired_q3']:.2f}x,"
                   f" {c['rounds']} interleaved pairs)")
        rows.append(("speed-up", "1.00x", sp))
        rows.append(("PSNR / SSIM vs full compute", "∞ / 1", f"{_psnr(run.psnr_db)} / {run.ssim:.4f}"))
    fid_b = live.fidelity_of(baseline.quality)
    if fid_b is not None or (run is not None and live.fidelity_of(run.quality) is not None):
        rows.append(("prompt fidelity", _pct(fid_b), "—" if run is None else _pct(live.fidelity_of(run.quality))))
    unavailable = []
    for name, scores in ((run.quality if run is not None else baseline.quality) or {}).items():
        if name == "fidelity":
            continue
        if scores.get("available") is False:
            unavailable.append(f"{name} ({scores.get('reason', 'unavailable')})")
        elif name == "lpips" and run is not None:
            rows.append(("LPIPS vs full compute", "0", f"{scores['lpips']:.4f}"))
        elif name == "clip_score":
            rows.append(("CLIP score", f"{scores['baseline']:.2f}", "—" if run is None else f"{scores['clip_score']:.2f}"))
    table = "\n".join(f"| {a} | {b} | {c} |" for a, b, c in rows)
    text = f"| | full compute | accelerated |\n|---|---|---|\n{table}"
    if unavailable:
        text += "\n\n*Not measured here:* " + "; ".join(unavailable)
    if run is not None:
        skipped = live.skipped_summary(run.counters)
        if skipped:
            text += "\n\n**Skipped:** " + "; ".join(skipped)
        if run.speedup_band[0] <= 1.0 <= run.speedup_band[1]:
            text += ("\n\n*The measured speed-up is inside this machine's timing noise: press **Measure carefully** "
                     "for a paired number.*")
    return text


def runs_table(session: live.Session) -> list[list]:
    out = []
    for r in reversed(session.runs):
        ideal = (r.ideal or {}).get("ideal_speedup")
        out.append([r.id, r.label, round(r.latency_s, 3), round(r.speedup, 2), None if ideal is None else round(ideal, 2),
                    "inf" if math.isinf(r.psnr_db) else round(r.psnr_db, 1), round(r.ssim, 4),
                    None if r.fidelity is None else round(r.fidelity, 2),
                    None if live.clip_score_of(r.quality) is None else round(live.clip_score_of(r.quality), 1)])
    return out


def plot_rows(session: live.Session, baseline: live.Baseline | None, current_id: int | None) -> list[dict]:
    rows = []
    for r in session.runs:
        row = r.row()
        row["current"] = r.id == current_id
        row["same_baseline"] = baseline is not None and r.request == baseline.request
        rows.append(row)
    return rows


def shipped_rows(model: str, steps: int) -> list[dict]:
    """The shipped default-model sweep at this step count, when it exists (drawn faintly behind)."""
    if model != "default":
        return []
    try:
        from analysis.eval.sweep_results import load_shipped
    except ImportError:
        return []
    try:
        return load_shipped(steps=steps)
    except (FileNotFoundError, ValueError):
        return []


def export_folder(cache_dir: str) -> Path:
    """A fresh folder for one export inside Gradio's temp folder, where `delete_cache` removes its files (and
    this removes the empty folders earlier exports left)."""
    root = Path(cache_dir) / "diffscope-exports"
    root.mkdir(parents=True, exist_ok=True)
    for old in root.iterdir():
        try:
            old.rmdir()  # only empty ones: their files were already deleted
        except OSError:
            pass
    return Path(tempfile.mkdtemp(prefix="export-", dir=root))


def tradeoff(session, baseline, current_id, y) -> "object":
    if baseline is None:
        return empty_figure("Generate an image to start the trade-off plot.")
    return tradeoff_figure(plot_rows(session, baseline, current_id), baseline.frontier,
                           shipped_rows(baseline.request.model, baseline.request.steps), baseline.latency_s,
                           y=y or "psnr")


def images(baseline: live.Baseline, run: live.LiveRun | None):
    base = first_image(baseline.image)
    if run is None:
        return upscale(base), None, None
    acc = first_image(run.image)
    diff, _ = difference_image(base, acc)
    return upscale(base), upscale(acc), upscale(diff)


# --- the UI -----------------------------------------------------------------------------------------------

def build_demo(pipe_or_pool, probes=None) -> gr.Blocks:
    """The DiffScope UI over a `ModelPool` (the models this server offers), or over one pipeline (tests).
    `probes` defaults to `analysis.probes.default_probes()`."""
    from analysis.probes import default_probes

    probes = tuple(default_probes(budget_mb=PROBE_BUDGET_MB) if probes is None else probes)
    pool = pipe_or_pool if isinstance(pipe_or_pool, ModelPool) else ModelPool.of(pipe_or_pool)
    models = Models(pool)
    panel = TechniquePanel()

    def session_of(request: gr.Request) -> live.Session:
        return STORE.get(getattr(request, "session_hash", None) or "anonymous")

    # -- tokens
    def tokens_view(prompt, model=None):
        model = models.label(model or pool.default)
        return token_spans(models.pipe(model), model, inputs.text(prompt, "The prompt"))

    # -- the live run
    @readable_errors(8)
    def run_live(request: gr.Request, prompt, negative, seed, steps, guidance, scheduler, model, y, *knobs):
        req = make_request(models, model, prompt, negative, seed, steps, guidance, scheduler)
        y = inputs.one_of(y or "psnr", "The quality axis", [v for _, v in Y_CHOICES])
        accel = panel.configs(knobs, req.steps)
        session = session_of(request)
        session.quality_axis = y
        with session.running(supersede=True) as token:
            baseline = session.baseline(req)
            cached = baseline is not None
            if not cached:
                baseline = session.keep_baseline(models.call(req.model, "measure_baseline", req, stop=token))
            run = (session.add_run(models.call(req.model, "run_accelerated", baseline, accel, stop=token))
                   if accel else None)
        session.current = (baseline.request, None if run is None else run.id)
        cut = truncation_note(models.pipe(req.model), req.prompt)
        if cut:
            gr.Warning(cut)
        full, acc, diff = images(baseline, run)
        status = (f"**{req.model}** · {req.steps} steps · {req.scheduler} · seed {req.seed} · full compute "
                  + ("cached" if cached else f"timed {len(baseline.latencies)}x") + ". "
                  + ("" if run else "Switch a technique on to compare."))
        return (full, acc, diff, numbers_markdown(baseline, run),
                tradeoff(session, baseline, None if run is None else run.id, y), runs_table(session), status,
                gr.update(interactive=run is not None))

    @readable_errors(1)
    def run_frontier(y, request: gr.Request = None):
        session = session_of(request)
        session.quality_axis = inputs.one_of(y or "psnr", "The quality axis", [v for _, v in Y_CHOICES])
        baseline, run = session.on_screen()
        if baseline is None:
            return gr.skip()
        ensure_frontier(session, baseline)
        # the axis may have been switched while the frontier ran (redraw_tradeoff records it): draw that one
        return tradeoff(session, baseline, None if run is None else run.id, session.quality_axis)

    def ensure_frontier(session, baseline) -> None:
        if baseline.frontier is None:
            with session.running() as token:
                baseline.frontier = models.call(baseline.request.model, "compute_frontier", baseline, stop=token)

    def run_on_screen(session, what: str) -> tuple[live.Baseline, live.LiveRun]:
        baseline, run = session.on_screen()
        if run is None or baseline is None:
            raise gr.Error(f"Switch a technique on first: {what} needs an accelerated run on screen.")
        return baseline, run

    def redraw_tradeoff(y, request: gr.Request = None):
        session = session_of(request)
        session.quality_axis = inputs.one_of(y or "psnr", "The quality axis", [v for _, v in Y_CHOICES])
        baseline, run = session.on_screen()
        return tradeoff(session, baseline, None if run is None else run.id, y)

    @readable_errors(len(order()) + 1)
    def equal_latency(request: gr.Request = None):
        session = session_of(request)
        baseline, run = run_on_screen(session, "equal latency")
        ensure_frontier(session, baseline)
        n = live.equal_latency_steps(baseline, run.latency_s)
        gr.Info(f"Step reduction at {n} of {run.request.steps} steps has the measured latency of {run.label} "
                f"({run.latency_s:.3f} s); other techniques switched off to compare.")
        return panel.steps_updates(n)

    @readable_errors(2)
    def measure(y, request: gr.Request = None, progress=gr.Progress()):
        session = session_of(request)
        baseline, run = run_on_screen(session, "measuring carefully")
        progress(0, desc=f"{live.CAREFUL_ROUNDS} interleaved pairs")
        with session.running() as token:
            run.careful = models.call(baseline.request.model, "measure_carefully", baseline, run, stop=token)
        return numbers_markdown(baseline, run), runs_table(session)

    def stop(request: gr.Request = None):
        n = session_of(request).stop("stopped by the user")
        return f"Stop requested ({n} run{'s' if n != 1 else ''} ending at the next denoising step)."

    @readable_errors(5)
    def show_run(evt: gr.EventData, y, request: gr.Request = None):
        session = session_of(request)
        # The raw event: gr.SelectData would fail inside Gradio (error: null) on event data an API client
        # left out or made up, before this handler could say what is wrong.
        data = getattr(evt, "_data", None)
        row = data.get("row_value") if isinstance(data, dict) else None
        if not isinstance(row, (list, tuple)) or not row:
            raise gr.Error("Select a run in the runs table.", title="No run selected")
        run = session.run(inputs.whole_number(row[0], "The run number", 0, 2**31))
        if run is None:
            raise gr.Error("That run is no longer kept (a session keeps its newest runs).")
        baseline = session.baseline(run.request)
        if baseline is None:
            raise gr.Error("That run's full-compute baseline is no longer cached; generate it again.")
        session.current = (run.request, run.id)
        full, acc, diff = images(baseline, run)
        return full, acc, diff, numbers_markdown(baseline, run), tradeoff(session, baseline, run.id, y)

    @readable_errors(1)
    def export(y, request: gr.Request = None):
        from ui.export import figure_pack

        session = session_of(request)
        baseline, run = session.on_screen()
        if baseline is None:
            raise gr.Error("Generate first: there is no run to export.")
        y = inputs.one_of(y or "psnr", "The quality axis", [v for _, v in Y_CHOICES])
        return figure_pack(export_folder(export_files.GRADIO_CACHE), baseline.request.model, baseline, run,
                           plot_rows(session, baseline, None if run is None else run.id),
                           shipped_rows(baseline.request.model, baseline.request.steps), y)

    def load_model(model):
        """Make sure an offered model is loaded and say how to read its maps; changes nothing for others."""
        model = models.label(model)
        return f"Model: **{model}**", reading_note(models.pipe(model))

    def steps_changed(steps_v, shown_for, *values):
        """The step-following knobs for a new step count (ui.techniques.follow_steps), and the count they are
        now shown for."""
        try:
            n = inputs.whole_number(steps_v, "Steps", 1, MAX_STEPS)
        except ValueError:
            return (shown_for,) + tuple(gr.skip() for _ in panel.step_knobs())  # the run says what is wrong
        followed, notes = follow_steps(n, shown_for, list(values))
        for note in notes:
            gr.Warning(note)
        return (n, *followed)

    def on_unload(request: gr.Request = None):
        STORE.drop(getattr(request, "session_hash", None) or "anonymous")

    with gr.Blocks(title="DiffScope", delete_cache=DELETE_CACHE) as demo:
        gr.Markdown("# DiffScope\nSwitch a training-free acceleration technique on, turn its knobs, and watch the "
                    "image, its quality and its latency move against the same-seed full-compute image.",
                    elem_id="diffscope-title")
        with gr.Row():
            with gr.Column(scale=2, min_width=340):
                prompt = gr.Textbox(label="Prompt", value=EXAMPLES[0][0], lines=2, max_lines=4)
                tokens = gr.HighlightedText(label="Tokens", show_legend=True, combine_adjacent=False,
                                            color_map={"special": "#d0d0d0", "unknown word": "#f59e0b",
                                                       "cut off": "#ef4444"})
                token_warning = gr.Markdown()
                negative = gr.Textbox(label="Negative prompt", value="", lines=1)
                with gr.Row():
                    seed = gr.Textbox(label="Seed", value="0", max_lines=1,
                                      info="a whole number from 0 to 2^63-1")
                    scheduler = gr.Dropdown(label="Scheduler", choices=list(SCHEDULERS), value="ddim")
                with gr.Row():
                    steps = inputs.Slider(label="Steps", minimum=1, maximum=MAX_STEPS, step=1, value=20)
                    knob_steps = gr.State(20)  # the step count the step-dependent knobs were last set for
                    guidance = inputs.Slider(label="Guidance scale", minimum=0, maximum=MAX_GUIDANCE, step=0.5,
                                             value=5.0)
                with gr.Row():
                    run_btn = gr.Button("Generate", variant="primary")
                    stop_btn = gr.Button("Stop", variant="stop")
                gr.Examples(EXAMPLES, [prompt, seed], label="Examples (default model)")
                gr.Markdown("### Techniques\nEach toggle or knob re-runs only the accelerated generation.")
                panel.render()
                with gr.Row():
                    measure_btn = gr.Button("Measure carefully", size="sm", interactive=False)
                    export_btn = gr.Button("Export figures + slide", size="sm")
                export_files = gr.File(label="Export", file_count="multiple", interactive=False, height=90)
                with gr.Accordion("Model", open=len(pool.labels) > 1):
                    model_box = gr.Dropdown(label="Model", choices=pool.labels, value=pool.default,
                                            info="the models this server offers (set by its operator)")
                    model_status = gr.Markdown(f"Model: **{pool.default}**")
            with gr.Column(scale=3, min_width=420):
                with gr.Row():
                    full_img = gr.Image(label="Full compute", type="numpy", interactive=False, format="png",
                                        height=260, elem_classes="diffscope-image")
                    acc_img = gr.Image(label="Accelerated", type="numpy", interactive=False, format="png",
                                       height=260, elem_classes="diffscope-image")
                    diff_img = gr.Image(label="Difference |full - accelerated|", type="numpy", interactive=False,
                                        format="png", height=260, elem_classes="diffscope-image")
                numbers = gr.Markdown()
                y_axis = gr.Radio(label="Quality axis", choices=Y_CHOICES, value="psnr")
                tradeoff_plot = gr.Plot(label="Quality vs latency", elem_id="diffscope-tradeoff")
                runs = gr.Dataframe(headers=RUN_COLUMNS, label="Runs of this session (select one to show it)",
                                    interactive=False, max_height=220, wrap=True)
                status = gr.Markdown()
        inside = InsideTabs(models, pool.default, probes, session_of)

        request_inputs = [prompt, negative, seed, steps, guidance, scheduler, model_box]
        live_outputs = [full_img, acc_img, diff_img, numbers, tradeoff_plot, runs, status, measure_btn]
        knobs = panel.inputs()
        run_event = gr.on(
            triggers=[run_btn.click, prompt.submit, seed.submit, guidance.release, scheduler.input,
                      negative.submit] + panel.triggers(),
            fn=run_live, inputs=request_inputs + [y_axis] + knobs, outputs=live_outputs, api_name="run",
            trigger_mode="always_last", concurrency_limit=1, concurrency_id="live")
        frontier_event = run_event.success(run_frontier, y_axis, tradeoff_plot, api_name="frontier",
                                           concurrency_limit=1, concurrency_id="follow-up", show_progress="hidden")
        inside_event = frontier_event.then(inside.refresh, inside.inputs, inside.outputs, api_name="inside",
                                           concurrency_limit=1, concurrency_id="follow-up", show_progress="hidden")
        def availability(model, steps_v, *values):
            return panel.availability(steps_v, *values, model=models.label(model))

        gr.on(triggers=panel.triggers(), fn=availability, inputs=[model_box, steps] + knobs,
              outputs=panel.availability_outputs(), api_name="availability", show_progress="hidden", queue=False)
        # A new step count: knobs at their defaults follow it, set ones are clamped (with a note); then the run.
        steps_event = steps.release(steps_changed, [steps, knob_steps] + knobs, [knob_steps] + panel.step_knobs(),
                                    api_visibility="private", show_progress="hidden", trigger_mode="always_last")
        steps_event.then(availability, [model_box, steps] + knobs, panel.availability_outputs(),
                         api_visibility="private", show_progress="hidden", queue=False)
        steps_run = steps_event.success(run_live, request_inputs + [y_axis] + knobs, live_outputs,
                                        api_visibility="private", concurrency_limit=1, concurrency_id="live")
        # (no Inside refresh on this chain: typing a step count and clicking Generate fires both chains, and a
        # second refresh would send the Inside step slider's stale value against its new maximum)
        steps_frontier = steps_run.success(run_frontier, y_axis, tradeoff_plot, api_visibility="private",
                                           concurrency_limit=1, concurrency_id="follow-up", show_progress="hidden")
        demo.load(availability, [model_box, steps] + knobs, panel.availability_outputs(), api_visibility="private",
                  queue=False)
        y_axis.input(redraw_tradeoff, y_axis, tradeoff_plot, api_visibility="private", show_progress="hidden")
        eq = panel.equal_latency_button.click(equal_latency, None, panel.steps_outputs(), api_name="equal_latency",
                                              concurrency_limit=1, concurrency_id="live")
        eq.success(run_live, request_inputs + [y_axis] + knobs, live_outputs, api_visibility="private",
                   concurrency_limit=1, concurrency_id="live")
        measure_event = measure_btn.click(measure, y_axis, [numbers, runs], api_name="measure",
                                          concurrency_limit=1, concurrency_id="live")
        stop_btn.click(stop, None, status, api_name="stop", cancels=[run_event, frontier_event, inside_event,
                                                                     steps_run, steps_frontier,
                                                                     measure_event], queue=False)
        runs.select(show_run, y_axis, [full_img, acc_img, diff_img, numbers, tradeoff_plot], api_name="show_run")
        export_btn.click(export, y_axis, export_files, api_name="export")
        # Loading a model may evict another from the pool: in the "live" queue, between runs.
        model_event = model_box.input(load_model, model_box, [model_status, inside.reading], api_name="load_model",
                                      concurrency_limit=1, concurrency_id="live")
        model_event.success(tokens_view, [prompt, model_box], [tokens, token_warning], api_visibility="private",
                            show_progress="hidden")
        model_event.success(availability, [model_box, steps] + knobs, panel.availability_outputs(),
                            api_visibility="private", show_progress="hidden", queue=False)
        prompt.change(tokens_view, [prompt, model_box], [tokens, token_warning], api_name="tokens",
                      show_progress="hidden")
        demo.load(tokens_view, [prompt, model_box], [tokens, token_warning], api_visibility="private",
                  show_progress="hidden")
        demo.unload(on_unload)
    return demo


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
        live.warm_up(pipe, live.Request(model=pool.default, prompt=EXAMPLES[0][0]))
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
