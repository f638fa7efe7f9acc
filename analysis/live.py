"""The live session behind the app: cached full-compute baselines, accelerated runs against them, the
step-reduction frontier, careful paired timing, and the pipeline lock. No UI code (app.py draws the results).

One request key (model, prompt, negative, seed, steps, guidance, scheduler, size) has one full-compute
`Baseline` per session: its image, its timed runs (the noise band of every speed-up measured against it),
lazily its probe signals and its step-reduction frontier. A change of a technique runs only the accelerated
generation, timed once, and compares it with the cached baseline (`LiveRun`).

Concurrency. Every use of the shared pipeline happens inside `pipeline_lock(pipe)`, taken by the run itself:
a Gradio job that was cancelled keeps running in its worker thread, and the lock makes the next request wait
until it is over and its hooks are off (they come off in `run_once`'s ExitStack). A run stops early at the
next denoising step when its `StopToken` is set (Stop button, closed tab, or a newer request of the same
session superseding it); `analysis.run.RunStopped` then unwinds through the pipeline.

Memory. Images are small; probe signals are not (tens of MB on the default model). A session keeps at most
`MAX_BASELINES` baselines and `MAX_RUNS` runs, signals only for the `SIGNAL_SLOTS` newest of each, and the
store keeps at most `MAX_SESSIONS` sessions (least recently used dropped first).
"""
from __future__ import annotations

import contextlib
import dataclasses
import itertools
import math
import statistics
import threading
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np

from analysis import metrics
from analysis.accel import technique_of
from analysis.run import RunConfig, RunStopped, prompt_tokens, run_once

MAX_SESSIONS = 8
MAX_BASELINES = 4
MAX_RUNS = 60
SIGNAL_SLOTS = 2
BASELINE_TIMED_RUNS = 3  # repeated full-compute timings: the noise band of every live speed-up
CAREFUL_ROUNDS = 7  # interleaved baseline/accelerated pairs of "measure carefully"
FRONTIER_FRACTIONS = (0.2, 0.35, 0.5, 0.65, 0.8, 0.9)

_LOCKS: "weakref.WeakKeyDictionary[Any, threading.RLock]" = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


def pipeline_lock(pipe) -> threading.RLock:
    """The one lock of `pipe`: hold it for the whole life of anything that runs or reconfigures it."""
    with _LOCKS_GUARD:
        lock = _LOCKS.get(pipe)
        if lock is None:
            lock = _LOCKS[pipe] = threading.RLock()
        return lock


class StopToken:
    """Set by Stop (or by a newer request of the same session); checked at every denoising step."""

    def __init__(self):
        self._event = threading.Event()
        self.reason = "stopped"

    def set(self, reason: str = "stopped") -> None:
        self.reason = reason
        self._event.set()

    def __call__(self) -> bool:
        return self._event.is_set()


# --- data -------------------------------------------------------------------------------------------------

def fidelity_of(quality: dict | None) -> float | None:
    """The overall prompt fidelity in a quality dict (analysis.eval.quality.score_all), None where the model
    has no fidelity scorer."""
    return ((quality or {}).get("fidelity") or {}).get("overall")


def clip_score_of(quality: dict | None) -> float | None:
    """The CLIP score in a quality dict (shapes-CLIP on the default model, a Hub CLIP elsewhere); None where
    the scorer is unavailable."""
    return ((quality or {}).get("clip_score") or {}).get("clip_score")


@dataclass(frozen=True)
class Request:
    """What makes a full-compute image: the baseline cache key."""

    model: str
    prompt: str
    negative_prompt: str = ""
    seed: int = 0
    steps: int = 20
    guidance: float = 5.0
    scheduler: str = "ddim"
    size: int | None = None

    def run_config(self, accel: tuple = (), probes: tuple = ()) -> RunConfig:
        """Validated by RunConfig (ValueError with a readable message), combination rules included."""
        return RunConfig(prompt=self.prompt, negative_prompt=self.negative_prompt, seed=self.seed,
                         steps=self.steps, guidance=self.guidance, scheduler=self.scheduler, size=self.size,
                         accel=tuple(accel), probes=tuple(probes), warmup=False)


@dataclass
class Baseline:
    request: Request
    image: np.ndarray  # (B, H, W, 3) uint8
    timesteps: list[float]
    latencies: list[float]  # wall clock of each timed full-compute run
    quality: dict[str, Any]  # reference-free measures of the full-compute image (prompt fidelity)
    tokens: list[list[str]]
    signals: dict | None = None  # probes on the full-compute run (filled lazily)
    frontier: list[dict] | None = None  # step-reduction ladder (filled lazily)

    @property
    def latency_s(self) -> float:
        return statistics.median(self.latencies)

    @property
    def noise(self) -> tuple[float, float]:
        """(min, max) of the timed runs relative to their median: the spread a single timed run can show."""
        med = self.latency_s
        return min(self.latencies) / med, max(self.latencies) / med


