"""Read-only probes (analysis/probes) and G-WPR (analysis/token_rank): schema, bit-identical images,
hooks removed after a run and after an exception, memory budget, pickling. Tiny pipelines, 64 px, 3 steps."""
from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from analysis.attention import AttentionPlugin
from analysis.models import random_pipeline
from analysis.plugins import HandleBase
from analysis.probes import PROBES, AttentionMapsConfig, ConvergenceConfig, DriftConfig, TokenRankConfig, default_probes
from analysis.run import RunConfig, generate, run_once
from analysis.token_rank import gwpr

PROMPTS = ("a red circle on the left", "a blue square")
STEPS = 3


@pytest.fixture(scope="module")
def pipes():
    cache = {}

    def get(kind):
        if kind not in cache:
            pipe = random_pipeline(kind)
            pipe.set_progress_bar_config(disable=True)
            cache[kind] = pipe
        return cache[kind]

    return get


# --- G-WPR -------------------------------------------------------------------------------------------------

def test_gwpr_is_a_distribution_and_deterministic():
    torch.manual_seed(0)
    probs = torch.softmax(torch.randn(2 * 4, 36, 36), dim=-1)
    scores = gwpr(probs, heads=4)
    assert scores.shape == (2, 36) and scores.dtype == torch.float32
    assert torch.allclose(scores.sum(-1), torch.ones(2), atol=1e-5)
    assert (scores > 0).all()
    assert torch.equal(scores, gwpr(probs, heads=4))
    rms = gwpr(probs, heads=4, head_reduce="rms")
    assert torch.allclose(rms.sum(-1), torch.ones(2), atol=1e-5)
    half = gwpr(probs.half(), heads=4)
    assert torch.allclose(half, scores, atol=1e-3)


def test_gwpr_uniform_attention_gives_uniform_scores():
    n = 16
    scores = gwpr(torch.full((3 * 2, n, n), 1.0 / n), heads=2)
    assert torch.allclose(scores, torch.full((3, n), 1.0 / n), atol=1e-6)


def test_gwpr_key_everyone_attends_to_ranks_first():
    n = 25
    probs = torch.full((2, n, n), 0.01)
    probs[:, :, 7] = 1 - 0.01 * (n - 1)
    for reduce in ("mean", "rms"):
        scores = gwpr(probs, heads=2, head_reduce=reduce)
        assert scores.argmax(-1).tolist() == [7]


def test_gwpr_rejects_bad_input():
    with pytest.raises(ValueError, match="multiple of heads"):
        gwpr(torch.ones(3, 4, 4), heads=2)
    with pytest.raises(ValueError, match="square"):
        gwpr(torch.ones(2, 4, 5), heads=1)
    with pytest.raises(ValueError, match="head_reduce"):
        gwpr(torch.ones(2, 4, 4), heads=1, head_reduce="max")


# --- configs -----------------------------------------------------------------------------------------------

def test_registry_and_defaults():
    assert set(PROBES) == {"attention_maps", "cross_attn_convergence", "feature_drift", "token_rank"}
    probes = default_probes(budget_mb=64)
    assert [type(p).name for p in probes] == ["attention_maps", "cross_attn_convergence", "feature_drift", "token_rank"]
    assert probes[0].budget_mb == 64


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: AttentionMapsConfig(budget_mb=0), "budget_mb"),
        (lambda: AttentionMapsConfig(min_res=0), "min_res"),
        (lambda: AttentionMapsConfig(cross=False, self_maps=False), "nothing to keep"),
        (lambda: TokenRankConfig(iterations=0), "iterations"),
        (lambda: TokenRankConfig(damping=1.5), "damping"),
        (lambda: TokenRankConfig(head_reduce="max"), "head_reduce"),
        (lambda: TokenRankConfig(steps=(-1,)), "steps"),
        (lambda: DriftConfig(pca_steps=(-2,)), "pca_steps"),
        (lambda: DriftConfig(pca_res=0), "pca_res"),
        (lambda: ConvergenceConfig(probs="yes"), "probs"),
    ],
)
def test_config_validation(make, message):
    with pytest.raises(ValueError, match=message) as err:
        make()
    assert "\n" not in str(err.value)


