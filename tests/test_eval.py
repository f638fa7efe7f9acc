"""analysis/eval: quality scorers, the JSON convention, the cost functions against counted work, ideal_speedup,
and the review corrections (T-GATE's default gate, PHAST provenance warnings, the convergence probe's record).
No timing assertions: this machine is shared."""
from __future__ import annotations

import json
import math
import sys
import types
import warnings

import numpy as np
import pytest

PROMPT = "a red circle on the left"
STEPS = 4


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny pipelines gain nothing from a second thread, and on an oversubscribed machine a preempted thread
    stalls every kernel (seconds per run instead of tenths)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --- metrics and the JSON convention ------------------------------------------------------------------------

def test_psnr_ssim_on_known_pairs():
    from analysis import metrics

    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, size=(2, 32, 32, 3), dtype=np.uint8)
    assert metrics.psnr(img, img.copy()) == math.inf
    assert metrics.ssim(img, img.copy()) == 1.0
    ref = np.zeros((1, 16, 16, 3), np.uint8)
    off_by_one = ref + 1  # MSE = 1 -> PSNR = 10 log10(255^2)
    assert math.isclose(metrics.psnr(ref, off_by_one), 10 * math.log10(255**2), rel_tol=1e-12)
    noisy = np.clip(img.astype(int) + rng.integers(-40, 41, size=img.shape), 0, 255).astype(np.uint8)
    assert 0 < metrics.ssim(img, noisy) < 1 and math.isfinite(metrics.psnr(img, noisy))


def test_one_json_convention():
    from analysis import jsonsafe, report

    data = {"psnr": math.inf, "low": -math.inf, "missing": math.nan, "f32": np.float32(1.5), "i64": np.int64(3),
            "arr": np.array([1.0, np.inf, np.nan]), "tuple": (1, 2), 7: True, "none": None}
    out = jsonsafe.jsonable(data)
    assert out == {"psnr": "inf", "low": "-inf", "missing": None, "f32": 1.5, "i64": 3, "arr": [1.0, "inf", None],
                   "tuple": [1, 2], "7": True, "none": None}
    text = jsonsafe.dumps(data)
    assert json.loads(text) == out
    assert jsonsafe.read_number("inf") == math.inf and jsonsafe.read_number("-inf") == -math.inf
    assert math.isnan(jsonsafe.read_number(None)) and jsonsafe.read_number(2) == 2.0
    assert report.jsonable is jsonsafe.jsonable and report.json_number is jsonsafe.json_number  # one sanitiser
    assert "inf" not in text.replace('"inf"', "").replace('"-inf"', "")  # no bare Infinity / NaN tokens


# --- quality registry -----------------------------------------------------------------------------------

def test_registry_picks_scorers_by_model():
    from analysis.eval.quality import scorers_for

    assert [s.name for s in scorers_for("default")] == ["closeness", "lpips", "fidelity", "clip_score"]
    names = [s.name for s in scorers_for("owner/some-model")]
    assert names == ["closeness", "lpips", "clip_score"]


def test_closeness_and_fidelity_scores():
    from analysis.eval.quality import score_all, scorers_for
    from analysis.toy import scenes

    rng = np.random.default_rng(1)
    scene = scenes.sample_scene(rng)
    prompt = scenes.caption(scene)
    image = scenes.render(scene)[None]
    scores = score_all([s for s in scorers_for("default") if s.name != "lpips"], image, [prompt], image)
    assert scores["closeness"] == {"psnr_db": math.inf, "ssim": 1.0}
    assert scores["fidelity"]["overall"] == 1.0 and scores["fidelity"]["baseline"] == 1.0


def test_learned_metrics_report_unavailable_offline(monkeypatch):
    from analysis.eval import quality

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    quality._clip.cache_clear()
    quality._lpips_model.cache_clear()
    monkeypatch.setitem(sys.modules, "lpips", None)  # not installed (and never importable from here)
    img = np.zeros((1, 32, 32, 3), np.uint8)
    scores = quality.score_all(quality.scorers_for("owner/some-model"), img, ["a cat"], img)
    assert scores["lpips"]["available"] is False and "lpips package is not installed" in scores["lpips"]["reason"]
    assert scores["clip_score"]["available"] is False and quality.CLIP_MODEL in scores["clip_score"]["reason"]
    assert set(scores["lpips"]) == set(scores["clip_score"]) == {"available", "reason"}  # no number made up
    with pytest.raises(quality.ScorerUnavailable):
        quality.CLIPScore().score(img, ["a cat"], img)
    quality._clip.cache_clear()
    quality._lpips_model.cache_clear()


