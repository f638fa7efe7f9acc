"""load_pipeline("default" | hub id | local dir), scheduler choice, and random-weight pipelines for tests
and benchmarks (compute does not depend on the weights).

"default" is the embedded shapes-world model in assets/shapes-v3 (trained by `python -m analysis
train-default`); where it is missing, a random-weight pipeline of the same architecture stands in. The
accepted names (model aliases, scheduler names) are listed once, in analysis/catalog.py.
"""
from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DiffusionPipeline,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from analysis.catalog import DEFAULT_MODEL, RANDOM_MODELS, SCHEDULERS, is_hub_id

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL_DIR = REPO_ROOT / "assets" / "shapes-v3"


class ModelLoadError(ValueError):
    """A model name that cannot be loaded; the message says why in one line."""


def pick_device(device: str | None = None) -> tuple[torch.device, torch.dtype]:
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    return dev, (torch.float16 if dev.type == "cuda" else torch.float32)


class _CopyKeywordTensor(torch.Tensor):
    """A tensor whose `__array__` takes numpy 2's `dtype` and `copy` keywords (torch's own takes no `copy`)."""

    def __array__(self, dtype=None, copy=None):
        array = self.as_subclass(torch.Tensor).detach().cpu().numpy()
        if dtype is not None and array.dtype != dtype:
            if copy is False:
                raise ValueError("a dtype conversion needs a copy")
            return array.astype(dtype)
        return array.copy() if copy else array


class _SigmaTableWithoutWarning:
    """Mixin for diffusers' DPM-Solver++ and Euler schedulers, minus a numpy DeprecationWarning per run.

    Their `set_timesteps` builds the sigma table with `np.array()` on a torch expression of
    `alphas_cumprod`; numpy 2 passes `copy=` to `__array__`, torch's `Tensor.__array__` does not accept it,
    so numpy fell back and warned ("__array__ implementation doesn't accept a copy keyword"). During that
    call the same tensor is viewed as `_CopyKeywordTensor`, whose `__array__` accepts the keyword; the
    schedule is bit-identical (tests compare it with the stock scheduler's).
    """

    def set_timesteps(self, *args, **kwargs):
        cumprod = self.alphas_cumprod
        self.alphas_cumprod = cumprod.as_subclass(_CopyKeywordTensor)
        try:
            return super().set_timesteps(*args, **kwargs)
        finally:
            self.alphas_cumprod = cumprod


class _DPMSolver(_SigmaTableWithoutWarning, DPMSolverMultistepScheduler):
    pass


class _Euler(_SigmaTableWithoutWarning, EulerDiscreteScheduler):
    pass


# Saved configs then name the stock classes, so a pipeline saved after set_scheduler reloads anywhere.
_DPMSolver.__name__ = DPMSolverMultistepScheduler.__name__
_Euler.__name__ = EulerDiscreteScheduler.__name__


def set_scheduler(pipe, name: str) -> None:
    """Swap the pipeline's scheduler, keeping the model's noise schedule (betas, prediction type)."""
    config = pipe.scheduler.config
    if name == "ddim":
        pipe.scheduler = DDIMScheduler.from_config(config)
    elif name == "dpm":
        pipe.scheduler = _DPMSolver.from_config(config, algorithm_type="dpmsolver++", solver_order=2)
    elif name == "euler":
        pipe.scheduler = _Euler.from_config(config)
    else:
        raise ValueError(f"unknown scheduler {name!r}; choose one of {', '.join(SCHEDULERS)}")


_SCHEDULER_CLASSES = {"ddim": DDIMScheduler, "dpm": DPMSolverMultistepScheduler, "euler": EulerDiscreteScheduler}


def scheduler_name(scheduler) -> str | None:
    """Our name (SCHEDULERS) of a scheduler instance, or None for another scheduler class."""
    for name, cls in _SCHEDULER_CLASSES.items():
        if type(scheduler) is cls:
            return name
    return None


# The model's name travels on the pipeline object itself (runs, exports, plots, policy files and the
# baseline cache are keyed or labelled by it). Read and write it only through these two functions.
MODEL_NAME_ATTR = "diffscope_name"
UNNAMED_MODEL = "custom"  # a pipeline built or loaded elsewhere (random_pipeline, a caller's own pipeline)


