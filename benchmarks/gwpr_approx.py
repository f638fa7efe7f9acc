"""G-WPR without the N x N map (issue 20 item 2): how close the pooled and streamed rankings come to the exact one.

Ranking. On real runs (full compute), the input of every AT-EDM pruning layer's attn1 (the first transformer block's
normed hidden states) is captured at a few steps; Q and K are formed by that attn1, and the exact G-WPR (on the
explicit map, `token_rank.gwpr`) is compared with `gwpr_streamed` and `gwpr_pooled` (pool 2 and 4) per batch row:
Spearman's rank correlation, and the overlap of the kept sets at AT-EDM's ratio 0.63 (|kept_exact & kept_approx| /
|kept|; random ranking would give about 0.37).

Quality. AT-EDM (ratio 0.63, DSAP, every layer) with each rank map against full compute and against the exact-map
ranking (PSNR, same prompts and seeds).

    python -m benchmarks.gwpr_approx --json docs/results/gwpr_approx.json

No timing (the speed of each rank map is in the layer profile and the bench). Prints one line per model and map
and a JSON object last.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SETTINGS = {"default": (20, None, 6), "sd15-random": (8, 256, 2)}  # model: (steps, size, prompts)
MAPS = {"streamed": {"rank_map": "streamed"}, "pooled-2": {"rank_map": "pooled", "rank_pool": 2},
        "pooled-4": {"rank_map": "pooled", "rank_pool": 4}}
RATIO = 0.63


def _capture(pipe, config, steps_wanted):
    """{(layer, step): attn1's normed input} over one full-compute run."""
    from analysis.accel.pruning_layers import find_layers
    from analysis.run import run_once

    captured, handles, step = {}, [], {"i": -1}

    def on_unet(module, args, kwargs):
        step["i"] += 1

    handles.append(pipe.unet.register_forward_pre_hook(on_unet, with_kwargs=True))
    for layer in find_layers(pipe.unet):
        attn1 = layer.model.transformer_blocks[0].attn1

        def pre(module, args, kwargs, name=layer.name):
            if step["i"] in steps_wanted:
                captured[(name, step["i"])] = args[0].detach().clone()

        handles.append(attn1.register_forward_pre_hook(pre, with_kwargs=True))
    try:
        run_once(pipe, config, (), config.steps)
    finally:
        for h in handles:
            h.remove()
    return captured


def _compare(pipe, captured, latent_hw):
    import torch
    from scipy.stats import spearmanr

    from analysis.probes._common import token_grid
    from analysis.token_rank import gwpr, gwpr_pooled, gwpr_streamed

    modules = dict(pipe.unet.named_modules())
    rows = {name: [] for name in MAPS}
    for (layer, _), normed in captured.items():
        attn = modules[f"{layer}.transformer_blocks.0.attn1"]
        with torch.inference_mode():
            q, k = attn.head_to_batch_dim(attn.to_q(normed)), attn.head_to_batch_dim(attn.to_k(normed))
            exact = gwpr(attn.get_attention_scores(q, k, None), attn.heads)
            n = exact.shape[1]
            grid = token_grid(n, latent_hw)
            approx = {"streamed": gwpr_streamed(q, k, attn.heads, attn.scale),
                      "pooled-2": gwpr_pooled(q, k, attn.heads, attn.scale, grid, 2),
                      "pooled-4": gwpr_pooled(q, k, attn.heads, attn.scale, grid, 4)}
        keep = n - int(RATIO * n)
        for name, scores in approx.items():
            for b in range(exact.shape[0]):
                kept_exact = set(exact[b].argsort(descending=True)[:keep].tolist())
                kept = set(scores[b].argsort(descending=True)[:keep].tolist())
                rows[name].append({"layer": layer, "tokens": n, "spearman": float(spearmanr(exact[b], scores[b])[0]),
                                   "kept_overlap": len(kept_exact & kept) / keep})
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    from analysis import metrics
    from analysis.accel.atedm import ATEDMConfig
    from analysis.eval.equal_latency import shapes_prompts
    from analysis.jsonsafe import emit
    from analysis.models import load_pipeline
    from analysis.run import RunConfig, run_once

    out = {"ratio": RATIO, "models": {}}
    for model, (steps, size, n_prompts) in SETTINGS.items():
        pipe = load_pipeline(model)
        pipe.set_progress_bar_config(disable=True)
        ranking = {name: [] for name in MAPS}
        quality = {name: [] for name in ("exact", *MAPS)}
        for i, prompt in enumerate(shapes_prompts(n_prompts, seed=0)):
            config = RunConfig(prompt=prompt, seed=i, steps=steps, size=size)
            side = (size or pipe.unet.config.sample_size * pipe.vae_scale_factor) // pipe.vae_scale_factor
            captured = _capture(pipe, config, {steps // 4, steps // 2, 3 * steps // 4})
            for name, r in _compare(pipe, captured, (side, side)).items():
                ranking[name] += r
            full = run_once(pipe, config, (), steps).images
            exact = run_once(pipe, config, (ATEDMConfig(layers="all"),), steps).images
            quality["exact"].append({"psnr_vs_full": metrics.psnr(full, exact)})
            for name, fields in MAPS.items():
                images = run_once(pipe, config, (ATEDMConfig(layers="all", **fields),), steps).images
                quality[name].append({"psnr_vs_full": metrics.psnr(full, images),
                                      "psnr_vs_exact_ranking": metrics.psnr(exact, images)})
        entry = {"steps": steps, "size": size, "prompts": n_prompts, "maps": {}}
        for name in MAPS:
            r, q = ranking[name], quality[name]
            summary = {"comparisons": len(r), "median_spearman": statistics.median(x["spearman"] for x in r),
                       "min_spearman": min(x["spearman"] for x in r),
                       "median_kept_overlap": statistics.median(x["kept_overlap"] for x in r),
                       "min_kept_overlap": min(x["kept_overlap"] for x in r),
                       "median_psnr_vs_full": statistics.median(x["psnr_vs_full"] for x in q),
                       "median_psnr_vs_exact_ranking": statistics.median(x["psnr_vs_exact_ranking"] for x in q)}
            entry["maps"][name] = summary
            print(f"gwpr_approx: {model} {name}: Spearman median {summary['median_spearman']:.3f} "
                  f"(min {summary['min_spearman']:.3f}), kept-set overlap median {summary['median_kept_overlap']:.3f} "
                  f"(min {summary['min_kept_overlap']:.3f}); PSNR to full compute {summary['median_psnr_vs_full']:.1f} dB, "
                  f"to the exact ranking's image {summary['median_psnr_vs_exact_ranking']:.1f} dB", flush=True)
        entry["exact_median_psnr_vs_full"] = statistics.median(x["psnr_vs_full"] for x in quality["exact"])
        out["models"][model] = entry
    emit(out, str(args.json) if args.json else None)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
