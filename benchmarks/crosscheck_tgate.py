"""Cross-check DiffScope's T-GATE plug-in against the reference implementation (PyPI `tgate==1.0.0`).

A standalone script, run with a scratch virtual environment OUTSIDE the repository that has the reference
package (it is not a dependency of DiffScope, and the test suite never imports this file):

    python3 -m venv TGATE_VENV
    TGATE_VENV/bin/pip install torch==2.13.0 diffusers==0.42.1 transformers==5.23.0 tgate==1.0.0 scikit-image==0.26.0
    TGATE_VENV/bin/python benchmarks/crosscheck_tgate.py [--model toy|sdxl|default] [--size 64] [--json OUT]

Our package is loaded by path (the repository root is put on sys.path). For each setting the same pipeline,
prompts, seed, scheduler and step count run three ways: the full-compute baseline, our `tgate` plug-in
(analysis.run.run_once) and the reference `pipe.tgate(...)` (TgateSDLoader / TgateSDXLLoader, which patch
every Attention.forward for good, so the reference runs last). The uint8 images must be identical (the same
arithmetic in the same order: anything else is a difference in the implementation, not in numerics); the
baseline-vs-T-GATE PSNR is printed beside it to show the settings really change the image. `--tolerance-db`
accepts a PSNR floor instead, for a platform where the two paths could round differently.

Prints one JSON object on its last line (and writes it to --json); exit code 1 if any setting differs.
Shipped: docs/results/crosscheck_tgate_default.json (`--model default --json ...`).
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SETTINGS = [  # (scheduler, steps, gate_step, sp_interval, fi_interval, warm_up)
    ("ddim", 25, 10, 5, 1, 2),  # the reference defaults
    ("dpm", 25, 10, 5, 1, 2),
    ("ddim", 25, 5, 3, 2, 1),  # self-attention cached on both sides of the gate
    ("ddim", 20, 8, 5, 1, 2),  # the app's default step count, the paper's 0.4 gate
]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="toy", choices=("toy", "sdxl", "default"))
    p.add_argument("--tolerance-db", type=float, default=None, help="accept PSNR >= this instead of identical images")
    p.add_argument("--json", default=None, help="also write the summary here")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--guidance", type=float, default=5.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=None)
    p.add_argument("--only", type=int, action="append", help="run only these settings (index into SETTINGS)")
    args = p.parse_args(argv)

    sys.path.insert(0, str(REPO))
    import numpy as np
    import torch

    from importlib.metadata import version

    import tgate  # the reference package; only in the scratch venv

    from analysis import metrics
    from analysis.jsonsafe import dumps, json_number
    from analysis.accel.tgate import TGateConfig
    from analysis.models import load_pipeline, random_pipeline, set_scheduler
    from analysis.run import RunConfig, run_once

    torch.set_num_threads(args.threads)
    prompts = ("a large red circle on the left", "a small blue square at the top and a large green triangle on the right")

    def make_pipe():
        if args.model == "default":
            pipe = load_pipeline("default")
        else:
            pipe = random_pipeline(args.model, seed=0)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def to_uint8(images):
        return (np.clip(images, 0, 1) * 255).round().astype(np.uint8)

    rows = []
    chosen = [SETTINGS[i] for i in args.only] if args.only else SETTINGS
    for scheduler, steps, gate_step, sp, fi, warm in chosen:
        t0 = time.time()
        pipe = make_pipe()  # fresh: the reference patches the attention modules for good
        set_scheduler(pipe, scheduler)
        config = RunConfig(prompt=prompts, seed=args.seed, steps=steps, guidance=args.guidance,
                           scheduler=scheduler, size=args.size)
        ours_cfg = TGateConfig(gate_step=gate_step, sp_interval=sp, fi_interval=fi, warm_up=warm)
        baseline = run_once(pipe, config, (), steps).images
        result = run_once(pipe, config, (ours_cfg,), steps)
        ours, counters = result.images, result.counters

        loader = tgate.TgateSDXLLoader if args.model == "sdxl" else tgate.TgateSDLoader
        pipe = loader(pipe)
        extra = {} if args.size is None else {"height": args.size, "width": args.size}
        ref = pipe.tgate(
            prompt=list(prompts), negative_prompt=[""] * len(prompts), num_inference_steps=steps,
            guidance_scale=args.guidance, generator=torch.Generator(device="cpu").manual_seed(args.seed),
            gate_step=gate_step, sp_interval=sp, fi_interval=fi, warm_up=warm, output_type="np", **extra,
        ).images
        ref = to_uint8(ref)
        agree = metrics.psnr(ref, ours)
        rows.append({
            "scheduler": scheduler, "steps": steps, "gate_step": gate_step, "sp_interval": sp, "fi_interval": fi, "warm_up": warm,
            "psnr_ours_vs_reference_db": json_number(agree),
            "max_abs_diff_uint8": int(np.abs(ref.astype(int) - ours.astype(int)).max()),
            "identical": bool(np.array_equal(ref, ours)),
            "psnr_baseline_vs_reference_db": json_number(metrics.psnr(baseline, ref)),
            "counters": counters.get("tgate", {}),
            "seconds": round(time.time() - t0, 1),
        })
        print(dumps(rows[-1]), file=sys.stderr)
    worst = min(math.inf if r["psnr_ours_vs_reference_db"] == "inf" else r["psnr_ours_vs_reference_db"] for r in rows)
    passed = (all(r["identical"] for r in rows) if args.tolerance_db is None else worst >= args.tolerance_db)
    summary = {"model": args.model, "guidance": args.guidance, "seed": args.seed, "prompts": list(prompts),
               "reference": f"tgate {version('tgate')}",
               "criterion": "identical uint8 images" if args.tolerance_db is None else f"PSNR >= {args.tolerance_db} dB",
               "min_psnr_db": json_number(worst), "passed": passed, "settings": rows}
    print(dumps(summary))
    if args.json:
        Path(args.json).write_text(dumps(summary, indent=1) + "\n")
    return 0 if summary["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
