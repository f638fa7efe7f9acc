"""The "Inside the run" tabs: every probe view for the full-compute run, the accelerated run, or both side by
side, with what the technique did marked on it (T-GATE's gate on the convergence curves, Faster-Diffusion's
key steps on the drift, the tokens AT-EDM pruned on the token ranks, the reused steps on the attention maps).
The instrumented runs that feed them follow the images (a chained event), are cached on the session's
baseline and run, and never delay the images and numbers.
"""
from __future__ import annotations

import gradio as gr

from analysis.accel import reused_attention_steps, technique_marks
from analysis.run import RunStopped
from ui import observations
from viz import attention_figs as A
from viz import plotly_figs as P
from viz import signal_figs as S
from viz._attention_data import MEAN_LAYER
from viz.images import first_image, upscale
from viz.plotly_base import empty_figure

VIEWS = ["full compute", "accelerated", "both"]
NORM_CHOICES = [("per-token min-max", "per-token"), ("shared scale", "shared")]
MEAN_HEADS = "mean of heads"
SIDES = (("0-full", "full compute"), ("1-accel", "accelerated"))


def reading_note(pipe) -> str:
    """How to read this model's cross-attention maps, from what its text encoder does with a caption (and, for
    a model trained by `analysis train-default`, from its recipe: its text side and its world)."""
    note = _text_encoder_note(pipe)
    folder = getattr(getattr(pipe, "config", None), "_name_or_path", None)
    if note and folder:
        from analysis.toy.scenes import WORLDS
        from analysis.toy.train import text_encoder_kind, world_of

        world = WORLDS.get(world_of(folder)) if text_encoder_kind(folder) else None
        if world is not None and world.unstated:
            note += (f" This model's world also draws {world.unstated}, which no caption states: no word's map "
                     "has a reason to follow it, and it is what the sampler must invent on its own.")
    return note


def _text_encoder_note(pipe) -> str:
    from analysis.toy.train import text_encoder_kind

    encoder = getattr(pipe, "text_encoder", None)
    layers = getattr(getattr(encoder, "config", None), "num_hidden_layers", None)
    if layers is None:
        return ""
    folder = getattr(getattr(pipe, "config", None), "_name_or_path", None)
    kind = text_encoder_kind(folder) if folder else None
    if layers == 0:
        return ("**Reading these maps.** This model's text encoder has no transformer layers: a token's state is "
                "its own word (and its place in the prompt), so a word's map shows where the UNet reads that word. "
                "In Stable Diffusion, CLIP's causal transformer also mixes the words before a token into it, so a "
                "later word or the end token can light up an object named earlier.")
    if kind == "judge":
        return (f"**Reading these maps.** As in Stable Diffusion, this model's text encoder is a CLIP text tower "
                f"({layers} causal layers, trained contrastively on the same world and frozen while the UNet "
                "learned): a token's state carries the words before it, so a word's map is that word in its left "
                "context; the noun that ends an object's phrase usually lights that object best (DAAM's finding "
                "for SD), and the end token can light every object (hide or show it with *Show start/end tokens*).")
    return (f"**Reading these maps.** This model's text encoder is a {layers}-layer causal transformer"
            f"{' trained jointly with the UNet' if kind == 'joint' else ''}: a token's state also carries the words "
            "before it, so a word's map is that word in its left context, and a later word or the end token can "
            "light up an object named earlier (hide or show them with *Show start/end tokens*).")


