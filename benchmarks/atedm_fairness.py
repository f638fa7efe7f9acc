"""Which tokens each AT-EDM ranking prunes, over many prompts (issue 17; analysis/eval/pruning_share.py).

    python -m benchmarks.atedm_fairness --prompts 10 --seeds 0 --ratios 0.3,0.5,0.63,0.8 [--json OUT]

For every ratio and ranking variant (`pruning_share.variants`: G-WPR as shipped, with one mask shared by both
CFG branches, with RMS over heads; random drawn at every call or once per layer; cross-attention), on the
same prompts and seeds: the share of object tokens and of background tokens it prunes, and the object
enrichment (object share over the overall pruned share; 1 = blind to objects), each the mean over images
with a 95% bootstrap interval over prompts. Quality per variant comes from the sweep
(`python -m analysis sweep --grid pruning ...`). Prints a table and one JSON object on its last line.
"""
from __future__ import annotations

import argparse

import torch

from analysis.accel import parse_accel
from analysis.eval.distribution import bootstrap_mean
from analysis.eval.pruning_share import object_token_share, variants
from analysis.eval.sweep import read_prompts
from analysis.jsonsafe import emit
from analysis.models import load_pipeline

MEASURES = ("object_pruned_share", "background_pruned_share", "object_enrichment")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default")
    parser.add_argument("--prompt-file", default="assets/prompts/shapes-30.txt")
    parser.add_argument("--prompts", type=int, default=10, help="the first N prompts of the file")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--ratios", default="0.3,0.5,0.63,0.8")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=5.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    pipe = load_pipeline(args.model, scheduler="ddim")
    pipe.set_progress_bar_config(disable=True)
    prompts = read_prompts(args.prompt_file)[: args.prompts]
    seeds = [int(s) for s in args.seeds.split(",")]
    ratios = [float(r) for r in args.ratios.split(",")]

    report = {"model": args.model, "prompts": len(prompts), "seeds": seeds, "steps": args.steps,
              "guidance": args.guidance, "object_mask": "palette-colour foreground of the same-seed full-compute "
              "image; a token is an object token when at least half its pixels are", "rows": []}
    print(f"{'ratio':>5s} {'variant':>20s} {'object':>16s} {'background':>16s} {'enrichment [95%]':>22s}")
    for ratio in ratios:
        for name, spec in variants(ratio).items():
            config = parse_accel(spec)
            shares = [(pid, object_token_share(pipe, prompt, seed, args.steps, args.guidance, config))
                      for pid, prompt in enumerate(prompts) for seed in seeds]
            shares = [(pid, s) for pid, s in shares if s["object_enrichment"] is not None]
            row = {"ratio": ratio, "variant": name, "spec": spec, "images": len(shares)}
            if not shares:  # no image with both object and background tokens at this ratio
                report["rows"].append(row)
                print(f"{ratio:5.2f} {name:>20s} (no image with objects found)", flush=True)
                continue
            for measure in MEASURES:
                est = bootstrap_mean([s[measure] for _, s in shares], [pid for pid, _ in shares])
                row[measure] = est.value
                row[f"{measure}_low"], row[f"{measure}_high"] = est.low, est.high
            report["rows"].append(row)
            print(f"{ratio:5.2f} {name:>20s} {row['object_pruned_share']:16.3f} {row['background_pruned_share']:16.3f} "
                  f"{row['object_enrichment']:8.3f} [{row['object_enrichment_low']:.3f}, "
                  f"{row['object_enrichment_high']:.3f}]", flush=True)
    emit(report, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
