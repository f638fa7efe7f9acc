"""AT-EDM token pruning (Wang et al., CVPR 2024, arXiv 2405.05252): rank tokens by G-WPR on the
self-attention map, drop the least important ones so the following layers run on fewer tokens, and copy
them back (similarity-based copy) before the convolutions need the full grid.

Placement (one- and multi-layer blocks), `rank_map` and `layers` (issue 20's "auto"): pruning_layers.py.
Defaults:
- `ratio = 0.63`: the paper's target pruning ratio (63% per secondary summaries of the paper; the paper
  text itself was not reachable). On SD-XL (our estimate) cutting 63% of the tokens of 9 of 10 blocks in the
  10-layer stages and 1 of 2 in the 2-layer ones saves ~39% of the UNet's FLOPs before DSAP, the order of
  the reported 38.8%; on SD 1.x (one layer per block) only attn2 and the feed-forward are pruned.
- DSAP (denoising-steps-aware pruning): "in early steps prune fewer tokens". Secondary summaries say the
  schedule leaves the first attention block of each down stage and the last one of each up stage unpruned
  in early steps; that is what `dsap=True` does during the first `dsap_fraction` of the steps (0.3, i.e.
  15 of 50: our choice, the paper's split is not public), and the other blocks prune `ratio * dsap_scale`
  (1.0 = the paper's mechanism as summarised; lower it to prune less early).
- G-WPR: 5 iterations, damping 0.85, heads averaged (analysis/token_rank.py). The paper publishes neither
  its formula nor code: this is a documented reading (Weighted PageRank with damping), and its free choices
  are parameters (`iterations`, `damping`, `head_reduce`).
- `ranking` (for the paper's ablation; "gwpr" is AT-EDM): "random" ranks tokens by a seeded random draw
  (`random_draw="call"`: a new draw at every call, so over a run the damage spreads over all tokens;
  `"layer"`: one draw per layer, kept for every step and batch row, so random prunes the same tokens every
  step as G-WPR nearly does: the like-for-like control of issue 17), "cross" by the attn2 mass each image
  token puts on the prompt tokens other than BOS, averaged over heads (in one-layer blocks its map is
  computed on all tokens for the ranking, then attn2 runs on the kept tokens).
- `cfg_mask`: "branch" ranks each classifier-free-guidance branch (unconditional, conditional) on its own
  map, so the two branches may prune different tokens; "shared" ranks both on the mean of their scores (one
  mask for the pair), so guidance compares two predictions made on the same tokens. The paper does not say;
  "branch" is the default because it needs no knowledge of the batch layout, "shared" is the ablation.

`ratio = 0` attaches nothing (the baseline bit for bit); a layer/step whose ratio is 0 (DSAP) runs untouched.

Combinations: with `fastdiff` it works (encoder layers are pruned at key steps, decoder layers at every
decoder call, per batch row, also in the batched parallel decoder, whose events count at the key step);
`reuse` and `tgate` are refused (`check_with`): both replay per-token tensors (attention maps, attention
outputs) from an earlier step, but the kept tokens differ from step to step.

Counters: tokens_total / tokens_pruned (batch rows x tokens at the pruning points, overall and per attention
block), pruned_fraction, pruning_events and events_per_step (pruning points that pruned, per step).

Signal "atedm_pruning" (docs/signals.md; pruning_log.py): the tokens pruned per block and step, recorded
only in a run with an attention probe attached.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from diffusers.models.attention import BasicTransformerBlock, _chunked_feed_forward

from analysis.accel import prune
from analysis.accel.layer_profile import LAYER_CHOICES, LAYERS_INFO, check_layers, chosen
from analysis.accel.pruning_layers import PruningLayer, find_layers, rank_from_qk
from analysis.accel.pruning_log import PruningLog, atedm_cost, auto_layers
from analysis.accel.technique import Knob, Technique
from analysis.attention import AttentionPlugin, AttnCall, attention_probs
from analysis.plugins import HandleBase
from analysis.token_rank import HEAD_REDUCTIONS, gwpr


RANKINGS = ("gwpr", "random", "cross")
RANDOM_DRAWS = ("call", "layer")
CFG_MASKS = ("branch", "shared")
RANK_MAPS = ("exact", "pooled", "streamed")



@dataclass(frozen=True)
class ATEDMConfig:
    name: ClassVar[str] = "atedm"
    ratio: float = 0.63  # fraction of tokens pruned at each pruning point
    dsap: bool = True  # denoising-steps-aware pruning: prune less in the early steps
    dsap_fraction: float = 0.3  # the first 30% of the steps count as early
    dsap_scale: float = 1.0  # early steps prune ratio * dsap_scale in the blocks DSAP does not protect
    iterations: int = 5  # G-WPR power iterations
    damping: float = 0.85  # G-WPR damping
    head_reduce: str = "mean"  # G-WPR: how head scores combine, "mean" or "rms" (Zero-TPrune's emphasis)
    ranking: str = "gwpr"  # "gwpr" | "random" | "cross": the token ranking (ablation; see the module doc)
    random_draw: str = "call"  # ranking=random: a new draw every call, or one per layer for the whole run
    cfg_mask: str = "branch"  # one mask per CFG branch, or one "shared" by both (mean of their scores)
    rank_map: str = "exact"  # G-WPR from the explicit attn1 map, or "pooled" / "streamed" from Q and K (fused attn1)
    rank_pool: int = 2  # rank_map=pooled: the pooling cell, in tokens per side
    layers: str = "auto"  # "auto" (where pruning pays, from the layer profile) | "all" | layer names joined by '+'

    def __post_init__(self):
        if not 0.0 <= self.ratio < 1.0:
            raise ValueError(f"atedm: ratio must be in [0, 1) (fraction of tokens pruned), got {self.ratio}")
        if not 0.0 <= self.dsap_fraction <= 1.0:
            raise ValueError(f"atedm: dsap_fraction must be between 0 and 1, got {self.dsap_fraction}")
        if not 0.0 <= self.dsap_scale <= 1.0:
            raise ValueError(f"atedm: dsap_scale must be between 0 and 1 (DSAP prunes less, never more), got {self.dsap_scale}")
        if not 1 <= self.iterations <= 100:
            raise ValueError(f"atedm: iterations must be between 1 and 100, got {self.iterations}")
        if not 0.0 < self.damping <= 1.0:
            raise ValueError(f"atedm: damping must be in (0, 1], got {self.damping}")
        if self.head_reduce not in HEAD_REDUCTIONS:
            raise ValueError(f"atedm: head_reduce must be one of {', '.join(HEAD_REDUCTIONS)}, got {self.head_reduce!r}")
        if self.ranking not in RANKINGS:
            raise ValueError(f"atedm: ranking must be one of {', '.join(RANKINGS)}, got {self.ranking!r}")
        if self.random_draw not in RANDOM_DRAWS:
            raise ValueError(f"atedm: random_draw must be one of {', '.join(RANDOM_DRAWS)}, got {self.random_draw!r}")
        if self.rank_map not in RANK_MAPS:
            raise ValueError(f"atedm: rank_map must be one of {', '.join(RANK_MAPS)}, got {self.rank_map!r}")
        if isinstance(self.rank_pool, bool) or not isinstance(self.rank_pool, int) or not 1 <= self.rank_pool <= 16:
            raise ValueError(f"atedm: rank_pool must be an integer from 1 to 16, got {self.rank_pool!r}")
        check_layers(self.layers, "atedm")
        if self.cfg_mask not in CFG_MASKS:
            raise ValueError(f"atedm: cfg_mask must be one of {', '.join(CFG_MASKS)}, got {self.cfg_mask!r}")

    @classmethod
    def off(cls, steps: int) -> "ATEDMConfig":
        """Nothing pruned: nothing is attached, the baseline bit for bit."""
        return cls(ratio=0.0, layers="all")

    def check_with(self, by_name: dict) -> None:
        if "reuse" in by_name:
            raise ValueError("atedm cannot be combined with reuse: the kept tokens change every step (and with DSAP "
                             "their number too), so a cached attention map would weight other tokens")
        if "tgate" in by_name:
            raise ValueError("atedm cannot be combined with tgate: T-GATE replays cached attention outputs per token, "
                             "but pruning keeps a different set of tokens every step")

    def attach(self, ctx) -> "ATEDMHandle | HandleBase":
        if self.ratio == 0:
            return HandleBase()  # off: nothing attached, the baseline bit for bit
        return ATEDMHandle(self, ctx)


class _RankPlugin(AttentionPlugin):
    """Asks for the attn1 probabilities of the pruning layers (observer=False: computed once, explicitly)."""

    observer = False

    def __init__(self, handle: "ATEDMHandle"):
        self.handle = handle

    def wants_probs(self, call: AttnCall) -> bool:
        layer = self.handle.by_rank_call.get(call.name)
        return layer is not None and self.handle.n_prune(layer, call.n_queries) > 0

    def on_probs(self, call: AttnCall, probs: torch.Tensor) -> None:
        layer = self.handle.by_rank_call.get(call.name)
        if layer is not None:
            self.handle.probs[layer.name] = (probs, call.attn.heads)


class ATEDMHandle:
    def __init__(self, config: ATEDMConfig, ctx):
        self.config, self.clock = config, ctx.clock
        self.layers = find_layers(ctx.unet)
        if not self.layers:
            raise ValueError("atedm: the UNet has no attention blocks (Transformer2DModel) to prune")
        auto = auto_layers(ctx.layer_profile, config) if ctx.layer_profile is not None else None
        selected = chosen(config.layers, [layer.name for layer in self.layers], "atedm", auto)
        if selected is not None:
            self.layers = [layer for layer in self.layers if layer.name in selected]
        self.by_attn1 = {layer.attn1: layer for layer in self.layers}
        # The attention call whose probabilities rank the tokens: attn1 (G-WPR), attn2 (cross; in one-layer
        # blocks attn2 runs after the pruning point, so `_one_layer_forward` computes its map itself), none (random).
        self.by_rank_call = {}
        for layer in self.layers:
            if config.ranking == "gwpr" and config.rank_map == "exact":
                self.by_rank_call[layer.attn1] = layer
            elif config.ranking == "cross" and len(layer.model.transformer_blocks) > 1:
                self.by_rank_call[layer.attn2] = layer
        self.generator = torch.Generator().manual_seed(0)
        self.fixed_scores: dict[str, torch.Tensor] = {}  # random_draw="layer": layer -> its one draw
        self.probs: dict[str, tuple[torch.Tensor, int]] = {}  # layer -> (attn1 probs, heads), this call only
        self.rank_inputs: dict[str, torch.Tensor] = {}  # layer -> attn1's normed input (rank_map pooled/streamed)
        self.pending: dict[str, prune.Pruning] = {}  # layer -> pruning to undo after the last block
        self.events_per_step: list[int] = [0] * max(ctx.clock.num_steps, 0)
        self._patched: list[torch.nn.Module] = []
        # The UNet seam advances the clock's step index, which DSAP and the counters read; the pruning log
        # (signal "atedm_pruning", recorded only when a probe is attached) notes the latent grid there.
        self.log = PruningLog(ctx.clock)
        self._recording: bool | None = None
        self._seam = ctx.seam()
        self._seam.interceptors.append(self.log)
        self._dispatcher = ctx.attention()
        self._plugin = self._dispatcher.add(_RankPlugin(self))
        try:
            for layer in self.layers:
                blocks = layer.model.transformer_blocks
                if len(blocks) == 1:
                    self._patch(blocks[0], self._one_layer_forward(layer, blocks[0]))
                else:
                    self._patch(blocks[0], self._first_block_forward(layer, blocks[0]))
                    self._patch(blocks[-1], self._last_block_forward(layer, blocks[-1].forward))
        except Exception:
            self.detach()
            raise

    # --- schedule ------------------------------------------------------------------------------------

    def n_prune(self, layer: PruningLayer, n_tokens: int) -> int:
        c, step = self.config, self.clock.step_index
        ratio = c.ratio
        if c.dsap and step < int(c.dsap_fraction * self.clock.num_steps + 0.5):
            ratio = 0.0 if layer.protected else ratio * c.dsap_scale
        return min(int(ratio * n_tokens), n_tokens - 1)

    def _plan(self, layer: PruningLayer, hidden_states: torch.Tensor, n: int) -> prune.Pruning | None:
        """Rank with G-WPR (attn1 probabilities of this call), keep the best, pair the rest for recovery."""
        probs = self.probs.pop(layer.name, None)
        rows, n_tokens = hidden_states.shape[:2]
        layer.tokens_total += rows * n_tokens
        ranking = self.config.ranking
        normed = self.rank_inputs.pop(layer.name, None)
        from_qk = ranking == "gwpr" and self.config.rank_map != "exact"
        if n == 0 or (probs is None and ranking != "random" and not from_qk):  # the ranking call was replaced
            return None
        if from_qk:
            scores = rank_from_qk(layer.model.transformer_blocks[0].attn1, normed, self.config, self.log.latent_hw)
        elif ranking == "gwpr":
            scores = gwpr(probs[0], probs[1], iterations=self.config.iterations, damping=self.config.damping,
                          head_reduce=self.config.head_reduce)
        elif ranking == "cross":
            p, heads = probs
            scores = (1 - p[..., 0].float()).view(-1, heads, p.shape[1]).mean(dim=1)
        elif self.config.random_draw == "layer":
            if layer.name not in self.fixed_scores or self.fixed_scores[layer.name].shape[-1] != n_tokens:
                self.fixed_scores[layer.name] = torch.rand((1, n_tokens), generator=self.generator)
            scores = self.fixed_scores[layer.name].expand(rows, n_tokens).to(hidden_states.device)
        else:
            scores = torch.rand((rows, n_tokens), generator=self.generator).to(hidden_states.device)
        if self.config.cfg_mask == "shared" and self.clock.guidance and rows % 2 == 0:
            # rows are [uncond; cond] (Faster-Diffusion's batched decoder keeps that half-major order)
            half = rows // 2
            scores = ((scores[:half] + scores[half:]) / 2).repeat(2, 1)
        layer.tokens_pruned += rows * n
        step = self.clock.step_index
        if 0 <= step:
            self.events_per_step.extend([0] * (step + 1 - len(self.events_per_step)))
            self.events_per_step[step] += 1
        pruning = prune.plan(hidden_states, scores, n)
        if self._recording is None:
            from analysis.probes._common import AttentionProbe

            self._recording = any(isinstance(p, AttentionProbe) for p in self._dispatcher.plugins)
        if self._recording:
            self.log.record(layer.attn1, layer.name, pruning.keep, n_tokens)
        return pruning

    def _ranks_from_qk(self) -> bool:
        return self.config.ranking == "gwpr" and self.config.rank_map != "exact"

    # --- block wrappers (instance attribute `forward`, deleted on detach) -----------------------------

    def _patch(self, block: torch.nn.Module, forward) -> None:
        if "forward" in block.__dict__:
            raise RuntimeError(f"atedm: {type(block).__name__}.forward is already wrapped by another hook")
        block.forward = forward
        self._patched.append(block)

    def _one_layer_forward(self, layer: PruningLayer, block: BasicTransformerBlock):
        """BasicTransformerBlock.forward (layer_norm variant, as in SD/SDXL) with pruning after attn1."""
        original = block.forward

        def forward(hidden_states, attention_mask=None, encoder_hidden_states=None, encoder_attention_mask=None,
                    timestep=None, cross_attention_kwargs=None, class_labels=None, added_cond_kwargs=None):
            n = self.n_prune(layer, hidden_states.shape[1])
            if n == 0:
                layer.tokens_total += hidden_states.shape[0] * hidden_states.shape[1]
                return original(hidden_states, attention_mask=attention_mask, encoder_hidden_states=encoder_hidden_states,
                                encoder_attention_mask=encoder_attention_mask, timestep=timestep,
                                cross_attention_kwargs=cross_attention_kwargs, class_labels=class_labels,
                                added_cond_kwargs=added_cond_kwargs)
            kwargs = dict(cross_attention_kwargs or {})
            if kwargs.pop("gligen", None) is not None:
                raise ValueError("atedm: GLIGEN conditioning is not supported")
            normed = block.norm1(hidden_states)
            if self._ranks_from_qk():
                self.rank_inputs[layer.name] = normed
            h = block.attn1(normed, encoder_hidden_states=None, attention_mask=attention_mask, **kwargs) + hidden_states
            if self.config.ranking == "cross":  # attn2's map on every token, for the ranking only
                self.probs[layer.name] = (attention_probs(block.attn2, block.norm2(h), encoder_hidden_states,
                                                          encoder_attention_mask), block.attn2.heads)
            pruning = self._plan(layer, h, n)
            if pruning is not None:
                h = prune.prune(h, pruning)
            if block.attn2 is not None:
                h = block.attn2(block.norm2(h), encoder_hidden_states=encoder_hidden_states,
                                attention_mask=encoder_attention_mask, **kwargs) + h
            norm = block.norm3(h)
            if block._chunk_size is not None:
                ff = _chunked_feed_forward(block.ff, norm, block._chunk_dim, block._chunk_size)
            else:
                ff = block.ff(norm)
            h = ff + h
            return prune.restore(h, pruning) if pruning is not None else h

        return forward

    def _first_block_forward(self, layer: PruningLayer, block: BasicTransformerBlock):
        original = block.forward

        def forward(hidden_states, *args, **kwargs):
            n = self.n_prune(layer, hidden_states.shape[1])  # decided before attn1 runs (wants_probs agrees)
            if n and self._ranks_from_qk():
                self.rank_inputs[layer.name] = block.norm1(hidden_states)
            out = original(hidden_states, *args, **kwargs)
            self.pending.pop(layer.name, None)
            pruning = self._plan(layer, out, n)
            if pruning is None:
                return out
            self.pending[layer.name] = pruning
            return prune.prune(out, pruning)

        return forward

    def _last_block_forward(self, layer: PruningLayer, original):
        def forward(hidden_states, *args, **kwargs):
            out = original(hidden_states, *args, **kwargs)
            pruning = self.pending.pop(layer.name, None)
            return prune.restore(out, pruning) if pruning is not None else out

        return forward

    # --- protocol ---------------------------------------------------------------------------------------

    def detach(self) -> None:
        for block in self._patched:
            block.__dict__.pop("forward", None)
        self._patched.clear()
        if self._plugin in self._dispatcher.plugins:
            self._dispatcher.plugins.remove(self._plugin)
        self.probs.clear()
        self.rank_inputs.clear()
        self.pending.clear()
        if self.log in self._seam.interceptors:
            self._seam.interceptors.remove(self.log)

    def counters(self) -> dict[str, Any]:
        total = sum(layer.tokens_total for layer in self.layers)
        pruned = sum(layer.tokens_pruned for layer in self.layers)
        return {
            "tokens_total": total,
            "tokens_pruned": pruned,
            "pruned_fraction": pruned / total if total else 0.0,
            "pruning_events": sum(self.events_per_step),
            "events_per_step": list(self.events_per_step),
            "layers": {layer.name: {"tokens_total": layer.tokens_total, "tokens_pruned": layer.tokens_pruned}
                       for layer in self.layers},
        }

    def signals(self) -> dict[str, Any]:
        return self.log.signals()


def _summary(c: dict) -> str:
    return (f"atedm: {c.get('pruned_fraction', 0):.0%} of transformer token-calls pruned "
            f"({c.get('pruning_events', 0)} pruning events)")


def early_steps(config: ATEDMConfig, steps: int) -> list[int]:
    """DSAP's early steps (protected blocks unpruned, the rest scaled): ATEDMHandle.n_prune's split."""
    return list(range(int(config.dsap_fraction * steps + 0.5) if config.dsap else 0))


def _strip(marks: dict, steps: int) -> list:
    early = set(marks["early_steps"])
    return [(f"AT-EDM pruning ({marks['ratio']:.0%})", ["prune-early" if s in early else "prune" for s in range(steps)],
             ["d" if s in early else "P" for s in range(steps)])]


def _bound(profile: dict, steps: int) -> float:
    post = sum(v["post_pruning_s"] for v in profile["transformer_layers"].values())
    return profile["pipeline"]["shares"]["unet"] * post / profile["unet_call_s"] if profile["unet_call_s"] else 0.0


PRUNING_RATIOS = (0.3, 0.5, 0.63, 0.8)  # the default grid's ratios


def _grid(steps: int) -> list:
    out = [(f"atedm-{int(r * 100)}", (f"atedm:ratio={r}",)) for r in PRUNING_RATIOS]
    return out + [(f"atedm-{int(r * 100)}-nodsap", (f"atedm:ratio={r},dsap=false",)) for r in (0.5, 0.63)]


TECHNIQUE = Technique(
    name="atedm", title="AT-EDM token pruning (Wang et al.)",
    reference="Wang et al., Attention-Driven Training-Free Efficiency Enhancement of Diffusion Models, CVPR 2024",
    config=ATEDMConfig,
    knobs=(Knob("ratio", "pruning ratio", "float", default=ATEDMConfig.ratio, low=0.0, high=0.9, step=0.01,
                accept=(0.0, 1.0)),
           Knob("dsap", "DSAP", "bool", default=ATEDMConfig.dsap, info="prune less in the early steps"),
           Knob("rank_map", "G-WPR from", "choice", default=ATEDMConfig.rank_map,
                choices=(("the explicit attention map (exact, the paper)", "exact"),
                         ("pooled Q/K (approximate, attention stays fused)", "pooled"),
                         ("streamed Q/K (exact, no N x N map, slow)", "streamed"))),
           Knob("layers", "layers", "choice", default="auto", choices=LAYER_CHOICES, info=LAYERS_INFO)),
    build=lambda values, steps: ATEDMConfig(**values),
    cost=atedm_cost, summary=_summary,
    marks=lambda config, steps, model: {"ratio": float(config.ratio), "dsap": bool(config.dsap),
                                        "early_steps": early_steps(config, steps)},
    strip=_strip,
    bound_text="bounded by the pruned fraction of the post-pruning transformer work (attn2 + FF, later blocks); "
               "the ResNets/convolutions, attn1 of the pruning layer, proj_in/out run on every token",
    bound=_bound, grid=_grid, colour="#009E73", marker="D", order=30,
)
