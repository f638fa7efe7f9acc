"""The techniques panel: one block per registered technique (analysis.accel.registry) with an on/off toggle
and its knobs (`Technique.knobs`) at the paper's defaults. Configs are built by each technique's `build` from
the checked knob values (never from CLI strings), and every combination the engine would refuse is shown as
unavailable, with the engine's own reason, before anyone clicks.
"""
from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from analysis.accel import registry
from analysis.accel.technique import Knob, Technique
from ui.inputs import Slider, one_of, real_number, refuse, whole_number, yes_no
from ui.inputs import text as input_text


def order() -> tuple[str, ...]:
    """The blocks' names in panel order."""
    return tuple(registry())


def short_title(technique: Technique) -> str:
    return technique.title.split(" (")[0]


def panel_defaults(steps: int = 20) -> dict[str, list]:
    """Each block's initial [toggle, knobs...], from the techniques' knob defaults (the papers')."""
    return {name: [False, *t.default_values(steps).values()] for name, t in registry().items()}


def follow_steps(steps: int, shown_for: int, values: list) -> tuple[list, list[str]]:
    """The step-following knobs (`Knob.follows_steps`, in panel order) after the step count changes from
    `shown_for` to `steps`, given the whole panel's values: a knob still at its default for `shown_for` takes
    the default for `steps`; a knob the user set stays as set, clamped to what `steps` allows. Returns (their
    new values, notes saying what was clamped)."""
    out, notes = [], []
    for name, (on, knob_values) in split_values(values).items():
        technique = registry()[name]
        by_key = {k.key: v for k, v in zip(technique.knobs, knob_values)}
        for knob in technique.knobs:
            if not knob.follows_steps:
                continue
            try:
                value = int(by_key[knob.key])
            except (TypeError, ValueError):  # the run's own validation says what is wrong with it
                out.append(by_key[knob.key])
                continue
            limit = knob.limit(steps, by_key) if knob.limit else None
            if value == knob.default_for(shown_for):
                value = knob.default_for(steps)
            elif limit is not None and value > limit:
                notes.append(f"{short_title(technique)} {knob.label} {value} clamped to {limit} for {steps} steps")
                value = limit
            out.append(value)
    return out, notes


def client_inputs(prompt: str, seed="0", steps: int = 20, y: str = "psnr", negative: str = "",
                  guidance: float = 5.0, scheduler: str = "ddim", on: dict | None = None,
                  model: str = "default", attention: str = "fused") -> list:
    """The /run endpoint's inputs in order, for gradio_client: the request (its model last), the quality axis,
    then every block's toggle and knobs in panel order (the request: prompt, negative, seed, steps, guidance,
    scheduler, model, attention backend). on={"tgate": {}, "atedm": {1: 0.5}} switches techniques on, a
    knob overridden by its position in the block (1 = the first knob)."""
    on = on or {}
    args = [prompt, negative, seed, steps, guidance, scheduler, model, attention, y]
    for name, values in panel_defaults(steps).items():
        if name in on:
            values[0] = True
            for i, v in (on[name] or {}).items():
                values[i] = v
        args += values
    return args


def split_values(values) -> dict[str, tuple[bool, list]]:
    """The panel's flat values (toggle, knobs..., per block in order) -> name: (toggle, knob values)."""
    values = list(values)
    out, i = {}, 0
    for name, t in registry().items():
        n = 1 + len(t.knobs)
        out[name] = (yes_no(values[i], f"The {name} toggle"), values[i + 1:i + n])
        i += n
    return out


def checked(knob: Knob, value, what: str):
    """A knob's value as its kind demands (InvalidInput: never rounded)."""
    if knob.kind == "int":
        low, high = knob.accepted
        return whole_number(value, what, int(low), int(high))
    if knob.kind == "float":
        return real_number(value, what, *knob.accepted)
    if knob.kind == "bool":
        return yes_no(value, what)
    if knob.kind == "choice":
        return one_of(value, what, [v for _, v in knob.choices])
    return input_text(value, what, 1000)