@dataclass
class LiveRun:
    id: int
    request: Request
    accel: tuple  # technique configs
    label: str
    image: np.ndarray
    steps_run: int
    latency_s: float
    counters: dict
    timesteps: list[float]
    psnr_db: float
    ssim: float
    quality: dict[str, Any]
    speedup: float
    speedup_band: tuple[float, float]  # what a 1.00x could read as, given the baseline's timing spread
    ideal: dict | None  # counted-work ideal speed-up (analysis.eval.cost), None where it cannot be computed
    careful: dict | None = None  # paired interleaved timing ("measure carefully")
    signals: dict | None = None

    @property
    def fidelity(self) -> float | None:
        return fidelity_of(self.quality)

    def row(self) -> dict:
        """One point of the trade-off plot / one row of the runs table."""
        return {"id": self.id, "label": self.label, "technique": technique_family(self.accel),
                "latency_s": self.latency_s, "speedup": self.speedup, "psnr_db": self.psnr_db,
                "ssim": self.ssim, "fidelity": self.fidelity, "clip_score": clip_score_of(self.quality),
                "ideal_speedup": (self.ideal or {}).get("ideal_speedup"),
                "careful": None if not self.careful else self.careful.get("paired_speedup")}


class Session:
    """One browser session's cache: baselines by request, its runs in order, its running stop tokens."""

    def __init__(self):
        self.baselines: OrderedDict[Request, Baseline] = OrderedDict()
        self.runs: list[LiveRun] = []
        self.active: set[StopToken] = set()
        self.current: tuple[Request, int | None] | None = None  # what is on screen: (baseline request, run id)
        # the quality axis the browser shows, as last sent by a handler: a redraw that finishes late (the
        # frontier) uses it rather than the axis of the moment it was queued
        self.quality_axis = "psnr"
        self._ids = itertools.count(1)
        self._guard = threading.Lock()

    def baseline(self, request: Request) -> Baseline | None:
        b = self.baselines.get(request)
        if b is not None:
            self.baselines.move_to_end(request)
        return b

    def keep_baseline(self, b: Baseline) -> Baseline:
        self.baselines[b.request] = b
        self.baselines.move_to_end(b.request)
        while len(self.baselines) > MAX_BASELINES:
            self.baselines.popitem(last=False)
        for old in list(self.baselines.values())[:-SIGNAL_SLOTS]:
            old.signals = None
        return b

    def add_run(self, run: LiveRun) -> LiveRun:
        """Keep `run` as this session's newest, numbered in order."""
        run.id = next(self._ids)
        self.runs.append(run)
        del self.runs[:-MAX_RUNS]
        for old in self.runs[:-SIGNAL_SLOTS]:
            old.signals = None
        return run

    def run(self, run_id: int) -> LiveRun | None:
        return next((r for r in self.runs if r.id == run_id), None)

    def start(self, supersede: bool = False) -> StopToken:
        """A token for a new run; supersede=True stops this session's runs still going (latest wins)."""
        token = StopToken()
        with self._guard:
            if supersede:
                for other in self.active:
                    other.set("superseded by a newer request")
            self.active.add(token)
        return token

    def finish(self, token: StopToken) -> None:
        with self._guard:
            self.active.discard(token)

    @contextlib.contextmanager
    def running(self, supersede: bool = False):
        """`with session.running() as token:` a stop token for one piece of work, released whatever happens."""
        token = self.start(supersede)
        try:
            yield token
        finally:
            self.finish(token)

    def on_screen(self) -> tuple[Baseline | None, LiveRun | None]:
        """The baseline and run the user is looking at (either may be gone from the bounded caches)."""
        if self.current is None:
            return None, None
        request, run_id = self.current
        return self.baseline(request), (self.run(run_id) if run_id else None)

    def stop(self, reason: str = "stopped") -> int:
        with self._guard:
            for token in self.active:
                token.set(reason)
            return len(self.active)


class SessionStore:
    """Sessions by id (Gradio's session hash), least recently used dropped beyond MAX_SESSIONS."""

    def __init__(self, max_sessions: int = MAX_SESSIONS):
        self.max_sessions = max_sessions
        self._sessions: OrderedDict[str, Session] = OrderedDict()
        self._guard = threading.Lock()

    def get(self, key: str) -> Session:
        with self._guard:
            s = self._sessions.get(key)
            if s is None:
                s = self._sessions[key] = Session()
            self._sessions.move_to_end(key)
            while len(self._sessions) > self.max_sessions:
                _, dropped = self._sessions.popitem(last=False)
                dropped.stop("session dropped")
            return s

    def drop(self, key: str) -> None:
        with self._guard:
            s = self._sessions.pop(key, None)
        if s is not None:
            s.stop("the browser tab was closed")

    def __len__(self) -> int:
        return len(self._sessions)


# --- labels -----------------------------------------------------------------------------------------------

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


def technique_family(accel: tuple) -> str:
    names = [type(c).name for c in accel]
    return names[0] if len(names) == 1 else ("combo" if names else "baseline")


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


