"""Attention-map reuse (HURRY/PHAST) and T-GATE: off-identity, exact counters, determinism, clean detach,
SD 1.5 / SDXL structures with DDIM and DPM-Solver++, combinations, validation, policy shape and search."""
import json

import numpy as np
import pytest

from analysis.accel import check_combination, parse_accel
from analysis.accel.steps import StepsConfig
from analysis.accel.reuse import ReuseConfig
from analysis.accel.reuse_policy import hurry_policy, load_phast, longest_run
from analysis.accel.tgate import TGateConfig
from analysis.attention import AttentionPlugin
from analysis.models import set_scheduler
from analysis.run import RunConfig, run_once

PROMPTS = ("a large red circle on the left", "a small blue square at the top")
STEPS = 6


def _cfg(steps=STEPS, size=32, guidance=5.0, prompts=PROMPTS, scheduler="ddim"):
    return RunConfig(prompt=prompts, steps=steps, guidance=guidance, seed=3, size=size, scheduler=scheduler)


def _modules(pipe):
    names = [k[: -len(".processor")] for k in pipe.unet.attn_processors]
    return sum(n.endswith("attn1") for n in names), sum(n.endswith("attn2") for n in names)


def _assert_clean(pipe, before):
    after = dict(pipe.unet.attn_processors)
    assert after.keys() == before.keys() and all(after[k] is before[k] for k in before)
    assert "forward" not in pipe.unet.__dict__


@pytest.fixture(scope="module")
def toy(toy_pipe):
    set_scheduler(toy_pipe, "ddim")
    base = run_once(toy_pipe, _cfg(), (), STEPS).images
    return toy_pipe, base


# --- off settings are the baseline, bit for bit ---------------------------------------------------------

def test_reuse_all_compute_is_bit_identical(toy):
    pipe, base = toy
    result = run_once(pipe, _cfg(), (ReuseConfig(policy="C" * STEPS),), STEPS)
    img, counters = result.images, result.counters
    assert np.array_equal(img, base)
    c = counters["reuse"]
    n_self, n_cross = _modules(pipe)
    assert c["maps_reused"] == 0 and c["maps_cached"] == 0 and c["r_steps"] == 0
    assert c["maps_computed"] == STEPS * (n_self + n_cross)


@pytest.mark.parametrize("config", [TGateConfig.off(STEPS), TGateConfig(gate_step=STEPS + 4, sp_interval=1, warm_up=7)])
def test_tgate_off_is_bit_identical(toy, config):
    pipe, base = toy
    result = run_once(pipe, _cfg(), (config,), STEPS)
    img, counters = result.images, result.counters
    assert np.array_equal(img, base)
    c = counters["tgate"]
    assert c["cross_attn_reused"] == c["self_attn_reused"] == c["unet_rows_saved"] == 0


# --- exact counters, determinism, detach -----------------------------------------------------------------

@pytest.mark.parametrize("scope", ["both", "self"])
def test_reuse_counters_exact_and_deterministic(toy, scope):
    pipe, base = toy
    before = dict(pipe.unet.attn_processors)
    policy = "CCRCRR"  # r = 3; the maps of steps 1 and 3 are cached
    n_self, n_cross = _modules(pipe)
    layers = n_self + n_cross if scope == "both" else n_self
    result = run_once(pipe, _cfg(), (ReuseConfig(policy=policy, scope=scope),), STEPS)
    a, counters = result.images, result.counters
    _assert_clean(pipe, before)
    assert not np.array_equal(a, base)
    if scope == "both":
        b = run_once(pipe, _cfg(), (ReuseConfig(policy=policy, scope=scope),), STEPS).images
        assert np.array_equal(a, b)
    c = counters["reuse"]
    assert c["policy"] == policy and c["r_steps"] == 3 and c["modules"] == layers
    assert c["maps_reused"] == 3 * layers
    assert c["maps_computed"] == 3 * layers
    assert c["maps_cached"] == 2 * layers