def set_model_name(pipe, name: str) -> None:
    """Label `pipe` with the model name it was loaded under (a catalog name, a Hub id, a folder or a pool label)."""
    setattr(pipe, MODEL_NAME_ATTR, name)


def model_name(pipe) -> str:
    """The name `pipe` was labelled with by set_model_name (load_pipeline and the model pool do), or
    UNNAMED_MODEL ("custom") for a pipeline nobody named."""
    return getattr(pipe, MODEL_NAME_ATTR, UNNAMED_MODEL)


def model_fingerprint(name: str) -> str:
    """Which weights `name` means now, so a resumed sweep can tell its old rows came from the same model: for a
    folder ("default" included) a hash over every file's path, size and first and last MiB (a Hub snapshot of
    several GB hashes in well under a second); a random-weight alias or a Hub id is itself (its weights do not
    change under that name, or are fixed by the Hub revision)."""
    if name == DEFAULT_MODEL:
        folder = DEFAULT_MODEL_DIR if (DEFAULT_MODEL_DIR / "model_index.json").exists() else None
        if folder is None:
            return "random:toy"
    elif Path(name).is_dir():
        folder = Path(name)
    else:
        return name
    digest = hashlib.sha1()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        size = path.stat().st_size
        digest.update(f"{path.relative_to(folder).as_posix()}:{size}".encode())
        with open(path, "rb") as handle:
            digest.update(handle.read(1 << 20))
            if size > 2 << 20:
                handle.seek(-(1 << 20), os.SEEK_END)
                digest.update(handle.read())
    return digest.hexdigest()[:16]


def load_pipeline(name: str = "default", scheduler: str = "ddim", device: str | None = None):
    """A text-to-image pipeline ready to run, progress bar on (the app mirrors it)."""
    if scheduler not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {scheduler!r}; choose one of {', '.join(SCHEDULERS)}")
    if not isinstance(name, str) or not name.strip():
        raise ModelLoadError(f"no model named; use {', '.join(repr(a) for a in (DEFAULT_MODEL, *RANDOM_MODELS))}, "
                             "a local pipeline folder or a Hub id like 'owner/name'")
    dev, dtype = pick_device(device)
    if name in RANDOM_MODELS:
        pipe = random_pipeline(**RANDOM_MODELS[name]).to(dtype=dtype)
    elif name == DEFAULT_MODEL:
        if (DEFAULT_MODEL_DIR / "model_index.json").exists():
            pipe = StableDiffusionPipeline.from_pretrained(DEFAULT_MODEL_DIR, dtype=dtype)
        else:
            pipe = random_pipeline("toy").to(dtype=dtype)
    elif Path(name).is_dir():
        try:
            pipe = DiffusionPipeline.from_pretrained(name, dtype=dtype)
        except Exception as err:  # a folder that is not a diffusers pipeline
            raise ModelLoadError(f"{name} is not a diffusers pipeline folder: {str(err).splitlines()[0]}") from err
    else:
        if not is_hub_id(name):
            raise ModelLoadError(f"model {name!r} is neither {', '.join(repr(a) for a in (DEFAULT_MODEL, *RANDOM_MODELS))}, a local folder, "
                                 "nor a Hub id like 'owner/name'")
        variant = "fp16" if dtype == torch.float16 else None
        try:
            pipe = DiffusionPipeline.from_pretrained(name, dtype=dtype, variant=variant, use_safetensors=True)
        except Exception as err:
            first = str(err).splitlines()[0] if str(err) else type(err).__name__
            offline = " (no connection to the Hugging Face Hub?)" if os.environ.get("HF_HUB_OFFLINE") != "1" else " (HF_HUB_OFFLINE=1)"
            raise ModelLoadError(f"could not load {name!r} from the Hub{offline}: {first}") from err
    if not hasattr(pipe, "unet") or not isinstance(pipe.unet, UNet2DConditionModel):
        raise ModelLoadError(f"{name!r} is not a UNet text-to-image pipeline (SD 1.x, SD 2.x or SDXL)")
    pipe = pipe.to(dev)
    set_scheduler(pipe, scheduler)
    set_model_name(pipe, name)
    return pipe


