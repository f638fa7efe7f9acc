"""The techniques panel: one block per technique with an on/off toggle and its main knobs at the paper's
defaults. Configs are built from the technique config dataclasses (never from CLI strings), and every
combination the engine would refuse is shown as unavailable, with the engine's own reason, before anyone
clicks.
"""
from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from analysis.accel import StepsConfig, list_techniques
from analysis.accel.reuse import strided_policy
from ui.inputs import Slider, one_of, real_number, refuse, whole_number, yes_no
from ui.inputs import text as input_text

ORDER = ("reuse", "tgate", "atedm", "fastdiff", "steps")
TITLES = {
    "reuse": "Attention-map reuse (HURRY / PHAST, Hunter et al.)",
    "tgate": "T-GATE (Liu et al.)",
    "atedm": "AT-EDM token pruning (Wang et al.)",
    "fastdiff": "Faster-Diffusion encoder propagation (Li et al.)",
    "steps": "Step reduction (the baseline to beat)",
}
REUSE_POLICIES = [("HURRY: late reuse", "hurry"), ("PHAST: searched", "phast"), ("strided: evenly spread", "strided"),
                  ("custom C/R string", "custom")]
FASTDIFF_PRESETS = [("paper key steps (non-uniform)", "paper"), ("uniform stride", "stride")]


