"""The sensitivity (attention-adapted Lyapunov) analysis: perturbations touch step t only."""
import math

import numpy as np
import pytest

from analysis.eval import sensitivity

PROMPT = "a large red circle on the left"
STEPS = 5


@pytest.fixture(scope="module")
def unit(default_pipe):
    return sensitivity.analyse_unit(default_pipe, PROMPT, 0, STEPS, ("reuse", "noise"), 0.05, 5.0, "ddim")


def test_perturbation_touches_only_step_t(unit):
    assert [(r["kind"], r["t"]) for r in unit] == [("reuse", t) for t in range(1, STEPS)] + \
        [("noise", t) for t in range(STEPS)]
    for r in unit:
        dev = r["deviation"]
        assert r["identical_before_t"] and all(d == 0.0 for d in dev[: r["t"]])  # bit-identical before t
        assert dev[r["t"]] > 0  # and step t itself changed
        assert math.isfinite(r["psnr_db"])


def test_reference_run_repeats_bit_for_bit(default_pipe):
    from analysis.run import RunConfig

    config = RunConfig(prompt=PROMPT, steps=3, warmup=False)
    a = sensitivity.run_latents(default_pipe, config, ())
    b = sensitivity.run_latents(default_pipe, config, ())
    assert np.array_equal(a[1], b[1]) and np.array_equal(a[0], b[0])


def test_noise_has_the_requested_relative_size_and_counts(unit):
    for r in unit:
        if r["kind"] == "noise":
            c = r["counters"]["attention_noise"]
            assert c["maps_perturbed"] > 0
            assert 0.03 < c["relative_size"] < 0.07  # 0.05 asked; clipping at 0 and renormalising move it a bit
        else:
            assert r["counters"]["reuse"]["r_steps"] == 1


def test_growth_rate_of_a_known_exponential():
    d = np.concatenate([[0.0, 0.0], np.exp(0.3 * np.arange(6))])
    slope, amp = sensitivity.growth_rate(d, 2)
    assert slope == pytest.approx(0.3) and amp == pytest.approx(math.exp(1.5))
    assert sensitivity.growth_rate(d, 0) == (None, None)  # zero deviation at t: no rate


def test_curve_and_verdict_on_a_made_up_table():
    rows = [{"kind": "noise", "t": t, "exponent": -0.1, "amplification": 0.5, "final_deviation": 1.0 / (t + 1),
             "psnr_db": 30.0 + t, "identical_before_t": True} for t in range(6) for _ in range(2)]
    curve = sensitivity.curve(rows)
    assert [c["t"] for c in curve] == list(range(6)) and curve[0]["n"] == 2
    v = sensitivity.verdict(curve)["noise"]
    assert v["spearman_t_vs_final_deviation"] == pytest.approx(-1.0) and v["later_is_smaller"] is True


def test_sensitivity_figures(unit):
    from viz import sweep_figs

    result = {"curve": sensitivity.curve(unit), "policies": {"HURRY r=2": "CCRCR"}}
    fig = sweep_figs.sensitivity_figure(result)
    names = [t.name for t in fig.data]
    assert "reuse: final deviation" in names and "noise: growth rate" in names and "HURRY r=2 R steps" in names
    hurry = next(t for t in fig.data if t.name == "HURRY r=2 R steps")
    assert list(hurry.x) == [2, 4]
    mfig = sweep_figs.sensitivity_figure_mpl(result)
    assert mfig.axes[1].get_xlabel() == "perturbed step t"


def test_cli_bad_input(tmp_path, capsys):
    assert sensitivity.main(["--kinds", "blur", "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith("error: ")
    assert sensitivity.main(["--noise", "0", "--out", str(tmp_path)]) == 2


def test_cli_writes_table_and_figures(tmp_path):
    out = tmp_path / "s"
    prompts = tmp_path / "p.txt"
    prompts.write_text(PROMPT + "\n")
    assert sensitivity.main(["--prompts", str(prompts), "--steps", "3", "--kinds", "noise", "--out", str(out)]) == 0
    assert (out / "curve.csv").read_text().startswith("kind,t,n,exponent")
    assert (out / "figures" / "sensitivity.png").exists() and (out / "figures" / "sensitivity.html").exists()


def test_shipped_sensitivity_curve_loads():
    data = sensitivity.load_shipped(steps=20)
    assert data is not None, "assets/results/sensitivity-20/curve.json is shipped"
    kinds = {r["kind"] for r in data["curve"]}
    assert kinds == {"reuse", "noise"}
    assert all(r["identical_before_t"] for r in data["curve"])
    assert any(name.startswith("HURRY") for name in data["policies"])
    assert sensitivity.load_shipped(steps=999) is None


def test_exponent_without_the_final_step_and_per_step_factors():
    # a deviation that grows by e^0.2 a step, then the final step multiplies it by 0.4 (DDIM's x0 step)
    d = np.concatenate([[0.0], np.exp(0.2 * np.arange(5)), [np.exp(0.8) * 0.4]])
    assert sensitivity.growth_rate(d, 1, drop_last=True)[0] == pytest.approx(0.2)
    assert sensitivity.growth_rate(d, 1)[0] < 0.2
    rows = [{"prompt": f"p{p}", "kind": "noise", "t": 1, "exponent": 0.0, "exponent_without_last": 0.2 + 0.01 * p,
             "amplification": 1.0, "final_deviation": 1.0, "psnr_db": 30.0, "identical_before_t": True,
             "log_step_factors": [0.2, 0.2, 0.2, 0.2, math.log(0.4)]} for p in range(sensitivity.MIN_PROMPTS_FOR_INTERVAL)]
    factors = sensitivity.step_factors(rows)
    assert [f["step"] for f in factors] == [1, 2, 3, 4, 5, 6]
    assert factors[0]["n"] == 0 and factors[0]["log_factor"] is None  # nothing perturbed before step 1
    assert factors[1]["log_factor"] == pytest.approx(0.2) and factors[-1]["log_factor"] == pytest.approx(math.log(0.4))
    c = sensitivity.curve(rows)
    assert c[0]["exponent_without_last_mean_low"] > 0
    v = sensitivity.verdict(c, factors)["noise"]
    assert v["positive_exponent_without_last_at"] == [1] and v["positive_exponent_at"] == []
    assert v["amplifying_steps"] == [2, 3, 4, 5] and v["damping_steps"] == [6]
    few = sensitivity.curve(rows[: sensitivity.MIN_PROMPTS_FOR_INTERVAL - 1])  # too few prompts: no interval, no verdict
    assert few[0]["exponent_without_last_mean_low"] is None
    assert sensitivity.verdict(few)["noise"]["positive_exponent_without_last_at"] == []


def test_a_step_that_leaves_the_deviation_unchanged_has_factor_one():
    rows = [{"prompt": f"p{p}", "kind": "reuse", "t": 0, "log_step_factors": [float(np.log(1.0)), -0.5]}
            for p in range(sensitivity.MIN_PROMPTS_FOR_INTERVAL)]
    factors = sensitivity.step_factors(rows)
    assert factors[0]["step"] == 1 and math.exp(factors[0]["log_factor"]) == 1.0
    assert factors[0]["log_factor_low"] == factors[0]["log_factor_high"] == 0.0