def test_tgate_counters_exact_and_deterministic(toy):
    pipe, base = toy
    before = dict(pipe.unet.attn_processors)
    # steps 0..5, gate 3: SA cache, reuse, gate(cache), reuse, cache, reuse; CA computed at 0-2, reused at 3-5
    config = TGateConfig(gate_step=3, sp_interval=2, fi_interval=2, warm_up=0)
    result = run_once(pipe, _cfg(), (config,), STEPS)
    a, counters = result.images, result.counters
    _assert_clean(pipe, before)
    b = run_once(pipe, _cfg(), (config,), STEPS).images
    assert np.array_equal(a, b) and not np.array_equal(a, base)
    n_self, n_cross = _modules(pipe)
    c = counters["tgate"]
    assert c["cross_attn_computed"] == 3 * n_cross and c["cross_attn_reused"] == 3 * n_cross
    assert c["self_attn_computed"] == 3 * n_self and c["self_attn_reused"] == 3 * n_self
    assert c["unet_rows_saved"] == 3 * len(PROMPTS) and c["cfg_dropped_steps"] == 3
    assert counters["unet"]["batch_rows"] == [4, 4, 4, 2, 2, 2]


def test_tgate_without_guidance_drops_nothing(toy):
    pipe, _ = toy
    cfg = _cfg(guidance=1.0, prompts=PROMPTS[:1])
    counters = run_once(pipe, cfg, (TGateConfig(gate_step=2),), STEPS).counters
    c = counters["tgate"]
    assert c["unet_rows_saved"] == 0 and c["cross_attn_reused"] == 4 * _modules(pipe)[1]


# --- real architectures and schedulers -------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["sd15", "sdxl"])
@pytest.mark.parametrize("scheduler", ["ddim", "dpm"])
def test_architectures_and_schedulers(request, kind, scheduler):
    pipe = request.getfixturevalue(f"{kind}_pipe")
    set_scheduler(pipe, scheduler)
    before = dict(pipe.unet.attn_processors)
    n_self, n_cross = _modules(pipe)
    steps = 4
    cfg = _cfg(steps=steps, size=64, scheduler=scheduler)
    try:
        result = run_once(pipe, cfg, (ReuseConfig(policy="CRCR"),), steps)
        img, counters = result.images, result.counters
        assert counters["reuse"]["maps_reused"] == 2 * (n_self + n_cross) and img.shape == (2, 64, 64, 3)
        # SDXL: the CFG drop slices added_cond_kwargs (text_embeds, time_ids) too
        result = run_once(pipe, cfg, (TGateConfig(gate_step=2, sp_interval=1),), steps)
        tg, counters = result.images, result.counters
        c = counters["tgate"]
        assert c["cross_attn_reused"] == 2 * n_cross and c["unet_rows_saved"] == 2 * len(PROMPTS)
        assert tg.shape == (2, 64, 64, 3)
        if (kind, scheduler) == ("sdxl", "dpm"):  # the off setting on the hardest case
            base = run_once(pipe, cfg, (), steps).images
            assert not np.array_equal(tg, base)
            assert np.array_equal(run_once(pipe, cfg, (TGateConfig.off(steps),), steps).images, base)
    finally:
        set_scheduler(pipe, "ddim")
    _assert_clean(pipe, before)


# --- combinations ----------------------------------------------------------------------------------------

