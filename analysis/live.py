"""The live runs behind the app: a request's full-compute baseline, accelerated runs against it, the warm-up,
and probe runs for the Inside views. No UI code (app.py draws the results).

One request key (model, prompt, negative, seed, steps, guidance, scheduler, size) has one full-compute
`Baseline` per session: its image, its timed runs (the noise band of every speed-up measured against it),
lazily its probe signals and its step-reduction frontier. A change of a technique runs only the accelerated
generation, timed once, and compares it with the cached baseline (`LiveRun`).

This module is the app's one entry point: the session state, Stop and the pipeline lock live in
analysis/live_session.py, plain step reduction beside a run (frontier, equal latency, careful timing) in
analysis/live_frontier.py; both are imported here by name (`__all__`).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from analysis import metrics
from analysis.accel import technique_of
from analysis.live_session import (BASELINE_TIMED_RUNS, Baseline, LiveRun, Request, Session, SessionStore,
                                   StopToken, clip_score_of, fidelity_of, pipeline_lock)
from analysis.run import RunConfig, RunStopped, prompt_tokens, run_once


def describe(config) -> str:
    """'tgate(gate_step=8)': the technique name and the fields that differ from its defaults."""
    changed = []
    for f in dataclasses.fields(config):
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        value = getattr(config, f.name)
        if value != default:
            shown = "+".join(map(str, value)) if isinstance(value, tuple) else value
            changed.append(f"{f.name}={shown}")
    name = type(config).name
    return f"{name}({', '.join(changed)})" if changed else name


def run_label(accel: tuple) -> str:
    return " + ".join(describe(c) for c in accel) or "full compute"


def skipped_summary(counters: dict) -> list[str]:
    """What each technique really skipped, in words, from its counters."""
    from analysis.accel import registry

    c = counters or {}
    return [line for name, t in registry().items() if name in c for line in [t.summary(c[name])] if line]


# --- running ----------------------------------------------------------------------------------------------

def validate_accel(accel: tuple, steps: int, model: str) -> None:
    """Raise ValueError (the engine's own reason) if `accel` cannot run at `steps` steps on `model`: the
    combination rules, and the per-run resolution (policy length, key steps, PHAST file) that would otherwise
    fail only once the run has started."""
    config = RunConfig(prompt="check", steps=steps, accel=tuple(accel), warmup=False)
    n = config.accel_steps
    for c in config.hooked_accel():
        technique_of(c).validate(c, n, model)


def _validate(pipe, request: Request, accel: tuple, probes: tuple = ()) -> RunConfig:
    config = request.run_config(accel, probes)
    validate_accel(tuple(accel), request.steps, request.model)
    return config


def quality_of(pipe, request: Request, image: np.ndarray, reference: np.ndarray) -> dict[str, Any]:
    """Every quality scorer registered for the model except PSNR/SSIM (the run computes those itself):
    {scorer name: its scores, or {"available": False, "reason": ...}} (analysis.eval.quality)."""
    from analysis.eval.quality import score_all, scorers_for

    scorers = [s for s in scorers_for(request.model) if s.name != "closeness"]
    return score_all(scorers, image, [request.prompt] * len(image), reference)


def _ideal(pipe, config: RunConfig, counters: dict) -> dict:
    from analysis.eval.cost import ideal_speedup

    return ideal_speedup(pipe, config, counters)


_WARM_SHAPES: set[tuple] = set()


def _shape(pipe, request: Request) -> tuple:
    """What one-off kernel set-up depends on: prompts, seeds and step counts do not change the shapes."""
    return (id(pipe), request.size, request.guidance > 1.0, request.scheduler, request.attention)


def measure_baseline(pipe, request: Request, stop: StopToken | None = None,
                     timed_runs: int = BASELINE_TIMED_RUNS, score: bool = True) -> Baseline:
    """A new full-compute baseline: one untimed run, then `timed_runs` timed ones (all must give the same
    image). Pure: returns plain data (it may run in a ZeroGPU worker process). Caller holds the lock."""
    from analysis.models import set_scheduler

    config = _validate(pipe, request, ())
    set_scheduler(pipe, request.scheduler)
    # The first run of a new tensor shape pays one-off kernel set-up (seconds on a CPU): untimed. Prompts,
    # seeds and step counts do not change the shapes, so a process pays it once per shape.
    shape = _shape(pipe, request)
    image = timesteps = None
    if shape not in _WARM_SHAPES:
        first = run_once(pipe, config, (), request.steps, stop=stop)
        image, timesteps = first.images, first.timesteps
        _WARM_SHAPES.add(shape)
    latencies = []
    for _ in range(timed_runs):
        timed = run_once(pipe, config, (), request.steps, stop=stop)
        if image is None:
            image, timesteps = timed.images, timed.timesteps
        elif not np.array_equal(timed.images, image):
            raise RuntimeError("the full-compute image changed between identical runs: the pipeline is not "
                               "deterministic, so no comparison against it would mean anything")
        latencies.append(timed.seconds)
    return Baseline(request, image, timesteps, latencies, quality_of(pipe, request, image, image) if score else None,
                    prompt_tokens(pipe, config.prompts))


def first_baseline(pipe, request: Request, stop: StopToken | None = None) -> Baseline:
    """A baseline after one timed run, not yet scored (the app shows its image at once; `time_baseline` and
    `baseline_quality` add the other timed runs and the reference-free scores in the background, and the numbers
    follow: a scorer's first use may load weights, e.g. the Hub CLIP). Caller holds the lock."""
    return measure_baseline(pipe, request, stop=stop, timed_runs=1, score=False)


def baseline_quality(pipe, baseline: Baseline, stop: StopToken | None = None) -> dict:
    """The reference-free scores of the full-compute image (prompt fidelity, CLIP score where available)."""
    return quality_of(pipe, baseline.request, baseline.image, baseline.image)


def time_baseline(pipe, baseline: Baseline, runs: int, stop: StopToken | None = None) -> list[float]:
    """`runs` more timed full-compute runs of `baseline`'s request (each must give its image): their seconds,
    for the caller to add to `baseline.latencies`. Caller holds the lock."""
    from analysis.models import set_scheduler

    request = baseline.request
    config = _validate(pipe, request, ())
    set_scheduler(pipe, request.scheduler)
    out = []
    for _ in range(runs):
        timed = run_once(pipe, config, (), request.steps, stop=stop)
        if not np.array_equal(timed.images, baseline.image):
            raise RuntimeError("the full-compute image changed between identical runs: the pipeline is not "
                               "deterministic, so no comparison against it would mean anything")
        out.append(timed.seconds)
    return out


def run_accelerated(pipe, baseline: Baseline, accel: tuple, stop: StopToken | None = None) -> LiveRun:
    """One timed accelerated run against the cached baseline. Pure (the caller adds it to its session with
    `Session.add_run`, which numbers it). Caller holds the pipeline lock."""
    from analysis.models import set_scheduler

    request = baseline.request
    config = _validate(pipe, request, accel)
    _warm_paths_of(pipe, request, tuple(accel))
    set_scheduler(pipe, request.scheduler)
    result = run_once(pipe, config, config.hooked_accel(), config.accel_steps, stop=stop)
    image, seconds, counters, timesteps = result.images, result.seconds, result.counters, result.timesteps
    speedup = baseline.latency_s / seconds
    lo, hi = baseline.noise
    return LiveRun(
        id=0, request=request, accel=tuple(accel), label=run_label(accel), image=image,
        steps_run=config.accel_steps, latency_s=seconds, counters=counters, timesteps=timesteps,
        psnr_db=metrics.psnr(baseline.image, image), ssim=metrics.ssim(baseline.image, image),
        quality=quality_of(pipe, request, image, baseline.image), speedup=speedup, speedup_band=(speedup * lo, speedup * hi),
        ideal=_ideal(pipe, config, counters) if accel else None,
    )


# Enough for every technique at its defaults to take its accelerated path once: a reused map, steps after
# T-GATE's gate, a pruned step after DSAP, and a non-key step of Faster-Diffusion's scaled key set (the paper's
# keys scaled to 6 steps are {0, 1, 2, 3, 4}; at fewer steps every step is a key step).
WARM_STEPS = 6


STARTUP_WARM_STEPS = 1  # start-up warms full compute only, for one step: the shapes, not every path


def warm_up(pipe, request: Request, steps: int = WARM_STEPS, techniques: bool = True) -> float:
    """Run the full-compute pipeline (and, with `techniques`, every technique at its defaults) once, untimed, for
    `steps` steps: the first call of each code path pays one-off kernel set-up (seconds on a CPU) that must not
    land in a user's first measurement, and that set-up does not depend on the step count. The app's start-up
    warms full compute for STARTUP_WARM_STEPS (a full-length warm-up of an SD-class model took 150 s on a 2-core
    Space, issue 20); a technique's own path is warmed on its first use (`run_accelerated`). Returns seconds."""
    import time

    start = time.perf_counter()
    request = dataclasses.replace(request, steps=min(request.steps, steps))
    with pipeline_lock(pipe):
        _warm(pipe, request, [()] + (_at_defaults(request.steps) if techniques else []))
    _WARM_SHAPES.add(_shape(pipe, request))
    return time.perf_counter() - start


def _at_defaults(steps: int, names=None) -> list[tuple]:
    from analysis.accel import registry

    return [(t.build(t.default_values(steps), steps),) for name, t in registry().items()
            if names is None or name in names]


def _warm(pipe, request: Request, accels: list[tuple]) -> None:
    from analysis.models import set_scheduler

    set_scheduler(pipe, request.scheduler)
    for accel in accels:
        try:
            config = _validate(pipe, request, accel)
        except ValueError:  # e.g. no PHAST policy for this model: nothing to warm
            continue
        run_once(pipe, config, config.hooked_accel(), config.accel_steps)
        _WARM_PATHS.update((_shape(pipe, request), type(c).name) for c in accel)


_WARM_PATHS: set[tuple] = set()


def _warm_paths_of(pipe, request: Request, accel: tuple) -> None:
    """Warm, untimed and at WARM_STEPS, the code path of each technique in `accel` not yet run for this shape."""
    names = {type(c).name for c in accel} - {name for shape, name in _WARM_PATHS if shape == _shape(pipe, request)}
    if names:
        short = dataclasses.replace(request, steps=min(request.steps, WARM_STEPS))
        _warm(pipe, short, _at_defaults(short.steps, names))  # records the paths it ran


def instrumented(pipe, request: Request, accel: tuple, probes: tuple, stop: StopToken | None = None) -> dict:
    """Probe signals of a run with `accel` (empty: full compute). Probes are read-only, so its image equals
    the uninstrumented run's (tests check it). Caller holds the pipeline lock."""
    from analysis.models import set_scheduler

    config = _validate(pipe, request, accel, probes)
    set_scheduler(pipe, request.scheduler)
    return run_once(pipe, config, config.hooked_accel() + tuple(probes), config.accel_steps, stop=stop).signals


from analysis.live_frontier import (CAREFUL_ROUNDS, compute_frontier, equal_latency_steps,  # noqa: E402
                                    frontier_point, frontier_steps, full_compute_point, measure_carefully)

__all__ = ["Request", "Baseline", "LiveRun", "Session", "SessionStore", "StopToken", "RunStopped", "pipeline_lock",
           "validate_accel", "measure_baseline", "run_accelerated", "compute_frontier", "equal_latency_steps",
           "measure_carefully", "instrumented", "describe", "run_label", "skipped_summary", "frontier_steps",
           "fidelity_of", "clip_score_of", "CAREFUL_ROUNDS", "warm_up", "WARM_STEPS", "first_baseline", "time_baseline", "baseline_quality",
           "frontier_point", "full_compute_point"]
