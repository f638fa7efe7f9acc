"""AT-EDM token pruning and Faster-Diffusion encoder propagation on random-weight SD 1.5 / SDXL pipelines."""
import contextlib

import numpy as np
import pytest
import torch

from analysis import metrics
from analysis.accel import parse_accel, unet_split
from analysis.accel.atedm import ATEDMConfig
from analysis.accel.fastdiff import PAPER_KEY_STEPS_50, FastDiffConfig
from analysis.models import set_scheduler
from analysis.run import RunConfig, run_once
from fakes import unet_inputs

STEPS = 4
PROMPT = "a red circle on the left"
_BASELINES: dict = {}


@contextlib.contextmanager
def _scheduler(pipe, name):
    saved = pipe.scheduler
    set_scheduler(pipe, name)
    try:
        yield
    finally:
        pipe.scheduler = saved


def _run(pipe, plugins=(), scheduler="ddim", steps=STEPS):
    with _scheduler(pipe, scheduler):
        result = run_once(pipe, RunConfig(PROMPT, steps=steps, seed=3), tuple(plugins), steps)
        img, counters, timesteps = result.images, result.counters, result.timesteps
    return img, counters, timesteps


def _baseline(pipe, scheduler="ddim", steps=STEPS):
    key = (id(pipe), scheduler, steps)
    if key not in _BASELINES:
        _BASELINES[key] = _run(pipe, (), scheduler, steps)
    return _BASELINES[key]


@pytest.fixture(params=["sd15", "sdxl"])
def pipe(request):
    return request.getfixturevalue(f"{request.param}_pipe")


def _state(pipe):
    return dict(pipe.unet.attn_processors)


def _assert_restored(pipe, before):
    after = _state(pipe)
    assert after.keys() == before.keys() and all(after[k] is before[k] for k in before)
    assert not [n for n, m in pipe.unet.named_modules() if "forward" in m.__dict__]


# --- validation and composition ---------------------------------------------------------------------------

@pytest.mark.parametrize("make, message", [
    (lambda: ATEDMConfig(ratio=1.0), "atedm: ratio"),
    (lambda: ATEDMConfig(ratio=-0.1), "atedm: ratio"),
    (lambda: ATEDMConfig(dsap_fraction=1.5), "atedm: dsap_fraction"),
    (lambda: ATEDMConfig(dsap_scale=2.0), "atedm: dsap_scale"),
    (lambda: ATEDMConfig(iterations=0), "atedm: iterations"),
    (lambda: ATEDMConfig(damping=0.0), "atedm: damping"),
    (lambda: FastDiffConfig(key_steps=(1, 2)), "fastdiff: key_steps must include step 0"),
    (lambda: FastDiffConfig(key_steps=(0, -1)), "fastdiff: key_steps must be non-negative"),
    (lambda: FastDiffConfig(key_steps=(0, 2, 2)), "fastdiff: key_steps has duplicates"),
    (lambda: FastDiffConfig(stride=-1), "fastdiff: stride"),
    (lambda: FastDiffConfig(key_steps=(0, 1), stride=2), "fastdiff: give key_steps or stride"),
    (lambda: FastDiffConfig(noise_alpha=1.0), "fastdiff: noise_alpha"),
])
def test_invalid_params(make, message):
    with pytest.raises(ValueError, match=f"^{message}"):
        make()


def test_key_step_presets_and_scaling():
    c = FastDiffConfig()
    assert c.resolve_key_steps(50) == PAPER_KEY_STEPS_50
    assert c.resolve_key_steps(20) == (0, 1, 2, 3, 5, 10, 15)
    assert c.resolve_key_steps(10) == (0, 1, 2, 3, 5, 7)
    assert c.resolve_key_steps(30) == (0, 1, 2, 3, 6, 9, 15, 21)
    assert FastDiffConfig(stride=3).resolve_key_steps(10) == (0, 3, 6, 9)
    assert FastDiffConfig(key_steps=(5, 0)).resolve_key_steps(10) == (0, 5)
    with pytest.raises(ValueError, match="^fastdiff: key step"):
        FastDiffConfig(key_steps=(0, 35)).resolve_key_steps(20)


