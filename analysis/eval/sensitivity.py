"""`python -m analysis sensitivity`: how much a perturbation of one step's attention maps grows by the end of
sampling; the attention-adapted Lyapunov analysis behind HURRY's late reuse (Hunter et al., arXiv 2401.01008).

For every step t, one run perturbs the attention maps of step t only, in one of two ways:
- `reuse`: the maps of step t-1 are used at step t (a reuse policy with a single R at t, analysis.accel.reuse);
- `noise`: Gaussian noise of relative size `--noise` (||noise|| = noise x ||P|| per map) is added to every
  attention map at step t, clipped at 0 and renormalised so that rows stay distributions (`NoiseConfig`).
Every run, the unperturbed one included, computes attention explicitly (softmax(QK^T) V, `ExplicitConfig`),
so that the maps of the perturbed runs and the reference come from the same arithmetic: the latents of the
steps before t are then bit-identical to the reference (the tests check it), and every deviation is caused by
the perturbation. The latents z_s after every step s are recorded (`ctx.on_step_end`), and per t:
- the deviation d_s = ||z_s - z_s(ref)|| (Frobenius over the latent) for every s >= t;
- the growth rate: the slope of log d_s against s over s = t..end (least squares; per step), the
  attention-adapted finite-time Lyapunov exponent at t; and the amplification d_end / d_t;
- the same slope fitted without the final step (`exponent_without_last`): DDIM's last step maps the latent
  to the x0 prediction and contracts a deviation far more than any other (on the default model it alone
  multiplies it by ~0.4), so a slope fitted through it is, for late t, that one step (issue 17);
- the per-step factors ln(d_s / d_{s-1}) for s > t: how much each step amplifies (> 0) or damps (< 0) a
  deviation already present, the local reading that needs no fit at all;
- the final image's PSNR to the reference image.
HURRY's premise is that later perturbations leave a smaller final error; the report answers it with the
Spearman correlation between t and the final deviation (negative = later is smaller), and the final deviation
of the first and second halves of the steps; Hunter et al. also report positive exponents (deviations that
grow), which the verdict looks for with intervals: means over images with 95% bootstrap intervals over prompts
(`analysis.eval.distribution.bootstrap_mean`), for the exponent with and without the final step and for each
step's factor. The plug-ins (explicit attention, noise, latent recorder) are in analysis/eval/sensitivity_plugins.py.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
import sys
from pathlib import Path

import numpy as np

from analysis.eval.sensitivity_plugins import ExplicitConfig, LatentRecorderConfig, NoiseConfig

KINDS = ("reuse", "noise")


# ---- the analysis ---------------------------------------------------------------------------------------------

def perturbation(kind: str, t: int, steps: int, relative: float, seed: int) -> tuple:
    """The plug-ins that perturb step t's attention maps only."""
    from analysis.accel.reuse import ReuseConfig

    if kind == "reuse":
        if t < 1:
            raise ValueError("reuse at step 0 has no earlier map")
        return (ReuseConfig(policy="C" * t + "R" + "C" * (steps - t - 1)),)
    if kind == "noise":
        return (NoiseConfig(step=t, relative=relative, seed=seed),)
    raise ValueError(f"unknown perturbation {kind!r}; choose from {', '.join(KINDS)}")


def run_latents(pipe, config, extra: tuple) -> tuple[np.ndarray, np.ndarray, dict]:
    """(image uint8 (H, W, 3), latents (steps, ...), counters) of one explicit-attention run."""
    from analysis.run import run_once

    result = run_once(pipe, config, (ExplicitConfig(),) + tuple(extra) + (LatentRecorderConfig(),), config.steps)
    return result.images[0], result.signals["latents"], result.counters


def growth_rate(deviations: np.ndarray, t: int, drop_last: bool = False) -> tuple[float | None, float | None]:
    """(slope of log d_s over s = t..end, d_end / d_t); None where the deviation is zero. drop_last: fit and
    amplify up to the step before the final one."""
    d = np.asarray(deviations[t:-1] if drop_last else deviations[t:], dtype=float)
    if len(d) < 2 or d[0] <= 0 or (d <= 0).any():
        return None, None
    slope = float(np.polyfit(np.arange(len(d)), np.log(d), 1)[0])
    return slope, float(d[-1] / d[0])


