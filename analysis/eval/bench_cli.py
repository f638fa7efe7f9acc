"""`python -m analysis bench`: where one UNet step spends its time, and how much of the counted savings each
technique delivers. Prints progress lines ("bench: ...") and ONE JSON object on its last line
(format "diffscope-bench/1"; other tools read its keys). `--capture` runs the probes' overhead benchmark
instead (analysis/eval/capture.py).

Four parts, each in its own module of analysis/eval/:
1. `breakdown` (profile.py): the pipeline's and one UNet call's time per component (shares sum to 1).
2. `baseline`, `noise_floor`, `techniques[*].measured_speedup` and the paired speed-ups (jobs.py): after one
   warm-up of every configuration, `--repeats` rounds of baseline + every technique + a second baseline.
3. `techniques[*].ideal_speedup` (overheads charged), `paper_ideal_speedup`, `efficiency` (cost.py, each
   technique's registered cost function): counted work x the breakdown's per-component costs; `cost_model` in the JSON says how.
4. `quality` (equal_latency.py; default 4 prompts on the default model, `--prompts N` on any): PSNR and
   prompt fidelity against step reduction at equal latency.

Timing on a shared CPU: with more runnable processes than cores, multi-threaded kernels stall on preempted
threads (2 threads measured 5x slower than 1 here), so the default on an oversubscribed CPU is 1 torch
thread (`--threads` overrides). The breakdown then times with the thread's CPU time, which preemption does not
inflate; part 2 reports wall clock (the honest number) and, beside it, process CPU time (`*_cpu`).
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from typing import Any

import torch

from analysis.catalog import ATTENTION_BACKENDS, MODEL_ALIASES
from analysis.eval.equal_latency import quality, shapes_prompts
from analysis.eval.jobs import default_specs, log, make_jobs, speed
from analysis.eval.profile import breakdown
from analysis.eval.quality import scorers_for
from analysis.jsonsafe import dumps


def cost_model_description() -> dict[str, str]:
    """The JSON's `cost_model`: the conversion (analysis/eval/cost.py) and, per technique, its registered cost
    function's own docstring (one text per rule, kept beside the code that applies it)."""
    from analysis.accel import registry

    return {
        "units": "saved work in baseline UNet calls u (timed in `breakdown`), converted to pipeline time with "
                 "the UNet's share of the pipeline: saved_fraction = saved_units * shares.unet / unet_calls",
        "ideal_speedup": "1 / (1 - saved_fraction), the saving net of the technique's own overheads (explicit "
                         "attention where maps are cached or ranked, the ranking, gathers; see each technique)",
        "efficiency": "measured_speedup / ideal_speedup",
        "paper_ideal_speedup": "the counted work alone, overheads not charged (the papers' FLOPs view)",
        **{name: " ".join((t.cost.__doc__ or "").split()) for name, t in registry().items()},
    }


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m analysis bench", description=__doc__.split("\n\n")[0],
                                epilog="python -m analysis bench --capture --help: the probes' overhead instead")
    p.add_argument("--model", default="default", metavar="|".join(MODEL_ALIASES[:2]) + "|HUB_ID|DIR")
    p.add_argument("--steps", type=int, default=10, metavar="N")
    p.add_argument("--size", type=int, default=None, metavar="PX")
    p.add_argument("--repeats", type=int, default=3, metavar="N")
    p.add_argument("--techniques", nargs="+", default=None, metavar="NAME[:k=v,...]",
                   help="default: every registered technique at its defaults, plus steps at about 0.8 N")
    p.add_argument("--prompts", type=int, default=None, metavar="N",
                   help="quality over N shapes-world prompts (default: 4 on the default model, 0 otherwise)")
    p.add_argument("--breakdown-only", action="store_true")
    p.add_argument("--breakdown-calls", type=int, default=None, metavar="N",
                   help="timed UNet calls per breakdown pass (default: max(2, repeats))")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--attention", choices=ATTENTION_BACKENDS, default="fused",
                   help="attention backend of the baseline and every technique: fused (SDPA, today's) or explicit "
                        "(probabilities materialised, the papers' baselines); the breakdown always times both")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="torch CPU threads (default: torch's, or 1 when the CPU is oversubscribed: with more runnable "
                        "processes than cores, multi-threaded kernels stall on descheduled threads and timings blow up)")
    return p


