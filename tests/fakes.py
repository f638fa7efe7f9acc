"""Schema-shaped fake data (docs/signals.md) for tests that must not depend on running the probes."""
from __future__ import annotations

import numpy as np

from analysis.run import RunResult

TOY_ATTN = {  # attention module (without .attn1/.attn2) -> latent grid of the toy UNet
    "down_blocks.0.attentions.0.transformer_blocks.0": (16, 16),
    "down_blocks.1.attentions.0.transformer_blocks.0": (8, 8),
    "down_blocks.1.attentions.0.transformer_blocks.1": (8, 8),
    "mid_block.attentions.0.transformer_blocks.0": (4, 4),
    "up_blocks.1.attentions.0.transformer_blocks.0": (8, 8),
    "up_blocks.2.attentions.0.transformer_blocks.0": (16, 16),
}
TOY_BLOCKS = {"down_blocks.0": "encoder", "down_blocks.1": "encoder", "down_blocks.2": "encoder",
              "mid_block": "bottleneck", "up_blocks.0": "decoder", "up_blocks.1": "decoder", "up_blocks.2": "decoder"}
TOKENS = ["<|startoftext|>", "a", "red", "circle", "on", "the", "left", "<|endoftext|>"] + ["<pad>"] * 24


def fake_signals(steps: int = 4, n_prompts: int = 1, n_tokens: int = 32, seed: int = 0, nan_step: int | None = None) -> dict:
    rng = np.random.default_rng(seed)
    cross, cross_heads, self_maps, resolution, scores = {}, {}, {}, {}, {}
    for base, (h, w) in TOY_ATTN.items():
        a = rng.random((steps, n_prompts, n_tokens, h, w)).astype(np.float32)
        a /= a.sum(axis=2, keepdims=True)
        cross[base + ".attn2"] = (a * 1).astype(np.float16)
        resolution[base + ".attn2"] = {"native": [h, w], "kept": [h, w]}
        if h <= 8:
            cross_heads[base + ".attn2"] = rng.random((steps, n_prompts, 2, n_tokens, h, w)).astype(np.float16)
            hk = max(2, h // 2)
            self_maps[base + ".attn1"] = rng.random((steps, n_prompts, h, w, hk, hk)).astype(np.float16)
            resolution[base + ".attn1"] = {"native": [h, w], "kept": [h, w], "keys_kept": [hk, hk]}
        s = rng.random((steps, n_prompts, h, w)).astype(np.float32)
        scores[base + ".attn1"] = s / s.sum(axis=(2, 3), keepdims=True)
    attn2 = [b + ".attn2" for b in TOY_ATTN]
    out_l2 = (np.exp(-np.arange(1, steps))[None, :] * rng.uniform(0.5, 2, (len(attn2), 1))).astype(np.float32)
    probs_l2 = (out_l2 * 0.1).astype(np.float32)
    blocks = list(TOY_BLOCKS)
    mse = rng.random((len(blocks), steps - 1)).astype(np.float32)
    frob = rng.random((len(blocks), steps)).astype(np.float32) + 1
    if nan_step is not None:
        out_l2[:, nan_step - 1] = np.nan
        mse[:, nan_step - 1] = np.nan
    pca = {"down_blocks.0": {0: rng.integers(0, 255, (16, 16, 3), dtype=np.uint8),
                             steps - 1: rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)}}
    kept = sum(a.nbytes for a in cross.values()) + sum(a.nbytes for a in cross_heads.values()) + sum(
        a.nbytes for a in self_maps.values())
    return {
        "attention_maps": {"steps": list(range(steps)), "cross": cross, "cross_heads": cross_heads, "self": self_maps,
                           "resolution": resolution, "budget_bytes": 64 << 20, "kept_bytes": int(kept)},
        "cross_attn_convergence": {"layers": attn2, "steps": list(range(1, steps)), "output_l2": out_l2,
                                   "probs_l2": probs_l2},
        "feature_drift": {"blocks": blocks, "role": dict(TOY_BLOCKS), "mse": mse, "frobenius": frob, "pca": pca},
        "token_rank": {"layers": [b + ".attn1" for b in TOY_ATTN], "steps": list(range(steps)), "scores": scores,
                       "params": {"iterations": 20, "damping": 0.85, "head_reduce": "mean"}},
    }


def fake_result(steps: int = 4, n_prompts: int = 1, accelerated: bool = True, signals: bool = True) -> RunResult:
    rng = np.random.default_rng(1)
    base = rng.integers(0, 255, (n_prompts, 64, 64, 3), dtype=np.uint8)
    img = base.copy()
    if accelerated:
        img[:, :8] = 0
    prompts = ["a red circle on the left"] * n_prompts
    return RunResult(
        config={"prompt": prompts[0] if n_prompts == 1 else prompts, "negative_prompt": "", "seed": 0, "steps": steps,
                "guidance": 5.0, "scheduler": "ddim", "size": None, "model": "default",
                "accel": {"tgate": {"gate_step": 2, "key_steps": (0, 1)}} if accelerated else {},
                "probes": ["attention_maps"], "repeats": 1},
        model="default",
        baseline_image=base,
        image=img,
        baseline_latency_s=1.0,
        latency_s=0.5 if accelerated else 1.0,
        instrumented_latency_s=2.0,
        psnr_db=30.0 if accelerated else float("inf"),
        ssim=0.9 if accelerated else 1.0,
        fidelity={"overall": 0.5, "colour": 1.0, "shape": None, "n_images": 1, "n_attributes": {"colour": 1}},
        counters={"tgate": {"attn_computed": 10, "attn_reused": np.int64(6)}, "unet": {"batch_rows": [2, 2, 1, 1]}},
        signals=fake_signals(steps, n_prompts) if signals else {},
        timesteps=[float(t) for t in np.linspace(999, 1, steps)],
        tokens=[list(TOKENS) for _ in range(n_prompts)],
        latencies={"baseline": [1.0], "accelerated": [0.5]},
    )


def unet_inputs(unet, seed: int = 0) -> tuple:
    """(sample, timestep, encoder_hidden_states, kwargs): random inputs of one UNet call with CFG rows (SDXL's
    added conditions where the UNet takes them), for tests that call a UNet or its parts directly."""
    import torch

    g = torch.Generator().manual_seed(seed)
    size = unet.config.sample_size
    x = torch.randn(2, 4, size, size, generator=g)
    ehs = torch.randn(2, 5, unet.config.cross_attention_dim, generator=g)
    kwargs = {}
    if unet.config.addition_embed_type == "text_time":
        kwargs["added_cond_kwargs"] = {"text_embeds": torch.randn(2, 32, generator=g),
                                       "time_ids": torch.randn(2, 6, generator=g)}
    return x, torch.tensor(500), ehs, kwargs
