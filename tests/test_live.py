"""analysis.live: the session cache, stopping a run, the frontier and equal-latency arithmetic (no UI)."""
from __future__ import annotations

import dataclasses
import math
import threading

import numpy as np
import pytest

from analysis import live, live_session
from analysis.accel import list_techniques
from analysis.accel.reuse_policy import strided_policy
from analysis.accel.steps import StepsConfig
from analysis.models import set_model_name
from analysis.run import RunStopped

T = list_techniques()
PROMPT = "a large red circle on the left"


@pytest.fixture()
def request_(toy_pipe):
    set_model_name(toy_pipe, "default")
    return live.Request(model="default", prompt=PROMPT, steps=4)


def test_baseline_is_cached_per_request_and_bounded(toy_pipe, request_):
    session = live.Session()
    assert session.baseline(request_) is None
    b = session.keep_baseline(live.measure_baseline(toy_pipe, request_))
    assert len(b.latencies) == live_session.BASELINE_TIMED_RUNS
    assert session.baseline(request_) is b
    for seed in range(1, live_session.MAX_BASELINES + 2):
        session.keep_baseline(live.Baseline(live.Request("default", PROMPT, seed=seed), b.image, [], [1.0], {}, []))
    assert len(session.baselines) == live_session.MAX_BASELINES and session.baseline(request_) is None


def test_runs_are_numbered_and_only_the_newest_keep_signals():
    session = live.Session()
    for _ in range(live_session.MAX_RUNS + 3):
        run = live.LiveRun(0, None, (), "x", np.zeros((1, 2, 2, 3), np.uint8), 1, 1.0, {}, [], math.inf, 1.0, {},
                           1.0, (1.0, 1.0), None, signals={"big": 1})
        session.add_run(run)
    assert len(session.runs) == live_session.MAX_RUNS and session.runs[-1].id == live_session.MAX_RUNS + 3
    assert [r.signals is not None for r in session.runs].count(True) == live_session.SIGNAL_SLOTS


def test_store_drops_least_recent_session_and_stops_its_runs():
    store = live.SessionStore(max_sessions=2)
    first = store.get("a")
    token = first.start()
    store.get("b"), store.get("c")
    assert len(store) == 2 and token()


def test_accelerated_run_against_the_cached_baseline(toy_pipe, request_):
    session = live.Session()
    b = session.keep_baseline(live.measure_baseline(toy_pipe, request_))
    run = session.add_run(live.run_accelerated(toy_pipe, b, (T["tgate"](gate_step=2),)))
    assert run.id == 1 and run.label == "tgate(gate_step=2)" and run.steps_run == 4
    assert run.speedup == pytest.approx(b.latency_s / run.latency_s)
    assert run.speedup_band[0] <= run.speedup <= run.speedup_band[1]
    assert run.counters["tgate"]["cfg_dropped_steps"] == 2
    # the off setting reproduces the baseline bit for bit
    off = live.run_accelerated(toy_pipe, b, (T["tgate"].off(4),))
    assert np.array_equal(off.image, b.image) and math.isinf(off.psnr_db)


def test_stop_ends_the_run_at_the_next_step_and_the_next_run_is_the_baseline(toy_pipe, request_):
    session = live.Session()
    b = session.keep_baseline(live.measure_baseline(toy_pipe, request_))
    token = live.StopToken()
    calls = []

    def stop():
        calls.append(1)
        if len(calls) == 2:  # let one step run, then stop: hooks are attached mid-run
            token.set("stopped by the test")
        return token()

    before = {name: type(p) for name, p in toy_pipe.unet.attn_processors.items()}
    with pytest.raises(RunStopped, match="at step 1$"):
        live.run_accelerated(toy_pipe, b, (T["atedm"](),), stop=stop)
    assert {name: type(p) for name, p in toy_pipe.unet.attn_processors.items()} == before
    again = live.measure_baseline(toy_pipe, request_, timed_runs=1)
    assert np.array_equal(again.image, b.image)


def test_pipeline_lock_serialises_threads(toy_pipe):
    lock = live.pipeline_lock(toy_pipe)
    assert live.pipeline_lock(toy_pipe) is lock
    inside, overlap = [], []

    def work():
        with live.pipeline_lock(toy_pipe):
            inside.append(1)
            overlap.append(len(inside))
            threading.Event().wait(0.02)
            inside.pop()

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert overlap == [1, 1, 1, 1]


def test_frontier_and_equal_latency(toy_pipe, request_):
    session = live.Session()
    b = session.keep_baseline(live.measure_baseline(toy_pipe, request_))
    b.frontier = live.compute_frontier(toy_pipe, b)
    assert [r["steps"] for r in b.frontier] == live.frontier_steps(4) + [4]
    assert math.isinf(b.frontier[-1]["psnr_db"])
    # a line through synthetic points: latency = 0.1 + 0.05 * steps
    b = dataclasses.replace(b, request=dataclasses.replace(request_, steps=20))
    b.frontier = [{"steps": n, "latency_s": 0.1 + 0.05 * n} for n in (2, 5, 10, 20)]
    assert live.equal_latency_steps(b, 0.1 + 0.05 * 12) == 12
    assert live.equal_latency_steps(b, 5.0) == 20  # never more than the request's steps
    assert live.equal_latency_steps(b, 0.0) == 1


