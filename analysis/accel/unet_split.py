"""`UNet2DConditionModel.forward` in two halves, for encoder propagation (analysis/accel/fastdiff.py).

- `conditioning(...)`: the per-call inputs every block needs (time embedding with class / SDXL "text_time"
  added embeddings, the encoder-hidden-states projection, masks as biases);
- `encode(...)`: conv_in, the down blocks and the mid block -> (skip features, mid output);
- `decode(...)`: the up blocks and conv_norm_out / conv_act / conv_out, from those features.

`decode(encode(x))` runs exactly the operations of diffusers' forward (0.42) in the same order, for the
feature set SD 1.x, SD 2.x and SDXL use. Extras that feed the encoder from outside (ControlNet / T2I-Adapter
residuals, GLIGEN, image hints) raise `ValueError`: their residuals would be frozen with the encoder.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, replace
from typing import Any

import torch
from diffusers import UNet2DConditionModel

_SIGNATURE = inspect.signature(UNet2DConditionModel.forward)
_UNSUPPORTED = ("down_block_additional_residuals", "mid_block_additional_residual", "down_intrablock_additional_residuals")


def bind_forward_args(unet, sample, timestep, encoder_hidden_states, *args, **kwargs) -> dict[str, Any]:
    """The UNet call's arguments by name (defaults filled in); raises for inputs this split cannot honour."""
    bound = _SIGNATURE.bind(unet, sample, timestep, encoder_hidden_states, *args, **kwargs)
    bound.apply_defaults()
    arguments = dict(bound.arguments)
    arguments.pop("self")
    for key in _UNSUPPORTED:
        if arguments.get(key) is not None:
            raise ValueError(f"fastdiff: {key} (ControlNet / T2I-Adapter) is not supported: the encoder is skipped at "
                             "non-key steps, so per-step residuals could not be applied")
    cak = arguments.get("cross_attention_kwargs")
    if cak is not None and cak.get("gligen") is not None:
        raise ValueError("fastdiff: GLIGEN conditioning is not supported")
    if unet.config.addition_embed_type == "image_hint":
        raise ValueError("fastdiff: image_hint added embeddings (Kandinsky-style) are not supported")
    return arguments


@dataclass
class Conditioning:
    emb: torch.Tensor
    encoder_hidden_states: torch.Tensor
    attention_mask: torch.Tensor | None
    encoder_attention_mask: torch.Tensor | None
    cross_attention_kwargs: dict | None
    forward_upsample_size: bool

    def repeat_rows(self, emb: torch.Tensor, layout) -> "Conditioning":
        """The same conditioning for a batch stacked by `layout` (see fastdiff.stack_rows), with `emb` given."""
        rep = layout.repeat
        return replace(
            self,
            emb=emb,
            encoder_hidden_states=rep(self.encoder_hidden_states),
            attention_mask=None if self.attention_mask is None else rep(self.attention_mask),
            encoder_attention_mask=None if self.encoder_attention_mask is None else rep(self.encoder_attention_mask),
        )


def conditioning(unet, sample, timestep, encoder_hidden_states, class_labels=None, timestep_cond=None,
                 attention_mask=None, cross_attention_kwargs=None, added_cond_kwargs=None,
                 encoder_attention_mask=None, **_) -> Conditioning:
    """Steps before "2. pre-process" of UNet2DConditionModel.forward."""
    up_factor = 2**unet.num_upsamplers
    forward_upsample_size = any(dim % up_factor != 0 for dim in sample.shape[-2:])
    if attention_mask is not None:
        attention_mask = ((1 - attention_mask.to(sample.dtype)) * -10000.0).unsqueeze(1)
    if encoder_attention_mask is not None:
        encoder_attention_mask = ((1 - encoder_attention_mask.to(sample.dtype)) * -10000.0).unsqueeze(1)
    t_emb = unet.get_time_embed(sample=sample, timestep=timestep)
    emb = unet.time_embedding(t_emb, timestep_cond)
    class_emb = unet.get_class_embed(sample=sample, class_labels=class_labels)
    if class_emb is not None:
        emb = torch.cat([emb, class_emb], dim=-1) if unet.config.class_embeddings_concat else emb + class_emb
    aug_emb = unet.get_aug_embed(emb=emb, encoder_hidden_states=encoder_hidden_states, added_cond_kwargs=added_cond_kwargs)
    emb = emb + aug_emb if aug_emb is not None else emb
    if unet.time_embed_act is not None:
        emb = unet.time_embed_act(emb)
    encoder_hidden_states = unet.process_encoder_hidden_states(
        encoder_hidden_states=encoder_hidden_states, added_cond_kwargs=added_cond_kwargs
    )
    return Conditioning(emb, encoder_hidden_states, attention_mask, encoder_attention_mask, cross_attention_kwargs,
                        forward_upsample_size)


def encode(unet, sample: torch.Tensor, c: Conditioning) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
    """conv_in, down blocks, mid block -> (down_block_res_samples, mid output)."""
    if unet.config.center_input_sample:
        sample = 2 * sample - 1.0
    sample = unet.conv_in(sample)
    res = (sample,)
    for block in unet.down_blocks:
        if getattr(block, "has_cross_attention", False):
            sample, res_samples = block(hidden_states=sample, temb=c.emb, encoder_hidden_states=c.encoder_hidden_states,
                                        attention_mask=c.attention_mask, cross_attention_kwargs=c.cross_attention_kwargs,
                                        encoder_attention_mask=c.encoder_attention_mask)
        else:
            sample, res_samples = block(hidden_states=sample, temb=c.emb)
        res += res_samples
    if unet.mid_block is not None:
        if getattr(unet.mid_block, "has_cross_attention", False):
            sample = unet.mid_block(sample, c.emb, encoder_hidden_states=c.encoder_hidden_states,
                                    attention_mask=c.attention_mask, cross_attention_kwargs=c.cross_attention_kwargs,
                                    encoder_attention_mask=c.encoder_attention_mask)
        else:
            sample = unet.mid_block(sample, c.emb)
    return res, sample


def decode(unet, sample: torch.Tensor, res: tuple[torch.Tensor, ...], c: Conditioning) -> torch.Tensor:
    """Up blocks and the output head, from the mid output and the skip features."""
    upsample_size = None
    for i, block in enumerate(unet.up_blocks):
        is_final_block = i == len(unet.up_blocks) - 1
        res_samples = res[-len(block.resnets):]
        res = res[: -len(block.resnets)]
        if not is_final_block and c.forward_upsample_size:
            upsample_size = res[-1].shape[2:]
        if getattr(block, "has_cross_attention", False):
            sample = block(hidden_states=sample, temb=c.emb, res_hidden_states_tuple=res_samples,
                           encoder_hidden_states=c.encoder_hidden_states, cross_attention_kwargs=c.cross_attention_kwargs,
                           upsample_size=upsample_size, attention_mask=c.attention_mask,
                           encoder_attention_mask=c.encoder_attention_mask)
        else:
            sample = block(hidden_states=sample, temb=c.emb, res_hidden_states_tuple=res_samples,
                           upsample_size=upsample_size)
    if unet.conv_norm_out:
        sample = unet.conv_norm_out(sample)
        sample = unet.conv_act(sample)
    return unet.conv_out(sample)
