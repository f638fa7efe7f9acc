"""Train the embedded default model from scratch: `python -m analysis train-default`.

Three stages, each resumable from `work_dir`:
1. the autoencoder (64x64x3 <-> 16x16x4), trained on random 32x32 crops (it is fully convolutional, and
   crops cost a quarter of full frames);
2. a fixed pool of scenes encoded once into latents, so the UNet stage never runs the encoder;
3. UNet + text encoder jointly on a zero-terminal-SNR schedule with v-prediction (why: see
   `architecture.make_scheduler`), loss weighted so that, measured as an error on the clean latent x0, every
   timestep counts min(1 + SNR, snr_gamma) (a min-SNR variant that stays positive at SNR 0, where the
   layout is decided), constant learning rate after warm-up and an EMA of the weights (a constant rate
   means any step count is a complete recipe).
Every batch, noise draw and dropout decision is derived from (seed, step), so a resumed run equals an
uninterrupted one. The EMA weights are exported in the stock Stable Diffusion layout.

The text side is a recipe field (`text_encoder`, see TEXT_ENCODERS) because it decides how the
cross-attention maps read: a jointly trained contextual encoder may move a caption's meaning into its last
tokens, so object pixels attend to "left" instead of "red" (issue 10). `vae_from` reuses the autoencoder of
an existing model, so text-side variants share stage 1 and differ only where they are meant to.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, StableDiffusionPipeline
from diffusers.training_utils import EMAModel
from tqdm.auto import tqdm
from transformers import CLIPTextConfig, CLIPTextModel

from analysis.toy import architecture, scenes
from analysis.toy.tokenizer import build_tokenizer


# Every variant is a stock CLIPTextModel (StableDiffusionPipeline.from_pretrained loads it unchanged).
TEXT_ENCODERS = {
    "joint": "3 causal transformer layers, trained jointly with the UNet (the shipped shapes-v1)",
    "frozen": "3 causal transformer layers kept at their random initialisation, as SD keeps CLIP frozen",
    "embeddings": "no transformer layers: token + position embedding and the final norm, trained; each "
                  "token's state is its own word",
    "judge": "the text tower of a CLIP trained on the same world (`text_encoder_from`, default the judge "
             "assets/shapes-clip), frozen: Stable Diffusion's own arrangement, a contrastively pretrained "
             "CLIP text encoder whose per-token last hidden states condition the UNet",
}


@dataclass(frozen=True)
class TrainConfig:
    out_dir: str = "assets/shapes-v1"
    work_dir: str = "checkpoints/shapes-v1"
    seed: int = 0
    threads: int = 2
    vae_steps: int = 1200
    vae_batch: int = 32
    vae_crop: int = 32
    vae_lr: float = 1e-3
    vae_kl_weight: float = 1e-6
    n_scenes: int = 40_000
    unet_steps: int = 3_500
    batch: int = 64
    lr: float = 5e-4
    warmup: int = 200
    ema_decay: float = 0.999
    caption_dropout: float = 0.1
    snr_gamma: float = 5.0
    checkpoint_every: int = 250
    export_every: int = 500
    text_encoder: str = "joint"
    text_encoder_from: str = "assets/shapes-clip"
    vae_from: str | None = None
    world: str = "flat"  # analysis.toy.scenes.WORLDS: "detail" adds grain, shading and a third object (issue 16)

    def __post_init__(self):
        if self.world not in scenes.WORLDS:
            raise ValueError(f"world must be one of {', '.join(scenes.WORLDS)}, got {self.world!r}")
        if self.text_encoder not in TEXT_ENCODERS:
            raise ValueError(f"text_encoder must be one of {', '.join(TEXT_ENCODERS)}, got {self.text_encoder!r}")
        for name in ("vae_steps", "unet_steps", "n_scenes", "batch", "vae_batch", "checkpoint_every", "export_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not 0 <= self.caption_dropout < 1:
            raise ValueError(f"caption_dropout must be in [0, 1), got {self.caption_dropout}")


def text_encoder_kind(model_dir) -> str | None:
    """The text side a model folder was trained with (its training.json recipe; exports older than the field
    are "joint"); None for a folder without a recipe (not trained by this module)."""
    recipe_file = Path(model_dir) / "training.json"
    if not recipe_file.exists():
        return None
    return json.loads(recipe_file.read_text()).get("recipe", {}).get("text_encoder", "joint")


def world_of(model_dir) -> str:
    """The scenes a model folder was trained on (its recipe's `world`; "flat" for older recipes and folders
    without one)."""
    recipe_file = Path(model_dir) / "training.json"
    if not recipe_file.exists():
        return "flat"
    return json.loads(recipe_file.read_text()).get("recipe", {}).get("world", "flat")


def text_encoder_variant(joint: CLIPTextModel, kind: str, source: str | None = None) -> CLIPTextModel:
    """The recipe's text encoder, derived from the joint one so that all variants share an initialisation
    (except `judge`, whose weights come from `source`, a CLIPModel or CLIPTextModel folder)."""
    if kind == "joint":
        return joint
    if kind == "frozen":
        return joint.requires_grad_(False).eval()
    if kind == "judge":
        tower = CLIPTextModel.from_pretrained(source)
        mine, theirs = joint.config, tower.config
        for field in ("hidden_size", "vocab_size", "max_position_embeddings", "bos_token_id", "eos_token_id"):
            if getattr(mine, field) != getattr(theirs, field):
                raise ValueError(f"text tower of {source}: {field} {getattr(theirs, field)} != the world's "
                                 f"{getattr(mine, field)} (it must share the tokenizer and the UNet's width)")
        return tower.requires_grad_(False).eval()
    config = CLIPTextConfig.from_dict({**joint.config.to_dict(), "num_hidden_layers": 0})
    embeddings_only = CLIPTextModel(config)
    # strict: a 0-layer model has exactly the embeddings and the final norm of the joint one
    embeddings_only.load_state_dict({k: v for k, v in joint.state_dict().items() if "encoder.layers." not in k})
    return embeddings_only


def _step_rng(seed: int, stage: int, step: int) -> tuple[np.random.Generator, torch.Generator]:
    np_rng = np.random.default_rng((seed, stage, step))
    torch_rng = torch.Generator().manual_seed(int(np_rng.integers(2**62)))
    return np_rng, torch_rng


def _to_unit(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def train_vae(cfg: TrainConfig, images: np.ndarray, work: Path):
    vae = architecture.make_vae()
    ckpt = work / "vae.pt"
    start = 0
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    if ckpt.exists():
        state = torch.load(ckpt, weights_only=False)
        vae.load_state_dict(state["vae"])
        opt.load_state_dict(state["opt"])
        start = state["step"]
    vae.train()
    bar = tqdm(range(start, cfg.vae_steps), desc="autoencoder", initial=start, total=cfg.vae_steps)
    for step in bar:
        np_rng, torch_rng = _step_rng(cfg.seed, 1, step)
        idx = np_rng.integers(0, len(images), cfg.vae_batch)
        y0, x0 = np_rng.integers(0, images.shape[1] - cfg.vae_crop + 1, 2)
        crop = _to_unit(images[idx, y0 : y0 + cfg.vae_crop, x0 : x0 + cfg.vae_crop])
        posterior = vae.encode(crop).latent_dist
        z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=torch_rng)
        recon = vae.decode(z).sample
        loss = F.l1_loss(recon, crop) + cfg.vae_kl_weight * posterior.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.vae_steps:
            torch.save({"vae": vae.state_dict(), "opt": opt.state_dict(), "step": step + 1}, ckpt)
    vae.eval()
    return vae


@torch.no_grad()
def encode_pool(cfg: TrainConfig, vae, images: np.ndarray, work: Path) -> torch.Tensor:
    cache = work / f"latents-{cfg.n_scenes}.pt"
    if cache.exists():
        return torch.load(cache)
    chunks = [vae.encode(_to_unit(images[i : i + 256])).latent_dist.mean for i in tqdm(range(0, len(images), 256), desc="encode")]
    latents = torch.cat(chunks)
    torch.save(latents, cache)
    return latents


def _snr(scheduler, timesteps: torch.Tensor) -> torch.Tensor:
    alphas_cumprod = scheduler.alphas_cumprod[timesteps]
    return alphas_cumprod / (1 - alphas_cumprod)


def loss_weight(snr: torch.Tensor, prediction_type: str, gamma: float) -> torch.Tensor:
    """Per-sample weight on the prediction's MSE so that the implied x0-error weight is min(1 + snr, gamma).

    An x0 error d is an epsilon error sqrt(snr) * d and a v error sqrt(1 + snr) * d, hence the divisions.
    Plain min-SNR (min(snr, gamma)) gives the pure-noise step weight 0; at zero terminal SNR that is the step
    that must learn the layout from the prompt alone, so the floor here is 1.
    """
    x0_weight = torch.clamp(1.0 + snr, max=gamma)
    if prediction_type == "v_prediction":
        return x0_weight / (1.0 + snr)
    if prediction_type == "epsilon":
        return x0_weight / snr.clamp(min=1e-8)
    raise ValueError(f"unsupported prediction_type {prediction_type!r}")


def export(cfg: TrainConfig, vae, text_encoder, unet, tokenizer, scheduler, ema: EMAModel, params, step: int) -> None:
    ema.store(params)
    ema.copy_to(params)
    try:
        pipe = StableDiffusionPipeline(
            vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
            safety_checker=None, feature_extractor=None, image_encoder=None, requires_safety_checker=False,
        )
        out = Path(cfg.out_dir)
        pipe.save_pretrained(out, safe_serialization=True)
        for name in ("vocab.json", "merges.txt"):  # the classic BPE files too, for older transformers
            (out / "tokenizer" / name).write_bytes((Path(cfg.work_dir) / "tokenizer" / name).read_bytes())
        (out / "training.json").write_text(json.dumps({"recipe": asdict(cfg), "steps_done": step}, indent=2))
    finally:
        ema.restore(params)


def train(cfg: TrainConfig) -> Path:
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    work = Path(cfg.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(work / "tokenizer")

    images, captions, _ = scenes.sample_dataset(cfg.n_scenes, seed=cfg.seed, world=cfg.world)
    vae, latents = _latent_pool(cfg, images, work)
    ids = tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt").input_ids
    empty_ids = tokenizer([""], padding="max_length", max_length=tokenizer.model_max_length, return_tensors="pt").input_ids

    text_encoder, unet, scheduler = _fresh_models(cfg, tokenizer)
    train_text = cfg.text_encoder not in ("frozen", "judge")
    params = list(unet.parameters()) + (list(text_encoder.parameters()) if train_text else [])
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.01)
    lr_at = lambda step: cfg.lr * min(1.0, (step + 1) / cfg.warmup)  # noqa: E731
    ema = EMAModel(params, decay=cfg.ema_decay, use_ema_warmup=True, power=3 / 4)

    ckpt = work / "unet.pt"
    start = _resume(ckpt, unet, text_encoder, opt, ema)
    unet.train()
    text_encoder.train(train_text)
    log = open(work / "unet_log.csv", "a")
    t0 = time.time()
    bar = tqdm(range(start, cfg.unet_steps), desc="unet", initial=start, total=cfg.unet_steps)
    for step in bar:
        loss = _unet_loss(cfg, step, latents, ids, empty_ids, text_encoder, unet, scheduler, train_text)
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        ema.step(params)
        bar.set_postfix(loss=f"{loss.item():.4f}")
        log.write(f"{step},{loss.item():.5f},{time.time() - t0:.1f}\n")
        done = step + 1
        if done % cfg.checkpoint_every == 0 or done == cfg.unet_steps:
            torch.save({"unet": unet.state_dict(), "text_encoder": text_encoder.state_dict(),
                        "opt": opt.state_dict(), "ema": ema.state_dict(), "step": done}, ckpt)
            log.flush()
        if done % cfg.export_every == 0 or done == cfg.unet_steps:
            export(cfg, vae, text_encoder, unet, tokenizer, scheduler, ema, params, done)
    log.close()
    if start >= cfg.unet_steps:  # already finished: make sure the export exists
        export(cfg, vae, text_encoder, unet, tokenizer, scheduler, ema, params, start)
    return Path(cfg.out_dir)


def _latent_pool(cfg: TrainConfig, images: np.ndarray, work: Path):
    """Stages 1 and 2: the autoencoder (trained, or `vae_from`'s) and the scene pool's latents, scaled to unit
    standard deviation (the scale is recorded in the autoencoder's config)."""
    if cfg.vae_from:
        vae = AutoencoderKL.from_pretrained(Path(cfg.vae_from) / "vae").eval()
    else:
        vae = train_vae(cfg, images, work)
    latents = encode_pool(cfg, vae, images, work)
    scale = float(1.0 / latents.std())
    vae.register_to_config(scaling_factor=scale)
    return vae, latents * scale


def _fresh_models(cfg: TrainConfig, tokenizer):
    """(text encoder of the recipe's variant, UNet, scheduler), initialised from `cfg.seed`."""
    torch.manual_seed(cfg.seed)
    # Built in the same order for every variant, so the UNet starts from the same weights in all of them.
    text_encoder = architecture.make_text_encoder(len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id)
    unet = architecture.make_unet()
    scheduler = architecture.make_scheduler()
    if cfg.text_encoder == "judge":  # the tower must read the same token ids, not only as many of them
        from transformers import AutoTokenizer

        if AutoTokenizer.from_pretrained(cfg.text_encoder_from).get_vocab() != tokenizer.get_vocab():
            raise ValueError(f"text_encoder_from {cfg.text_encoder_from}: its tokenizer differs from the world's")
    text_encoder = text_encoder_variant(text_encoder, cfg.text_encoder, cfg.text_encoder_from)
    return text_encoder, unet, scheduler


def _resume(ckpt: Path, unet, text_encoder, opt, ema) -> int:
    """Load the UNet stage's checkpoint when there is one; the step to start from (0 without one)."""
    if not ckpt.exists():
        return 0
    state = torch.load(ckpt, weights_only=False)
    unet.load_state_dict(state["unet"])
    text_encoder.load_state_dict(state["text_encoder"])
    opt.load_state_dict(state["opt"])
    ema.load_state_dict(state["ema"])
    return state["step"]


def _unet_loss(cfg: TrainConfig, step: int, latents, ids, empty_ids, text_encoder, unet, scheduler,
               train_text: bool) -> torch.Tensor:
    """The weighted loss of training step `step`: its batch, caption dropout, noise and timesteps all drawn from
    (seed, step), so a resumed run equals an uninterrupted one."""
    prediction_type = scheduler.config.prediction_type
    np_rng, torch_rng = _step_rng(cfg.seed, 3, step)
    idx = torch.from_numpy(np_rng.integers(0, len(latents), cfg.batch))
    x0 = latents[idx]
    batch_ids = ids[idx].clone()
    drop = torch.from_numpy(np_rng.random(cfg.batch) < cfg.caption_dropout)
    batch_ids[drop] = empty_ids
    noise = torch.randn(x0.shape, generator=torch_rng)
    timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (cfg.batch,), generator=torch_rng)
    noisy = scheduler.add_noise(x0, noise, timesteps)
    target = scheduler.get_velocity(x0, noise, timesteps) if prediction_type == "v_prediction" else noise

    with torch.set_grad_enabled(train_text):
        text = text_encoder(batch_ids)[0]
    pred = unet(noisy, timesteps, text).sample
    weight = loss_weight(_snr(scheduler, timesteps), prediction_type, cfg.snr_gamma)
    return (weight * (pred - target).square().mean(dim=(1, 2, 3))).mean()


def config_from_args(args) -> TrainConfig:
    cfg = TrainConfig()
    overrides = {k: v for k, v in vars(args).items() if k in TrainConfig.__dataclass_fields__ and v is not None}
    return replace(cfg, **overrides)