class InsideTabs:
    def __init__(self, models, default_model: str, probes: tuple, session_of):
        """`models.call(model, fn_name, *args, stop=)` runs an analysis.live function on that model's pipeline;
        `models.pipe(model)` is the pipeline (the reading note of `default_model` is shown first)."""
        self.models, self.probes, self.session_of = models, probes, session_of
        self.plots: dict[tuple[str, str], gr.Plot] = {}
        self.columns: dict[str, list[gr.Column]] = {}
        with gr.Tabs():
            with gr.Tab("Inside the run"):
                with gr.Row():
                    self.view = gr.Radio(VIEWS, value="both", label="Show")
                    self.step = gr.Slider(0, 19, value=19, step=1, label="Step")
                    self.layer = gr.Dropdown([MEAN_LAYER], value=MEAN_LAYER, label="Layer")
                    self.head = gr.Dropdown([MEAN_HEADS], value=MEAN_HEADS, label="Head",
                                            info="per-head maps need one layer")
                self.strip = gr.Plot(label="What each technique did, step by step")
                with gr.Tabs():
                    with gr.Tab("Cross-attention"):
                        with gr.Row():
                            self.norm = gr.Radio(NORM_CHOICES, value="per-token", label="Normalisation")
                            self.overlay = gr.Checkbox(label="Overlay on image", value=True)
                            self.alpha = gr.Slider(0.0, 1.0, value=0.55, step=0.05, label="Overlay alpha")
                            self.special = gr.Checkbox(label="Show start/end tokens", value=False)
                        self.reading = gr.Markdown(reading_note(models.pipe(default_model)))
                        self._pair("attn", "Cross-attention maps")
                    with gr.Tab("Self-attention"):
                        with gr.Row():
                            self.picker = gr.Image(label="Click a pixel of the full-compute image", type="numpy",
                                                   interactive=False, height=220, elem_classes="diffscope-image")
                            self.pixel = gr.State((0, 0))
                        self._pair("self", "Self-attention of the chosen pixel")
                    with gr.Tab("Convergence"):
                        self.conv_log = gr.Checkbox(label="Log scale", value=True)
                        self._pair("conv", "Cross-attention convergence")
                    with gr.Tab("Feature drift"):
                        self.drift_log = gr.Checkbox(label="Log scale", value=False)
                        self._pair("drift", "Encoder/decoder feature drift")
                    with gr.Tab("Token rank"):
                        self._pair("rank", "G-WPR token importance")
                    with gr.Tab("Counters"):
                        self.counters = gr.Plot(label="Work actually skipped")
            observations.render(steps=20)  # the papers' observations on the default model, shipped
        self.view_inputs = [self.view, self.step, self.layer, self.head, self.norm, self.overlay, self.alpha,
                            self.special, self.conv_log, self.drift_log, self.pixel]
        self.inputs = list(self.view_inputs)
        plot_list = [self.plots[k] for k in sorted(self.plots)]
        self.render_outputs = plot_list + [self.strip, self.counters]
        self.outputs = self.render_outputs + [self.step, self.layer, self.head, self.picker]
        column_outputs = [c for side in sorted(self.columns) for c in self.columns[side]]
        self.view.input(self.show, self.view, column_outputs, queue=False, api_visibility="private")
        for control in (self.view, self.layer, self.head, self.norm, self.overlay, self.special, self.conv_log,
                        self.drift_log):
            control.input(self.render, self.view_inputs, self.render_outputs, api_visibility="private",
                          show_progress="hidden")
        for control in (self.step, self.alpha):
            control.release(self.render, self.view_inputs, self.render_outputs, api_visibility="private",
                            show_progress="hidden")
        self.picker.select(self.pick, None, self.pixel, api_visibility="private", queue=False).then(
            self.render, self.view_inputs, self.render_outputs, api_visibility="private", show_progress="hidden")

    def _pair(self, kind: str, label: str) -> None:
        with gr.Row():
            for side, who in SIDES:
                with gr.Column() as column:
                    self.plots[(kind, side)] = gr.Plot(label=f"{label} · {who}")
                self.columns.setdefault(side, []).append(column)

    def show(self, view):
        """Column visibility for the view: full compute, accelerated, or both side by side."""
        visible = {"0-full": view in ("full compute", "both"), "1-accel": view in ("accelerated", "both")}
        return tuple(gr.update(visible=visible[side]) for side in sorted(self.columns) for _ in self.columns[side])

    @staticmethod
    def pick(evt: gr.SelectData):
        x, y = evt.index
        return (int(y), int(x))  # (row, col) in the displayed (upscaled) image

    # -- data
    def _current(self, request):
        session = self.session_of(request)
        return (session, *session.on_screen())

    def refresh(self, request: gr.Request, view, step, layer, head, norm, overlay, alpha, special, conv_log,
                drift_log, pixel):
        """Probe runs the current view needs (cached), then every figure; superseded runs leave them as they are."""
        session, baseline, run = self._current(request)
        if baseline is None:
            return tuple(gr.skip() for _ in self.outputs)
        try:
            with session.running() as token:
                if view in ("full compute", "both") and baseline.signals is None:
                    baseline.signals = self.models.call(baseline.request.model, "instrumented", baseline.request, (),
                                                        self.probes, stop=token)
                if view in ("accelerated", "both") and run is not None and run.signals is None:
                    run.signals = self.models.call(run.request.model, "instrumented", run.request, run.accel,
                                                   self.probes, stop=token)
        except RunStopped:
            return tuple(gr.skip() for _ in self.outputs)
        last = max(0, (run.steps_run if run is not None else baseline.request.steps) - 1)
        step = last if step is None or int(step) > last else int(step)
        maps = (baseline.signals or (run.signals if run is not None else None) or {}).get("attention_maps") or {}
        layers = [MEAN_LAYER] + list(maps.get("cross") or {})
        layer = layer if layer in layers else MEAN_LAYER
        heads = [MEAN_HEADS] + [str(h) for h in range(_n_heads(maps, layer))]
        head = head if head in heads else MEAN_HEADS
        figs = self._figures(baseline, run, view, step, layer, head, norm, overlay, alpha, special, conv_log,
                             drift_log, pixel)
        return figs + (gr.update(minimum=0, maximum=max(last, 1), value=step), gr.update(choices=layers, value=layer),
                       gr.update(choices=heads, value=head), upscale(first_image(baseline.image)))

    def render(self, view, step, layer, head, norm, overlay, alpha, special, conv_log, drift_log, pixel,
               request: gr.Request = None):
        session, baseline, run = self._current(request)
        if baseline is None:
            return tuple(gr.skip() for _ in self.render_outputs)
        return self._figures(baseline, run, view, step, layer, head, norm, overlay, alpha, special, conv_log,
                             drift_log, pixel)

    # -- figures
    def _figures(self, baseline, run, view, step, layer, head, norm, overlay, alpha, special, conv_log, drift_log,
                 pixel) -> tuple:
        req = baseline.request
        marks = technique_marks(run.accel if run is not None else (), req.steps, req.model)
        gate = marks["lines"].get("convergence") or {}
        drift_lines = marks["lines"].get("drift") or {}
        sources = {"0-full": (baseline.signals, baseline.image, baseline.timesteps, ()),
                   "1-accel": (None if run is None else run.signals, None if run is None else run.image,
                               None if run is None else run.timesteps, "accel")}
        shown = {"0-full": view in ("full compute", "both"), "1-accel": view in ("accelerated", "both")}
        tokens = baseline.tokens[0] if baseline.tokens else []
        s = int(step) if step is not None else 0
        head_index = None if head in (None, MEAN_HEADS) else int(head)
        base_img = first_image(baseline.image)
        row, col = pixel or (0, 0)
        factor = max(1, upscale(base_img).shape[0] // base_img.shape[0])
        out = []
        for kind, side in sorted(self.plots):
            signals, image, timesteps, accel = sources[side]
            who = dict(SIDES)[side]
            if signals is None or not shown[side]:
                msg = ("Switch a technique on to see the accelerated run." if side == "1-accel" and run is None
                       else "Choose this run under Show to capture it." if not shown[side] else "Probes are running…")
                out.append(empty_figure(msg))
                continue
            reused_cross = reused_attention_steps(marks, "cross") if accel else None
            try:
                if kind == "attn":
                    fig = A.cross_attention_figure(signals.get("attention_maps"), tokens, step=s, layer=layer,
                                                   norm=norm or "per-token", head=head_index,
                                                   image=first_image(image) if overlay else None, alpha=float(alpha),
                                                   special=bool(special), timesteps=timesteps,
                                                   reused_steps=reused_cross, title_prefix=who)
                elif kind == "self":
                    fig = A.self_attention_figure(signals.get("attention_maps"), step=s, layer=layer,
                                                  pixel=(row // factor, col // factor), head=head_index,
                                                  image=first_image(image), timesteps=timesteps,
                                                  reused_steps=reused_attention_steps(marks, "self") if accel else None,
                                                  title_prefix=who)
                elif kind == "conv":
                    fig = S.convergence_figure(signals.get("cross_attn_convergence"), log_y=bool(conv_log),
                                               gate_step=next(iter(gate.get("steps", [])), None),
                                               gate_label=gate.get("label"), title_prefix=who)
                elif kind == "drift":
                    fig = S.drift_figure(signals.get("feature_drift"), log_y=bool(drift_log),
                                         key_steps=drift_lines.get("steps"), key_label=drift_lines.get("label"),
                                         title_prefix=who)
                else:
                    fig = S.token_rank_figure(signals.get("token_rank"), step=s, timesteps=timesteps,
                                              pruned=signals.get("atedm_pruning") if accel else None,
                                              title_prefix=who)
            except ValueError as err:  # e.g. a head of "mean of all layers": say so in the plot
                fig = empty_figure(str(err))
            out.append(fig)
        strip = (P.step_strip_figure(marks, current_step=s, title_prefix=run.label) if run is not None
                 else empty_figure("Switch a technique on to see what it does at each step.", height=160))
        out.append(strip)
        out.append(P.counters_figure(run.counters if run is not None else {}))
        return tuple(out)


def _n_heads(maps: dict, layer: str) -> int:
    from viz._attention_data import n_heads

    return 0 if layer in (None, MEAN_LAYER) else n_heads(maps, layer)