def test_combination_rules():
    fast, atedm = FastDiffConfig(), ATEDMConfig()
    atedm.check_with({"atedm": atedm, "fastdiff": fast})  # works together (tested below)
    fast.check_with({"atedm": atedm, "fastdiff": fast})
    with pytest.raises(ValueError, match="^atedm cannot be combined with reuse"):
        atedm.check_with({"reuse": object()})
    with pytest.raises(ValueError, match="^atedm cannot be combined with tgate"):
        atedm.check_with({"tgate": object()})
    with pytest.raises(ValueError, match="^fastdiff cannot be combined with tgate"):
        fast.check_with({"tgate": object()})
    with pytest.raises(ValueError, match="parallel=false"):
        fast.check_with({"reuse": object()})
    FastDiffConfig(parallel=False).check_with({"reuse": object()})
    # through the CLI syntax and RunConfig's check_combination, with the real other techniques
    assert parse_accel("atedm:ratio=0.5,dsap=false") == ATEDMConfig(ratio=0.5, dsap=False)
    assert parse_accel("fastdiff:key_steps=0+1+2+5,parallel=0") == FastDiffConfig(key_steps=(0, 1, 2, 5), parallel=False)
    RunConfig(PROMPT, accel=(parse_accel("atedm"), parse_accel("fastdiff")))
    RunConfig(PROMPT, accel=(parse_accel("reuse"), parse_accel("fastdiff:parallel=false")))
    for pair in (("tgate", "fastdiff"), ("reuse", "atedm"), ("atedm", "tgate"), ("reuse", "fastdiff")):
        with pytest.raises(ValueError, match="cannot be combined"):
            RunConfig(PROMPT, accel=tuple(parse_accel(n) for n in pair))


def test_unsupported_unet_extras_raise(sd15_pipe):
    x = torch.zeros(1, 4, 8, 8)
    with pytest.raises(ValueError, match="^fastdiff: down_block_additional_residuals"):
        unet_split.bind_forward_args(sd15_pipe.unet, x, 1, None, down_block_additional_residuals=(x,),
                                     mid_block_additional_residual=x)


# --- the UNet split -----------------------------------------------------------------------------------------

@torch.inference_mode()
def test_split_forward_is_the_unet_forward(pipe):
    unet = pipe.unet
    x, t, ehs, kwargs = unet_inputs(unet)
    ref = unet(x, t, ehs, **kwargs).sample
    args = unet_split.bind_forward_args(unet, x, t, ehs, **kwargs)
    cond = unet_split.conditioning(unet, **args)
    res, mid = unet_split.encode(unet, x, cond)
    assert torch.equal(unet_split.decode(unet, mid, res, cond), ref)


# --- off settings, determinism, restoration -----------------------------------------------------------------

def test_off_settings_are_bit_identical(pipe):
    base = _baseline(pipe)[0]
    before = _state(pipe)
    assert np.array_equal(_run(pipe, (ATEDMConfig(ratio=0.0),))[0], base)
    # wrappers and the ranking plug-in attached, but DSAP prunes nothing at any step: originals run
    img, counters, _ = _run(pipe, (ATEDMConfig(dsap_fraction=1.0, dsap_scale=0.0),))
    assert np.array_equal(img, base) and counters["atedm"]["tokens_pruned"] == 0
    assert counters["atedm"]["tokens_total"] > 0
    img, counters, _ = _run(pipe, (FastDiffConfig(stride=1, noise=False),))
    assert np.array_equal(img, base)
    assert counters["fastdiff"]["encoder_passes"] == STEPS and counters["fastdiff"]["encoder_passes_skipped"] == 0
    _assert_restored(pipe, before)