def test_lpips_weights_that_do_not_load_and_that_do(monkeypatch):
    """The lpips package's two outcomes, with a stand-in module: weights failing to load -> unavailable with
    the reason; loading -> the model's distance, averaged over the batch, on inputs scaled to [-1, 1]."""
    import torch

    from analysis.eval import quality

    def failing(**kwargs):
        raise OSError("could not download alexnet weights")

    monkeypatch.setitem(sys.modules, "lpips", types.SimpleNamespace(LPIPS=failing))
    quality._lpips_model.cache_clear()
    reason = quality.LPIPS().unavailable_reason()
    assert reason.startswith("LPIPS weights did not load") and "alexnet" in reason

    class MeanAbs(torch.nn.Module):
        def __init__(self, **kwargs):
            super().__init__()

        def forward(self, a, b):
            assert a.shape == b.shape and a.shape[1] == 3 and a.min() >= -1 and a.max() <= 1
            return (a - b).abs().mean(dim=(1, 2, 3), keepdim=True)

    monkeypatch.setitem(sys.modules, "lpips", types.SimpleNamespace(LPIPS=MeanAbs))
    quality._lpips_model.cache_clear()
    ref = np.zeros((2, 8, 8, 3), np.uint8)
    img = np.full((2, 8, 8, 3), 255, np.uint8)
    assert quality.LPIPS().unavailable_reason() is None
    assert quality.LPIPS().score(ref, ["x", "y"], ref) == {"lpips": 0.0}
    assert quality.LPIPS().score(img, ["x", "y"], ref) == {"lpips": 2.0}
    quality._lpips_model.cache_clear()


# --- cost functions against counted work -------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny(sd15_pipe):
    from analysis.eval.cost import profile_for
    from analysis.run import RunConfig

    config = RunConfig(prompt=PROMPT, steps=STEPS, size=64)
    return sd15_pipe, config, profile_for(sd15_pipe, config)


def _counted(pipe, config, *techniques):
    import dataclasses

    from analysis.run import run_once

    cfg = dataclasses.replace(config, accel=tuple(techniques))
    return cfg, run_once(pipe, cfg, cfg.hooked_accel(), cfg.accel_steps).counters


def _cost(name, technique, counters, profile, accel_steps=STEPS):
    from analysis.accel import cost_function

    return cost_function(name)(technique, counters, profile, STEPS, accel_steps)


def test_reuse_cost_is_reused_maps_times_map_time(tiny):
    from analysis.accel.reuse import ReuseConfig

    pipe, config, profile = tiny
    tech = ReuseConfig(policy="CRCR")
    _, counters = _counted(pipe, config, tech)
    mods = profile["attention_modules"].values()
    assert len(mods) == 32  # 16 self + 16 cross
    assert counters["reuse"]["maps_reused"] == 2 * 32  # two R steps x every in-scope module
    s = _cost("reuse", tech, counters, profile)
    assert math.isclose(s["unet_s"], 64 * sum(m["map_s"] for m in mods) / 32, rel_tol=1e-12)
    self_only = ReuseConfig(policy="CRCR", scope="self")
    _, c2 = _counted(pipe, config, self_only)
    assert c2["reuse"]["maps_reused"] == 2 * 16
    s2 = _cost("reuse", self_only, c2, profile)
    assert math.isclose(s2["unet_s"], 32 * sum(m["map_s"] for m in mods if m["kind"] == "self") / 16, rel_tol=1e-12)


def test_tgate_cost_is_cfg_half_plus_cached_cross_attention(tiny):
    from analysis.accel.tgate import TGateConfig

    pipe, config, profile = tiny
    tech = TGateConfig(gate_step=2, sp_interval=1, fi_interval=1, warm_up=0)
    _, counters = _counted(pipe, config, tech)
    assert counters["unet"]["batch_rows"] == [2, 2, 1, 1]
    assert counters["tgate"]["cross_attn_reused"] == 2 * 16 and counters["tgate"]["cfg_dropped_steps"] == 2
    s = _cost("tgate", tech, counters, profile)
    cross = [m["fused_s"] for m in profile["attention_modules"].values() if m["kind"] == "cross"]
    expected = 2 * 0.5 * profile["unet_call_s"] + 32 * (sum(cross) / 16) * 0.5
    assert math.isclose(s["unet_s"], expected, rel_tol=1e-12)
    assert s["detail"]["counts_match"] and s["detail"]["gate_step"] == 2


def test_fastdiff_cost_is_skipped_encoder_passes(tiny):
    from analysis.accel.fastdiff import FastDiffConfig

    pipe, config, profile = tiny
    tech = FastDiffConfig(key_steps=(0, 2), parallel=False, noise=False)
    _, counters = _counted(pipe, config, tech)
    assert counters["fastdiff"]["encoder_passes_skipped"] == 2
    s = _cost("fastdiff", tech, counters, profile)
    assert math.isclose(s["unet_s"], 2 * profile["encoder_decoder"]["encoder_s"], rel_tol=1e-12)


