"""Quality at equal latency: each technique's PSNR (and prompt fidelity) against plain step reduction that
takes the same time (`quality`, part 4 of the bench).

For N shapes-world prompts (analysis.toy.scenes.evaluation_scenes + caption), every technique and a sweep of
reduced step counts (0.3 N .. N-1) run through the job runner; per prompt the PSNR to the full-compute image
(analysis.metrics.psnr), the prompt fidelity where the model has a fidelity scorer, and the step-reduction
PSNR at the technique's latency (see `quality`). psnr_minus_steps_psnr = technique PSNR - that, median over
prompts (positive = better than plain step reduction at equal cost). Also with process CPU time instead of
wall clock (`*_cpu`).
"""
from __future__ import annotations

import dataclasses
import math
import statistics

import numpy as np

from analysis.eval.jobs import make_jobs, run_jobs
from analysis.jsonsafe import json_number, jsonable


def shapes_prompts(n: int, seed: int = 0) -> list[str]:
    """n captions of shapes-world evaluation scenes (seen attribute pairs)."""
    from analysis.toy.scenes import caption, evaluation_scenes

    return [caption(s) for s in evaluation_scenes(n, seed=seed, held_out=False)]


def fit_line(points: list[tuple[float, float]]) -> tuple[float, float]:
    """Least-squares y = a + b x."""
    xs = np.array([p[0] for p in points], dtype=float)
    ys = np.array([p[1] for p in points], dtype=float)
    if len(points) < 2 or np.ptp(xs) == 0:
        return float(ys.mean()) if len(ys) else 0.0, 0.0
    b, a = np.polyfit(xs, ys, 1)
    return float(a), float(b)


def interp(points: list[tuple[float, float]], x: float) -> tuple[float, bool]:
    """Linear interpolation of y at x over (x, y) points; outside the range, the closest end (flagged)."""
    pts = sorted(points)
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    if x <= xs[0]:
        return ys[0], x < xs[0]
    if x >= xs[-1]:
        return ys[-1], x > xs[-1]
    for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
        if x0 <= x <= x1:
            return (y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)), False
    return ys[-1], True


def _med(xs):
    xs = [x for x in xs if x is not None and not (isinstance(x, float) and math.isnan(x))]
    return statistics.median(xs) if xs else None


def quality(pipe, prompts: list[str], base_config, specs, steps, repeats, scorers=()) -> dict:
    """Part 4: per prompt, PSNR (and fidelity) of every technique and of a sweep of reduced step counts.

    Equal latency: the step sweep's latency relative to the prompt's baseline is fitted (over all prompts) by a
    line in the step count n (latency is affine in n; the fit removes the timing noise of single points);
    a technique's equal-latency step count n* solves line(n*) = its median relative latency; the step-reduction
    PSNR at n* interpolates the prompt's PSNR linearly between the neighbouring counts (so linearly in latency).
    Outside the swept counts the closest count is used and the prompt is counted in `extrapolated_prompts`; a
    technique no faster than the baseline (n* >= N) has no step-reduction counterpart (difference null).
    Done with wall clock (primary) and with process CPU time (`*_cpu`, immune to other processes' load)."""
    fidelity = next((s for s in scorers if s.name == "fidelity"), None)  # the model's prompt-fidelity scorer
    with_fidelity = fidelity is not None
    counts = list(range(max(1, round(0.3 * steps)), steps))
    sweep = [f"steps:steps={n}" for n in counts]
    techniques = [s for s in specs if s not in sweep]
    per_prompt = []
    for i, prompt in enumerate(prompts):
        config = dataclasses.replace(base_config, prompt=prompt)
        jobs = make_jobs(techniques + sweep, steps, config)
        run_jobs(pipe, config, jobs, repeats, tag=f"quality {i + 1}/{len(prompts)}: ")
        per_prompt.append(_prompt_row(prompt, jobs, sweep, fidelity))
    fits = _latency_fits(per_prompt, counts, steps)
    summary = {label: _technique_summary([r["techniques"][label] for r in per_prompt], per_prompt, counts, fits,
                                         steps, with_fidelity)
               for label in techniques}
    return {
        "prompts": prompts,
        "baseline_fidelity": _med([r.get("baseline_fidelity") for r in per_prompt]) if with_fidelity else None,
        "techniques": summary,
        "steps_curve": _steps_curve(per_prompt, counts, with_fidelity),
        "latency_fit": {clock: {"intercept": a, "per_step": b} for clock, (a, b) in fits.items()},
        "per_prompt": jsonable(per_prompt),
        "method": " ".join(quality.__doc__.split("\n\n", 1)[1].split()),
    }


