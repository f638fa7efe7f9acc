"""The live session's state (analysis/live.py runs against it): the request key, cached full-compute
baselines, accelerated runs, the per-visitor session and the store of sessions, Stop tokens, and the pipeline
lock. No pipeline call happens here.

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
import itertools
import statistics
import threading
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np

from analysis.run import RunConfig

MAX_SESSIONS = 8
MAX_BASELINES = 4
MAX_RUNS = 60
SIGNAL_SLOTS = 2
BASELINE_TIMED_RUNS = 3  # repeated full-compute timings: the noise band of every live speed-up

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


def technique_family(accel: tuple) -> str:
    """A run's family on the trade-off plot: its technique's name, "combo" or "baseline"."""
    names = [type(c).name for c in accel]
    return names[0] if len(names) == 1 else ("combo" if names else "baseline")


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
    attention: str = "fused"  # the attention backend (analysis.catalog.ATTENTION_BACKENDS)

    def run_config(self, accel: tuple = (), probes: tuple = ()) -> RunConfig:
        """Validated by RunConfig (ValueError with a readable message), combination rules included."""
        return RunConfig(prompt=self.prompt, negative_prompt=self.negative_prompt, seed=self.seed,
                         steps=self.steps, guidance=self.guidance, scheduler=self.scheduler, size=self.size,
                         accel=tuple(accel), probes=tuple(probes), warmup=False, attention=self.attention)


@dataclass
class Baseline:
    request: Request
    image: np.ndarray  # (B, H, W, 3) uint8
    timesteps: list[float]
    latencies: list[float]  # wall clock of each timed full-compute run
    quality: dict[str, Any] | None  # reference-free measures of the full-compute image (None: not scored yet)
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

    def retime(self, baseline: Baseline) -> None:
        """After more timed runs of `baseline`: every run against it gets its speed-up and noise band anew."""
        lo, hi = baseline.noise
        for run in self.runs:
            if run.request == baseline.request:
                run.speedup = baseline.latency_s / run.latency_s
                run.speedup_band = (run.speedup * lo, run.speedup * hi)

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
