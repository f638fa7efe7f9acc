"""Where AT-EDM prunes (analysis/accel/atedm.py): the UNet's transformer layers, with DSAP's protected ones.

DSAP (denoising-steps-aware pruning) leaves the first attention block of each down stage and the last of each
up stage unpruned in the early steps; `find_layers` marks them and refuses a UNet whose attention blocks are
not SD/SDXL-style (continuous input, BasicTransformerBlock with a plain self-attention first).
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


