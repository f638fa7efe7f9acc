"""analysis.eval (the bench): the JSON's shape and the breakdown's bookkeeping (no timing assertions: this machine is shared)."""
from __future__ import annotations

import json
import math

import pytest

from analysis.accel import registry

SHARE_KEYS = {"convolutions", "attention_maps", "attention_values_out", "feed_forward", "rest"}


def _last_json(text: str) -> dict:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return json.loads(lines[-1])


@pytest.fixture(scope="module")
def bench_json():
    import contextlib
    import io

    from analysis.eval.bench_cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["--model", "tiny", "--steps", "2", "--repeats", "1", "--prompts", "1", "--breakdown-calls", "1"])
    assert code == 0
    text = out.getvalue()
    assert all(line.startswith("bench: ") for line in text.strip().splitlines()[:-1])
    return _last_json(text)


def test_breakdown_shares_sum_to_one(bench_json):
    b = bench_json["breakdown"]
    for key in ("shares", "shares_explicit"):
        assert set(b[key]) == SHARE_KEYS
        assert math.isclose(sum(b[key].values()), 1.0, abs_tol=1e-6)
    ed = b["encoder_decoder"]
    assert math.isclose(ed["encoder"] + ed["decoder"] + ed["other"], 1.0, abs_tol=1e-6)
    assert ed["encoder"] > 0 and ed["decoder"] > 0
    p = b["pipeline"]
    assert math.isclose(sum(p["shares"].values()), 1.0, abs_tol=1e-6)
    assert math.isclose(p["non_unet_share"], 1.0 - p["shares"]["unet"], abs_tol=1e-9)
    assert p["unet_calls"] == 2
    kinds = b["attention_by_kind"]
    assert kinds["self"]["modules"] == kinds["cross"]["modules"] == 16  # SD 1.5: 16 transformer blocks
    assert math.isclose(kinds["self"]["map_share"] + kinds["cross"]["map_share"], b["shares"]["attention_maps"],
                        rel_tol=1e-6, abs_tol=1e-9)
    assert set(b["bounds"]["text"]) == set(registry()) | {"all"}
    assert set(b["bounds"]["max_speedup"]) == set(registry()) | {"all"}


def test_every_technique_has_measured_and_ideal_speedups(bench_json):
    techniques = bench_json["techniques"]
    assert {t["name"] for t in techniques.values()} == set(registry())
    for label, t in techniques.items():
        for key in ("latency_s", "measured_speedup", "ideal_speedup", "paper_ideal_speedup", "efficiency",
                    "efficiency_vs_paper_ideal", "saved_fraction", "saved_s", "counters", "psnr_db"):
            assert key in t, (label, key)
        assert t["ideal_speedup"] >= 1.0 or t["name"] == "steps"
        assert 0.0 <= t["saved_fraction"] < 1.0
    assert techniques["reuse"]["counters"]["reuse"]["maps_reused"] > 0  # "CR" at 2 steps: one R step
    assert techniques["reuse"]["saved_fraction"] > 0
    assert techniques["steps:steps=1"]["steps"] == 1
    assert bench_json["baseline"]["latency_s"] > 0
    assert "cost_model" in bench_json
    # paired per-round speed-ups line up with the rounds; the noise floor is the baseline against itself
    floor = bench_json["noise_floor"]
    assert len(floor["latencies_s"]) == len(bench_json["baseline"]["latencies_s"]) == len(floor["paired_speedups"])
    for t in [floor, *techniques.values()]:
        assert t["paired_q1"] <= t["paired_speedup"] <= t["paired_q3"]


def test_paired_speedup_is_per_round():
    from analysis.eval.jobs import paired_speedup

    out = paired_speedup([2.0, 4.0, 3.0], [1.0, 4.0, 2.0])
    assert out["paired_speedups"] == [2.0, 1.0, 1.5] and out["paired_speedup"] == 1.5
    assert (out["paired_q1"], out["paired_q3"]) == (1.25, 1.75)
    assert paired_speedup([], [])["paired_speedup"] is None


def test_quality_section(bench_json):
    q = bench_json["quality"]
    assert len(q["prompts"]) == 1
    assert set(q["steps_curve"]) == {"1"}
    for label in ("reuse", "tgate", "atedm", "fastdiff"):
        row = q["techniques"][label]
        for key in ("median_speedup", "median_psnr_db", "median_steps_psnr_db", "median_psnr_minus_steps_psnr"):
            assert key in row, (label, key)


