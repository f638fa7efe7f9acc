"""The contract every registered technique keeps (analysis.accel.registry): a new technique module gets these
tests without writing them. Off is the baseline bit for bit; the knob defaults are valid configs that run;
the cost function, marks, strip and summary accept what a run produces; the panel renders its block;
combination refusals do not depend on the order the techniques are given in; hooks come off after a run and
after an exception."""
import itertools

import gradio as gr
import numpy as np
import pytest

from analysis.accel import check_combination, cost_function, registry, technique_marks
from analysis.accel.technique import Knob, Technique
from analysis.models import set_scheduler
from analysis.run import RunConfig, RunStopped, run_once
from ui.techniques import TechniquePanel, build_config, panel_defaults

STEPS = 6
NAMES = list(registry())
PROMPT = "a large red circle on the left"


def _config(steps=STEPS, accel=()):
    return RunConfig(prompt=PROMPT, steps=steps, guidance=5.0, seed=7, size=32, scheduler="ddim", accel=accel)


def _defaults(name: str, steps: int = STEPS):
    return build_config(name, panel_defaults(steps)[name][1:], steps)


def _hooks(pipe) -> tuple:
    unet = pipe.unet
    return (dict(unet.attn_processors), {n: m.forward for n, m in unet.named_modules() if "forward" in m.__dict__})


@pytest.fixture(scope="module")
def toy(toy_pipe):
    set_scheduler(toy_pipe, "ddim")
    return toy_pipe, run_once(toy_pipe, _config(), (), STEPS).images


def test_the_registry_finds_every_technique_module():
    assert {"reuse", "tgate", "atedm", "fastdiff", "steps"} <= set(NAMES)
    assert sum(t.is_step_reduction for t in registry().values()) == 1
    for name, t in registry().items():
        assert isinstance(t, Technique) and t.name == name == t.config.name
        assert t.title and t.reference and t.colour.startswith("#") and all(isinstance(k, Knob) for k in t.knobs)
    assert len({t.colour for t in registry().values()}) == len(NAMES)  # no two drawn alike


@pytest.mark.parametrize("name", NAMES)
def test_off_is_the_baseline_bit_for_bit(toy, name):
    pipe, base = toy
    off = registry()[name].config.off(STEPS)
    config = _config(accel=(off,))
    image = run_once(pipe, config, config.hooked_accel(), config.accel_steps).images
    assert np.array_equal(image, base)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("steps", [4, 20])
def test_knob_defaults_make_a_valid_config_for_any_step_count(name, steps):
    from analysis.live import validate_accel

    config = _defaults(name, steps)
    assert type(config) is registry()[name].config
    validate_accel((config,), steps, "default")
    marks = technique_marks((config,), steps)
    assert name in marks["techniques"]
    assert all(len(states) == len(letters) == marks["steps"] for _, states, letters in marks["strip"])
    for knob in registry()[name].knobs:
        if knob.follows_steps and knob.limit is not None:
            assert knob.default_for(steps) <= knob.limit(steps, registry()[name].default_values(steps))


@pytest.mark.parametrize("name", NAMES)
def test_a_run_at_the_defaults_has_counters_a_cost_and_a_summary(toy, name):
    pipe, base = toy
    technique = registry()[name]
    assert cost_function(name) is technique.cost
    config = _config(accel=(_defaults(name),))
    result = run_once(pipe, config, config.hooked_accel(), config.accel_steps)
    image, counters = result.images, result.counters
    assert image.shape == base.shape
    if not technique.is_step_reduction:
        assert name in counters, "a technique counts the work it really skipped"
        assert isinstance(technique.summary(counters[name]), str) and technique.summary(counters[name])


def test_the_panel_renders_one_block_per_technique_with_its_knobs():
    panel = TechniquePanel()
    with gr.Blocks():
        panel.render()
    assert list(panel.blocks) == NAMES
    for name, block in panel.blocks.items():
        assert len(block.knobs) == len(registry()[name].knobs)
    assert panel.equal_latency_button is not None


@pytest.mark.parametrize("a,b", list(itertools.combinations(NAMES, 2)))
def test_a_refusal_does_not_depend_on_the_order(a, b):
    def outcome(configs):
        try:
            check_combination(configs)
            return None
        except ValueError as err:
            return str(err)

    ca, cb = _defaults(a, 20), _defaults(b, 20)
    assert outcome((ca, cb)) == outcome((cb, ca))


@pytest.mark.parametrize("name", NAMES)
def test_hooks_come_off_after_a_run_and_after_an_exception(toy, name):
    pipe, base = toy
    before = _hooks(pipe)
    config = _config(accel=(_defaults(name),))
    run_once(pipe, config, config.hooked_accel(), config.accel_steps)
    assert _hooks(pipe) == before
    calls = []

    def stop_at_step_two():
        calls.append(1)
        return len(calls) > 2

    with pytest.raises(RunStopped):
        run_once(pipe, config, config.hooked_accel(), config.accel_steps, stop=stop_at_step_two)
    assert _hooks(pipe) == before
    assert np.array_equal(run_once(pipe, _config(), (), STEPS).images, base)