def test_validate_accel_gives_the_engine_reasons():
    live.validate_accel((T["tgate"](gate_step=2),), 4, "default")
    with pytest.raises(ValueError, match="fastdiff cannot be combined with tgate"):
        live.validate_accel((T["tgate"](), T["fastdiff"]()), 20, "default")
    with pytest.raises(ValueError, match="beyond the run"):
        live.validate_accel((T["fastdiff"](key_steps=(0, 30)),), 20, "default")
    with pytest.raises(ValueError, match="entries but the run has"):
        live.validate_accel((T["reuse"](policy="CCR"),), 20, "default")


def test_labels_and_skipped_words():
    assert live.describe(T["atedm"](ratio=0.5, dsap=False)) == "atedm(ratio=0.5, dsap=False)"
    assert live.run_label((T["tgate"](), StepsConfig(steps=10))) == "tgate + steps(steps=10)"
    assert live_session.technique_family((T["tgate"](),)) == "tgate"
    words = live.skipped_summary({"reuse": {"maps_reused": 3, "maps_computed": 9, "r_steps": 1, "scope": "both",
                                            "policy": "CCR"}})
    assert words == ["reuse: 3 of 12 attention maps reused (1 R steps, scope both, policy CCR)"]


@pytest.mark.parametrize("steps,r", [(20, 7), (20, 10), (30, 10), (4, 1), (20, 0), (5, 2)])
def test_strided_policy_spreads_r_steps_over_the_odd_steps(steps, r):
    policy = strided_policy(steps, r)
    assert len(policy) == steps and policy.count("R") == r and "RR" not in policy
    assert all(c == "C" for i, c in enumerate(policy) if i % 2 == 0)  # the sweep's strided settings, same policy


def test_strided_policy_refuses_more_r_steps_than_odd_steps():
    with pytest.raises(ValueError, match="at most 10"):
        strided_policy(20, 11)


def test_warm_up_runs_every_path_for_a_few_steps_only(toy_pipe, monkeypatch):
    set_model_name(toy_pipe, "default")
    seen = []
    real = live.run_once

    def counting(pipe, config, plugins, steps, *args, **kwargs):
        seen.append((tuple(type(p).name for p in plugins), config.steps))
        return real(pipe, config, plugins, steps, *args, **kwargs)

    monkeypatch.setattr(live, "run_once", counting)
    live.warm_up(toy_pipe, live.Request(model="default", prompt=PROMPT, steps=20))
    assert {steps for _, steps in seen} == {live.WARM_STEPS} and live.WARM_STEPS < 20
    assert {names for names, _ in seen} >= {(), ("tgate",), ("reuse",), ("atedm",), ("fastdiff",)}


def test_first_image_after_one_run_then_timing_and_frontier_follow(toy_pipe, monkeypatch):
    """Issue 20: the app shows the baseline after one timed run; the other timed runs and each frontier point
    follow; a technique's own code path is warmed (untimed, short) on its first use only."""
    set_model_name(toy_pipe, "default")
    request = live.Request(model="default", prompt=PROMPT, steps=8, seed=11)
    monkeypatch.setattr(live, "_WARM_PATHS", set())  # as in a fresh process: no technique path run yet
    live.warm_up(toy_pipe, request, steps=live.STARTUP_WARM_STEPS, techniques=False)
    seen = []
    real = live.run_once

    def counting(pipe, config, plugins, steps, *args, **kwargs):
        seen.append((tuple(type(p).name for p in plugins), steps))
        return real(pipe, config, plugins, steps, *args, **kwargs)

    monkeypatch.setattr(live, "run_once", counting)
    session = live.Session()
    b = session.keep_baseline(live.first_baseline(toy_pipe, request))
    assert len(b.latencies) == 1 and seen == [((), 8)] and b.quality is None  # warm shape: one timed run
    assert "fidelity" in live.baseline_quality(toy_pipe, b)  # scored in the follow-up
    run = session.add_run(live.run_accelerated(toy_pipe, b, (T["tgate"](),)))
    assert seen[1:] == [(("tgate",), live.WARM_STEPS), (("tgate",), 8)]  # its path warmed once, then timed
    live.run_accelerated(toy_pipe, b, (T["tgate"](gate_step=3),))
    assert seen[3:] == [(("tgate",), 8)]
    before = run.speedup
    b.latencies += live.time_baseline(toy_pipe, b, live_session.BASELINE_TIMED_RUNS - 1)
    session.retime(b)
    assert len(b.latencies) == live_session.BASELINE_TIMED_RUNS
    assert run.speedup == pytest.approx(b.latency_s / run.latency_s) and (run.speedup == before) == (
        b.latency_s == b.latencies[0])
    point = live.frontier_point(toy_pipe, b, 3)
    assert point["steps"] == 3 and point["latency_s"] > 0 and live.full_compute_point(b)["psnr_db"] == math.inf


def test_a_slower_run_says_why_from_its_counted_work():
    from types import SimpleNamespace

    from ui.results import slowdown_reason

    run = SimpleNamespace(speedup=0.72, request=live.Request(model="sd15-random", prompt="x"),
                          ideal={"paper_per_technique": {"reuse": 0.06}, "per_technique": {"reuse": -0.04},
                                 "notes": {}, "ideal_speedup": 0.96})
    text = slowdown_reason(run)
    assert "Slower than full compute here** (0.72x" in text
    assert "reuse: its skipped work is 6.0% of the pipeline, its own overheads take back 10.0% (net -4.0%)" in text
    assert "counted work expects 0.96x against this baseline (fused attention)" in text
