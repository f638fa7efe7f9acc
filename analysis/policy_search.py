"""PHAST: greedy perturbation search for an attention-map reuse policy (Hunter et al.; see accel/reuse.py).

Start from HURRY (R steps as late as possible). One iteration tries every neighbour of the current policy:
one R step moved to a C step at most `radius` steps away (a swap of an R and a C), so the number of R steps,
and with it the latency, stays fixed; step 0 stays C and, when `max_run` > 0, no map may be reused more than
`max_run` steps in a row. The best neighbour is kept iff it raises the mean PSNR to the full-compute images
over the calibration prompts; the search stops after `iterations` iterations or when no neighbour improves.
Then HURRY and the found policy are scored on held-out prompts (a different seed of
`analysis.toy.scenes.evaluation_scenes`, prompts disjoint from the calibration set).

CLI: python -m analysis search-policy --model default --steps 20 --reuse-steps 7 --prompts 8
         [--held-out 8] [--iterations 10] [--radius 1] [--scope both] [--max-run 2] [--seed 0]
         [--guidance 5] [--scheduler ddim] [--size PX] [--out assets/policies/default-20.json]
The result is merged into the policy file (one entry per reuse_steps and scope; format in
`analysis.accel.reuse.load_phast`) and printed as one JSON object on the last line.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from analysis import metrics
from analysis.accel.reuse import ReuseConfig
from analysis.accel.reuse_policy import POLICY_FORMAT, default_reuse_steps, hurry_policy, longest_run, policy_path
from analysis.catalog import SCHEDULERS
from analysis.jsonsafe import dumps

PSNR_CAP_DB = 100.0  # identical images count as 100 dB in a mean (PSNR is +inf for them)


def calibration_prompts(n: int, seed: int = 0, exclude: Sequence[str] = ()) -> list[str]:
    """n distinct captions of training-distribution scenes of the shapes world (the default model's world)."""
    from analysis.toy.scenes import caption, evaluation_scenes

    out: list[str] = []
    seen = set(exclude)
    draw = n
    while len(out) < n:
        for scene in evaluation_scenes(draw, seed, held_out=False):
            text = caption(scene)
            if text not in seen:
                seen.add(text)
                out.append(text)
            if len(out) == n:
                break
        draw *= 2
    return out


def neighbours(policy: str, radius: int = 1, max_run: int = 0) -> list[str]:
    """Policies with one R moved to a C at most `radius` steps away; step 0 stays C; runs <= max_run if > 0."""
    out: list[str] = []
    for i, kind in enumerate(policy):
        if kind != "R":
            continue
        for d in range(-radius, radius + 1):
            j = i + d
            if d == 0 or j < 1 or j >= len(policy) or policy[j] != "C":
                continue
            p = list(policy)
            p[i], p[j] = "C", "R"
            cand = "".join(p)
            if (max_run <= 0 or longest_run(cand) <= max_run) and cand not in out:
                out.append(cand)
    return out


class Evaluator:
    """Mean PSNR of a policy's images to the full-compute images, for fixed prompts, seed and settings."""

    def __init__(self, pipe, prompts: Sequence[str], steps: int, seed: int = 0, guidance: float = 5.0,
                 scope: str = "both", size: int | None = None, batch: int = 8):
        from analysis.run import RunConfig, run_once

        self._run_once = run_once
        self.pipe, self.steps, self.scope = pipe, steps, scope
        self.configs = [
            RunConfig(prompt=tuple(prompts[i:i + batch]), seed=seed, steps=steps, guidance=guidance, size=size)
            for i in range(0, len(prompts), batch)
        ]
        self.references = [run_once(pipe, c, (), steps).images for c in self.configs]
        self.cache: dict[str, float] = {}

    def __call__(self, policy: str) -> float:
        if policy not in self.cache:
            scores = []
            plugin = ReuseConfig(policy=policy, scope=self.scope)
            for config, ref in zip(self.configs, self.references):
                images = self._run_once(self.pipe, config, (plugin,), self.steps).images
                scores += [min(metrics.psnr(r, im), PSNR_CAP_DB) for r, im in zip(ref, images)]
            self.cache[policy] = float(np.mean(scores))
        return self.cache[policy]


@dataclass
class SearchResult:
    steps: int
    reuse_steps: int
    scope: str
    max_run: int
    hurry_policy: str
    policy: str
    calibration_prompts: list[str]
    hurry_psnr_db: float
    phast_psnr_db: float
    iterations: int
    moves_accepted: int
    evaluations: int
    history: list[dict] = field(default_factory=list)
    held_out_prompts: list[str] = field(default_factory=list)
    held_out_hurry_psnr_db: float | None = None
    held_out_phast_psnr_db: float | None = None


def search(pipe, steps: int, reuse_steps: int | None = None, prompts: Sequence[str] = (), *, seed: int = 0,
           guidance: float = 5.0, scope: str = "both", max_run: int = 2, iterations: int = 10, radius: int = 1,
           size: int | None = None, held_out: Sequence[str] = (), progress: bool = True) -> SearchResult:
    """Greedy local search from HURRY (module docstring). `prompts` are the calibration prompts."""
    from tqdm.auto import tqdm

    if not prompts:
        raise ValueError("search-policy: need at least one calibration prompt")
    r = default_reuse_steps(steps) if reuse_steps is None else reuse_steps
    ReuseConfig(reuse_steps=r, scope=scope, max_run=max_run).resolve(steps)  # validates r against steps/max_run
    start = hurry_policy(steps, r, max_run)
    evaluate = Evaluator(pipe, list(prompts), steps, seed, guidance, scope, size)
    current, best = start, evaluate(start)
    hurry_score = best
    history = [{"iteration": 0, "policy": current, "psnr_db": best}]
    accepted = done = 0
    for it in range(1, iterations + 1):
        cands = neighbours(current, radius, max_run)
        if not cands:
            break
        bar = tqdm(cands, desc=f"PHAST iteration {it}/{iterations}", disable=not progress, leave=False)
        scored = []
        for cand in bar:
            scored.append((evaluate(cand), cand))
            bar.set_postfix(best=f"{max(best, max(s for s, _ in scored)):.2f} dB")
        done = it
        score, cand = max(scored)
        if score > best + 1e-9:
            current, best = cand, score
            accepted += 1
            history.append({"iteration": it, "policy": current, "psnr_db": best})
        else:
            break
    result = SearchResult(
        steps=steps, reuse_steps=r, scope=scope, max_run=max_run, hurry_policy=start, policy=current,
        calibration_prompts=list(prompts), hurry_psnr_db=hurry_score, phast_psnr_db=best, iterations=done,
        moves_accepted=accepted, evaluations=len(evaluate.cache), history=history,
    )
    if held_out:
        test = Evaluator(pipe, list(held_out), steps, seed, guidance, scope, size)
        result.held_out_prompts = list(held_out)
        result.held_out_hurry_psnr_db = test(start)
        result.held_out_phast_psnr_db = test(current)
    return result


def write_policy(path: Path, result: SearchResult, model: str, scheduler: str, guidance: float,
                 size: int | None, seed: int) -> None:
    """Merge `result` into the policy file at `path` (one entry per reuse_steps and scope)."""
    data = {"format": POLICY_FORMAT, "model": model, "steps": result.steps, "scheduler": scheduler,
            "guidance": guidance, "size": size, "policies": []}
    if path.exists():
        try:
            old = json.loads(path.read_text())
            if old.get("steps") == result.steps:
                data["policies"] = [e for e in old.get("policies", [])
                                    if (e.get("reuse_steps"), e.get("scope")) != (result.reuse_steps, result.scope)]
        except json.JSONDecodeError:
            pass
    data["policies"].append({
        "reuse_steps": result.reuse_steps, "scope": result.scope, "max_run": result.max_run,
        "policy": result.policy, "hurry_policy": result.hurry_policy,
        "calibration": {"prompts": result.calibration_prompts, "seed": seed, "hurry_psnr_db": result.hurry_psnr_db,
                        "phast_psnr_db": result.phast_psnr_db, "iterations": result.iterations,
                        "moves_accepted": result.moves_accepted, "evaluations": result.evaluations,
                        "history": result.history},
        "held_out": {"prompts": result.held_out_prompts, "hurry_psnr_db": result.held_out_hurry_psnr_db,
                     "phast_psnr_db": result.held_out_phast_psnr_db},
    })
    data["policies"].sort(key=lambda e: (e["reuse_steps"], e["scope"]))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(dumps(data, indent=2) + "\n")
    tmp.replace(path)


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one 'error: ...' line and exit code 2, like the rest of the CLI
        raise ValueError(f"search-policy: {message}")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m analysis search-policy",
                description="PHAST: greedy search for an attention-map reuse policy")
    p.add_argument("--model", default="default")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--reuse-steps", type=int, default=None, help="number of R steps (default: (steps + 1) // 3)")
    p.add_argument("--prompts", type=int, default=8, help="calibration prompts")
    p.add_argument("--held-out", type=int, default=None, help="held-out prompts (default: as many as --prompts)")
    p.add_argument("--iterations", type=int, default=10)
    p.add_argument("--radius", type=int, default=1, help="how far one R step may move per iteration")
    p.add_argument("--scope", default="both", choices=("self", "cross", "both"))
    p.add_argument("--max-run", type=int, default=2, help="longest run of R steps allowed (0 = no limit)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--guidance", type=float, default=5.0)
    p.add_argument("--scheduler", default="ddim", choices=SCHEDULERS)
    p.add_argument("--size", type=int, default=None)
    p.add_argument("--out", default=None, help="policy file (default: assets/policies/<model>-<steps>.json)")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    try:
        try:
            args = build_parser().parse_args(argv)
        except SystemExit as done:  # --help
            return int(done.code or 0) if not isinstance(done.code, str) else 2
        if args.prompts < 1 or args.iterations < 0 or args.radius < 1 or args.max_run < 0:
            raise ValueError("search-policy: need --prompts >= 1, --iterations >= 0, --radius >= 1, --max-run >= 0")
        from analysis.models import load_pipeline, model_name
        from analysis.run_folder import OutDirError, check_out_file

        try:  # the output policy of every writing command, before any work (a policy file: format + policies)
            out = check_out_file(args.out or str(policy_path(args.model, args.steps)), ("format", "policies"))
        except OutDirError as err:
            raise ValueError(f"search-policy: {err}") from None
        pipe = load_pipeline(args.model, scheduler=args.scheduler)
        pipe.set_progress_bar_config(disable=True)
        calib = calibration_prompts(args.prompts, seed=args.seed)
        n_held = args.prompts if args.held_out is None else args.held_out
        held = calibration_prompts(n_held, seed=args.seed + 1, exclude=calib) if n_held > 0 else []
        result = search(pipe, args.steps, args.reuse_steps, calib, seed=args.seed, guidance=args.guidance,
                        scope=args.scope, max_run=args.max_run if args.max_run > 0 else args.steps,
                        iterations=args.iterations, radius=args.radius, size=args.size, held_out=held,
                        progress=not args.no_progress)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    model = model_name(pipe)  # load_pipeline named it args.model
    write_policy(out, result, model, args.scheduler, args.guidance, args.size, args.seed)
    summary = {k: v for k, v in asdict(result).items() if k not in ("history", "calibration_prompts", "held_out_prompts")}
    summary["out"] = str(out)
    print(f"HURRY {result.hurry_policy}: calibration {result.hurry_psnr_db:.2f} dB, held-out "
          f"{_fmt(result.held_out_hurry_psnr_db)}", file=sys.stderr)
    print(f"PHAST {result.policy}: calibration {result.phast_psnr_db:.2f} dB, held-out "
          f"{_fmt(result.held_out_phast_psnr_db)}", file=sys.stderr)
    print(dumps(summary))
    return 0


def _fmt(x: float | None) -> str:
    from viz.numbers import number

    return number(x, ".2f", "dB")


if __name__ == "__main__":
    sys.exit(main())