def measure_baseline(pipe, request: Request, stop: StopToken | None = None,
                     timed_runs: int = BASELINE_TIMED_RUNS) -> Baseline:
    """A new full-compute baseline: one untimed run, then `timed_runs` timed ones (all must give the same
    image). Pure: returns plain data (it may run in a ZeroGPU worker process). Caller holds the lock."""
    from analysis.models import set_scheduler

    config = _validate(pipe, request, ())
    set_scheduler(pipe, request.scheduler)
    # The first run of a new tensor shape pays one-off kernel set-up (seconds on a CPU): untimed. Prompts,
    # seeds and step counts do not change the shapes, so a process pays it once per shape.
    shape = (id(pipe), request.size, request.guidance > 1.0, request.scheduler)
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
    return Baseline(request, image, timesteps, latencies, quality_of(pipe, request, image, image),
                    prompt_tokens(pipe, config.prompts))


def run_accelerated(pipe, baseline: Baseline, accel: tuple, stop: StopToken | None = None) -> LiveRun:
    """One timed accelerated run against the cached baseline. Pure (the caller adds it to its session with
    `Session.add_run`, which numbers it). Caller holds the pipeline lock."""
    from analysis.models import set_scheduler

    request = baseline.request
    config = _validate(pipe, request, accel)
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


def frontier_steps(steps: int) -> list[int]:
    return sorted({max(1, min(steps - 1, round(f * steps))) for f in FRONTIER_FRACTIONS} - {steps})


def compute_frontier(pipe, baseline: Baseline, stop: StopToken | None = None) -> list[dict]:
    """Plain step reduction for this prompt and seed: one timed run per step count (and the baseline itself),
    each scored like any run. Pure (the caller stores it as `baseline.frontier`). Caller holds the lock."""
    from analysis.accel.steps import StepsConfig
    from analysis.models import set_scheduler

    request = baseline.request
    set_scheduler(pipe, request.scheduler)
    rows = []
    for n in frontier_steps(request.steps):
        config = _validate(pipe, request, (StepsConfig(steps=n),))
        result = run_once(pipe, config, (), n, stop=stop)
        image, seconds = result.images, result.seconds
        q = quality_of(pipe, request, image, baseline.image)
        rows.append({"steps": n, "latency_s": seconds, "psnr_db": metrics.psnr(baseline.image, image),
                     "ssim": metrics.ssim(baseline.image, image),
                     "fidelity": fidelity_of(q), "clip_score": clip_score_of(q)})
    rows.append({"steps": request.steps, "latency_s": baseline.latency_s, "psnr_db": math.inf, "ssim": 1.0,
                 "fidelity": fidelity_of(baseline.quality), "clip_score": clip_score_of(baseline.quality)})
    return sorted(rows, key=lambda r: r["steps"])


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


# Enough for every technique at its defaults to take its accelerated path once: a reused map, steps after
# T-GATE's gate, a pruned step after DSAP, and a non-key step of Faster-Diffusion's scaled key set (the paper's
# keys scaled to 6 steps are {0, 1, 2, 3, 4}; at fewer steps every step is a key step).
WARM_STEPS = 6


def warm_up(pipe, request: Request) -> float:
    """Run the full-compute pipeline and every technique at its defaults once, untimed, for WARM_STEPS steps:
    the first call of each code path pays one-off kernel set-up (seconds on a CPU) that must not land in a
    user's first measurement, and that set-up does not depend on the step count (a full-length warm-up of an
    SD-class model took 150 s on a 2-core Space, issue 20). Returns the seconds spent."""
    import dataclasses
    import time

    from analysis.accel import registry
    from analysis.models import set_scheduler

    start = time.perf_counter()
    request = dataclasses.replace(request, steps=min(request.steps, WARM_STEPS))
    set_scheduler(pipe, request.scheduler)
    with pipeline_lock(pipe):
        at_defaults = [(t.build(t.default_values(request.steps), request.steps),) for t in registry().values()]
        for accel in [()] + at_defaults:
            try:
                config = _validate(pipe, request, accel)
            except ValueError:  # e.g. no PHAST policy for this model: nothing to warm
                continue
            run_once(pipe, config, config.hooked_accel(), config.accel_steps)
    _WARM_SHAPES.add((id(pipe), request.size, request.guidance > 1.0, request.scheduler))
    return time.perf_counter() - start


def instrumented(pipe, request: Request, accel: tuple, probes: tuple, stop: StopToken | None = None) -> dict:
    """Probe signals of a run with `accel` (empty: full compute). Probes are read-only, so its image equals
    the uninstrumented run's (tests check it). Caller holds the pipeline lock."""
    from analysis.models import set_scheduler

    config = _validate(pipe, request, accel, probes)
    set_scheduler(pipe, request.scheduler)
    return run_once(pipe, config, config.hooked_accel() + tuple(probes), config.accel_steps, stop=stop).signals


__all__ = ["Request", "Baseline", "LiveRun", "Session", "SessionStore", "StopToken", "RunStopped",
           "pipeline_lock", "validate_accel", "measure_baseline", "run_accelerated", "compute_frontier", "equal_latency_steps",
           "measure_carefully", "instrumented", "describe", "run_label", "skipped_summary", "frontier_steps"]
