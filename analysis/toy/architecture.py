"""Stock diffusers/transformers components, sized for the shapes world.

The UNet mirrors SDXL's shape at toy scale: self- and cross-attention at two resolutions (16x16 and 8x8
latents), two transformer layers per attention block at 8x8 (so token pruning after the first layer has
something to act on), a cross-attention mid block, and no attention at the coarsest level.
"""
from __future__ import annotations

from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from analysis.toy.tokenizer import MODEL_MAX_LENGTH

TEXT_HIDDEN = 128
LATENT_CHANNELS = 4


def make_vae() -> AutoencoderKL:
    # Three encoder levels -> 64x64 images become 16x16x4 latents.
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(32, 64, 64),
        layers_per_block=1,
        latent_channels=LATENT_CHANNELS,
        norm_num_groups=16,
        sample_size=64,
        mid_block_add_attention=False,
    )


def make_text_encoder(vocab_size: int, bos_id: int, eos_id: int) -> CLIPTextModel:
    config = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=TEXT_HIDDEN,
        intermediate_size=4 * TEXT_HIDDEN,
        num_hidden_layers=3,
        num_attention_heads=4,
        max_position_embeddings=MODEL_MAX_LENGTH,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        pad_token_id=eos_id,
        projection_dim=TEXT_HIDDEN,
    )
    return CLIPTextModel(config)


def make_unet(channels: tuple[int, int, int] = (32, 64, 96)) -> UNet2DConditionModel:
    return UNet2DConditionModel(
        sample_size=16,
        in_channels=LATENT_CHANNELS,
        out_channels=LATENT_CHANNELS,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        mid_block_type="UNetMidBlock2DCrossAttn",
        block_out_channels=channels,
        layers_per_block=1,
        transformer_layers_per_block=(1, 2, 1),
        attention_head_dim=4,  # diffusers' name for the number of heads in SD-style configs
        cross_attention_dim=TEXT_HIDDEN,
        norm_num_groups=16,
    )


def make_scheduler() -> DDIMScheduler:
    """Stable Diffusion's betas rescaled to zero terminal SNR, v-prediction, trailing timesteps.

    Why not SD 1.5's schedule as is: its last training step keeps sqrt(alpha_bar) = 0.068 of the image, and
    on 16x16 latents of large flat objects that residue says where the objects are. A model trained on it
    learns to read the layout out of x_T instead of the prompt, and at inference (pure noise) places objects
    wherever the noise suggests: position words are ignored (Lin et al. 2024, "Common Diffusion Noise
    Schedules and Sample Steps are Flawed"). Zero terminal SNR removes the residue; v-prediction keeps the
    target defined at SNR 0; trailing spacing makes sampling start at t = T. The same three settings are
    SD 2.1's v-model conventions, and DDIM / DPM-Solver++ / Euler all read them from the saved config.
    """
    return DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type="v_prediction",
        rescale_betas_zero_snr=True,
        timestep_spacing="trailing",
    )
