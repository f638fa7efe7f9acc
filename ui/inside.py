"""The "Inside the run" tabs: every probe view for the full-compute run, the accelerated run, or both side by
side. The instrumented runs that feed them follow the images (a chained event), are cached on the session's
baseline and run, and never delay the images and numbers.
"""
from __future__ import annotations

import gradio as gr

from analysis import live  # noqa: F401  (RunStopped)
from viz import plotly_figs as P
from viz.images import first_image

VIEWS = ["full compute", "accelerated", "both"]
NORM_CHOICES = [("per-token min-max", "per-token"), ("shared scale", "shared")]
KINDS = ("attn", "conv", "drift", "rank")


class InsideTabs:
    def __init__(self, slot, probes: tuple, session_of):
        self.slot, self.probes, self.session_of = slot, probes, session_of
        self.plots: dict[tuple[str, str], gr.Plot] = {}
        self.columns: dict[str, list[gr.Column]] = {}
        with gr.Tabs():
            with gr.Tab("Inside the run"):
                with gr.Row():
                    self.view = gr.Radio(VIEWS, value="both", label="Show")
                    self.step = gr.Slider(0, 19, value=19, step=1, label="Step")
                    self.layer = gr.Dropdown([P.MEAN_LAYER], value=P.MEAN_LAYER, label="Layer")
                with gr.Tabs():
                    with gr.Tab("Cross-attention"):
                        with gr.Row():
                            self.norm = gr.Radio(NORM_CHOICES, value="per-token", label="Normalisation")
                            self.overlay = gr.Checkbox(label="Overlay on image", value=True)
                            self.alpha = gr.Slider(0.0, 1.0, value=0.55, step=0.05, label="Overlay alpha")
                            self.special = gr.Checkbox(label="Show start/end tokens", value=False)
                        self._pair("attn", "Cross-attention maps")
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
        self.view_inputs = [self.view, self.step, self.layer, self.norm, self.overlay, self.alpha, self.special,
                            self.conv_log, self.drift_log]
        self.inputs = list(self.view_inputs)
        self.outputs = [self.plots[k] for k in sorted(self.plots)] + [self.counters, self.step, self.layer]
        self.render_outputs = [self.plots[k] for k in sorted(self.plots)] + [self.counters]
        column_outputs = [c for side in sorted(self.columns) for c in self.columns[side]]
        self.view.input(self.show, self.view, column_outputs, queue=False, api_visibility="private")
        for control in (self.view, self.layer, self.norm, self.overlay, self.special, self.conv_log, self.drift_log):
            control.input(self.render, self.view_inputs, self.render_outputs, api_visibility="private",
                          show_progress="hidden")
        for control in (self.step, self.alpha):
            control.release(self.render, self.view_inputs, self.render_outputs, api_name=None,
                            api_visibility="private", show_progress="hidden")

    def _pair(self, kind: str, label: str) -> None:
        with gr.Row():
            for side, who in (("0-full", "full compute"), ("1-accel", "accelerated")):
                with gr.Column() as column:
                    self.plots[(kind, side)] = gr.Plot(label=f"{label} · {who}")
                self.columns.setdefault(side, []).append(column)

    def show(self, view):
        """Column visibility for the view: full compute, accelerated, or both side by side."""
        visible = {"0-full": view in ("full compute", "both"), "1-accel": view in ("accelerated", "both")}
        return tuple(gr.update(visible=visible[side]) for side in sorted(self.columns) for _ in self.columns[side])

    # -- data
    def _current(self, request):
        session = self.session_of(request)
        current = getattr(session, "current", None)
        if current is None:
            return session, None, None
        baseline = session.baseline(current[0])
        return session, baseline, session.run(current[1]) if current[1] else None

    def refresh(self, request: gr.Request, view, step, layer, norm, overlay, alpha, special, conv_log, drift_log):
        """Probe runs the current view needs (cached), then every figure; superseded runs leave them as they are."""
        session, baseline, run = self._current(request)
        if baseline is None:
            return tuple(gr.skip() for _ in self.outputs)
        token = session.start()
        try:
            if view in ("full compute", "both") and baseline.signals is None:
                baseline.signals = self.slot.call("instrumented", baseline.request, (), self.probes, stop=token)
            if view in ("accelerated", "both") and run is not None and run.signals is None:
                run.signals = self.slot.call("instrumented", run.request, run.accel, self.probes, stop=token)
        except live.RunStopped:
            return tuple(gr.skip() for _ in self.outputs)
        finally:
            session.finish(token)
        last = max(0, (run.steps_run if run is not None else baseline.request.steps) - 1)
        step = last if step is None or int(step) > last else int(step)
        maps = ((baseline.signals or {}).get("attention_maps") or {})
        layers = [P.MEAN_LAYER] + list(maps.get("cross") or {})
        layer = layer if layer in layers else P.MEAN_LAYER
        figs = self._figures(session, baseline, run, view, step, layer, norm, overlay, alpha, special, conv_log,
                             drift_log)
        return figs + (gr.update(minimum=0, maximum=max(last, 1), value=step), gr.update(choices=layers, value=layer))

    def render(self, view, step, layer, norm, overlay, alpha, special, conv_log, drift_log, request: gr.Request = None):
        session, baseline, run = self._current(request)
        if baseline is None:
            return tuple(gr.skip() for _ in self.render_outputs)
        return self._figures(session, baseline, run, view, step, layer, norm, overlay, alpha, special, conv_log,
                             drift_log)

    # -- figures
    def _figures(self, session, baseline, run, view, step, layer, norm, overlay, alpha, special, conv_log,
                 drift_log) -> tuple:
        sources = {"0-full": (baseline.signals, baseline.image, baseline.timesteps, "full compute"),
                   "1-accel": (None if run is None else run.signals, None if run is None else run.image,
                               None if run is None else run.timesteps, "accelerated")}
        shown = {"0-full": view in ("full compute", "both"), "1-accel": view in ("accelerated", "both")}
        tokens = baseline.tokens[0] if baseline.tokens else []
        out = []
        for kind, side in sorted(self.plots):
            signals, image, timesteps, who = sources[side]
            if signals is None or not shown[side]:
                msg = ("Switch a technique on to see the accelerated run." if side == "1-accel" and run is None
                       else "Choose this run under Show to capture it." if not shown[side] else "Probes are running…")
                out.append(P.empty_figure(msg))
                continue
            s = int(step) if step is not None else 0
            if kind == "attn":
                fig = P.cross_attention_figure(signals.get("attention_maps"), tokens, step=s, layer=layer or P.MEAN_LAYER,
                                               norm=norm or "per-token",
                                               image=first_image(image) if overlay else None, alpha=float(alpha),
                                               special=bool(special), timesteps=timesteps)
            elif kind == "conv":
                fig = P.convergence_figure(signals.get("cross_attn_convergence"), log_y=bool(conv_log))
            elif kind == "drift":
                fig = P.drift_figure(signals.get("feature_drift"), log_y=bool(drift_log))
            else:
                fig = P.token_rank_figure(signals.get("token_rank"), step=s, timesteps=timesteps)
            fig.update_layout(title_text=f"{who} · {fig.layout.title.text or ''}")
            out.append(fig)
        out.append(P.counters_figure(run.counters if run is not None else {}))
        return tuple(out)
