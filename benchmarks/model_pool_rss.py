"""Resident memory of the app's model pool across a model switch and back (issue 19 target: within 10% of
the start). Loads the first model, runs one request on it, switches to the second (capacity 1 evicts the
first), runs it, switches back and runs again; prints RSS after each phase and one JSON object last.

    python -m benchmarks.model_pool_rss --models default,sd15-random --steps 2 --threads 1
"""
from __future__ import annotations

import argparse
import json
import sys


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.model_pool_rss")
    p.add_argument("--models", default="default,sd15-random", help="FIRST,SECOND (pool allowlist entries)")
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--capacity", type=int, default=1)
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    from analysis import live
    from analysis.model_pool import ModelPool, parse_allowlist

    pool = ModelPool(parse_allowlist(args.models), capacity=args.capacity)
    first, second = pool.labels[:2]

    def use(label: str, seed: int) -> None:
        request = live.Request(model=label, prompt="a large red circle on the left", seed=seed, steps=args.steps)
        live.measure_baseline(pool.get(label), request, timed_runs=1)

    phases = {"start": rss_mb()}
    use(first, 0)
    phases[f"{first} loaded and run"] = rss_mb()
    use(second, 0)
    phases[f"switched to {second}"] = rss_mb()
    use(first, 1)
    phases[f"back to {first}"] = rss_mb()
    use(first, 2)
    phases[f"{first} again"] = rss_mb()
    for name, mb in phases.items():
        print(f"{name:>32}: {mb:8.0f} MB", file=sys.stderr)
    base = phases[f"{first} loaded and run"]
    back = phases[f"back to {first}"]
    print(json.dumps({"models": [first, second], "capacity": args.capacity,
                      "rss_mb": {k: round(v) for k, v in phases.items()}, "back_vs_start": round(back / base, 3)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