def panel_defaults(steps: int = 20) -> dict[str, list]:
    """Each block's initial [toggle, knobs...], from the technique dataclasses' defaults (the papers')."""
    from analysis.accel.reuse import default_reuse_steps

    T = list_techniques()
    tgate, atedm, fast = T["tgate"](), T["atedm"](), T["fastdiff"]()
    gate = tgate.gate_step if isinstance(tgate.gate_step, int) else max(1, round(0.4 * steps))
    return {"reuse": [False, "hurry", default_reuse_steps(steps), "both", ""],
            "tgate": [False, gate, tgate.sp_interval, tgate.fi_interval],
            "atedm": [False, atedm.ratio, atedm.dsap],
            "fastdiff": [False, "paper", 2, fast.parallel, fast.noise],
            "steps": [False, max(1, steps // 2)]}


def max_reuse_steps(steps: int, policy: str) -> int:
    """The most R steps `policy` fits into `steps` (HURRY / PHAST: runs of at most 2 R after a C; strided:
    the odd steps)."""
    if policy == "strided":
        return steps // 2
    return max(r for r in range(steps) if r + -(-r // 2) <= steps)


def follow_steps(steps: int, shown_for: int, policy: str, reuse_steps, gate_step, reduced_steps) -> tuple:
    """The step-dependent knobs after the step count changes from `shown_for` to `steps`: a knob still at its
    default for `shown_for` takes the default for `steps`; a knob the user set stays as set, clamped to what
    `steps` allows. Returns (reuse_steps, gate_step, reduced_steps, notes), notes saying what was clamped."""
    old, new = panel_defaults(shown_for), panel_defaults(steps)
    limits = {"reuse": max_reuse_steps(steps, policy), "tgate": max(1, steps - 1), "steps": max(1, steps - 1)}
    what = {"reuse": "reuse steps (R)", "tgate": "T-GATE gate step", "steps": "step reduction"}
    out, notes = [], []
    for name, index, value in (("reuse", 2, reuse_steps), ("tgate", 1, gate_step), ("steps", 1, reduced_steps)):
        try:
            value = int(value)
        except (TypeError, ValueError):  # the run's own validation says what is wrong with it
            out.append(value)
            continue
        if value == old[name][index]:
            value = new[name][index]
        elif value > limits[name]:
            notes.append(f"{what[name]} {value} clamped to {limits[name]} for {steps} steps")
            value = limits[name]
        out.append(value)
    return (*out, notes)


def client_inputs(prompt: str, seed="0", steps: int = 20, y: str = "psnr", negative: str = "",
                  guidance: float = 5.0, scheduler: str = "ddim", on: dict | None = None,
                  model: str = "default") -> list:
    """The /run endpoint's inputs in order, for gradio_client: the request (its model last), the quality axis,
    then every block's toggle and knobs in panel order. on={"tgate": {}, "atedm": {1: 0.5}} switches techniques on, a
    knob overridden by its position in the block (1 = the first knob)."""
    on = on or {}
    args = [prompt, negative, seed, steps, guidance, scheduler, model, y]
    for name, values in panel_defaults(steps).items():
        if name in on:
            values[0] = True
            for i, v in (on[name] or {}).items():
                values[i] = v
        args += values
    return args


@dataclass
class Block:
    name: str
    toggle: gr.Checkbox
    knobs: list  # components, in the order `_config` reads them
    note: gr.Markdown


class TechniquePanel:
    def __init__(self):
        self.blocks: dict[str, Block] = {}
        self.equal_latency_button: gr.Button | None = None

    # -- layout
    def render(self) -> None:
        defaults = panel_defaults()
        for name in ORDER:
            d = defaults[name]
            with gr.Group():
                toggle = gr.Checkbox(label=TITLES[name], value=False, elem_id=f"toggle-{name}")
                with gr.Row():
                    if name == "reuse":
                        knobs = [
                            gr.Dropdown(REUSE_POLICIES, value="hurry", label="policy", min_width=140),
                            Slider(0, 50, value=d[2], step=1, label="reuse steps (R)",
                                      info="a reading, not the paper's: HURRY gives no R count; default a third of the steps"),
                            gr.Radio(["self", "cross", "both"], value="both", label="scope"),
                            gr.Textbox(label="custom policy", placeholder="CCCCRCRR... one letter per step",
                                       max_lines=1),
                        ]
                    elif name == "tgate":
                        knobs = [
                            Slider(1, 100, value=d[1], step=1, label="gate step",
                                      info="paper: about 0.4 of the steps (10 of 25)"),
                            Slider(1, 10, value=d[2], step=1, label="self-attention interval before the gate"),
                            Slider(1, 10, value=d[3], step=1, label="self-attention interval after the gate"),
                        ]
                    elif name == "atedm":
                        knobs = [
                            Slider(0.0, 0.9, value=d[1], step=0.01, label="pruning ratio"),
                            gr.Checkbox(value=d[2], label="DSAP (prune less early)"),
                        ]
                    elif name == "fastdiff":
                        knobs = [
                            gr.Radio(FASTDIFF_PRESETS, value="paper", label="key steps"),
                            Slider(2, 10, value=d[2], step=1, label="stride (uniform)"),
                            gr.Checkbox(value=d[3], label="parallel decoding"),
                            gr.Checkbox(value=d[4], label="prior noise injection"),
                        ]
                    else:
                        knobs = [Slider(1, 100, value=d[1], step=1, label="steps")]
                        self.equal_latency_button = gr.Button("Equal latency", size="sm", min_width=110)
                note = gr.Markdown(elem_classes="diffscope-unavailable", elem_id=f"note-{name}")
            self.blocks[name] = Block(name, toggle, knobs, note)

    def inputs(self) -> list:
        out = []
        for b in self.blocks.values():
            out += [b.toggle] + b.knobs
        return out

    def triggers(self) -> list:
        """The user's own changes (not programmatic updates): sliders on release, the rest on input."""
        out = []
        for b in self.blocks.values():
            out.append(b.toggle.input)
            for k in b.knobs:
                out.append(k.release if isinstance(k, gr.Slider) else (k.submit if isinstance(k, gr.Textbox) else k.input))
        return out

    def availability_triggers(self) -> list:
        return self.triggers()

    def availability_outputs(self) -> list:
        out = []
        for b in self.blocks.values():
            out += [b.toggle, b.note]
        return out

    def step_knobs(self) -> list:
        """The knobs whose defaults depend on the step count: reuse policy (read only) and R, the T-GATE gate,
        the step-reduction count."""
        reuse = self.blocks["reuse"].knobs
        return [reuse[0], reuse[1], self.blocks["tgate"].knobs[0], self.blocks["steps"].knobs[0]]

    def steps_outputs(self) -> list:
        return [b.toggle for b in self.blocks.values()] + [self.blocks["steps"].knobs[0]]

    def steps_updates(self, n: int) -> tuple:
        """Step reduction alone at n steps (the equal-latency comparison); other toggles off, knobs kept."""
        return tuple(gr.update(value=(b.name == "steps")) for b in self.blocks.values()) + (gr.update(value=n),)

    # -- configs
    def _split(self, values) -> dict[str, tuple[bool, list]]:
        values = list(values)
        out, i = {}, 0
        for b in self.blocks.values():
            n = 1 + len(b.knobs)
            out[b.name] = (yes_no(values[i], f"The {b.name} toggle"), values[i + 1:i + n])
            i += n
        return out

    @staticmethod
    def _config(name: str, knobs: list, steps: int):
        """One block's config from its knob values, each checked as it is (InvalidInput: never rounded)."""
        T = list_techniques()
        if len(knobs) != len(panel_defaults(steps)[name]) - 1:
            refuse(f"The {name} block", f"needs {len(panel_defaults(steps)[name]) - 1} settings, got {len(knobs)}.")
        if name == "reuse":
            policy, r, scope, custom = knobs
            policy = one_of(policy, "reuse: policy", [v for _, v in REUSE_POLICIES])
            r = whole_number(r, "reuse: reuse steps (R)", 0, 1000)
            scope = one_of(scope, "reuse: scope", ("self", "cross", "both"))
            if policy == "custom":
                text = input_text(custom, "reuse: custom policy", 1000).strip().upper()
                if not text:
                    raise ValueError("reuse: type a custom policy, one C (compute) or R (reuse) per step")
                return T["reuse"](policy=text, scope=scope)
            if policy == "strided":
                return T["reuse"](policy=strided_policy(steps, r), scope=scope)
            return T["reuse"](policy=policy, reuse_steps=r, scope=scope)
        if name == "tgate":
            gate, sp, fi = (whole_number(v, f"T-GATE: {what}", 1, 1000)
                            for v, what in zip(knobs, ("gate step", "interval before the gate", "interval after the gate")))
            return T["tgate"](gate_step=gate, sp_interval=sp, fi_interval=fi)
        if name == "atedm":
            ratio, dsap = knobs
            return T["atedm"](ratio=real_number(ratio, "AT-EDM: pruning ratio", 0.0, 1.0),
                              dsap=yes_no(dsap, "AT-EDM: DSAP"))
        if name == "fastdiff":
            preset, stride, parallel, noise = knobs
            preset = one_of(preset, "Faster-Diffusion: key steps", [v for _, v in FASTDIFF_PRESETS])
            stride = whole_number(stride, "Faster-Diffusion: stride", 1, 1000)
            return T["fastdiff"](stride=stride if preset == "stride" else 0,
                                 parallel=yes_no(parallel, "Faster-Diffusion: parallel decoding"),
                                 noise=yes_no(noise, "Faster-Diffusion: noise injection"))
        return StepsConfig(steps=whole_number(knobs[0], "Step reduction: steps", 1, 1000))

    def configs(self, values, steps: int) -> tuple:
        """The techniques switched on, as config dataclasses in panel order (ValueError: a knob is invalid)."""
        return tuple(self._config(name, knobs, steps) for name, (on, knobs) in self._split(values).items() if on)

    # -- what the engine accepts
    def availability(self, steps, *values, model: str = "default") -> tuple:
        """For each block: its toggle (not clickable when the engine refuses it next to the techniques already
        on) and a note with the engine's reason."""
        from analysis.live import validate_accel

        try:
            steps = int(steps)
        except (TypeError, ValueError):
            steps = 20
        split = self._split(values)
        updates = []
        for name, (on, knobs) in split.items():
            others = []
            for other, (other_on, other_knobs) in split.items():
                if other != name and other_on:
                    try:
                        others.append(self._config(other, other_knobs, steps))
                    except ValueError:
                        pass  # that block shows its own reason
            reason = ""
            try:
                validate_accel(tuple(others) + (self._config(name, knobs, steps),), steps, model)
            except ValueError as err:
                reason = str(err)
            if reason and not on:
                updates += [gr.update(interactive=False), f"unavailable: {reason}"]
            elif reason:
                updates += [gr.update(interactive=True), f"⚠ {reason}"]
            else:
                updates += [gr.update(interactive=True), ""]
        return tuple(updates)