# --- schema ------------------------------------------------------------------------------------------------

def check_signals(signals: dict, n_prompts: int, n_tokens: int, steps: int) -> None:
    """Every probe signal has the shapes documented in docs/signals.md."""
    assert set(signals) == {"attention_maps", "cross_attn_convergence", "feature_drift", "token_rank"}

    maps = signals["attention_maps"]
    kept = maps["steps"]
    assert kept == list(range(steps))  # the default budget keeps everything at this size
    assert maps["cross"] and maps["self"]
    assert maps["kept_bytes"] <= maps["budget_bytes"]
    total = 0
    for layer, arr in maps["cross"].items():
        assert layer.endswith("attn2")
        h, w = maps["resolution"][layer]["kept"]
        assert arr.shape == (len(kept), n_prompts, n_tokens, h, w) and arr.dtype == np.float16
        # p(token | pixel): every pixel's probabilities over all tokens (padding included) sum to 1
        np.testing.assert_allclose(arr.astype(np.float32).sum(axis=2), 1.0, atol=2e-2)
        heads = maps["cross_heads"][layer]
        assert heads.shape[:2] == (len(kept), n_prompts) and heads.shape[3:] == (n_tokens, h, w)
        np.testing.assert_allclose(heads.astype(np.float32).mean(axis=2), arr.astype(np.float32), atol=2e-3)
        total += arr.nbytes + heads.nbytes
    for layer, arr in maps["self"].items():
        assert layer.endswith("attn1")
        res = maps["resolution"][layer]
        (hq, wq), (hk, wk) = res["kept"], res["keys_kept"]
        assert arr.shape == (len(kept), n_prompts, hq, wq, hk, wk) and arr.dtype == np.float16
        np.testing.assert_allclose(arr.astype(np.float32).sum(axis=(-2, -1)), 1.0, atol=2e-2)
        heads = maps["self_heads"][layer]
        assert heads.shape[:2] == (len(kept), n_prompts) and heads.shape[3:] == (hq, wq, hk, wk)
        np.testing.assert_allclose(heads.astype(np.float32).mean(axis=2), arr.astype(np.float32), atol=2e-3)
        total += arr.nbytes + heads.nbytes
    assert maps["kept_bytes"] == total

    conv = signals["cross_attn_convergence"]
    assert conv["layers"] and all(name.endswith("attn2") for name in conv["layers"])
    assert conv["steps"] == list(range(1, steps))
    for key in ("output_l2", "probs_l2"):
        arr = conv[key]
        assert arr.shape == (len(conv["layers"]), steps - 1) and arr.dtype == np.float32
        assert np.isfinite(arr).all() and (arr >= 0).all()

    drift = signals["feature_drift"]
    blocks = drift["blocks"]
    assert blocks[0] == "down_blocks.0" and "mid_block" in blocks and blocks[-1].startswith("up_blocks.")
    assert {drift["role"][b] for b in blocks} == {"encoder", "bottleneck", "decoder"}
    assert drift["mse"].shape == (len(blocks), steps - 1) and drift["mse"].dtype == np.float32
    assert drift["frobenius"].shape == (len(blocks), steps) and drift["frobenius"].dtype == np.float32
    assert np.isfinite(drift["mse"]).all() and np.isfinite(drift["frobenius"]).all()
    assert drift["relative"].shape == drift["mse"].shape and (drift["relative"] > 0).all()
    assert set(drift["pca"]) == set(blocks)
    for per_step in drift["pca"].values():
        assert set(per_step) == {0, steps // 2, steps - 1}
        for img in per_step.values():
            assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3

    rank = signals["token_rank"]
    assert rank["layers"] and all(name.endswith("attn1") for name in rank["layers"])
    assert rank["steps"] == list(range(steps))
    assert rank["params"] == {"iterations": 5, "damping": 0.85, "head_reduce": "mean"}
    for layer, arr in rank["scores"].items():
        assert arr.ndim == 4 and arr.shape[:2] == (steps, n_prompts) and arr.dtype == np.float32
        np.testing.assert_allclose(arr.sum(axis=(-2, -1)), 1.0, atol=1e-4)
        if layer in maps["self"]:
            assert list(arr.shape[2:]) == maps["resolution"][layer]["native"]


def hooks_state(unet):
    return (
        {k: id(v) for k, v in unet.attn_processors.items()},
        sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in unet.modules()),
        "forward" in unet.__dict__,
    )