def test_breakdown_removes_its_hooks(sd15_pipe):
    from analysis.eval.profile import breakdown
    from analysis.run import RunConfig

    unet = sd15_pipe.unet
    before = {k: type(v) for k, v in unet.attn_processors.items()}
    config = RunConfig(prompt="a red circle on the left", steps=2, size=64)
    b = breakdown(sd15_pipe, config, 2, calls=1)
    assert {k: type(v) for k, v in unet.attn_processors.items()} == before
    for module in list(unet.modules()) + [sd15_pipe.text_encoder]:
        assert not module._forward_hooks and not module._forward_pre_hooks
    assert "decode" not in sd15_pipe.vae.__dict__ and "step" not in sd15_pipe.scheduler.__dict__
    assert b["unet_batch_rows"] == 2


def _fake_breakdown():
    """One UNet call = 1 s; pipeline = 10 calls of 0.1 s... scaled so the numbers are easy to check."""
    mods = {}
    for i in range(2):
        for kind, attn in (("self", "attn1"), ("cross", "attn2")):
            mods[f"b{i}.{attn}"] = {"kind": kind, "fused_s": 0.1, "explicit_s": 0.15, "map_s": 0.04, "values_s": 0.05,
                                    "reuse_step_explicit_s": 0.08}
    return {
        "unet_call_s": 1.0,
        "attention_modules": mods,
        "encoder_decoder": {"encoder_s": 0.4},
        "transformer_layers": {"t0": {"post_pruning_s": 0.2, "attn1_queries": 100, "attn1_explicit_overhead_s": 0.05}},
        "pipeline": {"shares": {"unet": 0.8}, "unet_calls": 4, "loop_share": 0.82},
    }


def test_cost_model_counts():
    from analysis.accel.fastdiff import FastDiffConfig
    from analysis.accel.reuse import ReuseConfig
    from analysis.accel.tgate import TGateConfig
    from analysis.eval.cost import cost_model

    b = _fake_breakdown()
    # reuse, the papers' view: 8 reused maps x 0.04 s = 0.32 UNet calls; one call = 0.2 of the pipeline -> 0.064
    c = cost_model("reuse", ReuseConfig(), {"reuse": {"scope": "both", "maps_reused": 8, "maps_cached": 4}}, b, 4, 4)
    assert math.isclose(c["paper_saved_fraction"], 0.064)
    assert math.isclose(c["paper_ideal_speedup"], 1 / (1 - 0.064))
    # the ideal charges its overheads: 8 x (0.1 - 0.08) - 4 x (0.15 - 0.1) = 0.16 - 0.2 = -0.04 units
    assert math.isclose(c["saved_fraction"], -0.04 * 0.2)
    assert math.isclose(c["ideal_speedup"], 1 / (1 + 0.04 * 0.2))
    # fastdiff: 2 skipped encoder passes x 0.4 s
    c = cost_model("fastdiff", FastDiffConfig(), {"fastdiff": {"encoder_passes_skipped": 2}}, b, 4, 4)
    assert math.isclose(c["saved_fraction"], 0.8 * 0.2)
    # steps: (4 - 3) / 4 of the loop
    c = cost_model("steps", None, {}, b, 4, 3)
    assert math.isclose(c["saved_fraction"], 0.82 / 4)
    # tgate gate_step=2 of 4: steps 2, 3 drop CFG (half the UNet) and reuse 2 cross modules at half rows
    cfg = TGateConfig(gate_step=2, sp_interval=1, fi_interval=1, warm_up=0)
    counters = {"tgate": {"cross_attn_reused": 4, "self_attn_reused": 0}, "unet": {"batch_rows": [2, 2, 1, 1]}}
    c = cost_model("tgate", cfg, counters, b, 4, 4)
    units = 2 * 0.5 + 4 * 0.1 * 0.5
    assert math.isclose(c["saved_fraction"], units * 0.2)
    assert c["detail"]["counts_match"]


def test_interp_clamps_and_flags():
    from analysis.eval.equal_latency import interp as _interp

    pts = [(0.5, 20.0), (0.75, 30.0), (1.0, 40.0)]
    assert _interp(pts, 0.625) == (25.0, False)
    assert _interp(pts, 0.4) == (20.0, True)
    assert _interp(pts, 1.2) == (40.0, True)


def test_atedm_costs_covers_every_attention_block_at_its_grid(capsys):
    from benchmarks.atedm_costs import main

    assert main(["--calls", "1"]) == 0
    report = _last_json(capsys.readouterr().out)
    blocks = report["blocks"]
    # the default model: attention at 16x16 (down 0, up 2), 8x8 (down 1, up 1) and the 4x4 mid block
    assert {b["tokens"] for b in blocks.values()} == {256, 64, 16}
    assert blocks["mid_block.attentions.0"]["tokens"] == 16 and blocks["down_blocks.0.attentions.0"]["tokens"] == 256
    for b in blocks.values():
        assert b["pruned"] == int(0.63 * b["tokens"])
        assert math.isclose(b["net_us"], b["saving_us"] - b["overhead_us"])
        assert all(b[k] > 0 for k in ("attn1_sdpa_us", "attn1_explicit_us", "gwpr_us", "plan_us"))
