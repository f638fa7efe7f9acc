"""The app's handlers: module-level plumbing (the models a server offers, the ZeroGPU worker, the session
store, input parsing, readable errors) and `Handlers`, one small object per built UI whose methods are the
event handlers app.py wires to its components. Every value a handler gets is checked by the handler itself
(ui/inputs.py): an API client can send anything."""
from __future__ import annotations

import functools
import inspect
import os

import gradio as gr

from analysis import live
from analysis.catalog import ATTENTION_BACKENDS, SCHEDULERS
from analysis.model_pool import ModelPool, UnknownModel
from analysis.run import RunStopped
from ui import inputs
from ui.inputs import SEED_MAX
from ui.inside import reading_note
from ui.results import (Y_CHOICES, export_folder, images, numbers_markdown, plot_rows, runs_table, shipped_rows,
                        tradeoff)
from ui.techniques import TechniquePanel, follow_steps, order
from ui.tokens import token_spans, truncation_note

# The widgets' bounds, which the handlers enforce too.
MAX_STEPS = 100
MAX_GUIDANCE = 20.0


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

def make_request(models: Models, model, prompt, negative, seed, steps, guidance, scheduler,
                 attention="fused") -> live.Request:
    prompt = inputs.text(prompt, "The prompt")
    if not prompt.strip():
        raise gr.Error("Please enter a prompt.", title="No prompt")
    return live.Request(model=models.label(model), prompt=prompt.strip(),
                        negative_prompt=inputs.text(negative, "The negative prompt"),
                        seed=inputs.whole_number(seed, "The seed", 0, SEED_MAX),
                        steps=inputs.whole_number(steps, "Steps", 1, MAX_STEPS),
                        guidance=inputs.real_number(guidance, "Guidance", 0.0, MAX_GUIDANCE),
                        scheduler=inputs.one_of(scheduler or "ddim", "The scheduler", SCHEDULERS),
                        attention=inputs.one_of(attention or "fused", "The attention backend", ATTENTION_BACKENDS))


