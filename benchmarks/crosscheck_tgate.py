"""Cross-check DiffScope's T-GATE plug-in against the reference implementation (PyPI `tgate==1.0.0`).

A standalone script, run with a scratch virtual environment OUTSIDE the repository that has the reference
package (it is not a dependency of DiffScope, and the test suite never imports this file):

    python3 -m venv TGATE_VENV
    TGATE_VENV/bin/pip install torch==2.13.0 diffusers==0.42.1 transformers==5.23.0 tgate==1.0.0 scikit-image==0.26.0
    TGATE_VENV/bin/python benchmarks/crosscheck_tgate.py [--model toy|sdxl|default] [--steps 25] [--size 64]

Our package is loaded by path (the repository root is put on sys.path). For each setting the same pipeline,
prompts, seed, scheduler and step count run three ways: the full-compute baseline, our `tgate` plug-in
(analysis.run.run_once) and the reference `pipe.tgate(...)` (TgateSDLoader / TgateSDXLLoader, which patch
every Attention.forward for good, so the reference runs last). The images must agree to >= 35 dB PSNR; the
baseline-vs-T-GATE PSNR is printed beside it to show the settings really change the image.

Prints one JSON object on its last line; exit code 1 if any setting falls below the threshold.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
THRESHOLD_DB = 35.0
SETTINGS = [  # (scheduler, gate_step, sp_interval, fi_interval, warm_up)
    ("ddim", 10, 5, 1, 2),  # the reference defaults
    ("dpm", 10, 5, 1, 2),
    ("ddim", 5, 3, 2, 1),  # self-attention cached on both sides of the gate
]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="toy", choices=("toy", "sdxl", "default"))
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--guidance", type=float, default=5.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=None)
    p.add_argument("--only", type=int, action="append", help="run only these settings (index into SETTINGS)")
    args = p.parse_args(argv)

    sys.path.insert(0, str(REPO))
    import numpy as np
    import torch

    import tgate  # the reference package; only in the scratch venv

    from analysis import metrics
    from analysis.jsonsafe import dumps, json_number
    from analysis.accel.tgate import TGateConfig
    from analysis.models import load_pipeline, random_pipeline, set_scheduler
    from analysis.run import RunConfig, run_once

    torch.set_num_threads(2)
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
    for scheduler, gate_step, sp, fi, warm in chosen:
        t0 = time.time()
        pipe = make_pipe()  # fresh: the reference patches the attention modules for good
        set_scheduler(pipe, scheduler)
        config = RunConfig(prompt=prompts, seed=args.seed, steps=args.steps, guidance=args.guidance,
                           scheduler=scheduler, size=args.size)
        ours_cfg = TGateConfig(gate_step=gate_step, sp_interval=sp, fi_interval=fi, warm_up=warm)
        baseline = run_once(pipe, config, (), args.steps)[0]
        ours, _, counters, _, _ = run_once(pipe, config, (ours_cfg,), args.steps)

        loader = tgate.TgateSDXLLoader if args.model == "sdxl" else tgate.TgateSDLoader
        pipe = loader(pipe)
        extra = {} if args.size is None else {"height": args.size, "width": args.size}
        ref = pipe.tgate(
            prompt=list(prompts), negative_prompt=[""] * len(prompts), num_inference_steps=args.steps,
            guidance_scale=args.guidance, generator=torch.Generator(device="cpu").manual_seed(args.seed),
            gate_step=gate_step, sp_interval=sp, fi_interval=fi, warm_up=warm, output_type="np", **extra,
        ).images
        ref = to_uint8(ref)
        agree = metrics.psnr(ref, ours)
        rows.append({
            "scheduler": scheduler, "gate_step": gate_step, "sp_interval": sp, "fi_interval": fi, "warm_up": warm,
            "psnr_ours_vs_reference_db": json_number(agree),
            "max_abs_diff_uint8": int(np.abs(ref.astype(int) - ours.astype(int)).max()),
            "psnr_baseline_vs_reference_db": json_number(metrics.psnr(baseline, ref)),
            "counters": counters.get("tgate", {}),
            "seconds": round(time.time() - t0, 1),
        })
        print(dumps(rows[-1]), file=sys.stderr)
    worst = min(math.inf if r["psnr_ours_vs_reference_db"] == "inf" else r["psnr_ours_vs_reference_db"] for r in rows)
    summary = {"model": args.model, "steps": args.steps, "guidance": args.guidance, "seed": args.seed,
               "threshold_db": THRESHOLD_DB, "min_psnr_db": json_number(worst),
               "passed": worst >= THRESHOLD_DB, "settings": rows}
    print(dumps(summary))
    return 0 if summary["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