def assert_restored(unet, before):
    processors, hooks, wrapped = hooks_state(unet)
    assert processors == before[0], "attention processors are not the original objects"
    assert hooks == 0 and before[1] == 0, "a forward hook was left behind"
    assert not wrapped, "unet.forward is still wrapped"


@pytest.mark.parametrize("kind", ["toy", "sd15", "sdxl"])
@pytest.mark.parametrize("guidance", [5.0, 1.0])
def test_probes_on_each_architecture(pipes, kind, guidance):
    pipe = pipes(kind)
    before = hooks_state(pipe.unet)
    config = RunConfig(prompt=PROMPTS, steps=STEPS, guidance=guidance, size=64, probes=default_probes())
    result = generate(pipe, config, measure_latency=False)
    # generate() computes the baseline with no hooks at all; probes must leave the image bit-identical.
    assert np.array_equal(result.image, result.baseline_image)
    check_signals(result.signals, n_prompts=len(PROMPTS), n_tokens=len(result.tokens[0]), steps=STEPS)
    assert_restored(pipe.unet, before)
    assert pickle.loads(pickle.dumps(result)).signals.keys() == result.signals.keys()


def test_conditional_half_is_kept(pipes):
    """At step 0 the conditional branch sees the same input with and without CFG, so its maps agree; the
    unconditional half (empty prompt) would not."""
    pipe = pipes("toy")
    probes = (AttentionMapsConfig(cross_heads=False, self_maps=False),)
    maps = {}
    for guidance in (5.0, 1.0):
        config = RunConfig(prompt=PROMPTS, steps=1, guidance=guidance, size=64)
        signals = run_once(pipe, config, probes, 1).signals
        maps[guidance] = signals["attention_maps"]["cross"]
    for layer, arr in maps[5.0].items():
        np.testing.assert_allclose(arr.astype(np.float32), maps[1.0][layer].astype(np.float32), atol=2e-3)


class _Boom(Exception):
    pass


class _RaiseAtStep1:
    """A plug-in that raises at step 1, either from a step-end callback or inside an attention call."""

    name = "boom"

    def __init__(self, where: str):
        self.where = where

    def attach(self, ctx):
        if self.where == "step_end":
            def fn(step, timestep, latents):
                if step == 1:
                    raise _Boom("step end")

            ctx.on_step_end(fn)
        else:
            class Raiser(AttentionPlugin):
                def wants_probs(self, call):
                    if call.step == 1:
                        raise _Boom("attention")
                    return False

            ctx.attention().add(Raiser())
        return HandleBase()


@pytest.mark.parametrize("where", ["step_end", "attention"])
def test_hooks_removed_after_exception(pipes, where):
    pipe = pipes("sdxl")
    before = hooks_state(pipe.unet)
    config = RunConfig(prompt=PROMPTS, steps=STEPS, guidance=5.0, size=64)
    with pytest.raises(_Boom):
        run_once(pipe, config, default_probes() + (_RaiseAtStep1(where),), STEPS)
    assert_restored(pipe.unet, before)
    # and the pipeline still runs, uninstrumented and bit-identical to a fresh baseline
    img_a = run_once(pipe, config, (), STEPS).images
    img_b = run_once(pipe, config, default_probes(), STEPS).images
    assert np.array_equal(img_a, img_b)
    assert_restored(pipe.unet, before)


