"""DeepCache (analysis/accel/deepcache.py): validation, schedules (against the DeepCache package's own function
where it is installed), the split forward, off-identity, what really runs at cached steps, clean detach after a
run and after an exception, combinations (T-GATE in both attach orders), the Technique object, and the images
of the DeepCache 0.1.1 package (an optional peer: those tests skip without it)."""
import ast
import importlib.util
import os
import warnings
from collections import Counter

import numpy as np
import pytest
import torch

from analysis.accel import check_combination, parse_accel, registry
from analysis.accel import unet_split
from analysis.accel.deepcache import (TECHNIQUE, DeepCacheConfig, cached_forward, full_forward, quad_center_steps,
                                      resolve_branch)
from analysis.run import RunConfig, RunStopped, run_once
from fakes import unet_inputs

PROMPT = "a red circle on the left"
STEPS = 6
_BASELINES: dict = {}


def _run(pipe, plugins=(), steps=STEPS, prompt=PROMPT, stop=None):
    config = RunConfig(prompt, steps=steps, seed=3)
    result = run_once(pipe, config, tuple(plugins), steps, stop=stop)
    img, counters, signals = result.images, result.counters, result.signals
    return img, counters, signals


def _baseline(pipe, steps=STEPS, prompt=PROMPT):
    key = (id(pipe), steps, prompt)
    if key not in _BASELINES:
        _BASELINES[key] = _run(pipe, (), steps, prompt)[0]
    return _BASELINES[key]


def _assert_clean(pipe):
    assert not [n for n, m in pipe.unet.named_modules() if "forward" in m.__dict__]


@pytest.fixture(params=["toy", "sd15", "sdxl"])
def pipe(request):
    return request.getfixturevalue(f"{request.param}_pipe")


def _package_quad_center():
    """The package's own `sample_from_quad_center` (its module does not import with this diffusers, so the
    function is taken from its source)."""
    pytest.importorskip("DeepCache")
    path = os.path.join(os.path.dirname(importlib.util.find_spec("DeepCache").origin), "sd",
                        "pipeline_stable_diffusion.py")
    tree = ast.parse(open(path).read())
    fn = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "sample_from_quad_center")
    namespace = {"np": np}
    exec(compile(ast.Module([fn], []), path, "exec"), namespace)
    return namespace["sample_from_quad_center"]


# --- validation, syntax, the panel ------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, message", [
    ({"cache_interval": 0}, "deepcache: cache_interval"),
    ({"cache_interval": 2.5}, "deepcache: cache_interval"),
    ({"cache_interval": True}, "deepcache: cache_interval"),
    ({"cache_branch_id": -1}, "deepcache: cache_branch_id"),
    ({"schedule": "quadratic"}, "deepcache: schedule"),
    ({"center": -2}, "deepcache: center"),
    ({"power": 1.0}, "deepcache: power"),
    ({"power": 9.0}, "deepcache: power"),
])
def test_invalid(kwargs, message):
    with pytest.raises(ValueError, match=f"^{message}"):
        DeepCacheConfig(**kwargs)


def test_cli_syntax_and_panel_defaults():
    assert parse_accel("deepcache:cache_interval=3") == DeepCacheConfig()
    assert parse_accel("deepcache:cache_interval=5,cache_branch_id=2,schedule=nonuniform,center=6,power=1.2") == \
        DeepCacheConfig(cache_interval=5, cache_branch_id=2, schedule="nonuniform", center=6, power=1.2)
    with pytest.raises(ValueError, match="^deepcache: unknown parameter"):
        parse_accel("deepcache:interval=3")
    assert "deepcache" in registry() and registry()["deepcache"] is TECHNIQUE
    assert TECHNIQUE.build(TECHNIQUE.default_values(20), 20) == DeepCacheConfig()
    from ui.techniques import build_config  # what the panel does with the knob values

    values = TECHNIQUE.default_values(20)
    assert build_config("deepcache", [values[k.key] for k in TECHNIQUE.knobs], 20) == DeepCacheConfig()
    assert build_config("deepcache", [5, 1, "nonuniform"], 20) == DeepCacheConfig(5, 1, "nonuniform")


