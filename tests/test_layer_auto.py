"""Issue 20: layers=auto for reuse and AT-EDM from a cached layer profile; G-WPR without the N x N map;
maps materialised only where an R step reuses them."""
import json

import numpy as np
import pytest
import torch

from analysis import metrics
from analysis.accel import layer_profile
from analysis.accel.atedm import ATEDMConfig
from analysis.accel.reuse import ReuseConfig, auto_modules, module_saving_s
from analysis.models import set_scheduler
from analysis.run import RunConfig, run_once
from analysis.token_rank import gwpr, gwpr_pooled, gwpr_streamed

STEPS = 6


@pytest.fixture
def pipe(sd15_pipe, monkeypatch, tmp_path):
    set_scheduler(sd15_pipe, "ddim")
    monkeypatch.setenv("DIFFSCOPE_CACHE", str(tmp_path / "profiles"))
    monkeypatch.setattr(layer_profile, "PROFILE_MIN_POSITIONS", 0)  # profile the small test runs too
    monkeypatch.setattr(layer_profile, "_MEMORY", {})
    return sd15_pipe


def _config(**kw):
    return RunConfig(prompt="a large red circle on the left", steps=STEPS, seed=1, size=32, **kw)


def _run(pipe, *accel):
    return run_once(pipe, _config(), accel, STEPS)


def _profile_with(pipe, pays):
    """A measured profile of this run, then rewritten so that exactly the modules / layers `pays(name)` accepts
    save time (the others are slower), and handed to the runs through the in-memory cache."""
    profile = layer_profile.for_run(pipe, _config())
    for name, m in profile["attention_modules"].items():
        m.update(fused_s=1.0, reuse_step_explicit_s=0.5 if pays(name) else 2.0, explicit_s=1.1)
    for name, layer in profile["transformer_layers"].items():
        layer.update(post_pruning_s=1.0, prune_s=0.0, attn1_explicit_overhead_s=0.0,
                     rank_s=dict.fromkeys(("exact", "pooled", "streamed"), 0.1 if pays(name) else 5.0))
    layer_profile.remember(profile["key"], profile)
    return profile


# --- G-WPR without the map ------------------------------------------------------------------------------

def _qk(rows=8, n=64, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, n, d, generator=g), torch.randn(rows, n, d, generator=g)


def test_streamed_gwpr_equals_the_exact_one_chunk_by_chunk():
    q, k = _qk()
    scale = 16 ** -0.5
    exact = gwpr(torch.softmax(torch.bmm(q, k.transpose(1, 2)) * scale, dim=-1), heads=4)
    for budget in (8 * 64 * 4, 8 * 64 * 4 * 7, 2**30):  # one query per chunk, ragged chunks, one chunk
        streamed = gwpr_streamed(q, k, heads=4, scale=scale, budget_bytes=budget)
        assert torch.allclose(streamed, exact, atol=1e-7, rtol=1e-5)
        assert torch.equal(streamed.argsort(dim=1), exact.argsort(dim=1))


def test_pooled_gwpr_is_exact_at_pool_1_and_a_distribution_otherwise():
    q, k = _qk()
    scale = 16 ** -0.5
    exact = gwpr(torch.softmax(torch.bmm(q, k.transpose(1, 2)) * scale, dim=-1), heads=4)
    assert torch.allclose(gwpr_pooled(q, k, 4, scale, (8, 8), pool=1), exact, atol=1e-7, rtol=1e-5)
    pooled = gwpr_pooled(q, k, 4, scale, (8, 8), pool=2)
    assert pooled.shape == exact.shape and torch.allclose(pooled.sum(-1), torch.ones(2))
    with pytest.raises(ValueError, match="does not hold"):
        gwpr_pooled(q, k, 4, scale, (4, 8))


def test_atedm_ranked_from_qk_keeps_attn1_fused_and_prunes_the_same_amount(pipe):
    exact = _run(pipe, ATEDMConfig(layers="all"))
    streamed = _run(pipe, ATEDMConfig(layers="all", rank_map="streamed"))
    pooled = _run(pipe, ATEDMConfig(layers="all", rank_map="pooled"))
    for other in (streamed, pooled):
        assert other.counters["atedm"]["tokens_pruned"] == exact.counters["atedm"]["tokens_pruned"] > 0
    assert metrics.psnr(exact.images, streamed.images) > 35  # the same ranking up to float rounding


# --- layers=auto ----------------------------------------------------------------------------------------