@pytest.mark.parametrize("scheduler", ["ddim", "dpm"])
def test_atedm_runs_prunes_and_restores(pipe, scheduler):
    base = _baseline(pipe, scheduler)[0]
    before = _state(pipe)
    cfg = ATEDMConfig(ratio=0.5, dsap=False)
    img, counters, _ = _run(pipe, (cfg,), scheduler)
    img2, _, _ = _run(pipe, (cfg,), scheduler)
    assert np.array_equal(img, img2), "pruning must be deterministic"
    assert not np.array_equal(img, base)
    c = counters["atedm"]
    assert c["tokens_pruned"] == sum(layer["tokens_pruned"] for layer in c["layers"].values()) > 0
    assert 0.3 < c["pruned_fraction"] <= 0.5
    assert len(c["events_per_step"]) == STEPS and c["pruning_events"] == sum(c["events_per_step"])
    _assert_restored(pipe, before)


def _token_counts(pipe, plugins):
    """Tokens seen by every attn2 / ff call, per module name (forward pre-hooks)."""
    seen: dict[str, list[int]] = {}
    handles = []
    for name, module in pipe.unet.named_modules():
        if name.endswith((".attn2", ".ff")):
            def hook(mod, args, kwargs, name=name):
                h = args[0] if args else kwargs["hidden_states"]
                seen.setdefault(name, []).append(h.shape[1])
            handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))
    try:
        _, counters, _ = _run(pipe, plugins)
    finally:
        for h in handles:
            h.remove()
    return seen, counters


def test_tokens_are_really_removed(pipe):
    full, _ = _token_counts(pipe, ())
    pruned, counters = _token_counts(pipe, (ATEDMConfig(ratio=0.5, dsap=False),))
    layers = counters["atedm"]["layers"]
    for name, counts in full.items():
        layer, _, rest = name.partition(".transformer_blocks.")
        block = int(rest.split(".")[0])
        n_blocks = 1 + max(int(k.partition(".transformer_blocks.")[2].split(".")[0]) for k in full if k.startswith(layer + "."))
        n = counts[0]
        expected = n - int(0.5 * n)
        if n_blocks == 1 or block >= 1:  # SD 1.5: after attn1 of the only block; SDXL: blocks after the first
            assert pruned[name] == [expected] * STEPS, name
        else:  # SDXL's first block runs on all tokens (pruning happens after it)
            assert pruned[name] == counts, name
        assert layers[layer]["tokens_total"] == STEPS * 2 * n  # CFG: 2 rows
        assert layers[layer]["tokens_pruned"] == STEPS * 2 * (n - expected)
    assert any(p < f for name in full for p, f in zip(pruned[name], full[name]))


def test_dsap_prunes_less_early(sd15_pipe):
    _, counters, _ = _run(sd15_pipe, (ATEDMConfig(ratio=0.5, dsap=True, dsap_fraction=0.5),))
    c = counters["atedm"]
    assert c["events_per_step"][0] < c["events_per_step"][-1]
    protected = [k for k in c["layers"] if k.startswith("down_blocks.") and k.endswith("attentions.0")]
    assert protected  # the first attention block of each down stage is left alone in the early steps
    late = ATEDMConfig(ratio=0.5, dsap=False)
    _, c2, _ = _run(sd15_pipe, (late,))
    for k in protected:
        assert c["layers"][k]["tokens_pruned"] == c2["atedm"]["layers"][k]["tokens_pruned"] // 2


# --- encoder propagation ------------------------------------------------------------------------------------

@pytest.mark.parametrize("scheduler", ["ddim", "dpm"])
def test_fastdiff_counters_and_parallel_matches_sequential(pipe, scheduler):
    base = _baseline(pipe, scheduler)[0]
    before = _state(pipe)
    keys = (0, 2)
    par, cp, _ = _run(pipe, (FastDiffConfig(key_steps=keys, noise=False),), scheduler)
    seq, cs, _ = _run(pipe, (FastDiffConfig(key_steps=keys, noise=False, parallel=False),), scheduler)
    par2, _, _ = _run(pipe, (FastDiffConfig(key_steps=keys, noise=False),), scheduler)
    assert np.array_equal(par, par2), "propagation must be deterministic"
    assert not np.array_equal(par, base)
    assert metrics.psnr(seq, par) > 40
    rows = 2  # one prompt with classifier-free guidance
    assert cp["fastdiff"] == {"key_steps": [0, 2], "encoder_passes": 2, "encoder_passes_skipped": STEPS - 2,
                              "decoder_calls": 2, "decoder_rows": STEPS * rows, "noise_injections": 0}
    assert cs["fastdiff"]["decoder_calls"] == STEPS and cs["fastdiff"]["decoder_rows"] == STEPS * rows
    assert cs["fastdiff"]["encoder_passes"] == 2 and cs["fastdiff"]["encoder_passes_skipped"] == STEPS - 2
    _assert_restored(pipe, before)