def _prompt_row(prompt: str, jobs, sweep: list[str], fidelity) -> dict:
    """One prompt's row: the baseline's latency and CPU time (and fidelity), and per technique (by label) and per
    swept step count (by count) its latency and CPU time relative to the baseline, speed-ups, PSNR to the
    baseline image and fidelity. jobs[0] is the baseline."""
    from analysis import metrics

    base = jobs[0]
    base_lat, base_cpu = statistics.median(base.latencies), statistics.median(base.cpu)
    row = {"prompt": prompt, "baseline_latency_s": base_lat, "baseline_cpu_s": base_cpu, "techniques": {},
           "steps": {}}
    if fidelity is not None:
        row["baseline_fidelity"] = fidelity.score(base.images, [prompt], base.images)["overall"]
    for job in jobs[1:]:
        lat, cpu = statistics.median(job.latencies), statistics.median(job.cpu)
        d = {"latency_s": lat, "relative_latency": lat / base_lat, "speedup": base_lat / lat,
             "relative_cpu": cpu / base_cpu if base_cpu else None, "speedup_cpu": base_cpu / cpu if cpu else None,
             "psnr_db": metrics.psnr(base.images, job.images)}
        if fidelity is not None:
            d["fidelity"] = fidelity.score(job.images, [prompt], base.images)["overall"]
        (row["steps"] if job.label in sweep else row["techniques"])[job.steps if job.label in sweep else job.label] = d
    return row


def _latency_fits(per_prompt: list[dict], counts: list[int], steps: int) -> dict[str, tuple[float, float]]:
    """Per clock ("wall", "cpu"): the line (intercept, per step) of relative latency against the step count,
    over every prompt's swept counts and the baseline itself (steps, 1.0)."""
    fits = {}
    for clock, key in (("wall", "relative_latency"), ("cpu", "relative_cpu")):
        pts = [(n, r["steps"][n][key]) for r in per_prompt for n in counts if r["steps"][n][key] is not None]
        pts += [(steps, 1.0)] * len(per_prompt)  # the baseline itself
        fits[clock] = fit_line(pts) if counts else (0.0, 0.0)
    return fits


def _technique_summary(rows: list[dict], per_prompt: list[dict], counts: list[int], fits: dict, steps: int,
                       with_fidelity: bool) -> dict:
    """Medians of one technique's per-prompt `rows`, then its equal-latency comparison on each clock."""
    entry = {
        "median_speedup": _med([r["speedup"] for r in rows]),
        "median_speedup_cpu": _med([r["speedup_cpu"] for r in rows]),
        "median_psnr_db": json_number(_med([r["psnr_db"] for r in rows])),
        "mean_finite_psnr_db": _mean_finite([r["psnr_db"] for r in rows]),
        "fidelity": _med([r.get("fidelity") for r in rows]) if with_fidelity else None,
    }
    for clock, key, suffix in (("wall", "relative_latency", ""), ("cpu", "relative_cpu", "_cpu")):
        entry.update(_equal_latency(rows, per_prompt, counts, fits[clock], key, suffix, steps))
    return entry


def _equal_latency(rows: list[dict], per_prompt: list[dict], counts: list[int], fit: tuple[float, float], key: str,
                   suffix: str, steps: int) -> dict:
    """The equal-latency step count n* of one technique on one clock (`key`: its relative-latency field), the
    median step-reduction PSNR there, the median PSNR difference and how many prompts were extrapolated;
    None where there is no step sweep or no fit."""
    a, b = fit
    rel = _med([r[key] for r in rows])
    if not counts or rel is None or b <= 0:
        return {f"equal_latency_steps{suffix}": None, f"median_steps_psnr_db{suffix}": None,
                f"median_psnr_minus_steps_psnr{suffix}": None, f"extrapolated_prompts{suffix}": None}
    n_star = (rel - a) / b
    if n_star >= steps:  # no faster than the baseline: at equal latency step reduction is the full image
        return {f"equal_latency_steps{suffix}": n_star, f"median_steps_psnr_db{suffix}": math.inf,
                f"median_psnr_minus_steps_psnr{suffix}": None,
                f"extrapolated_prompts{suffix}": len(rows)}
    diffs, steps_psnr, outside = [], [], 0
    for r, t in zip(per_prompt, rows):
        sp, out = interp([(n, r["steps"][n]["psnr_db"]) for n in counts], n_star)
        outside += out
        steps_psnr.append(sp)
        diffs.append(t["psnr_db"] - sp)
    return {f"equal_latency_steps{suffix}": n_star, f"median_steps_psnr_db{suffix}": _med(steps_psnr),
            f"median_psnr_minus_steps_psnr{suffix}": _med(diffs),
            f"extrapolated_prompts{suffix}": outside}


def _steps_curve(per_prompt: list[dict], counts: list[int], with_fidelity: bool) -> dict:
    """Per swept step count: median relative latency and CPU time, PSNR and fidelity over the prompts."""
    return {n: {"median_relative_latency": _med([r["steps"][n]["relative_latency"] for r in per_prompt]),
                "median_relative_cpu": _med([r["steps"][n]["relative_cpu"] for r in per_prompt]),
                "median_psnr_db": _med([r["steps"][n]["psnr_db"] for r in per_prompt]),
                "fidelity": _med([r["steps"][n].get("fidelity") for r in per_prompt]) if with_fidelity else None}
            for n in counts}


def _mean_finite(xs):
    xs = [x for x in xs if x is not None and math.isfinite(x)]
    return statistics.fmean(xs) if xs else None
