"""`analysis.eval.cost.ideal_speedup` on real runs: the cost of its first (profiling) and later (cached) calls,
and its ideal speed-up beside the measured one, for single techniques and combinations.

    python -m benchmarks.ideal_speedup_check [--model default] [--steps 20] [--repeats 3] [--threads 1]

Each configuration runs through `analysis.run.generate` (interleaved baseline / accelerated repeats, medians),
then `ideal_speedup(pipe, config, result.counters)` is timed. Prints one line per configuration and one JSON
object on the last line.
"""
from __future__ import annotations

import argparse
import sys
import time

import torch

from analysis.accel import parse_accel
from analysis.eval.cost import ideal_speedup
from analysis.jsonsafe import dumps
from analysis.models import load_pipeline
from analysis.run import RunConfig, generate

CONFIGS = (["tgate"], ["reuse"], ["fastdiff"], ["atedm"], ["steps:steps=12"],
           ["tgate:sp_interval=1,fi_interval=1", "reuse:scope=self"], ["atedm", "fastdiff"], ["tgate", "steps:steps=15"])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.ideal_speedup_check", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="default")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        pipe = load_pipeline(args.model)
    except (ValueError, OSError) as err:
        print(f"error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    pipe.set_progress_bar_config(disable=True)
    rows = []
    for specs in CONFIGS:
        config = RunConfig(prompt="a large red circle on the left", steps=args.steps, repeats=args.repeats,
                           accel=tuple(parse_accel(s) for s in specs))
        result = generate(pipe, config, measure_latency=True)
        start = time.perf_counter()
        out = ideal_speedup(pipe, config, result.counters)
        call_s = time.perf_counter() - start
        rows.append({"techniques": specs, "measured_speedup": result.speedup, "call_s": call_s, **out})
        print(f"{'+'.join(specs)}: ideal {out['ideal_speedup']:.3f}x, measured {result.speedup:.3f}x, "
              f"call {call_s * 1000:.1f} ms", flush=True)
    print(dumps({"model": args.model, "steps": args.steps, "repeats": args.repeats,
                 "threads": torch.get_num_threads(), "rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