def _choose_threads(requested: int | None) -> tuple[int, str]:
    if requested is not None:
        return max(1, requested), "--threads"
    if torch.cuda.is_available():
        return torch.get_num_threads(), "torch default (GPU run)"
    cores = os.cpu_count() or 1
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = 0.0
    if torch.get_num_threads() > 1 and load > cores - 0.5:
        return 1, f"1-minute load average {load:.1f} on {cores} cores: oversubscribed, 1 thread"
    return torch.get_num_threads(), "torch default"


def main(argv=None) -> int:
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--capture" in argv:
        from analysis.eval.capture import main as capture_main

        return capture_main([a for a in argv if a != "--capture"])
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as done:  # --help, or a usage error (argparse already printed it): return, never exit
        return done.code if isinstance(done.code, int) else 2
    if args.steps < 1 or args.repeats < 1:
        print("error: --steps and --repeats must be at least 1", file=sys.stderr)
        return 2
    from analysis.run import RunConfig

    wall = time.perf_counter()
    try:
        specs = args.techniques if args.techniques is not None else default_specs(args.steps)
        prompts_n = args.prompts if args.prompts is not None else (4 if args.model == "default" else 0)
        prompt = shapes_prompts(1, seed=args.seed)[0]
        if args.prompts is not None and args.prompts < 0:
            raise ValueError("--prompts must be >= 0")
        config = RunConfig(prompt=prompt, steps=args.steps, size=args.size, seed=args.seed, attention=args.attention)
        make_jobs(specs, args.steps, config)  # validate the technique specs before loading anything
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    threads_before = torch.get_num_threads()
    threads, reason = _choose_threads(args.threads)
    torch.set_num_threads(threads)
    try:
        return _run(args, specs, prompts_n, prompt, config, threads, reason, wall)
    finally:
        torch.set_num_threads(threads_before)


def _run(args, specs, prompts_n, prompt, config, threads, reason, wall) -> int:
    log(f"loading model {args.model} ({threads} torch thread(s): {reason})")
    import diffusers.utils.logging
    import transformers.utils.logging

    for lib in (diffusers.utils.logging, transformers.utils.logging):
        lib.set_verbosity_error()
        lib.disable_progress_bar()
    from analysis.models import load_pipeline

    try:
        pipe = load_pipeline(args.model)
        pipe.set_progress_bar_config(disable=True)
    except (ValueError, OSError) as err:
        print(f"error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    from diffusers.utils import logging as dlogging

    dlogging.set_verbosity_error()
    result: dict[str, Any] = {
        "bench": "diffscope-bench/1", "model": args.model, "steps": args.steps, "repeats": args.repeats,
        "size": args.size or pipe.unet.config.sample_size * pipe.vae_scale_factor, "prompt": prompt,
        "device": str(pipe.device), "dtype": str(pipe.unet.dtype), "torch_threads": torch.get_num_threads(),
        "threads_reason": reason, "attention": args.attention,
        "torch": torch.__version__, "machine": platform.machine(), "cpu_count": os.cpu_count(),
    }
    calls = args.breakdown_calls or max(2, args.repeats)
    b = breakdown(pipe, config, args.steps, calls, log=log)
    result["breakdown"] = b
    if not args.breakdown_only:
        log(f"speed: {len(specs)} techniques x {args.repeats} repeats: {', '.join(specs)}")
        sp = speed(pipe, config, specs, args.steps, args.repeats, b)
        result["baseline"] = sp["baseline"]
        result["noise_floor"] = sp["noise_floor"]
        result["techniques"] = sp["techniques"]
        result["cost_model"] = cost_model_description()
        if prompts_n > 0:
            log(f"quality: {prompts_n} prompts")
            prompts = shapes_prompts(prompts_n, seed=args.seed)
            result["quality"] = quality(pipe, prompts, config, specs, args.steps, args.repeats,
                                        scorers=scorers_for(args.model))
    result["wall_s"] = time.perf_counter() - wall
    print(dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
