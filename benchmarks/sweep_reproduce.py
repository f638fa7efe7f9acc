"""Do a shipped sweep's settings still produce the shipped images? A refactor must not change a number.

Re-runs a seeded sample of a shipped sweep's rows (prompt, seed, setting: the same model, steps, scheduler and
guidance as its meta.json), each with its full-compute baseline, and compares the PSNR and SSIM to full
compute, and the compact counters, with the shipped table's values exactly (PSNR equal to the last bit means
the accelerated image equals the shipped one, given the baseline is recomputed the same way). Peers and
baselines are left out (a peer is another package; a baseline row's PSNR is infinite by definition).

    python -m benchmarks.sweep_reproduce --sweep assets/results/default-20 --sample 12

Prints one line per row and a JSON summary last; exit code 1 if any row differs.
"""
from __future__ import annotations

import argparse
import csv
import gzip
import io
import json
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def shipped_rows(sweep: Path) -> list[dict]:
    with gzip.open(sweep / "table.csv.gz") as f:
        rows = list(csv.DictReader(io.TextIOWrapper(f)))
    return [r for r in rows if r["technique"] not in ("baseline", "peer") and r["specs"]]


def reproduce(pipe, meta: dict, row: dict) -> dict:
    from analysis import metrics
    from analysis.accel import parse_accel
    from analysis.eval.sweep import _compact
    from analysis.models import set_scheduler
    from analysis.run import RunConfig, run_once

    set_scheduler(pipe, row["scheduler"])
    common = dict(prompt=row["prompt"], seed=int(row["seed"]), steps=int(meta["steps"]),
                  guidance=float(meta["guidance"]), scheduler=row["scheduler"], warmup=False)
    base = RunConfig(**common)
    config = RunConfig(**common, accel=tuple(parse_accel(s) for s in row["specs"].split(" & ")))
    base_image = run_once(pipe, base, (), base.steps).images[0]
    run = run_once(pipe, config, config.hooked_accel(), config.accel_steps)
    psnr, ssim = metrics.psnr(base_image, run.images[0]), metrics.ssim(base_image, run.images[0])
    counters = _compact(run.counters)
    shipped_counters = json.loads(row["counters"] or "{}")
    same = (repr(float(psnr)) == repr(float(row["psnr_db"])) and repr(float(ssim)) == repr(float(row["ssim"]))
            and counters == shipped_counters)
    return {"setting": row["setting"], "prompt_id": int(row["prompt_id"]), "seed": int(row["seed"]),
            "psnr_db": psnr, "shipped_psnr_db": float(row["psnr_db"]), "ssim": ssim,
            "shipped_ssim": float(row["ssim"]), "counters_equal": counters == shipped_counters, "identical": same}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sweep", type=Path, default=ROOT / "assets/results/default-20")
    parser.add_argument("--sample", type=int, default=12, help="rows to re-run (seeded draw; 0 = all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the summary here")
    args = parser.parse_args(argv)
    from analysis.jsonsafe import emit
    from analysis.models import load_pipeline

    meta = json.loads((args.sweep / "meta.json").read_text())
    rows = shipped_rows(args.sweep)
    rng = random.Random(args.seed)
    # one row per setting first (every technique family gets checked), then at random
    by_setting: dict[str, list[dict]] = {}
    for r in rows:
        by_setting.setdefault(r["setting"], []).append(r)
    picked = [rng.choice(group) for group in by_setting.values()]
    rng.shuffle(picked)
    picked = picked if args.sample == 0 else picked[:args.sample]
    pipe = load_pipeline(meta["model"])
    pipe.set_progress_bar_config(disable=True)
    results = []
    for row in picked:
        out = reproduce(pipe, meta, row)
        results.append(out)
        print(f"{'same' if out['identical'] else 'DIFFERENT'}  {out['setting']:<34} prompt {out['prompt_id']:>2} seed "
              f"{out['seed']}  PSNR {out['psnr_db']:.6f} (shipped {out['shipped_psnr_db']:.6f})", flush=True)
    summary = {"sweep": str(args.sweep.relative_to(ROOT)) if args.sweep.is_absolute() else str(args.sweep),
               "rows": len(results), "identical": sum(r["identical"] for r in results),
               "settings": sorted({r["setting"] for r in results}), "results": results}
    emit(summary, args.json)
    return 0 if summary["identical"] == summary["rows"] else 1


if __name__ == "__main__":
    sys.exit(main())
