"""The cost model: counted work not done -> a fraction of the pipeline -> an ideal speed-up.

Each technique's cost function (`Technique.cost`, declared beside its code in analysis/accel) turns the run's
counters into seconds of baseline UNet work not done, timed in a profile (analysis/eval/profile.py), or into
whole denoising steps not run. This module converts that into pipeline time with a linear model of the
profiled pipeline, in shares of the profiled run (profile["pipeline"]: UNet share u, loop share l = UNet +
scheduler, over C UNet calls):

    pipeline(N) = (1 - l) + N * l / C          (text encoder, VAE decode, other: fixed; the loop: per step)
    saved_fraction = saved_unet_s / unet_call_s * (u / C) / pipeline(N)  +  loop_steps_saved * (l / C) / pipeline(N)
    ideal_speedup = 1 / (1 - saved_fraction)

The ideal charges each technique's own overheads (issue 20): the explicit attention where maps are cached or
ranked, the ranking, the gather and copy-back (each cost function's `expected_unet_s`), so that
efficiency = measured / ideal means "how much of what it could really save did it save". The counted work
alone, the papers' FLOPs view, is `paper_saved_fraction` / `paper_ideal_speedup`.

For a profile taken at N steps (the bench) pipeline(N) = 1 and this is exactly "saved UNet calls x the UNet's
share per call"; `ideal_speedup()` profiles cheaply at PROFILE_STEPS and scales to the run's N.

Combined techniques (`ideal_speedup` with several in config.accel): the savings are fractions of the SAME
baseline pipeline, each computed from that technique's own counters on the one accelerated run, and they are
added. Adding is right because check_combination gives every unit of work one owner (one technique per
attention module; T-GATE's CFG drop, encoder skipping and token pruning remove different work), the
counters count only what actually ran in the combined run (tgate's reuses on the reduced step count, atedm's
tokens on the decoder calls fastdiff left), and per-call savings are costed at the batch rows of their step
(T-GATE's halved batch). The one overlap left is second order (e.g. pruned tokens of a call whose batch was
also halved); the sum is capped at the loop share of pipeline(N): no technique can remove the text encoder
or the VAE decode (Amdahl), and `capped` says when the cap bit.
"""
from __future__ import annotations

import dataclasses
import weakref
from typing import Any

from analysis.accel import cost_function

PROFILE_STEPS = 2  # the cheap profile's pipeline run: shares are per step, and the linear model scales them
PROFILE_CALLS = 1  # timed UNet calls per breakdown pass in the cheap profile (after one warm-up each)


def _pipeline_model(profile: dict, steps: int) -> tuple[float, float, float]:
    """(pipeline(steps), pipeline fraction of one UNet call, of one loop step), in shares of the profiled run."""
    p = profile["pipeline"]
    calls = max(1, p["unet_calls"])
    unet_call = p["shares"]["unet"] / calls
    loop_step = p["loop_share"] / calls
    total = (1.0 - p["loop_share"]) + steps * loop_step
    return total, unet_call, loop_step


def cost_model(name: str, config, counters: dict, profile: dict, steps: int, accel_steps: int) -> dict[str, Any]:
    """One technique's saving from its counted work, as a fraction of the N=`steps`-step baseline pipeline."""
    s = cost_function(name)(config, counters or {}, profile, steps, accel_steps)
    total, unet_call, loop_step = _pipeline_model(profile, steps)
    u = profile["unet_call_s"]
    units = s["expected_unet_s"] / u if u else 0.0
    paper_units = s["unet_s"] / u if u else 0.0
    loop = s["loop_steps_saved"] * loop_step / total
    out = {"saved_fraction": units * unet_call / total + loop,
           "paper_saved_fraction": paper_units * unet_call / total + loop,
           "detail": s["detail"], "note": s["note"]}
    if s["loop_steps_saved"]:
        out["detail"] = {**out["detail"], "loop_share": profile["pipeline"]["loop_share"]}
    else:
        out["saved_unet_calls"] = units
    out["ideal_speedup"] = 1.0 / (1.0 - out["saved_fraction"])
    out["paper_ideal_speedup"] = 1.0 / (1.0 - out["paper_saved_fraction"])
    return out


# --- ideal_speedup: the app's call ------------------------------------------------------------------------

_PROFILES: dict[tuple, tuple[Any, dict]] = {}


def _profile_key(pipe, config) -> tuple:
    return (id(pipe), config.size, config.guidance > 1.0, len(config.prompts))


def _ref(pipe):
    try:
        return weakref.ref(pipe)
    except TypeError:  # not weak-referenceable: keep it (the cache is small)
        return lambda: pipe


def profile_for(pipe, config) -> dict:
    """The pipeline's profile for this request's shape (size, CFG on/off, batch), computed once per
    (pipe identity, size, guidance > 1, batch) and cached: PROFILE_STEPS steps, PROFILE_CALLS timed UNet calls
    per pass, no progress lines."""
    from analysis.eval.profile import breakdown

    key = _profile_key(pipe, config)
    hit = _PROFILES.get(key)
    if hit is not None and hit[0]() is pipe:
        return hit[1]
    cheap = dataclasses.replace(config, steps=PROFILE_STEPS, accel=(), probes=(), repeats=1)
    profile = breakdown(pipe, cheap, PROFILE_STEPS, PROFILE_CALLS)
    _PROFILES[key] = (_ref(pipe), profile)
    return profile


def ideal_speedup(pipe, config, counters: dict) -> dict[str, Any]:
    """Ideal speed-up of the accelerated run of `config` (an analysis.run.RunConfig; several techniques and a
    `steps` technique allowed) from its counted work (`counters`: RunResult.counters of that run).

    Returns {"ideal_speedup": float, "saved_fraction": float, "per_technique": {name: saved_fraction}, each net
    of the technique's own overheads, "paper_ideal_speedup" / "paper_per_technique" (the counted work alone),
    "notes": {name: the cost note},
    "capped": bool, "profile_steps": int}. No technique: exactly 1.0 without profiling. The first call per
    pipeline and request shape profiles it (see `profile_for`); later calls take milliseconds."""
    names = [type(c).name for c in config.accel]
    if not names:
        return {"ideal_speedup": 1.0, "paper_ideal_speedup": 1.0, "saved_fraction": 0.0, "per_technique": {},
                "capped": False, "profile_steps": None}
    profile = profile_for(pipe, config)
    per, paper, notes = {}, {}, {}
    for c in config.accel:
        name = type(c).name
        m = cost_model(name, c, counters or {}, profile, config.steps, config.accel_steps)
        per[name], paper[name] = m["saved_fraction"], m["paper_saved_fraction"]
        if m["note"]:
            notes[name] = m["note"]
    total, _, loop_step = _pipeline_model(profile, config.steps)
    cap = config.steps * loop_step / total  # the whole loop; the text encoder and VAE decode always run
    saved = sum(per.values())
    saved_paper = min(cap, sum(paper.values()))
    return {"ideal_speedup": 1.0 / (1.0 - min(saved, cap)) if min(saved, cap) < 1 else float("inf"),
            "paper_ideal_speedup": 1.0 / (1.0 - saved_paper) if saved_paper < 1 else float("inf"),
            "saved_fraction": min(saved, cap), "per_technique": per, "capped": saved > cap,
            "paper_per_technique": paper, "notes": notes,
            "profile_steps": profile["pipeline"]["steps"]}