def readable_errors(n_outputs: int):
    """Every failure reaches the user as a readable gr.Error; a stopped or superseded run leaves the outputs as
    they are (n_outputs skips) and says so only when the user pressed Stop. Works on generator handlers too
    (their errors surface while they are iterated)."""
    def stopped(err: RunStopped):
        if "superseded" not in str(err):
            gr.Info(f"Run {err}; every hook is off, the next run starts clean.")
        skips = tuple(gr.skip() for _ in range(n_outputs))
        return skips if n_outputs != 1 else skips[0]

    def readable(err: Exception) -> gr.Error:
        if isinstance(err, ValueError):
            return gr.Error(str(err), title="Invalid setting")
        return gr.Error(f"{type(err).__name__}: {err}", title="Run failed")

    def outcome(err: Exception):
        """The outputs for a stopped run; any other failure raised again as a readable gr.Error."""
        if isinstance(err, gr.Error):
            raise err
        if isinstance(err, RunStopped):
            return stopped(err)
        raise readable(err) from None

    def wrap(fn):
        if inspect.isgeneratorfunction(fn):
            @functools.wraps(fn)
            def streaming(*args, **kwargs):
                try:
                    yield from fn(*args, **kwargs)
                except Exception as err:  # noqa: BLE001 - every failure deserves a message a person can read
                    yield outcome(err)
            return streaming

        @functools.wraps(fn)
        def handler(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except Exception as err:  # noqa: BLE001 - every failure deserves a message a person can read
                return outcome(err)
        return handler
    return wrap


class Handlers:
    """The event handlers of one built UI, over its state: the offered models, the techniques panel, and the
    folder exports go to. Sessions live in the module's STORE (one per browser tab / API client)."""

    def __init__(self, pool: ModelPool, panel: TechniquePanel):
        self.pool, self.panel = pool, panel
        self.models = Models(pool)
        self.export_cache: str | None = None  # Gradio's temp folder, known once the export component exists

    def session_of(self, request: gr.Request) -> live.Session:
        return STORE.get(getattr(request, "session_hash", None) or "anonymous")

    def tokens_view(self, prompt, model=None):
        model = self.models.label(model or self.pool.default)
        return token_spans(self.models.pipe(model), model, inputs.text(prompt, "The prompt"))

    @readable_errors(8)
    def run_live(self, request: gr.Request, prompt, negative, seed, steps, guidance, scheduler, model, attention, y,
                 *knobs):
        req = make_request(self.models, model, prompt, negative, seed, steps, guidance, scheduler, attention)
        y = inputs.one_of(y or "psnr", "The quality axis", [v for _, v in Y_CHOICES])
        accel = self.panel.configs(knobs, req.steps)
        session = self.session_of(request)
        session.quality_axis = y
        with session.running(supersede=True) as token:
            baseline = session.baseline(req)
            cached = baseline is not None
            if not cached:
                baseline = session.keep_baseline(self.models.call(req.model, "first_baseline", req, stop=token))
            run = (session.add_run(self.models.call(req.model, "run_accelerated", baseline, accel, stop=token))
                   if accel else None)
        session.current = (baseline.request, None if run is None else run.id)
        cut = truncation_note(self.models.pipe(req.model), req.prompt)
        if cut:
            gr.Warning(cut)
        full, acc, diff = images(baseline, run)
        status = (f"**{req.model}** · {req.steps} steps · {req.scheduler} · seed {req.seed} · full compute "
                  + ("cached" if cached else f"timed {len(baseline.latencies)}x") + ". "
                  + ("" if run else "Switch a technique on to compare."))
        return (full, acc, diff, numbers_markdown(baseline, run),
                tradeoff(session, baseline, None if run is None else run.id, y), runs_table(session), status,
                gr.update(interactive=run is not None))

    @readable_errors(3)
    def run_frontier(self, y, request: gr.Request = None):
        """The follow-up of every run, drawn as it lands: the baseline's remaining timed runs (the numbers and
        speed-ups are redrawn with the full noise band), then the step-reduction frontier one point at a time
        (the full-compute point is on the plot from the start)."""
        session = self.session_of(request)
        session.quality_axis = inputs.one_of(y or "psnr", "The quality axis", [v for _, v in Y_CHOICES])
        baseline, _ = session.on_screen()
        if baseline is None:
            yield gr.skip(), gr.skip(), gr.skip()
            return
        model = baseline.request.model
        missing = live.BASELINE_TIMED_RUNS - len(baseline.latencies)
        if missing > 0:
            with session.running() as token:
                baseline.latencies += self.models.call(model, "time_baseline", baseline, missing, stop=token)
            session.retime(baseline)
        if baseline.quality is None:
            baseline.quality = self.models.call(model, "baseline_quality", baseline)
        yield self._follow_up_view(session, baseline, [live.full_compute_point(baseline)])
        if baseline.frontier is None:
            points = [live.full_compute_point(baseline)]
            for n in live.frontier_steps(baseline.request.steps):
                with session.running() as token:
                    points.append(self.models.call(model, "frontier_point", baseline, n, stop=token))
                yield self._follow_up_view(session, baseline, points)
            baseline.frontier = sorted(points, key=lambda r: r["steps"])
        # the axis may have been switched while the frontier ran (redraw_tradeoff records it): draw that one
        yield self._follow_up_view(session, baseline, baseline.frontier)

    def _follow_up_view(self, session, baseline, frontier) -> tuple:
        """What is on screen now (a run may have landed since the follow-up started), with the frontier so far;
        nothing is redrawn once the screen shows another request."""
        on_screen, run = session.on_screen()
        if on_screen is not baseline:
            return gr.skip(), gr.skip(), gr.skip()
        plot = tradeoff(session, baseline, None if run is None else run.id, session.quality_axis,
                        frontier=sorted(frontier, key=lambda r: r["steps"]))
        return plot, numbers_markdown(baseline, run), runs_table(session)

    def ensure_frontier(self, session, baseline) -> None:
        if baseline.frontier is None:
            with session.running() as token:
                baseline.frontier = self.models.call(baseline.request.model, "compute_frontier", baseline, stop=token)

    def run_on_screen(self, session, what: str) -> tuple[live.Baseline, live.LiveRun]:
        baseline, run = session.on_screen()
        if run is None or baseline is None:
            raise gr.Error(f"Switch a technique on first: {what} needs an accelerated run on screen.")
        return baseline, run

    def redraw_tradeoff(self, y, request: gr.Request = None):
        session = self.session_of(request)
        session.quality_axis = inputs.one_of(y or "psnr", "The quality axis", [v for _, v in Y_CHOICES])
        baseline, run = session.on_screen()
        return tradeoff(session, baseline, None if run is None else run.id, y)

    @readable_errors(len(order()) + 1)
    def equal_latency(self, request: gr.Request = None):
        session = self.session_of(request)
        baseline, run = self.run_on_screen(session, "equal latency")
        self.ensure_frontier(session, baseline)
        n = live.equal_latency_steps(baseline, run.latency_s)
        gr.Info(f"Step reduction at {n} of {run.request.steps} steps has the measured latency of {run.label} "
                f"({run.latency_s:.3f} s); other techniques switched off to compare.")
        return self.panel.steps_updates(n)

    @readable_errors(2)
    def measure(self, y, request: gr.Request = None, progress=gr.Progress()):
        session = self.session_of(request)
        baseline, run = self.run_on_screen(session, "measuring carefully")
        progress(0, desc=f"{live.CAREFUL_ROUNDS} interleaved pairs")
        with session.running() as token:
            run.careful = self.models.call(baseline.request.model, "measure_carefully", baseline, run, stop=token)
        return numbers_markdown(baseline, run), runs_table(session)

    def stop(self, request: gr.Request = None):
        n = self.session_of(request).stop("stopped by the user")
        return f"Stop requested ({n} run{'s' if n != 1 else ''} ending at the next denoising step)."

    @readable_errors(5)
    def show_run(self, evt: gr.EventData, y, request: gr.Request = None):
        session = self.session_of(request)
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
    def export(self, y, request: gr.Request = None):
        from ui.export import figure_pack

        session = self.session_of(request)
        baseline, run = session.on_screen()
        if baseline is None:
            raise gr.Error("Generate first: there is no run to export.")
        y = inputs.one_of(y or "psnr", "The quality axis", [v for _, v in Y_CHOICES])
        return figure_pack(export_folder(self.export_cache), baseline.request.model, baseline, run,
                           plot_rows(session, baseline, None if run is None else run.id),
                           shipped_rows(baseline.request.model, baseline.request.steps), y)

    def load_model(self, model):
        """Make sure an offered model is loaded and say how to read its maps; changes nothing for others."""
        model = self.models.label(model)
        return f"Model: **{model}**", reading_note(self.models.pipe(model))

    def steps_changed(self, steps_v, shown_for, *values):
        """The step-following knobs for a new step count (ui.techniques.follow_steps), and the count they are
        now shown for."""
        try:
            n = inputs.whole_number(steps_v, "Steps", 1, MAX_STEPS)
        except ValueError:
            return (shown_for,) + tuple(gr.skip() for _ in self.panel.step_knobs())  # the run says what is wrong
        followed, notes = follow_steps(n, shown_for, list(values))
        for note in notes:
            gr.Warning(note)
        return (n, *followed)

    def on_unload(self, request: gr.Request = None):
        STORE.drop(getattr(request, "session_hash", None) or "anonymous")

    def availability(self, model, steps_v, *values):
        return self.panel.availability(steps_v, *values, model=self.models.label(model))