# --- random-weight pipelines --------------------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def _toy_tokenizer():
    import tempfile

    from analysis.toy.tokenizer import build_tokenizer

    # Built in a folder that is removed at once: the tokenizer keeps its vocabulary in memory, and a folder per
    # process would otherwise pile up in /tmp.
    with tempfile.TemporaryDirectory(prefix="diffscope-tok-") as folder:
        return build_tokenizer(Path(folder))


def _text_encoder(tokenizer, hidden: int, layers: int = 2, with_projection: bool = False, projection_dim: int = 32):
    config = CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=2, max_position_embeddings=tokenizer.model_max_length,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.eos_token_id,
        projection_dim=projection_dim,
    )
    return CLIPTextModelWithProjection(config) if with_projection else CLIPTextModel(config)


def _tiny_vae(levels: int, channels: int = 8) -> AutoencoderKL:
    return AutoencoderKL(
        block_out_channels=(channels,) * levels, in_channels=3, out_channels=3, latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * levels, up_block_types=("UpDecoderBlock2D",) * levels,
        norm_num_groups=channels // 2, layers_per_block=1, mid_block_add_attention=False,
    )


SD15_UNET = dict(
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, attention_head_dim=8, cross_attention_dim=768,
    in_channels=4, out_channels=4, norm_num_groups=32,
)


def random_pipeline(kind: str = "toy", image_size: int | None = None, width: int | None = None, seed: int = 0):
    """Random-weight pipelines with real architectures:

    - "toy": the default model's architecture (what "default" falls back to);
    - "sd15": SD 1.5's UNet block structure (4 levels, 2 layers per block, 8 heads, attention at 3 levels).
      `width` scales the channels (320 is the real SD 1.5; tests use 32); the VAE downsamples by 8;
    - "sdxl": SDXL's structure (no attention at the top level, transformer_layers_per_block=(1, 2),
      text_time added conditioning, two text encoders) at toy width.
    """
    from analysis.toy import architecture

    torch.manual_seed(seed)
    tokenizer = _toy_tokenizer()
    scheduler = architecture.make_scheduler()
    if kind == "toy":
        text_encoder = architecture.make_text_encoder(len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id)
        return StableDiffusionPipeline(
            vae=architecture.make_vae(), text_encoder=text_encoder, tokenizer=tokenizer, unet=architecture.make_unet(),
            scheduler=scheduler, safety_checker=None, feature_extractor=None, image_encoder=None,
            requires_safety_checker=False,
        )
    if kind == "sd15":
        w = width or 32
        scale = w / 320
        config = dict(SD15_UNET)
        config["block_out_channels"] = tuple(int(c * scale) for c in SD15_UNET["block_out_channels"])
        config["norm_num_groups"] = min(32, config["block_out_channels"][0] // 2)
        config["cross_attention_dim"] = 768 if w == 320 else 32
        config["attention_head_dim"] = 8 if w == 320 else 2
        config["sample_size"] = (image_size or 64) // 8
        unet = UNet2DConditionModel(**config)
        text_encoder = _text_encoder(tokenizer, config["cross_attention_dim"])
        return StableDiffusionPipeline(
            vae=_tiny_vae(4), text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
            safety_checker=None, feature_extractor=None, image_encoder=None, requires_safety_checker=False,
        )
    if kind == "sdxl":
        w = width or 32
        unet = UNet2DConditionModel(
            sample_size=(image_size or 64) // 4, in_channels=4, out_channels=4, layers_per_block=2,
            block_out_channels=(w, 2 * w), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), transformer_layers_per_block=(1, 2),
            attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
            addition_time_embed_dim=8, projection_class_embeddings_input_dim=80, cross_attention_dim=64,
            norm_num_groups=min(32, w // 2),
        )
        te1 = _text_encoder(tokenizer, 32)
        te2 = _text_encoder(tokenizer, 32, with_projection=True, projection_dim=32)
        return StableDiffusionXLPipeline(
            vae=_tiny_vae(3), text_encoder=te1, text_encoder_2=te2, tokenizer=tokenizer, tokenizer_2=tokenizer,
            unet=unet, scheduler=scheduler, force_zeros_for_empty_prompt=False,
        )
    raise ValueError(f"unknown random pipeline kind {kind!r}")
