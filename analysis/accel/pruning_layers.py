"""Where AT-EDM prunes (analysis/accel/atedm.py): the UNet's transformer layers, with DSAP's protected ones.

DSAP (denoising-steps-aware pruning) leaves the first attention block of each down stage and the last of each
up stage unpruned in the early steps; `find_layers` marks them and refuses a UNet whose attention blocks are
not SD/SDXL-style (continuous input, BasicTransformerBlock with a plain self-attention first).

Placement, per `Transformer2DModel` (attention block) of the UNet:
- one transformer layer (SD 1.x/2.x): prune right after self-attention (attn1) inside the
  `BasicTransformerBlock`, so cross-attention and the feed-forward run on the kept tokens; restore at the
  end of the block, before `proj_out` and the ResNet that follows;
- two or more layers (SDXL, the default model at 8x8): prune after the first block, so blocks 1..L-1 run on
  the kept tokens; restore after the last block.
The ranking uses the attn1 probabilities of the first block (the shared `analysis.token_rank.gwpr`, one
function for the token-rank probe and this pruning), taken through the attention dispatcher. Because fused
attention never exposes the map, with `rank_map="exact"` (default; the paper's "desired implementation"
needs the same map) the pruning layers' attn1 runs as explicit softmax(QK^T). `rank_map="pooled"` or
`"streamed"` (issue 20) leaves attn1 on the fused kernel and ranks from its Q and K without the N x N map
(`token_rank.gwpr_pooled`, an approximation on a `rank_pool`-pooled grid; `gwpr_streamed`, exact, chunked).

`layers`: "auto" (default: only the transformer layers where pruning saves time net of its own ranking, plan
and copy-back, from the cached layer profile, analysis/accel/layer_profile.py; a layer left out runs
untouched; every layer in runs too small to profile, layer_profile.PROFILE_MIN_POSITIONS), "all" (the paper) or layer
names joined by '+'.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers.models.attention import BasicTransformerBlock
from diffusers.models.transformers.transformer_2d import Transformer2DModel


@dataclass
class PruningLayer:
    name: str  # e.g. "down_blocks.1.attentions.0"
    model: Transformer2DModel
    protected: bool  # DSAP leaves it unpruned in early steps
    tokens_total: int = 0
    tokens_pruned: int = 0

    @property
    def attn1(self) -> str:
        return f"{self.name}.transformer_blocks.0.attn1"

    @property
    def attn2(self) -> str:
        return f"{self.name}.transformer_blocks.0.attn2"


def find_layers(unet: torch.nn.Module) -> list[PruningLayer]:
    """Every continuous-input Transformer2DModel, with DSAP's protected ones marked: the first attention block
    of each down stage and the last of each up stage."""
    layers = []
    for name, module in unet.named_modules():
        if not isinstance(module, Transformer2DModel):
            continue
        blocks = module.transformer_blocks
        if not module.is_input_continuous or not all(isinstance(b, BasicTransformerBlock) for b in blocks):
            raise ValueError(f"atedm: {name} is not an SD/SDXL-style attention block (continuous input, BasicTransformerBlock)")
        first = blocks[0]
        if first.only_cross_attention or first.pos_embed is not None:
            raise ValueError(f"atedm: {name}'s first layer has no plain self-attention to rank tokens with")
        if len(blocks) == 1 and first.norm_type != "layer_norm":
            raise ValueError(f"atedm: {name} uses norm_type={first.norm_type!r}; only SD/SDXL's layer_norm blocks are supported")
        parts = name.split(".")  # down_blocks.i.attentions.j / up_blocks.i.attentions.j / mid_block.attentions.0
        protected = False
        if parts[0] in ("down_blocks", "up_blocks") and len(parts) == 4 and parts[2] == "attentions":
            siblings = len(unet.get_submodule(".".join(parts[:3])))
            j = int(parts[3])
            protected = j == 0 if parts[0] == "down_blocks" else j == siblings - 1
        layers.append(PruningLayer(name=name, model=module, protected=protected))
    return layers




def rank_from_qk(attn, normed: torch.Tensor, config, latent_hw) -> torch.Tensor:
    """G-WPR scores (batch, N) from the Q and K of `attn` on its input `normed`, without its N x N map
    (config.rank_map "pooled" or "streamed", see analysis/token_rank.py); attn's own output came from the
    fused kernel."""
    from analysis.probes._common import token_grid
    from analysis.token_rank import gwpr_pooled, gwpr_streamed

    c = config
    query, key = attn.head_to_batch_dim(attn.to_q(normed)), attn.head_to_batch_dim(attn.to_k(normed))
    if c.rank_map == "streamed":
        return gwpr_streamed(query, key, attn.heads, attn.scale, c.iterations, c.damping, c.head_reduce)
    grid = token_grid(normed.shape[1], latent_hw)
    return gwpr_pooled(query, key, attn.heads, attn.scale, grid, c.rank_pool, c.iterations, c.damping, c.head_reduce)