@pytest.mark.parametrize("scheduler", ["ddim", "euler"])
def test_prior_noise_injection(sd15_pipe, scheduler):
    base, _, timesteps = _baseline(sd15_pipe, scheduler)
    img, counters, _ = _run(sd15_pipe, (FastDiffConfig(stride=1, noise=True),), scheduler)
    expected = sum(1 for t in timesteps[1:] if t < 500)
    assert expected > 0 and counters["fastdiff"]["noise_injections"] == expected
    assert not np.array_equal(img, base)  # injection is a separate switch: "off" needs noise=false


def test_atedm_with_fastdiff(sdxl_pipe):
    before = _state(sdxl_pipe)
    img, counters, _ = _run(sdxl_pipe, (ATEDMConfig(ratio=0.5, dsap=False), FastDiffConfig(key_steps=(0, 2))))
    assert img.shape == _baseline(sdxl_pipe)[0].shape
    assert counters["fastdiff"]["encoder_passes_skipped"] == 2
    assert counters["atedm"]["tokens_pruned"] > 0
    _assert_restored(sdxl_pipe, before)


def _keeps(pipe, monkeypatch, cfg):
    """Every pruning decision's kept token indices (sorted per row), in call order, grouped by step."""
    from analysis.accel import prune

    plans = []
    original = prune.plan

    def spy(hidden_states, scores, n):
        pruning = original(hidden_states, scores, n)
        plans.append(pruning.keep.sort(dim=-1).values.clone())
        return pruning

    monkeypatch.setattr(prune, "plan", spy)
    _run(pipe, (cfg,))
    per_step = len(plans) // STEPS
    assert per_step * STEPS == len(plans) and per_step > 0
    return [plans[s * per_step:(s + 1) * per_step] for s in range(STEPS)]


@pytest.mark.parametrize("ranking", ["gwpr", "random", "cross"])
def test_shared_cfg_mask_prunes_the_same_tokens_in_both_branches(sd15_pipe, monkeypatch, ranking):
    for cfg_mask, same in (("branch", False), ("shared", True)):
        steps = _keeps(sd15_pipe, monkeypatch, ATEDMConfig(ratio=0.5, dsap=False, ranking=ranking, cfg_mask=cfg_mask))
        keeps = [k for step in steps for k in step]
        assert all(k.shape[0] == 2 for k in keeps)  # [uncond; cond]
        equal = [torch.equal(k[0], k[1]) for k in keeps]
        assert all(equal) if same else not all(equal), (ranking, cfg_mask)


def test_random_draw_per_layer_prunes_the_same_tokens_every_step(sd15_pipe, monkeypatch):
    fixed = _keeps(sd15_pipe, monkeypatch, ATEDMConfig(ratio=0.5, dsap=False, ranking="random", random_draw="layer"))
    assert all(torch.equal(a, b) for step in fixed[1:] for a, b in zip(fixed[0], step))
    assert all(torch.equal(k[0], k[1]) for step in fixed for k in step)  # one draw for every batch row
    fresh = _keeps(sd15_pipe, monkeypatch, ATEDMConfig(ratio=0.5, dsap=False, ranking="random"))
    assert not all(torch.equal(a, b) for a, b in zip(fresh[0], fresh[1]))


def test_new_ablation_knobs_are_validated():
    with pytest.raises(ValueError, match="^atedm: random_draw"):
        ATEDMConfig(random_draw="step")
    with pytest.raises(ValueError, match="^atedm: cfg_mask"):
        ATEDMConfig(cfg_mask="both")
    assert parse_accel("atedm:ranking=random,random_draw=layer,cfg_mask=shared") == ATEDMConfig(
        ranking="random", random_draw="layer", cfg_mask="shared")