class _Observer(AttentionPlugin):
    """A read-only probe: wants every call's probabilities and records their row counts per step."""

    def __init__(self):
        self.rows: dict[int, set] = {}

    def wants_probs(self, call):
        return True

    def on_probs(self, call, probs):
        self.rows.setdefault(call.step, set()).add(probs.shape[0] // call.attn.heads)


class _ObserverConfig:
    name = "observer"

    def __init__(self):
        self.plugin = _Observer()

    def attach(self, ctx):
        ctx.attention().add(self.plugin)
        from analysis.plugins import HandleBase

        return HandleBase()


def test_reuse_with_tgate_and_a_probe(toy):
    pipe, _ = toy
    tg = TGateConfig(gate_step=3, sp_interval=1, fi_interval=1)
    ru = ReuseConfig(policy="CCCRRR", scope="self")  # steps 3-5 (after the gate) reuse the map of step 2 (before)
    cfg = RunConfig(prompt=PROMPTS, steps=STEPS, guidance=5.0, seed=3, size=32, accel=(ru, tg))  # passes the checks
    alone = run_once(pipe, cfg, (tg,), STEPS).images
    probe = _ObserverConfig()
    with_probe = run_once(pipe, cfg, (tg, probe), STEPS).images
    assert np.array_equal(alone, with_probe)  # a probe never changes the image
    assert probe.plugin.rows[0] == {4} and probe.plugin.rows[STEPS - 1] == {2}  # it sees the dropped batch
    result = run_once(pipe, cfg, (ru, tg), STEPS)
    img, counters = result.images, result.counters
    n_self, n_cross = _modules(pipe)
    assert counters["reuse"]["maps_reused"] == 3 * n_self  # a pre-gate [uncond; cond] map, averaged
    assert counters["tgate"]["cross_attn_reused"] == 3 * n_cross
    assert not np.array_equal(img, alone)


def test_combination_rules():
    with pytest.raises(ValueError, match=r"^reuse: scope=both .*tgate"):
        check_combination((ReuseConfig(), TGateConfig()))
    with pytest.raises(ValueError, match=r"^reuse: tgate with sp_interval=5"):
        check_combination((ReuseConfig(scope="self"), TGateConfig()))
    check_combination((ReuseConfig(scope="self"), TGateConfig(sp_interval=1)))
    with pytest.raises(ValueError, match=r"^reuse: policy 'CCR' has 3 entries but the run has 5 steps"):
        check_combination((ReuseConfig(policy="CCR"), StepsConfig(steps=5)))


# --- validation ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, message", [
    (dict(policy="CCX"), r"^reuse: policy must be"),
    (dict(policy="RCC"), r"^reuse: step 0 must compute"),
    (dict(policy="CCR", reuse_steps=2), r"^reuse: reuse_steps=2 but policy"),
    (dict(scope="foo"), r"^reuse: scope must be one of self, cross, both"),
    (dict(max_run=0), r"^reuse: max_run must be"),
    (dict(reuse_steps=-1), r"^reuse: reuse_steps must be"),
])
def test_reuse_invalid(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ReuseConfig(**kwargs)


@pytest.mark.parametrize("kwargs, message", [
    (dict(gate_step=0), r"^tgate: gate_step must be an integer >= 1"),
    (dict(sp_interval=0), r"^tgate: sp_interval"),
    (dict(fi_interval=0), r"^tgate: fi_interval"),
    (dict(warm_up=-1), r"^tgate: warm_up"),
])
def test_tgate_invalid(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TGateConfig(**kwargs)


def test_invalid_at_run_time_and_cli_syntax(toy):
    pipe, _ = toy
    before = dict(pipe.unet.attn_processors)
    with pytest.raises(ValueError, match=r"^reuse: policy 'CCRR' has 4 entries but the run has 6 steps"):
        run_once(pipe, _cfg(), (ReuseConfig(policy="CCRR"),), STEPS)
    with pytest.raises(ValueError, match=r"^reuse: 5 reuse steps with max_run=2 need at least 8 steps"):
        run_once(pipe, _cfg(), (ReuseConfig(reuse_steps=5),), STEPS)
    _assert_clean(pipe, before)
    assert parse_accel("reuse:policy=ccrcrr,scope=self") == ReuseConfig(policy="CCRCRR", scope="self")
    assert parse_accel("tgate:gate_step=4,sp_interval=1") == TGateConfig(gate_step=4, sp_interval=1)
    with pytest.raises(ValueError, match=r"^tgate: gate_step"):
        parse_accel("tgate:gate_step=0")


# --- HURRY, PHAST ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("steps, r, max_run, expected", [
    (20, 7, 2, "CCCCCCCCCCRCRRCRRCRR"),
    (6, 2, 2, "CCCCRR"),
    (8, 3, 1, "CCCRCRCR"),
    (5, 3, 2, "CRCRR"),
    (10, 0, 2, "CCCCCCCCCC"),
    (12, 6, 3, "CCCCCRRRCRRR"),
    (9, 5, 2, "CCRCRRCRR"),
])
def test_hurry_shape(steps, r, max_run, expected):
    p = hurry_policy(steps, r, max_run)
    assert p == expected
    assert p[0] == "C" and p.count("R") == r and longest_run(p) <= max_run