def analyse_unit(pipe, prompt: str, seed: int, steps: int, kinds, relative: float, guidance: float,
                 scheduler: str, bar=None) -> list[dict]:
    from analysis import metrics
    from analysis.models import set_scheduler
    from analysis.run import RunConfig

    set_scheduler(pipe, scheduler)
    config = RunConfig(prompt=prompt, seed=seed, steps=steps, guidance=guidance, scheduler=scheduler, warmup=False)
    ref_image, ref_latents, _ = run_latents(pipe, config, ())
    ref_norm = np.linalg.norm(ref_latents.reshape(steps, -1), axis=1)
    rows = []
    for kind in kinds:
        for t in range(1 if kind == "reuse" else 0, steps):
            image, latents, counters = run_latents(pipe, config, perturbation(kind, t, steps, relative, seed))
            dev = np.linalg.norm((latents - ref_latents).reshape(steps, -1).astype(np.float64), axis=1)
            slope, amplification = growth_rate(dev, t)
            slope_without_last, _ = growth_rate(dev, t, drop_last=True)
            with np.errstate(divide="ignore", invalid="ignore"):
                log_factors = [float(x) if np.isfinite(x) else None for x in np.log(dev[t + 1:] / dev[t:-1])]
            rows.append({"prompt": prompt, "seed": seed, "kind": kind, "t": t, "exponent": slope,
                         "exponent_without_last": slope_without_last, "log_step_factors": log_factors,
                         "amplification": amplification, "deviation": dev.tolist(),
                         "relative_deviation": (dev / np.maximum(ref_norm, 1e-12)).tolist(),
                         "final_deviation": float(dev[-1]), "psnr_db": metrics.psnr(ref_image, image),
                         "identical_before_t": bool((dev[:t] == 0).all()), "counters": counters})
            if bar is not None:
                bar.update(1)
    return rows


def spearman(x, y) -> float | None:
    from scipy.stats import spearmanr

    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return None
    return float(spearmanr(x, y).statistic)


MIN_PROMPTS_FOR_INTERVAL = 5  # a bootstrap over fewer prompts can only land on a handful of values


def _prompt_mean(rows: list[dict], values: list[float | None], prompt_ids: dict[str, int]) -> dict:
    """Mean of the finite values with a 95% bootstrap interval over prompts (no interval below
    MIN_PROMPTS_FOR_INTERVAL prompts: then no verdict rests on it)."""
    from analysis.eval.distribution import bootstrap_mean

    kept = [(prompt_ids[r["prompt"]], v) for r, v in zip(rows, values) if v is not None and math.isfinite(v)]
    if len({pid for pid, _ in kept}) < MIN_PROMPTS_FOR_INTERVAL:
        mean = statistics.mean(v for _, v in kept) if kept else None
        return {"mean": mean, "low": None, "high": None}
    est = bootstrap_mean([v for _, v in kept], [pid for pid, _ in kept])
    return {"mean": est.value, "low": est.low, "high": est.high}


def curve(rows: list[dict]) -> list[dict]:
    """Per (kind, t): medians over prompts and seeds of the exponent, the amplification, the final deviation
    and the final PSNR, with quartiles of the final deviation; and the means of the exponent with and without
    the final step, with 95% bootstrap intervals over prompts."""
    prompt_ids = {p: i for i, p in enumerate(dict.fromkeys(r["prompt"] for r in rows))} if rows and "prompt" in rows[0] else {}
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["kind"], r["t"]), []).append(r)
    out = []
    for (kind, t), rs in sorted(groups.items()):
        def med(key):
            vals = [r[key] for r in rs if r.get(key) is not None and math.isfinite(r[key])]
            return statistics.median(vals) if vals else None
        fin = np.array([r["final_deviation"] for r in rs])
        row = {"kind": kind, "t": t, "n": len(rs), "exponent": med("exponent"), "amplification": med("amplification"),
               "final_deviation": float(np.median(fin)), "final_deviation_q25": float(np.percentile(fin, 25)),
               "final_deviation_q75": float(np.percentile(fin, 75)), "psnr_db": med("psnr_db"),
               "identical_before_t": all(r["identical_before_t"] for r in rs),
               "exponent_without_last": med("exponent_without_last")}
        if prompt_ids:
            for key in ("exponent", "exponent_without_last"):
                m = _prompt_mean(rs, [r.get(key) for r in rs], prompt_ids)
                row.update({f"{key}_mean": m["mean"], f"{key}_mean_low": m["low"], f"{key}_mean_high": m["high"]})
        out.append(row)
    return out