def test_atedm_cost_is_pruned_fraction_of_post_pruning_work(tiny):
    from analysis.accel.atedm import ATEDMConfig

    pipe, config, profile = tiny
    tech = ATEDMConfig(ratio=0.5, dsap=False)
    _, counters = _counted(pipe, config, tech)
    layers = counters["atedm"]["layers"]
    assert set(layers) == set(profile["transformer_layers"])
    expected = 0.0
    for name, lc in layers.items():
        n = profile["transformer_layers"][name]["attn1_queries"]
        assert lc["tokens_total"] == 2 * n * STEPS and lc["tokens_pruned"] == 2 * int(0.5 * n) * STEPS
        expected += lc["tokens_pruned"] / lc["tokens_total"] * STEPS * profile["transformer_layers"][name]["post_pruning_s"]
    assert math.isclose(_cost("atedm", tech, counters, profile)["unet_s"], expected, rel_tol=1e-12)


def test_steps_cost_is_whole_loop_steps(tiny):
    from analysis.accel.steps import StepsConfig
    from analysis.eval.cost import cost_model

    _, _, profile = tiny
    s = _cost("steps", StepsConfig(steps=3), {}, profile, accel_steps=3)
    assert s["loop_steps_saved"] == 1 and s["unet_s"] == 0
    p = profile["pipeline"]  # profiled at 2 steps; the linear model scales to 4
    total = 1 - p["loop_share"] + STEPS * p["loop_share"] / p["unet_calls"]
    m = cost_model("steps", StepsConfig(steps=3), {}, profile, STEPS, 3)
    assert math.isclose(m["saved_fraction"], p["loop_share"] / p["unet_calls"] / total, rel_tol=1e-12)


# --- ideal_speedup ----------------------------------------------------------------------------------------

def test_ideal_speedup_all_off_is_exactly_one(tiny):
    from analysis.accel.atedm import ATEDMConfig
    from analysis.accel.fastdiff import FastDiffConfig
    from analysis.accel.reuse import ReuseConfig
    from analysis.accel.tgate import TGateConfig
    from analysis.eval.cost import ideal_speedup
    from analysis.run import RunConfig

    pipe, config, _ = tiny
    none = ideal_speedup(pipe, RunConfig(prompt=PROMPT, steps=STEPS, size=48), {})
    assert none["ideal_speedup"] == 1.0 and none["saved_fraction"] == 0.0 and none["profile_steps"] is None
    for techniques in [(TGateConfig.off(STEPS),), (ReuseConfig(policy="CCCC"),),
                       (FastDiffConfig(stride=1, noise=False),), (ATEDMConfig(ratio=0.0),),
                       (ReuseConfig(policy="CCCC", scope="self"), TGateConfig.off(STEPS))]:
        cfg, counters = _counted(pipe, config, *techniques)
        out = ideal_speedup(pipe, cfg, counters)
        assert out["ideal_speedup"] == 1.0, techniques
        assert set(out["per_technique"]) == {type(t).name for t in techniques}


def test_ideal_speedup_adds_savings_of_combined_techniques(tiny):
    from analysis.accel.steps import StepsConfig
    from analysis.accel.tgate import TGateConfig
    from analysis.eval.cost import cost_model, ideal_speedup, profile_for

    pipe, config, profile = tiny
    tech = TGateConfig(gate_step=1, sp_interval=1, fi_interval=1, warm_up=0)
    cfg, counters = _counted(pipe, config, tech, StepsConfig(steps=3))
    assert counters["tgate"]["cfg_dropped_steps"] == 2  # 3 steps, gate 1
    out = ideal_speedup(pipe, cfg, counters)
    assert profile_for(pipe, cfg) is profile  # cached per (pipe, size, guidance > 1, batch)
    per = out["per_technique"]
    assert math.isclose(per["tgate"], cost_model("tgate", tech, counters, profile, STEPS, 3)["saved_fraction"])
    assert math.isclose(per["steps"], cost_model("steps", None, counters, profile, STEPS, 3)["saved_fraction"])
    assert not out["capped"] and math.isclose(out["saved_fraction"], per["tgate"] + per["steps"], rel_tol=1e-12)
    assert math.isclose(out["ideal_speedup"], 1 / (1 - out["saved_fraction"]), rel_tol=1e-12)
    assert out["ideal_speedup"] > 1


# --- corrections ---------------------------------------------------------------------------------------------

