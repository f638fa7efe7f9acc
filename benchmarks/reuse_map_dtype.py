"""Reuse's cached maps in half precision (issue 20 item 1): how far the image moves from the float32 path.

For each model, prompt and dtype (float16, bfloat16) the reuse run with `map_dtype` is compared with the same run
keeping float32 maps (PSNR; identical = inf) and with full compute. A float16 map takes half the memory of a
float32 one (an SD 1.5 self-attention map at 512 px is about 0.5 GB per layer per step with CFG in float32).

    python -m benchmarks.reuse_map_dtype --json docs/results/reuse_map_dtype.json

Prints one line per model and dtype and a JSON object last.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SETTINGS = {"default": (20, None, 8), "sd15-random": (8, 256, 2)}  # model: (steps, size, prompts)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    from analysis import metrics
    from analysis.accel import parse_accel
    from analysis.eval.equal_latency import shapes_prompts
    from analysis.jsonsafe import emit
    from analysis.models import load_pipeline
    from analysis.run import RunConfig, run_once

    out = {}
    for model, (steps, size, n_prompts) in SETTINGS.items():
        pipe = load_pipeline(model)
        pipe.set_progress_bar_config(disable=True)
        rows = {"float16": [], "bfloat16": []}
        for i, prompt in enumerate(shapes_prompts(n_prompts, seed=0)):
            def image(spec=None):
                config = RunConfig(prompt=prompt, seed=i, steps=steps, size=size,
                                   accel=(parse_accel(spec),) if spec else ())
                return run_once(pipe, config, config.hooked_accel(), config.accel_steps).images

            full, fp32 = image(), image("reuse")
            for dtype in rows:
                half = image(f"reuse:map_dtype={dtype}")
                rows[dtype].append({"psnr_vs_float32_maps": metrics.psnr(fp32, half),
                                    "psnr_vs_full": metrics.psnr(full, half), "float32_psnr_vs_full": metrics.psnr(full, fp32)})
        out[model] = {"steps": steps, "size": size, "prompts": n_prompts, "dtypes": {}}
        for dtype, r in rows.items():
            vs32 = [x["psnr_vs_float32_maps"] for x in r]
            summary = {"min_psnr_vs_float32_maps": min(vs32), "median_psnr_vs_float32_maps": statistics.median(vs32),
                       "median_psnr_vs_full": statistics.median(x["psnr_vs_full"] for x in r),
                       "median_float32_psnr_vs_full": statistics.median(x["float32_psnr_vs_full"] for x in r)}
            out[model]["dtypes"][dtype] = summary
            print(f"reuse_map_dtype: {model} {dtype}: min PSNR to the float32-map image {summary['min_psnr_vs_float32_maps']:.1f} dB "
                  f"(median {summary['median_psnr_vs_float32_maps']:.1f}); to full compute {summary['median_psnr_vs_full']:.1f} "
                  f"vs {summary['median_float32_psnr_vs_full']:.1f} dB with float32 maps", flush=True)
    emit(out, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