def step_factors(rows: list[dict]) -> list[dict]:
    """Per kind and step s: the mean of ln(d_s / d_{s-1}) over every run perturbed before s (t < s), with a 95%
    bootstrap interval over prompts; above 0 the step amplifies a deviation, below 0 it damps it."""
    prompt_ids = {p: i for i, p in enumerate(dict.fromkeys(r["prompt"] for r in rows))}
    out = []
    for kind in sorted({r["kind"] for r in rows}):
        rs = [r for r in rows if r["kind"] == kind]
        steps = max(r["t"] + 1 + len(r["log_step_factors"]) for r in rs)
        for s in range(1, steps):
            pairs = [(r, r["log_step_factors"][s - r["t"] - 1]) for r in rs if r["t"] < s]
            m = _prompt_mean([r for r, _ in pairs], [v for _, v in pairs], prompt_ids)
            out.append({"kind": kind, "step": s, "n": len(pairs), "log_factor": m["mean"], "log_factor_low": m["low"],
                        "log_factor_high": m["high"]})
    return out


def verdict(curve_rows: list[dict], factors: list[dict] | None = None) -> dict:
    """Does a later perturbation leave a smaller final error? Per kind: Spearman(t, final deviation), and the
    median final deviation over the first and the second half of the steps. Is any exponent positive (interval
    above 0), with and without the final step; which steps amplify; where reuse is safest (the t whose
    perturbation leaves the smallest median final deviation)."""
    out = {}
    for kind in sorted({r["kind"] for r in curve_rows}):
        rs = [r for r in curve_rows if r["kind"] == kind]
        ts = [r["t"] for r in rs]
        half = (min(ts) + max(ts) + 1) / 2
        early = [r["final_deviation"] for r in rs if r["t"] < half]
        late = [r["final_deviation"] for r in rs if r["t"] >= half]
        rho = spearman(ts, [r["final_deviation"] for r in rs])
        out[kind] = {"spearman_t_vs_final_deviation": rho,
                     "median_final_deviation_early_half": statistics.median(early) if early else None,
                     "median_final_deviation_late_half": statistics.median(late) if late else None,
                     "later_is_smaller": None if rho is None else bool(rho < 0 and late and early
                                                                       and statistics.median(late) < statistics.median(early))}
        for key in ("exponent", "exponent_without_last"):
            out[kind][f"positive_{key}_at"] = [r["t"] for r in rs if (r.get(f"{key}_mean_low") or 0) > 0]
        out[kind]["smallest_final_deviation_at"] = min(rs, key=lambda r: r["final_deviation"])["t"]
        if factors:
            fs = [f for f in factors if f["kind"] == kind]
            out[kind]["amplifying_steps"] = [f["step"] for f in fs if (f["log_factor_low"] or 0) > 0]
            out[kind]["damping_steps"] = [f["step"] for f in fs if (f["log_factor_high"] or 0) < 0]
    return out


def policies(steps: int, model: str = "default") -> dict[str, str]:
    """The HURRY and (if searched) PHAST policies at the default R count, to draw over the curve."""
    from analysis.accel.reuse_policy import default_reuse_steps, hurry_policy
    from analysis.accel.reuse_policy import phast_policy

    r = default_reuse_steps(steps)
    out = {f"HURRY r={r}": hurry_policy(steps, r)}
    phast = phast_policy(steps, r, model=model)
    if phast is not None:
        out[f"PHAST r={r}"] = phast
    return out


def load_shipped(steps: int = 20, directory: Path | None = None) -> dict | None:
    """The default model's shipped sensitivity curve (assets/results/sensitivity-<steps>/curve.json): keys
    curve (per kind and t), verdict, policies; None when none is shipped for that step count."""
    from analysis.eval.sweep_results import SHIPPED_DIR
    from analysis.jsonsafe import from_json_value

    path = (directory or SHIPPED_DIR) / f"sensitivity-{steps}" / "curve.json"
    if not path.exists():
        return None
    data = json.loads(path.read_text())
    data["curve"] = [{k: from_json_value(v) for k, v in row.items()} for row in data["curve"]]
    return data


