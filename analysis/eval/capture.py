"""Capture overhead: how much slower one generation gets with every probe attached.

    python -m analysis bench --capture [--models default,sd15-random] [--steps 4] [--default-steps 30] [--repeats 3]

For each model: one warm-up run without and one with `default_probes()`, then `--repeats` rounds of
(baseline, probes) interleaved in the same process (the order alternates every round so drift in machine
load cancels). Reported per model:
- latency_s / capture_latency_s: median wall-clock of the pipeline call (as `run_once` times it), and
  overhead = capture / baseline (target <= 1.5);
- cpu_s / capture_cpu_s / cpu_overhead: median process CPU time of the same pipeline call. On a loaded
  machine (other processes at higher priority) wall-clock mostly measures waiting; CPU time does not;
- rss_peak_delta_mb: growth of the process's peak resident memory (ru_maxrss) caused by the capture runs,
  measured after the baseline runs set the high-water mark; on CUDA also max_memory_allocated per run;
- kept_bytes / budget_bytes of the attention maps and the pickled size of all signals.
Models: any name `analysis.models.load_pipeline` accepts (aliases in analysis/catalog.py); by default (a) the
default model at --default-steps and (b) "sd15-random" (SD 1.5's real UNet size with random weights, 256 px)
at --steps.
The last line printed is one JSON object.
"""
from __future__ import annotations

import argparse
import pickle
import resource
import statistics
import sys
import time

import torch

from analysis.jsonsafe import dumps

PROMPT = "a red circle on the left"


def _rss_mb() -> float:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10  # bytes on macOS, KiB on Linux


def _load(model: str):
    from analysis.models import load_pipeline

    pipe = load_pipeline(model)
    pipe.set_progress_bar_config(disable=True)
    return pipe


class _CpuTimer:
    """A plug-in that hooks nothing: attached first, its `signals()` is the first called after the timed
    pipeline call, so it reads the process CPU time of the call itself (not the probes' post-processing)."""

    name = "cpu_timer"

    def __init__(self):
        self.seconds = None

    def attach(self, ctx):
        timer = self

        class Handle:
            start = time.process_time()

            def detach(self):
                pass

            def counters(self):
                return {}

            def signals(self):
                if timer.seconds is None:
                    timer.seconds = time.process_time() - self.start
                return {}

        timer.seconds = None
        return Handle()


def measure(pipe, steps: int, repeats: int, budget_mb: float) -> dict:
    from analysis.probes import default_probes
    from analysis.run import RunConfig, run_once

    config = RunConfig(prompt=PROMPT, steps=steps, guidance=5.0)
    probes = default_probes(budget_mb)
    cuda = torch.cuda.is_available()

    def one(plugins):
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        timer = _CpuTimer()
        result = run_once(pipe, config, (timer,) + tuple(plugins), steps)
        cpu = timer.seconds
        peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else None
        return result.images, result.seconds, cpu, peak, result.signals

    import sklearn.decomposition  # noqa: F401  (imported by the drift probe; a one-off, not per-run memory)

    base_img = one(())[0]  # warm-up; also sets the baseline's resident-memory high-water mark
    rss_base = _rss_mb()
    cap_img = one(probes)[0]
    times = {"baseline": [], "capture": []}
    cpus = {"baseline": [], "capture": []}
    peaks = {"baseline": [], "capture": []}
    signals: dict = {}
    for r in range(repeats):
        order = (("baseline", ()), ("capture", probes))
        for label, plugins in order if r % 2 == 0 else order[::-1]:
            if plugins:
                signals = {}  # drop the previous run's signals before this run allocates its own
            _img, seconds, cpu, peak, sig = one(plugins)
            times[label].append(seconds)
            cpus[label].append(cpu)
            if peak is not None:
                peaks[label].append(peak)
            if sig:
                signals = sig
    rss_capture = _rss_mb()
    maps = signals.get("attention_maps", {})
    base, cap = statistics.median(times["baseline"]), statistics.median(times["capture"])
    base_cpu, cap_cpu = statistics.median(cpus["baseline"]), statistics.median(cpus["capture"])
    return {
        "steps": steps,
        "repeats": repeats,
        "latency_s": round(base, 4),
        "capture_latency_s": round(cap, 4),
        "overhead": round(cap / base, 3),
        "cpu_s": round(base_cpu, 4),
        "capture_cpu_s": round(cap_cpu, 4),
        "cpu_overhead": round(cap_cpu / base_cpu, 3),
        "latencies": {k: [round(v, 4) for v in vs] for k, vs in times.items()},
        "rss_peak_baseline_mb": round(rss_base, 1),
        "rss_peak_delta_mb": round(rss_capture - rss_base, 1),
        "cuda_peak_mb": {k: round(max(v), 1) for k, v in peaks.items()} if cuda else None,
        "kept_bytes": maps.get("kept_bytes"),
        "budget_bytes": maps.get("budget_bytes"),
        "kept_steps": len(maps.get("steps", [])),
        "reductions": maps.get("reductions"),
        "signals_pickle_bytes": len(pickle.dumps(signals)),
        "image_identical": bool((base_img == cap_img).all()),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis bench --capture",
                                     description="capture overhead of all probes")
    parser.add_argument("--models", default="default,sd15-random",
                        help="comma list of model names (default, sd15-random, tiny, a Hub id or a folder)")
    parser.add_argument("--steps", type=int, default=4, help="steps for the SD 1.5-size model")
    parser.add_argument("--default-steps", type=int, default=30, help="steps for the default model")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--budget-mb", type=float, default=1024.0)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--target", type=float, default=1.5)
    try:
        args = parser.parse_args(argv)
    except SystemExit as done:  # --help, or a usage error (argparse already printed it): return, never exit
        return done.code if isinstance(done.code, int) else 2
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    if args.repeats < 1 or args.steps < 1 or args.default_steps < 1 or not models:
        print("error: --repeats, --steps and --default-steps must be >= 1 and --models non-empty", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    results = {}
    try:
        for model in models:
            pipe = _load(model)
            steps = args.default_steps if model == "default" else args.steps
            results[model] = measure(pipe, steps, args.repeats, args.budget_mb)
            print(f"{model}: {dumps(results[model])}", file=sys.stderr)
            del pipe
    except (ValueError, OSError) as err:
        print(f"error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    out = {
        "benchmark": "capture",
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "threads": torch.get_num_threads(),
        "target_overhead": args.target,
        "models": results,
        "pass": all(r["overhead"] <= args.target for r in results.values()),
    }
    print(dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