# --- schedules ------------------------------------------------------------------------------------------------

def test_schedules():
    assert DeepCacheConfig().full_steps(10) == [0, 3, 6, 9]
    assert DeepCacheConfig(cache_interval=5).full_steps(20) == [0, 5, 10, 15]
    assert DeepCacheConfig.off(7).full_steps(7) == list(range(7))
    assert DeepCacheConfig(cache_interval=1, schedule="nonuniform").full_steps(5) == list(range(5))
    # the reference script's setting (50 steps, N=5, center 15, power 1.4)
    assert DeepCacheConfig(cache_interval=5, schedule="nonuniform").full_steps(50) == [0, 5, 9, 13, 17, 21, 26, 31, 37, 43]
    assert DeepCacheConfig(cache_interval=5, schedule="nonuniform").full_steps(20) == \
        DeepCacheConfig(cache_interval=5, schedule="nonuniform", center=6).full_steps(20)  # round(0.3 x 20)
    for steps in (1, 2, 4, 10, 20, 30, 50):
        for k in (2, 3, 5, 10):
            full = DeepCacheConfig(cache_interval=k, schedule="nonuniform").full_steps(steps)
            assert full[0] == 0 and full == sorted(set(full)) and full[-1] < steps and len(full) == -(-steps // k)
    with pytest.raises(ValueError, match="^deepcache: center=25 must be below"):
        DeepCacheConfig(schedule="nonuniform", center=25).full_steps(20)
    # T-GATE's gate: gate-1 and gate full, the uniform schedule restarts at the gate (tgate's DeepCache loader)
    assert DeepCacheConfig().full_steps_with_gate(20, 8) == [0, 3, 6, 7, 8, 11, 14, 17]
    assert DeepCacheConfig().full_steps_with_gate(20, None) == DeepCacheConfig().full_steps(20)
    assert DeepCacheConfig().full_steps_with_gate(20, 20) == DeepCacheConfig().full_steps(20)
    nu = DeepCacheConfig(cache_interval=5, schedule="nonuniform")
    assert nu.full_steps_with_gate(20, 8) == sorted(set(nu.full_steps(20)) | {7, 8})


def test_nonuniform_schedule_is_the_packages():
    reference = _package_quad_center()
    warnings.simplefilter("ignore")  # the reference casts complex numbers to int32 (ComplexWarning)
    for steps in (4, 10, 20, 25, 30, 50):
        for k in (2, 3, 4, 5, 7):
            n = -(-steps // k)
            for center in sorted({0, 1, round(0.3 * steps), steps // 2, steps - 1}):
                try:
                    expected = sorted(int(np.real(i)) for i in reference(steps, n, center, 1.4)[0])
                except ValueError:
                    with pytest.raises(ValueError, match="^deepcache: no non-uniform schedule"):
                        quad_center_steps(steps, n, center, 1.4)
                    continue
                assert quad_center_steps(steps, n, center, 1.4) == expected, (steps, k, center)


# --- the split forward -----------------------------------------------------------------------------------------

@torch.inference_mode()
def test_full_and_cached_forward(pipe):
    """The full step's split forward is the UNet's forward bit for bit; a cached step fed with the feature of the
    same input gives that same output (it recomputes exactly what it does not take from the cache)."""
    unet = pipe.unet
    x, t, ehs, kwargs = unet_inputs(unet)
    ref = unet(x, t, ehs, **kwargs).sample
    c = unet_split.conditioning(unet, **unet_split.bind_forward_args(unet, x, t, ehs, **kwargs))
    for branch_id in range(3 * len(unet.down_blocks)):
        branch = resolve_branch(unet, branch_id)
        out, feature = full_forward(unet, x, c, branch)
        assert torch.equal(out, ref), branch_id
        assert torch.equal(cached_forward(unet, x, c, branch, feature), ref), branch_id
    with pytest.raises(ValueError, match=r"^deepcache: cache_branch_id=\d+ is level"):
        resolve_branch(unet, 3 * len(unet.down_blocks))


# --- runs --------------------------------------------------------------------------------------------------

def test_off_is_bit_identical(pipe):
    img, counters, _ = _run(pipe, (DeepCacheConfig.off(STEPS),))
    assert np.array_equal(img, _baseline(pipe))
    c = counters["deepcache"]
    assert c["full_steps"] == list(range(STEPS)) and c["cached_steps"] == [] and c["skipped_unit_calls"] == 0
    _assert_clean(pipe)


def _count_calls(unet, names):
    counts, handles = Counter(), []
    modules = dict(unet.named_modules())
    for name in names:
        handles.append(modules[name].register_forward_hook(lambda m, a, o, name=name: counts.update([name])))
    return counts, handles


@pytest.mark.parametrize("kind", ["toy", "sd15"])
def test_deep_blocks_run_only_at_full_steps(request, kind):
    pipe = request.getfixturevalue(f"{kind}_pipe")
    unet = pipe.unet
    n, up_last = len(unet.down_blocks), len(unet.up_blocks) - 1
    last = unet.up_blocks[up_last]
    deep = [f"down_blocks.{i}" for i in range(1, n)] + ["mid_block"] + [f"up_blocks.{i}" for i in range(up_last)]
    deep += [f"up_blocks.{up_last}.resnets.{j}" for j in range(len(last.resnets) - 1)]
    deep += [f"down_blocks.0.resnets.{j}" for j in range(len(unet.down_blocks[0].resnets))]
    shallow = ["conv_in", f"up_blocks.{up_last}.resnets.{len(last.resnets) - 1}",
               f"up_blocks.{up_last}.attentions.{len(last.resnets) - 1}", "conv_out"]
    counts, handles = _count_calls(unet, deep + shallow)
    try:
        img, counters, _ = _run(pipe, (DeepCacheConfig(cache_interval=3),))
    finally:
        for h in handles:
            h.remove()
    c = counters["deepcache"]
    assert c["full_steps"] == [0, 3] and c["cached_steps"] == [1, 2, 4, 5] and c["forced_full_steps"] == []
    assert all(counts[name] == 2 for name in deep), counts
    assert all(counts[name] == STEPS for name in shallow), counts
    assert c["branch"] == {"id": 0, "level": 0, "layer": 0, "down_units": 0, "up_block": up_last,
                           "up_start": len(last.resnets) - 1, "res_keep": 1}
    assert "mid_block" in c["skipped_units"] and c["skipped_unit_calls"] == 4 * len(c["skipped_units"])
    assert "mid_block.attentions.0" in c["skipped_transformers"]
    assert f"up_blocks.{up_last}.attentions.{len(last.resnets) - 1}" not in c["skipped_transformers"]
    assert 0.5 < c["skipped_conv_macs_fraction"] < 1.0
    assert not np.array_equal(img, _baseline(pipe))  # cached features really change the image
    # deterministic
    assert np.array_equal(img, _run(pipe, (DeepCacheConfig(cache_interval=3),))[0])


def test_hooks_come_off_after_a_run_and_an_exception(toy_pipe):
    pipe = toy_pipe
    _run(pipe, (DeepCacheConfig(),))
    _assert_clean(pipe)
    assert np.array_equal(_run(pipe)[0], _baseline(pipe))

    calls = []

    def stop():
        calls.append(1)
        return len(calls) > 3  # polled before the run and after each step: stops after step 2 (a cached step)

    with pytest.raises(RunStopped):
        _run(pipe, (DeepCacheConfig(),), stop=stop)
    _assert_clean(pipe)
    assert np.array_equal(_run(pipe)[0], _baseline(pipe))


def test_branch_beyond_the_unets_levels(toy_pipe):
    with pytest.raises(ValueError, match="^deepcache: cache_branch_id=9 is level 3, but this UNet has 3 levels"):
        _run(toy_pipe, (DeepCacheConfig(cache_branch_id=9),))
    _assert_clean(toy_pipe)


# --- combinations ------------------------------------------------------------------------------------------

def test_combination_rules():
    dc = DeepCacheConfig()
    for other in ("fastdiff", "fastdiff:parallel=false,noise=false"):
        for pair in ((dc, parse_accel(other)), (parse_accel(other), dc)):
            with pytest.raises(ValueError, match="^deepcache cannot be combined with fastdiff"):
                check_combination(pair)
            with pytest.raises(ValueError, match="cannot be combined"):
                RunConfig(PROMPT, accel=pair)
    for other in ("tgate", "reuse", "atedm", "steps:steps=10"):
        RunConfig(PROMPT, accel=(dc, parse_accel(other)))
        RunConfig(PROMPT, accel=(parse_accel(other), dc))
    RunConfig(PROMPT, accel=(DeepCacheConfig(schedule="nonuniform"), parse_accel("tgate")))


def test_with_tgate_in_either_order(toy_pipe):
    """T-GATE drops the CFG half from its gate on: gate-1 and gate are full steps (tgate's DeepCache loader),
    the deep features of the gate step are computed on the halved batch, and the attach order does not matter."""
    pipe, steps = toy_pipe, 10
    rows = []
    handle = pipe.unet.mid_block.register_forward_hook(lambda m, a, o: rows.append(a[0].shape[0]))
    prompts = ("a red circle on the left", "a small blue square at the top")
    results = []
    try:
        for specs in (("tgate:gate_step=5", "deepcache"), ("deepcache", "tgate:gate_step=5"),
                      ("tgate:gate_step=5", "deepcache:cache_interval=1"), ("tgate:gate_step=5",)):
            rows.clear()
            accel = tuple(parse_accel(s) for s in specs)
            result = run_once(pipe, RunConfig(prompts, steps=steps, seed=3, accel=accel), accel, steps)
            img, counters = result.images, result.counters
            results.append((img, counters, list(rows)))
    finally:
        handle.remove()
    (a, ca, rows_a), (b, cb, rows_b), (off, _, _), (tgate, ct, _) = results
    assert np.array_equal(a, b) and ca == cb and rows_a == rows_b
    assert np.array_equal(off, tgate)  # DeepCache off under T-GATE is T-GATE alone
    assert not np.array_equal(a, tgate)
    c = ca["deepcache"]
    assert c["gate_step"] == 5 and c["forced_full_steps"] == []
    assert c["full_steps"] == [0, 3, 4, 5, 8] == DeepCacheConfig().full_steps_with_gate(steps, 5)
    assert rows_a == [4, 4, 4, 2, 2]  # the mid block: CFG batch before the gate, the halved one from it on
    assert ca["tgate"]["cfg_dropped_steps"] == 5 and ca["unet"]["batch_rows"] == [4] * 5 + [2] * 5
    _assert_clean(pipe)


@pytest.mark.parametrize("other", ["reuse:scope=self", "atedm:ratio=0.5", "steps:steps=5"])
def test_with_reuse_atedm_steps(toy_pipe, other):
    dc = DeepCacheConfig(cache_interval=2)
    accel = (parse_accel(other), dc)
    config = RunConfig(PROMPT, steps=STEPS, seed=3, accel=accel)
    result = run_once(toy_pipe, config, config.hooked_accel(), config.accel_steps)
    img, counters = result.images, result.counters
    n = config.accel_steps
    assert counters["deepcache"]["full_steps"] == list(range(0, n, 2))
    assert counters["deepcache"]["cached_steps"] == list(range(1, n, 2))
    assert img.shape == _baseline(toy_pipe).shape and img.std() > 0
    _assert_clean(toy_pipe)


def test_probes_under_deepcache(toy_pipe):
    from analysis.probes import AttentionMapsConfig, ConvergenceConfig, DriftConfig

    plain, counters, _ = _run(toy_pipe, (DeepCacheConfig(),))
    img, counters_probed, signals = _run(toy_pipe, (DeepCacheConfig(), ConvergenceConfig(), DriftConfig(),
                                                   AttentionMapsConfig()))
    assert np.array_equal(img, plain), "probes must not change the accelerated image"
    assert counters_probed["deepcache"] == counters["deepcache"]
    assert "feature_drift" in signals and "attention_maps" in signals
    _assert_clean(toy_pipe)


# --- the Technique object -------------------------------------------------------------------------------------

def test_technique_object():
    t = TECHNIQUE
    assert t.order == 45 and t.colour == "#882255" and t.colour not in {
        o.colour for name, o in registry().items() if name != "deepcache"}
    marks = t.marks(DeepCacheConfig(), 8, "default")
    assert marks["full_steps"] == [0, 3, 6] and marks["cached_steps"] == [1, 2, 4, 5, 7]
    assert t.strip(marks, 8) == [("DeepCache deep UNet", ["compute", "reuse", "reuse"] * 2 + ["compute", "reuse"],
                                  list("FccFccFc"))]
    assert t.lines(marks) == {"drift": ("full steps (the deep UNet runs)", [0, 3, 6])}
    from viz._data import STRIP_CODES

    assert all(state in STRIP_CODES for _, states, _ in t.strip(marks, 8) for state in states)
    for steps in (4, 10, 20, 30, 50):
        for name, specs in t.grid(steps):
            assert name.startswith("deepcache-")
            for spec in specs:
                t.validate(parse_accel(spec), steps, "default")
    counters = {"deepcache": {"full_steps": [0, 3], "cached_steps": [1, 2, 4, 5], "forced_full_steps": [],
                              "branch": {"id": 0, "level": 0, "layer": 0}, "skipped_unit_calls": 28,
                              "skipped_transformers": ["mid_block.attentions.0", "up_blocks.1.attentions.0"],
                              "skipped_conv_macs_fraction": 0.5},
                "unet": {"batch_rows": [2, 2, 2, 2, 1, 1]}}
    profile = {"unet_call_s": 0.1, "shares": {"convolutions": 0.4},
               "transformer_layers": {"mid_block.attentions.0": {"s": 0.01}, "up_blocks.1.attentions.0": {"s": 0.02},
                                      "up_blocks.2.attentions.0": {"s": 0.005}},
               "pipeline": {"shares": {"unet": 0.9}}}
    cost = t.cost(DeepCacheConfig(), counters, profile, 6, 6)
    per_call = 0.03 + 0.4 * 0.1 * 0.5
    assert cost["unet_s"] == pytest.approx((1 + 1 + 0.5 + 0.5) * per_call) and cost["note"] is None
    assert cost["detail"]["transformers_s"] == pytest.approx(0.03)
    assert cost["detail"]["convolutions_s"] == pytest.approx(0.02)
    assert 0 < t.bound(profile, 20) < 0.9 and t.bound(profile, 20) == pytest.approx(0.9 * (1 - 0.05) * 19 / 20)
    assert "cached on 4 of 6 steps" in t.summary(counters["deepcache"])
    assert "nothing cached" in t.summary({"full_steps": [0, 1], "cached_steps": []})


# --- the DeepCache 0.1.1 package: the same images -----------------------------------------------------------------

@pytest.mark.parametrize("kind, interval, branch", [("toy", 3, 0), ("toy", 2, 4), ("sd15", 3, 0), ("sd15", 2, 1),
                                                    ("sdxl", 3, 0), ("sdxl", 3, 5)])
def test_same_images_as_the_package(request, kind, interval, branch):
    pytest.importorskip("DeepCache")
    from analysis.eval.peers import run_peer

    pipe = request.getfixturevalue(f"{kind}_pipe")
    config = RunConfig(PROMPT, steps=STEPS, seed=3)
    ref = run_peer(pipe, config, (f"peer:deepcache:cache_interval={interval},cache_branch_id={branch}",))[0]
    _assert_clean(pipe)
    ours, counters, _ = _run(pipe, (DeepCacheConfig(cache_interval=interval, cache_branch_id=branch),))
    assert counters["deepcache"]["cached_steps"]
    assert np.array_equal(ours, ref)