def test_memory_budget_reduces_resolution_then_steps(pipes):
    pipe = pipes("toy")
    steps = 4
    config = RunConfig(prompt=PROMPTS, steps=steps, guidance=5.0, size=64)
    full = run_once(pipe, config, (AttentionMapsConfig(),), steps).signals["attention_maps"]
    assert full["steps"] == list(range(steps)) and full["cross_heads"] and full["self_heads"] and not full["reductions"]
    head_bytes = sum(a.nbytes for a in full["self_heads"].values())
    budget_mb = (full["kept_bytes"] - head_bytes) / 2**20 / 6  # far below what all steps at native resolution need
    small = run_once(pipe, config, (AttentionMapsConfig(budget_mb=budget_mb),), steps).signals["attention_maps"]
    assert small["kept_bytes"] <= small["budget_bytes"] == int(budget_mb * 2**20)
    assert not small["self_heads"] and not small["cross_heads"]  # per-head maps go first, self before cross
    assert small["reductions"][:2] == ["dropped per-head self-attention maps", "dropped per-head cross maps"]
    assert len(small["steps"]) < steps and small["steps"][0] == 0
    reduced = [res for layer, res in small["resolution"].items() if layer in small["self"] and res["kept"] != res["native"]]
    assert reduced and all(min(res["kept"]) >= 8 for res in reduced)
    for layer, arr in small["self"].items():
        res = small["resolution"][layer]
        assert arr.shape == (len(small["steps"]), len(PROMPTS), *res["kept"], *res["keys_kept"])
        np.testing.assert_allclose(arr.astype(np.float32).sum(axis=(-2, -1)), 1.0, atol=2e-2)
    # a budget too small for even one step keeps what fits (possibly nothing), never more
    tiny = run_once(pipe, config, (AttentionMapsConfig(budget_mb=0.001),), steps).signals["attention_maps"]
    assert tiny["kept_bytes"] <= tiny["budget_bytes"] and len(tiny["steps"]) <= 1


class _FakeTechnique(AttentionPlugin):
    """Reuses step-0 self-attention probabilities from step 1 on, and replaces every cross-attention output
    at step 2 by its step-1 value (T-GATE-like): probes must observe what was really used, and nothing
    for calls that were skipped."""

    observer = False

    def __init__(self):
        self.probs, self.outputs = {}, {}

    def replace_output(self, call):
        return self.outputs[call.name] if call.is_cross and call.step == 2 else None

    def reuse_probs(self, call):
        return self.probs[call.name] if not call.is_cross and call.step >= 1 else None

    def wants_probs(self, call):
        return not call.is_cross and call.step == 0

    def on_probs(self, call, probs):
        if not call.is_cross and call.step == 0:
            self.probs[call.name] = probs

    def on_output(self, call, output):
        if call.is_cross and call.step == 1:
            self.outputs[call.name] = output


class _FakeTechniqueConfig:
    name = "fake"

    def attach(self, ctx):
        ctx.seam()
        ctx.attention().add(_FakeTechnique())
        return HandleBase()


def test_probes_see_reused_and_replaced_calls(pipes):
    pipe = pipes("toy")
    config = RunConfig(prompt=PROMPTS, steps=STEPS, guidance=5.0, size=64)
    signals = run_once(pipe, config, (_FakeTechniqueConfig(),) + default_probes(), STEPS).signals
    rank = signals["token_rank"]["scores"]
    for arr in rank.values():  # reused probabilities -> the same scores as at step 0
        assert np.array_equal(arr[1], arr[0]) and np.array_equal(arr[2], arr[0])
    conv = signals["cross_attn_convergence"]
    assert np.isnan(conv["probs_l2"][:, 1]).all()  # step 2: cross-attention skipped, nothing observed
    assert np.isfinite(conv["probs_l2"][:, 0]).all()
    np.testing.assert_array_equal(conv["output_l2"][:, 1], 0.0)  # the cached output is the step-1 output
    for arr in signals["attention_maps"]["cross"].values():
        assert np.isnan(arr[2].astype(np.float32)).all() and np.isfinite(arr[:2].astype(np.float32)).all()


def test_relative_drift_is_scale_invariant():
    from analysis.probes.drift import relative_change

    g = torch.Generator().manual_seed(0)
    before, after = torch.randn(2, 8, 4, 4, generator=g), torch.randn(2, 8, 4, 4, generator=g)
    torch.testing.assert_close(relative_change(10 * after, 10 * before), relative_change(after, before))
    assert relative_change(before, before) == 0
