"""The job runner: timed, interleaved runs of the baseline and every technique in one process.

`run_jobs` runs one warm-up of every job (its images and counters), then `repeats` rounds, each running every
job once in an order rotated per round, all through `analysis.run.run_once` (wall clock of the full pipeline
call, no probes; beside it the process CPU time of the same call). `speed` adds the per-round paired
speed-ups (`paired_speedup`: baseline / technique within one round, median and quartiles) and a
`noise_floor`: a second baseline run in every round, whose paired speed-up is 1 up to the machine's noise,
so a technique whose quartiles sit inside the floor's has an effect this run cannot resolve.
"""
from __future__ import annotations

import dataclasses
import statistics
import time
from typing import Any

import numpy as np

from analysis.eval.cost import cost_model
from analysis.jsonsafe import json_number

STEPS_FRACTION = 0.8  # the default step-reduction comparison: round(0.8 * N) steps


def log(msg: str) -> None:
    """A progress line of the bench (stdout; the bench's last line is its JSON)."""
    print(f"bench: {msg}", flush=True)


@dataclasses.dataclass
class Job:
    label: str
    name: str  # technique name, "baseline" or "steps"
    config: Any  # the technique config (None for the baseline)
    plugins: tuple
    steps: int
    images: np.ndarray | None = None
    counters: dict | None = None
    latencies: list = dataclasses.field(default_factory=list)  # wall clock of the pipeline call (run_once)
    cpu: list = dataclasses.field(default_factory=list)  # process CPU time around the same call


def make_jobs(specs: list[str], steps: int, base_config) -> list[Job]:
    from analysis.accel import parse_accel
    from analysis.run import RunConfig

    jobs = [Job("baseline", "baseline", None, (), steps)]
    for spec in specs:
        cfg = parse_accel(spec)
        rc = RunConfig(prompt=base_config.prompt, steps=steps, size=base_config.size, seed=base_config.seed,
                       guidance=base_config.guidance, accel=(cfg,), attention=base_config.attention)
        jobs.append(Job(spec, type(cfg).name, cfg, rc.hooked_accel(), rc.accel_steps))
    return jobs


def run_jobs(pipe, config, jobs: list[Job], repeats: int, tag: str = "") -> None:
    """Warm-up (one run each: images, counters), then `repeats` rounds of every job, order rotated per round."""
    from analysis.run import run_once

    for job in jobs:
        t = time.perf_counter()
        warm = run_once(pipe, config, job.plugins, job.steps)
        job.images, job.counters = warm.images, warm.counters
        log(f"{tag}warm-up {job.label}: {time.perf_counter() - t:.2f}s")
    for r in range(repeats):
        order = jobs[r % len(jobs):] + jobs[: r % len(jobs)]
        for job in order:
            cpu = time.process_time()
            timed = run_once(pipe, config, job.plugins, job.steps)
            job.cpu.append(time.process_time() - cpu)
            job.latencies.append(timed.seconds)
            job.counters = timed.counters
        log(f"{tag}round {r + 1}/{repeats}: " + ", ".join(f"{j.label} {j.latencies[-1]:.2f}s" for j in jobs))


def default_specs(steps: int) -> list[str]:
    """Every registered technique at its defaults (T-GATE's gate follows the step count), plus step reduction
    to about STEPS_FRACTION of the steps."""
    from analysis.accel import registry

    specs = [n for n, t in registry().items() if not t.is_step_reduction]
    specs.append(f"steps:steps={max(1, min(steps - 1, round(STEPS_FRACTION * steps)))}")
    return specs


def paired_speedup(base_latencies: list[float], latencies: list[float]) -> dict:
    """Per-round speed-ups (baseline / technique, the two runs of one round are minutes apart at most), their
    median and quartiles: robust to the slow drift of a shared machine, which moves both runs of a round."""
    ratios = [b / t for b, t in zip(base_latencies, latencies) if t > 0]
    if not ratios:
        return {"paired_speedups": [], "paired_speedup": None, "paired_q1": None, "paired_q3": None}
    q1, _, q3 = statistics.quantiles(ratios, n=4, method="inclusive") if len(ratios) > 1 else (ratios[0],) * 3
    return {"paired_speedups": ratios, "paired_speedup": statistics.median(ratios), "paired_q1": q1, "paired_q3": q3}


def speed(pipe, config, specs, steps, repeats, b: dict | None) -> dict:
    """Part 2 of the bench: every technique against the baseline and the noise floor, timed in rotated rounds;
    with a profile `b`, each also gets its cost model (ideal / expected speed-up, efficiency)."""
    from analysis import metrics

    jobs = make_jobs(specs, steps, config)
    # A second, identical baseline in every round: its speed-up over the baseline is 1 by construction, so its
    # spread is the smallest effect this machine can resolve with these repeats.
    floor = Job("noise_floor", "baseline", None, (), steps)
    run_jobs(pipe, config, jobs + [floor], repeats)
    base = jobs[0]
    base_med, base_cpu = statistics.median(base.latencies), statistics.median(base.cpu)
    out = {"baseline": {"latency_s": base_med, "latencies_s": base.latencies, "cpu_s": base_cpu,
                        "cpus_s": base.cpu},
           "noise_floor": {"latencies_s": floor.latencies, **paired_speedup(base.latencies, floor.latencies)},
           "techniques": {}}
    log(f"noise floor (baseline vs itself): paired median {out['noise_floor']['paired_speedup']:.3f}x, "
         f"quartiles {out['noise_floor']['paired_q1']:.3f}-{out['noise_floor']['paired_q3']:.3f}")
    for job in jobs[1:]:
        med, cpu = statistics.median(job.latencies), statistics.median(job.cpu)
        measured = base_med / med
        entry = {"name": job.name, "config": dataclasses.asdict(job.config), "steps": job.steps,
                 "latency_s": med, "latencies_s": job.latencies, "measured_speedup": measured,
                 "cpu_s": cpu, "cpus_s": job.cpu, "measured_speedup_cpu": base_cpu / cpu if cpu else None,
                 **paired_speedup(base.latencies, job.latencies),
                 "psnr_db": json_number(metrics.psnr(base.images, job.images)),
                 "counters": job.counters}
        if b is not None:
            cm = cost_model(job.name, job.config, job.counters or {}, b, steps, job.steps)
            entry.update(cm)
            entry["saved_s"] = cm["saved_fraction"] * base_med
            entry["efficiency"] = measured / cm["ideal_speedup"]
            entry["efficiency_vs_paper_ideal"] = measured / cm["paper_ideal_speedup"]
            if entry["measured_speedup_cpu"]:
                entry["efficiency_cpu"] = entry["measured_speedup_cpu"] / cm["ideal_speedup"]
        out["techniques"][job.label] = entry
        log(f"{job.label}: measured {measured:.3f}x (CPU time {entry['measured_speedup_cpu'] or 0:.3f}x)" + (
            f", ideal {entry['ideal_speedup']:.3f}x, efficiency {entry['efficiency']:.3f}" if b is not None else ""))
    return out