def test_the_layer_profile_is_measured_once_and_cached_on_disk(pipe, tmp_path):
    profile = layer_profile.for_run(pipe, _config())
    assert profile["attention_modules"] and profile["transformer_layers"]
    some_layer = next(iter(profile["transformer_layers"].values()))
    assert set(some_layer["rank_s"]) == {"exact", "pooled", "streamed"} and some_layer["prune_s"] > 0
    path = tmp_path / "profiles" / f"{profile['key']}.json"
    assert json.loads(path.read_text())["key"] == profile["key"]
    layer_profile._MEMORY.clear()
    assert layer_profile.for_run(pipe, _config()) == json.loads(path.read_text())  # read back, not re-measured
    assert layer_profile.profile_key(pipe, 64, 2, "fused") != profile["key"]  # another size, another profile


def test_auto_never_selects_a_module_the_profile_marks_slower(pipe):
    profile = _profile_with(pipe, lambda name: "attn2" in name or name.startswith("mid"))
    policy = ReuseConfig().resolve(STEPS)
    paying = {n for n, m in profile["attention_modules"].items() if module_saving_s(m, policy) > 0}
    assert paying == auto_modules(profile, policy, "both") and paying
    counters = _run(pipe, ReuseConfig(layers="auto")).counters["reuse"]
    assert set(counters["selected"]) == paying
    r_steps = policy.count("R")
    assert counters["maps_reused"] == r_steps * len(paying)  # reused only where it pays


def test_auto_that_selects_every_layer_is_todays_technique_bit_for_bit(pipe):
    _profile_with(pipe, lambda name: True)
    for auto, every in ((ReuseConfig(layers="auto"), ReuseConfig(layers="all")),
                        (ATEDMConfig(layers="auto"), ATEDMConfig(layers="all"))):
        a, b = _run(pipe, auto), _run(pipe, every)
        assert np.array_equal(a.images, b.images)


def test_atedm_auto_prunes_only_the_layers_that_pay(pipe):
    profile = _profile_with(pipe, lambda name: name.startswith("up_blocks"))
    counters = _run(pipe, ATEDMConfig(layers="auto")).counters["atedm"]
    assert set(counters["layers"]) == {n for n in profile["transformer_layers"] if n.startswith("up_blocks")}
    nothing = _profile_with(pipe, lambda name: False)
    assert nothing and _run(pipe, ATEDMConfig(layers="auto")).counters["atedm"]["tokens_pruned"] == 0


def test_layers_by_name_and_unknown_names(pipe):
    name = "down_blocks.0.attentions.0"
    counters = _run(pipe, ATEDMConfig(layers=name)).counters["atedm"]
    assert list(counters["layers"]) == [name]
    with pytest.raises(ValueError, match="unknown layers nowhere"):
        _run(pipe, ATEDMConfig(layers="nowhere"))
    assert np.array_equal(_run(pipe).images, _run(pipe).images)  # and nothing was left attached


def test_small_runs_are_not_profiled_and_auto_is_every_layer(sd15_pipe, monkeypatch):
    set_scheduler(sd15_pipe, "ddim")
    monkeypatch.setattr(layer_profile, "for_run", lambda *a, **k: pytest.fail("profiled a 32 px run"))
    a, b = _run(sd15_pipe, ReuseConfig()), _run(sd15_pipe, ReuseConfig(layers="all"))
    assert np.array_equal(a.images, b.images) and "selected" not in a.counters["reuse"]


# --- maps materialised only where an R step reuses them ---------------------------------------------------

def test_maps_are_materialised_only_at_steps_that_feed_an_r_step(pipe, monkeypatch):
    import analysis.attention as attention

    materialised, original = [], attention.attention_with_probs

    def counting(attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, probs=None):
        if probs is None:
            materialised.append(clock_step())
        return original(attn, hidden_states, encoder_hidden_states, attention_mask, temb, probs)

    steps_seen = []
    clock_step = lambda: steps_seen[-1] if steps_seen else -1  # noqa: E731

    monkeypatch.setattr(attention, "attention_with_probs", counting)
    policy = "CCRCRR"
    config = ReuseConfig(policy=policy, layers="all", scope="self")
    original_dispatch = attention.DispatchProcessor.__call__

    def noting(self, attn, hidden_states, *args, **kwargs):
        steps_seen.append(self.dispatcher.clock.step_index)
        return original_dispatch(self, attn, hidden_states, *args, **kwargs)

    monkeypatch.setattr(attention.DispatchProcessor, "__call__", noting)
    counters = _run(pipe, config).counters["reuse"]
    feeding = [s for s in range(len(policy) - 1) if policy[s] == "C" and policy[s + 1] == "R"]
    assert sorted(set(materialised)) == feeding == [1, 3]
    assert len(materialised) == counters["maps_cached"] == len(feeding) * counters["modules"]
