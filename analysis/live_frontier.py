"""Plain step reduction beside a live run (analysis/live.py): the step-reduction frontier for one prompt and
seed, the step count at the same latency as an accelerated run, and careful paired timing."""
from __future__ import annotations

import math

from analysis import metrics
from analysis.live import _validate, quality_of
from analysis.live_session import Baseline, LiveRun, StopToken, clip_score_of, fidelity_of
from analysis.run import run_once

CAREFUL_ROUNDS = 7  # interleaved baseline/accelerated pairs of "measure carefully"
FRONTIER_FRACTIONS = (0.2, 0.35, 0.5, 0.65, 0.8, 0.9)


def frontier_steps(steps: int) -> list[int]:
    return sorted({max(1, min(steps - 1, round(f * steps))) for f in FRONTIER_FRACTIONS} - {steps})


def compute_frontier(pipe, baseline: Baseline, stop: StopToken | None = None) -> list[dict]:
    """Plain step reduction for this prompt and seed: one timed run per step count (and the baseline itself),
    each scored like any run. Pure (the caller stores it as `baseline.frontier`). Caller holds the lock."""
    rows = [frontier_point(pipe, baseline, n, stop=stop) for n in frontier_steps(baseline.request.steps)]
    return sorted(rows + [full_compute_point(baseline)], key=lambda r: r["steps"])


def frontier_point(pipe, baseline: Baseline, steps: int, stop: StopToken | None = None) -> dict:
    """One point of the frontier: the request at `steps` steps, timed once and scored against the baseline (the
    app measures them one by one and draws each as it lands). Caller holds the lock."""
    from analysis.accel.steps import StepsConfig
    from analysis.models import set_scheduler

    request = baseline.request
    set_scheduler(pipe, request.scheduler)
    config = _validate(pipe, request, (StepsConfig(steps=steps),))
    result = run_once(pipe, config, (), steps, stop=stop)
    image, seconds = result.images, result.seconds
    q = quality_of(pipe, request, image, baseline.image)
    return {"steps": steps, "latency_s": seconds, "psnr_db": metrics.psnr(baseline.image, image),
            "ssim": metrics.ssim(baseline.image, image), "fidelity": fidelity_of(q), "clip_score": clip_score_of(q)}


def full_compute_point(baseline: Baseline) -> dict:
    """The frontier's last point, full compute itself (drawn as soon as the baseline exists)."""
    return {"steps": baseline.request.steps, "latency_s": baseline.latency_s, "psnr_db": math.inf, "ssim": 1.0,
            "fidelity": fidelity_of(baseline.quality), "clip_score": clip_score_of(baseline.quality)}


def equal_latency_steps(baseline: Baseline, latency_s: float) -> int:
    """The step count whose latency matches `latency_s`, from a least-squares line latency = a + b * steps
    through the frontier's measured points (latency is affine in the step count: the text encoder and VAE
    are paid once)."""
    if not baseline.frontier:
        raise ValueError("the step-reduction frontier has not been measured yet")
    from analysis.eval.equal_latency import fit_line

    intercept, slope = fit_line([(r["steps"], r["latency_s"]) for r in baseline.frontier])
    if slope <= 0:
        raise ValueError("latency does not grow with the step count on this machine's measurements; "
                         "run 'measure carefully' first")
    n = round((latency_s - intercept) / slope)
    return int(min(baseline.request.steps, max(1, n)))


def measure_carefully(pipe, baseline: Baseline, run: LiveRun, rounds: int = CAREFUL_ROUNDS,
                      stop: StopToken | None = None) -> dict:
    """Paired, interleaved timing: `rounds` rounds of (baseline, accelerated) in alternating order, after a
    warm-up of each; the per-round ratios' median and quartiles (robust to the slow drift of a shared
    machine). Pure (the caller stores it as `run.careful`). Caller holds the pipeline lock."""
    from analysis.models import set_scheduler

    request = baseline.request
    config = _validate(pipe, request, run.accel)
    set_scheduler(pipe, request.scheduler)
    plugins, steps = config.hooked_accel(), config.accel_steps
    run_once(pipe, config, (), request.steps, stop=stop)
    run_once(pipe, config, plugins, steps, stop=stop)
    base, acc = [], []
    for r in range(rounds):
        order = ((), request.steps, base), (plugins, steps, acc)
        for p, n, out in (order if r % 2 == 0 else order[::-1]):
            out.append(run_once(pipe, config, p, n, stop=stop).seconds)
    from analysis.eval.jobs import paired_speedup

    return {"rounds": rounds, **paired_speedup(base, acc), "baseline_latencies": base, "latencies": acc}
