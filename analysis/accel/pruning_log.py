"""Which tokens AT-EDM actually pruned, per layer and step (signal "atedm_pruning", docs/signals.md), and what
the counted pruning saved (`atedm_cost`, AT-EDM's cost function).

The AT-EDM handle (analysis/accel/atedm.py) hands every pruning decision to a `PruningLog`; the log keeps,
for the conditional rows only, a boolean "pruned" mask over the attention block's token grid. It records
only when an attention probe (analysis/probes: attention_maps, token_rank, convergence) is attached to the
run (the instrumented run that feeds the app's "inside" views), so the timed accelerated run does no extra work. Masks stay on the device until the run ends (no
synchronisation in the denoising loop) and are bounded by `budget_bytes` (one byte per token per prompt;
past the budget the log stops and says so).

Row layout: a [uncond; cond] batch keeps its second half; Faster-Diffusion's batched decoder stacks k steps
half-major ([uncond s..s+k-1; cond s..s+k-1], fastdiff.RowLayout), so its conditional rows are split back
onto steps s..s+k-1.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from analysis.accel import saving

DEFAULT_BUDGET_BYTES = 64 * 2**20


class PruningLog:
    def __init__(self, clock, budget_bytes: int = DEFAULT_BUDGET_BYTES):
        self.clock = clock
        self.budget_bytes = budget_bytes
        self.masks: dict[str, dict[int, torch.Tensor]] = {}  # ranking layer -> step -> (n_prompts, N) bool
        self.blocks: dict[str, str] = {}  # ranking layer (attn1) -> attention block
        self.n_tokens: dict[str, int] = {}
        self.latent_hw: tuple[int, int] | None = None
        self.kept_bytes = 0
        self.truncated = False

    def __call__(self, call_next, sample, timestep, encoder_hidden_states, *args, **kwargs):
        """UNet-seam interceptor: notes the latent grid, so token counts map back onto (h, w)."""
        self.latent_hw = (int(sample.shape[-2]), int(sample.shape[-1]))
        return call_next(sample, timestep, encoder_hidden_states, *args, **kwargs)

    def record(self, layer: str, block: str, keep: torch.Tensor, n_tokens: int) -> None:
        """keep: (batch, K) kept token indices of one pruning decision at the clock's current step."""
        step, n = self.clock.step_index, self.clock.n_prompts
        if step < 0 or self.truncated:
            return
        batch = keep.shape[0]
        if self.clock.guidance and batch >= 2 * n and batch % (2 * n) == 0:
            k, cond = batch // (2 * n), keep[batch // 2:]
        elif batch % n == 0:
            k, cond = batch // n, keep
        else:
            k, cond = 1, keep[:n]
        size = cond.shape[0] * n_tokens
        if self.kept_bytes + size > self.budget_bytes:
            self.truncated = True
            return
        pruned = torch.ones(cond.shape[0], n_tokens, dtype=torch.bool, device=keep.device)
        pruned.scatter_(1, cond, False)
        per_step = self.masks.setdefault(layer, {})
        for i, rows in enumerate(pruned.split(max(cond.shape[0] // k, 1))):
            per_step[step + i] = rows[:n]
        self.blocks[layer] = block
        self.n_tokens[layer] = n_tokens
        self.kept_bytes += size

    def signals(self) -> dict[str, Any]:
        if not self.masks:
            return {}
        from analysis.probes._common import token_grid

        steps = list(range(self.clock.num_steps))
        n = self.clock.n_prompts
        pruned, grid, counts = {}, {}, {}
        for layer, per_step in self.masks.items():
            n_tok = self.n_tokens[layer]
            h, w = token_grid(n_tok, self.latent_hw)
            arr = np.zeros((len(steps), n, h, w), dtype=bool)
            for step, m in per_step.items():
                if 0 <= step < len(steps):
                    arr[step] = m.cpu().numpy().reshape(n, h, w)
            pruned[layer] = arr
            grid[layer] = [h, w]
            counts[layer] = arr.reshape(len(steps), n, -1).sum(-1).astype(np.int32)
        return {
            "atedm_pruning": {
                "layers": list(self.masks),
                "blocks": dict(self.blocks),
                "steps": steps,
                "grid": grid,
                "pruned": pruned,
                "n_pruned": counts,
                "budget_bytes": int(self.budget_bytes),
                "truncated": bool(self.truncated),
            }
        }


def ranking_overhead_s(layer: dict, config, profile: dict) -> float:
    """Seconds one pruning call of a transformer layer spends on AT-EDM's own work: the ranking (G-WPR by
    `rank_map`: exact adds the explicit attn1 whose map it reads; cross: the explicit attn2 map; random: none)
    and the plan + gather + copy-back. 0 for what the profile does not have."""
    overhead = layer.get("prune_s", 0.0)
    ranking = getattr(config, "ranking", "gwpr")
    if ranking == "gwpr":
        rank_map = getattr(config, "rank_map", "exact")
        overhead += layer.get("rank_s", {}).get(rank_map, 0.0)
        if rank_map == "exact":
            overhead += max(0.0, layer.get("attn1_explicit_overhead_s", 0.0))
    elif ranking == "cross":
        attn2 = profile.get("attention_modules", {}).get(layer["attn1"][: -len("attn1")] + "attn2", {})
        overhead += max(0.0, attn2.get("explicit_s", 0.0) - attn2.get("fused_s", 0.0))
    return overhead


def pruning_saving_s(layer: dict, config, profile: dict) -> float:
    """What one pruning call of a layer saves net of its overhead, in the linear reading of `atedm_cost`."""
    return config.ratio * layer["post_pruning_s"] - ranking_overhead_s(layer, config, profile)


def atedm_cost(config, counters: dict, profile: dict, steps: int, accel_steps: int) -> dict[str, Any]:
    """For each transformer (Transformer2DModel): its pruned fraction of token-calls over the run
    (tokens_pruned / tokens_total) x its post-pruning work (one-layer block: the block minus norm1 and attn1,
    i.e. attn2 + FF + norms; multi-layer: the blocks after the first) x the run's UNet calls. Linear in tokens
    (the quadratic self-attention of later blocks is under-counted) and, in the ideal, minus nothing: the
    paper's FLOPs view. Expected (the bench's ideal) also subtracts, per pruning call, `ranking_overhead_s`
    (measured by `analysis.accel.layer_profile.add_ranking_costs` where the profile has it)."""
    c = counters.get("atedm", {})
    ideal = expected = 0.0
    per_layer = {}
    for lname, lc in (c.get("layers") or {}).items():
        layer = profile["transformer_layers"].get(lname)
        if not layer or not lc.get("tokens_total"):
            continue
        f = lc["tokens_pruned"] / lc["tokens_total"]
        s = f * accel_steps * layer["post_pruning_s"]
        n_tok = layer["attn1_queries"] or 1
        per_call = lc["tokens_total"] / max(1, accel_steps)
        n_prune = min(int(config.ratio * n_tok), n_tok - 1)
        events = lc["tokens_pruned"] / (per_call / n_tok * n_prune) if n_prune > 0 and per_call else 0.0
        ideal += s
        expected += s - events * ranking_overhead_s(layer, config, profile)
        per_layer[lname] = {"pruned_fraction": f, "post_pruning_s": layer["post_pruning_s"], "saved_s": s,
                            "pruning_calls": events}
    return saving(unet_s=ideal, expected_unet_s=expected,
                  detail={"pruned_fraction": c.get("pruned_fraction"), "layers": per_layer},
                  note="linear in tokens; the paper's view does not subtract the ranking (explicit attn1, G-WPR) "
                       "or the gather/copy-back, the ideal does")


def auto_layers(profile: dict, config) -> set[str]:
    """layers=auto: the transformer layers whose pruning saves time net of its own overhead
    (`pruning_saving_s` > 0) in the layer profile."""
    return {name for name, layer in profile["transformer_layers"].items()
            if layer.get("attn1_queries") and pruning_saving_s(layer, config, profile) > 0}