def build_config(name: str, knob_values: list, steps: int):
    """One block's config from its knob values, each checked as it is (ValueError: a knob is invalid)."""
    technique = registry()[name]
    if len(knob_values) != len(technique.knobs):
        refuse(f"The {name} block", f"needs {len(technique.knobs)} settings, got {len(knob_values)}.")
    values = {k.key: checked(k, v, f"{short_title(technique)}: {k.label}") for k, v in zip(technique.knobs, knob_values)}
    return technique.build(values, steps)


def knob_component(knob: Knob, steps: int = 20):
    value = knob.default_for(steps)
    if knob.kind in ("int", "float"):
        return Slider(knob.low, knob.high, value=value, step=knob.step, label=knob.label, info=knob.info or None)
    if knob.kind == "bool":
        return gr.Checkbox(value=value, label=knob.label, info=knob.info or None)
    if knob.kind == "choice":
        if knob.radio:
            return gr.Radio(list(knob.choices), value=value, label=knob.label)
        return gr.Dropdown(list(knob.choices), value=value, label=knob.label, min_width=140)
    return gr.Textbox(label=knob.label, placeholder=knob.placeholder, max_lines=1)


@dataclass
class Block:
    name: str
    toggle: gr.Checkbox
    knobs: list  # components, in the order of the technique's knobs
    note: gr.Markdown


class TechniquePanel:
    def __init__(self):
        self.blocks: dict[str, Block] = {}
        self.equal_latency_button: gr.Button | None = None

    # -- layout
    def render(self) -> None:
        for name, t in registry().items():
            with gr.Group():
                toggle = gr.Checkbox(label=t.title, value=False, elem_id=f"toggle-{name}")
                with gr.Row():
                    knobs = [knob_component(k) for k in t.knobs]
                    if t.is_step_reduction:
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

    def availability_outputs(self) -> list:
        out = []
        for b in self.blocks.values():
            out += [b.toggle, b.note]
        return out

    def step_knobs(self) -> list:
        """The knobs whose defaults follow the step count, in panel order (`follow_steps`' outputs)."""
        return [component for name, b in self.blocks.items()
                for knob, component in zip(registry()[name].knobs, b.knobs) if knob.follows_steps]

    def steps_outputs(self) -> list:
        return [b.toggle for b in self.blocks.values()] + [self._step_reduction().knobs[0]]

    def steps_updates(self, n: int) -> tuple:
        """Step reduction alone at n steps (the equal-latency comparison); other toggles off, knobs kept."""
        reduction = self._step_reduction().name
        return tuple(gr.update(value=(b.name == reduction)) for b in self.blocks.values()) + (gr.update(value=n),)

    def _step_reduction(self) -> Block:
        return next(b for name, b in self.blocks.items() if registry()[name].is_step_reduction)

    # -- configs
    def configs(self, values, steps: int) -> tuple:
        """The techniques switched on, as config dataclasses in panel order (ValueError: a knob is invalid)."""
        return tuple(build_config(name, knobs, steps) for name, (on, knobs) in split_values(values).items() if on)

    # -- what the engine accepts
    def availability(self, steps, *values, model: str = "default") -> tuple:
        """For each block: its toggle (not clickable when the engine refuses it next to the techniques already
        on) and a note with the engine's reason."""
        from analysis.live import validate_accel

        try:
            steps = int(steps)
        except (TypeError, ValueError):
            steps = 20
        split = split_values(values)
        updates = []
        for name, (on, knobs) in split.items():
            others = []
            for other, (other_on, other_knobs) in split.items():
                if other != name and other_on:
                    try:
                        others.append(build_config(other, other_knobs, steps))
                    except ValueError:
                        pass  # that block shows its own reason
            reason = ""
            try:
                validate_accel(tuple(others) + (build_config(name, knobs, steps),), steps, model)
            except ValueError as err:
                reason = str(err)
            if reason and not on:
                updates += [gr.update(interactive=False), f"unavailable: {reason}"]
            elif reason:
                updates += [gr.update(interactive=True), f"⚠ {reason}"]
            else:
                updates += [gr.update(interactive=True), ""]
        return tuple(updates)