def test_tgate_default_gate_follows_the_step_count(sd15_pipe):
    import dataclasses

    from analysis.accel.tgate import TGateConfig
    from analysis.run import RunConfig

    cfg = TGateConfig()
    assert cfg.gate_step is None
    assert [cfg.resolved_gate_step(n) for n in (15, 25, 50, 20, 2, 1)] == [6, 10, 20, 8, 1, 1]
    assert TGateConfig(gate_step=10).resolved_gate_step(50) == 10  # explicit wins
    config = RunConfig(prompt=PROMPT, steps=5, size=64)
    _, counters = _counted(sd15_pipe, config, TGateConfig())
    assert counters["tgate"]["gate_step"] == 2 and counters["tgate"]["cfg_dropped_steps"] == 3
    _, counters = _counted(sd15_pipe, dataclasses.replace(config), TGateConfig(gate_step=4))
    assert counters["tgate"]["gate_step"] == 4 and counters["tgate"]["cfg_dropped_steps"] == 1


def _policy_file(directory, scheduler="dpm", guidance=7.5):
    (directory / "owner--m-4.json").write_text(json.dumps({
        "format": "diffscope-reuse-policy/1", "model": "owner/m", "steps": 4, "scheduler": scheduler,
        "guidance": guidance, "size": None, "policies": [{"reuse_steps": 1, "scope": "both", "policy": "CCRC"}]}))


def test_load_phast_warns_when_searched_with_another_sampler(tmp_path):
    from analysis.accel.reuse_policy import load_phast

    _policy_file(tmp_path)
    with pytest.warns(UserWarning, match=r"searched with scheduler dpm \(this run: ddim\) and guidance 7.5"):
        assert load_phast("owner/m", 4, 1, "both", tmp_path, scheduler="ddim", guidance=5.0) == "CCRC"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_phast("owner/m", 4, 1, "both", tmp_path, scheduler="dpm", guidance=7.5) == "CCRC"
        assert load_phast("owner/m", 4, 1, "both", tmp_path) == "CCRC"  # nothing given: nothing compared


def test_phast_run_warns_about_scheduler_and_guidance(sd15_pipe, tmp_path, monkeypatch):
    from analysis.accel import reuse, reuse_policy
    from analysis.models import MODEL_NAME_ATTR
    from analysis.run import RunConfig

    _policy_file(tmp_path, scheduler="ddim", guidance=7.5)
    monkeypatch.setattr(reuse_policy, "POLICY_DIR", tmp_path)
    monkeypatch.setattr(sd15_pipe, MODEL_NAME_ATTR, "owner/m", raising=False)  # set_model_name, undone after
    config = RunConfig(prompt=PROMPT, steps=STEPS, size=64, guidance=5.0)
    with pytest.warns(UserWarning, match=r"guidance 7.5 \(this run: 5.0\)"):
        _, counters = _counted(sd15_pipe, config, reuse.ReuseConfig(policy="phast", reuse_steps=1))
    assert counters["reuse"]["policy"] == "CCRC"


def test_convergence_probe_records_zero_for_cached_outputs(sd15_pipe):
    from analysis.accel.tgate import TGateConfig
    from analysis.probes.convergence import ConvergenceConfig
    from analysis.run import RunConfig, run_once

    config = RunConfig(prompt=PROMPT, steps=STEPS, size=64)
    tech = TGateConfig(gate_step=2, sp_interval=1, fi_interval=1, warm_up=0)  # steps 2, 3 served from the cache
    signals = run_once(sd15_pipe, config, (tech, ConvergenceConfig()), STEPS).signals["cross_attn_convergence"]
    assert signals["steps"] == [1, 2, 3]
    out, probs = signals["output_l2"], signals["probs_l2"]
    assert np.all(out[:, 2] == 0)  # step 3: the same cached tensor as step 2
    assert np.all(np.isfinite(out[:, :2])) and np.all(out[:, 1] > 0)  # step 2: cache vs the gate step's cond rows
    assert np.all(np.isnan(probs[:, 1:])) and np.all(np.isfinite(probs[:, 0]))  # no maps for cached calls


def test_bench_capture_runs_through_the_cli_without_benchmarks(capsys):
    from pathlib import Path

    from analysis.__main__ import main

    root = Path(__file__).resolve().parents[1] / "analysis"
    offenders = [str(p) for p in root.rglob("*.py") if "from benchmarks" in p.read_text() or "import benchmarks" in p.read_text()]
    assert offenders == []  # the package never imports the scripts folder
    assert main(["bench", "--capture", "--models", "tiny", "--steps", "1", "--repeats", "1"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["benchmark"] == "capture" and report["models"]["tiny"]["image_identical"] is True
    assert main(["bench", "--capture", "--models", "nope/x/y"]) == 2
    assert capsys.readouterr().err.startswith("error: model 'nope/x/y' is neither")
