"""Which tokens does an AT-EDM ranking prune: the objects' or the background's? (issue 17)

The ablation "G-WPR against random" compares quality; this says why. For one shapes-world prompt and seed,
the objects' pixels are taken from the same-seed full-compute image (the palette-colour foreground of
`analysis.toy.detect.colour_masks`: where the objects are when nothing is pruned), averaged down to each
pruning layer's token grid (a token is an object token when at least half of its pixels are). The
accelerated run carries a cheap attention probe, so AT-EDM's pruning log (signal "atedm_pruning",
conditional branch) records which tokens were pruned at every step. Over the layers and steps that pruned:

    object_pruned_share      pruned object tokens / object tokens
    background_pruned_share  pruned background tokens / background tokens
    object_enrichment        object_pruned_share / pruned share of all tokens (1 = blind to objects,
                             above 1 = prunes objects preferentially)

Small objects are a handful of latent tokens (2-9 at 8x8), so read these over many prompts.
"""
from __future__ import annotations

import numpy as np
from skimage.measure import block_reduce
from skimage.transform import resize


def object_mask(image: np.ndarray) -> np.ndarray:
    """(H, W) bool: pixels of any palette colour (the shapes world's objects)."""
    from analysis.toy.detect import colour_masks

    return np.any(np.stack(list(colour_masks(image).values())), axis=0)


def token_mask(mask: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """(h, w) bool: tokens whose pixels are at least half object (the exact area share of each token's cell
    when the image divides into the grid, as the UNet's latents do; else an area-weighted resize)."""
    (height, width), (h, w) = mask.shape, grid
    if height % h == 0 and width % w == 0:
        return block_reduce(mask.astype(np.float32), (height // h, width // w), np.mean) >= 0.5
    return resize(mask.astype(np.float32), grid, order=1, anti_aliasing=False) >= 0.5


def share_from_log(pruning: dict, mask: np.ndarray) -> dict[str, float | int | None]:
    """Object and background shares of the pruned tokens, from one run's "atedm_pruning" signal (prompt 0)."""
    counts = np.zeros(4, dtype=np.int64)  # pruned object, object, pruned background, background
    for layer in pruning["layers"]:
        pruned = np.asarray(pruning["pruned"][layer])[:, 0]  # (steps, h, w)
        objects = token_mask(mask, tuple(pruning["grid"][layer]))
        for step_pruned in pruned:
            if not step_pruned.any():  # this layer did not prune at this step (DSAP, ratio 0)
                continue
            counts += [(step_pruned & objects).sum(), objects.sum(), (step_pruned & ~objects).sum(), (~objects).sum()]
    obj_pruned, obj, bg_pruned, bg = (int(c) for c in counts)
    if obj == 0 or bg == 0:
        return {"object_tokens": obj, "background_tokens": bg, "object_pruned_share": None,
                "background_pruned_share": None, "object_enrichment": None}
    overall = (obj_pruned + bg_pruned) / (obj + bg)
    return {"object_tokens": obj, "background_tokens": bg, "object_pruned_share": obj_pruned / obj,
            "background_pruned_share": bg_pruned / bg,
            "object_enrichment": (obj_pruned / obj) / overall if overall else None}


def object_token_share(pipe, prompt: str, seed: int, steps: int, guidance: float, config) -> dict:
    """Run `config` (an ATEDMConfig) on one prompt and seed with the pruning log on; its shares (above)."""
    from analysis.probes.convergence import ConvergenceConfig
    from analysis.run import RunConfig, generate

    run = RunConfig(prompt, seed=seed, steps=steps, guidance=guidance, accel=(config,), probes=(ConvergenceConfig(),))
    result = generate(pipe, run, measure_latency=False)
    pruning = result.signals.get("atedm_pruning")
    if not pruning:
        raise ValueError(f"atedm {config}: no pruning was logged (ratio 0?)")
    return share_from_log(pruning, object_mask(result.baseline_image[0]))


def variants(ratio: float) -> dict[str, str]:
    """The fair-comparison rankings at one ratio (issue 17) as --accel specs: AT-EDM as shipped, and each
    control. The sweep's `pruning` grid and `benchmarks.atedm_fairness` both read this list."""
    base = f"atedm:ratio={ratio}"
    return {
        "gwpr": base,
        "gwpr-shared": f"{base},cfg_mask=shared",
        "gwpr-rms-shared": f"{base},cfg_mask=shared,head_reduce=rms",
        "random-call": f"{base},ranking=random",
        "random-layer-shared": f"{base},ranking=random,random_draw=layer,cfg_mask=shared",
        "cross-shared": f"{base},ranking=cross,cfg_mask=shared",
    }