def test_hurry_infeasible_and_default():
    with pytest.raises(ValueError, match=r"^reuse: 3 reuse steps with max_run=2 need at least 5 steps"):
        hurry_policy(4, 3, 2)
    assert ReuseConfig().resolve(20) == hurry_policy(20, 7, 2)


def test_phast_file_round_trip(tmp_path):
    from analysis.policy_search import SearchResult, write_policy

    with pytest.raises(ValueError, match=r"^reuse: no PHAST policy for model 'owner/m' at 6 steps"):
        load_phast("owner/m", 6, 2, "both", tmp_path)
    result = SearchResult(steps=6, reuse_steps=2, scope="both", max_run=2, hurry_policy="CCCCRR", policy="CCCRCR",
                          calibration_prompts=["p"], hurry_psnr_db=30.0, phast_psnr_db=31.0, iterations=1,
                          moves_accepted=1, evaluations=2)
    write_policy(tmp_path / "owner--m-6.json", result, "owner/m", "ddim", 5.0, None, 0)
    assert json.loads((tmp_path / "owner--m-6.json").read_text())["format"] == "diffscope-reuse-policy/1"
    assert ReuseConfig(policy="phast", reuse_steps=2).resolve(6, "owner/m", tmp_path) == "CCCRCR"
    with pytest.raises(ValueError, match=r"has no PHAST policy for reuse_steps=3 scope=both"):
        ReuseConfig(policy="phast", reuse_steps=3).resolve(6, "owner/m", tmp_path)


def test_policy_search_runs(toy):
    from analysis.policy_search import main, neighbours, search

    pipe, _ = toy
    assert neighbours("CCCCRR", radius=1, max_run=2) == ["CCCRCR"]
    result = search(pipe, 4, 1, list(PROMPTS), iterations=1, size=32, held_out=["a large green triangle at the bottom"],
                    progress=False)
    assert result.hurry_policy == "CCCR" and result.policy in ("CCCR", "CCRC") and result.evaluations == 2
    assert result.phast_psnr_db >= result.hurry_psnr_db and result.iterations <= 1
    assert result.held_out_hurry_psnr_db is not None and result.held_out_phast_psnr_db is not None
    from analysis.__main__ import main as cli

    assert main(["--prompts", "0"]) == 2
    assert cli(["search-policy", "--bogus"]) == 2  # the CLI forwards to policy_search.main


def test_half_precision_maps_stay_within_tolerance_of_float32_maps(toy):
    """Issue 20: maps kept in float16 halve their memory; the image moves by rounding only (measured >= 77 dB
    on the default model and SD 1.5's UNet, benchmarks/reuse_map_dtype.py)."""
    from analysis import metrics

    pipe, _ = toy
    images = {}
    for dtype in ("float32", "float16"):
        config = _cfg()
        images[dtype] = run_once(pipe, config, (ReuseConfig(policy="CCRCRR", map_dtype=dtype),), STEPS).images
    assert metrics.psnr(images["float32"], images["float16"]) > 50
    with pytest.raises(ValueError, match="map_dtype must be one of float32, float16, bfloat16"):
        ReuseConfig(map_dtype="int8")