# ---- CLI ------------------------------------------------------------------------------------------------------

from analysis.eval.sweep_results import UsageError, UsageParser  # noqa: E402  (one error type for the eval subcommands)


def build_parser() -> argparse.ArgumentParser:
    from analysis.eval.sweep import DEFAULT_PROMPTS

    p = UsageParser(prog="python -m analysis sensitivity", description=__doc__.split("\n\n")[0])
    p.add_argument("--prompts", default=str(DEFAULT_PROMPTS.with_name("shapes-8.txt")), metavar="FILE")
    p.add_argument("--limit-prompts", type=int, default=None, metavar="N")
    p.add_argument("--seeds", default="0", metavar="S,S,...")
    p.add_argument("--model", default="default")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--scheduler", choices=("ddim", "dpm", "euler"), default="ddim")
    p.add_argument("--guidance", type=float, default=5.0)
    p.add_argument("--kinds", default="reuse,noise", metavar="K,K", help="reuse and/or noise")
    p.add_argument("--noise", type=float, default=0.05, metavar="F", help="relative size of the added noise")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--no-figures", action="store_true")
    return p


def run(args) -> dict:
    from tqdm import tqdm

    from analysis.eval.sweep import _parse_seeds, read_prompts
    from analysis.models import ModelLoadError, load_pipeline
    from analysis.run_folder import OutDirError, RunFolder

    try:
        folder = RunFolder(args.out, marker="sensitivity.json", keys=("curve", "verdict"),  # before any work
                           kind="sensitivity analysis")
    except OutDirError as err:
        raise UsageError(err) from None
    prompts, seeds = read_prompts(args.prompts), _parse_seeds(args.seeds)
    if args.limit_prompts:
        prompts = prompts[: args.limit_prompts]
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    if not kinds or set(kinds) - set(KINDS):
        raise UsageError(f"--kinds must name reuse and/or noise, got {args.kinds!r}")
    if not 0 < args.noise <= 10:
        raise UsageError(f"--noise must be in (0, 10], got {args.noise}")
    if not 2 <= args.steps <= 1000:
        raise UsageError(f"--steps must be between 2 and 1000, got {args.steps}")
    try:
        pipe = load_pipeline(args.model, scheduler=args.scheduler)
    except (ModelLoadError, ValueError, OSError) as err:
        raise UsageError(err) from None
    pipe.set_progress_bar_config(disable=True)
    total = len(prompts) * len(seeds) * sum(args.steps - (k == "reuse") for k in kinds)
    rows: list[dict] = []
    with tqdm(total=total, desc="sensitivity", unit="run", file=sys.stderr, dynamic_ncols=True) as bar:
        for prompt in prompts:
            for seed in seeds:
                rows += analyse_unit(pipe, prompt, seed, args.steps, kinds, args.noise, args.guidance,
                                     args.scheduler, bar)
    curve_rows = curve(rows)
    factors = step_factors(rows)
    result = {"model": args.model, "steps": args.steps, "scheduler": args.scheduler, "guidance": args.guidance,
              "noise_relative": args.noise, "prompts": prompts, "seeds": seeds, "curve": curve_rows,
              "step_factors": factors, "verdict": verdict(curve_rows, factors),
              "policies": policies(args.steps, args.model)}
    try:
        with folder:
            _write(folder.tmp, result, rows, curve_rows, figures=not args.no_figures)
            folder.commit()
    except OutDirError as err:
        raise UsageError(err) from None
    return {"out": str(folder.target), "runs": len(rows), "verdict": result["verdict"]}


def _write(out: Path, result: dict, rows: list[dict], curve_rows: list[dict], figures: bool) -> None:
    from analysis.jsonsafe import jsonable

    (out / "sensitivity.json").write_text(json.dumps(jsonable({**result, "runs": rows})))
    (out / "curve.json").write_text(json.dumps(jsonable(result), indent=1))
    with (out / "curve.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(curve_rows[0]))
        w.writeheader()
        w.writerows(curve_rows)
    if figures:
        from viz import sweep_figs

        sweep_figs.write_sensitivity(result, out / "figures")


def main(argv=None) -> int:
    from analysis.eval.sweep import cli_main

    return cli_main(build_parser, run, argv)


if __name__ == "__main__":
    sys.exit(main())
