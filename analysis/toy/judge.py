"""shapes-CLIP, the shapes world's learned judge: `python -m analysis train-judge`.

A stock `transformers.CLIPModel` (a ViT sized for 64 px images and a text tower that reads the default
model's tokenizer), trained contrastively on procedural renders and their captions. It exists so that the
default model can be judged the way the papers judge Stable Diffusion: CLIP score, and FD / KID on image
embeddings (analysis/eval/judge.py, analysis/eval/distribution.py), where no pretrained CLIP or Inception
knows what a "small purple triangle at the top" is.

Recipe (every field of `JudgeConfig` is written beside the weights in training.json):
- **Data**: fresh `scenes.sample_scene` draws every step (unlimited renders, derived from (seed, step), so a
  resumed run equals an uninterrupted one). The generator's held-out colour-shape pairs are *included*
  (`held_out_pairs=True`): they are held out of the generator's training to test its generalisation, and
  the judge has to score exactly those generations. Evaluation uses renders from a disjoint seed.
- **Hard negatives** (NegCLIP, Yuksekgonul et al. 2023): each image also competes against
  `hard_negatives` of its own caption: one attribute of one object changed, and for two-object scenes one
  attribute swapped between the objects (binding). Image-to-text softmax is over the batch's captions plus
  all hard negatives; text-to-image over the batch's images; a caption that occurs twice in a batch is not
  counted as a negative of the other image.
- **Autoencoder round trip**: a share `vae_share` of each batch is drawn from a pool of renders passed through
  the default model's autoencoder (encode to the posterior mean, decode), so that matching captions does not
  reward detecting the autoencoder's soft edges. The pool is built once (`vae_pool` renders).
- Adam-W, linear warm-up then cosine decay; the learned temperature of CLIP.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

from analysis.toy import scenes

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
JUDGE_DIR = REPO_ROOT / "assets" / "shapes-clip"
# What an attribute can be, per object; the order is the order of zero-shot variants.
ATTRIBUTE_VALUES: dict[str, tuple[str, ...]] = {
    "colour": tuple(scenes.COLOURS), "shape": scenes.SHAPES, "size": tuple(scenes.SIZES),
    "position": tuple(scenes.POSITIONS),
}
# (x / 255 - 0.5) / 0.5: the processor and the training loop normalise the same way (a test checks it).
PIXEL_MEAN = PIXEL_STD = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class JudgeConfig:
    out_dir: str = "assets/shapes-clip"
    work_dir: str = "checkpoints/shapes-clip"
    tokenizer_from: str = "assets/shapes-v1"  # the default model: the judge reads its prompts' tokens
    vae_from: str = "assets/shapes-v1"  # whose autoencoder the round-trip pool goes through
    seed: int = 0
    threads: int = 2
    steps: int = 2500
    batch: int = 128
    negatives: int = 2  # hard-negative captions per image
    lr: float = 1e-3
    warmup: int = 100
    weight_decay: float = 0.1
    vae_share: float = 0.5
    vae_pool: int = 8_192
    held_out_pairs: bool = True
    width: int = 128  # both towers; the text width equals the default model's cross-attention width
    layers: int = 3
    heads: int = 4
    patch: int = 8
    projection_dim: int = 64
    checkpoint_every: int = 250

    def __post_init__(self):
        for name in ("steps", "batch", "layers", "heads", "patch", "width", "projection_dim", "checkpoint_every",
                     "vae_pool"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.negatives < 0:
            raise ValueError(f"negatives must be >= 0, got {self.negatives}")
        if not 0 <= self.vae_share <= 1:
            raise ValueError(f"vae_share must be in [0, 1], got {self.vae_share}")
        if scenes.IMAGE_SIZE % self.patch:
            raise ValueError(f"patch must divide the image size {scenes.IMAGE_SIZE}, got {self.patch}")


def make_judge(cfg: JudgeConfig, tokenizer: CLIPTokenizer) -> CLIPModel:
    tower = dict(hidden_size=cfg.width, intermediate_size=4 * cfg.width, num_hidden_layers=cfg.layers,
                 num_attention_heads=cfg.heads)
    config = CLIPConfig(
        text_config=dict(tower, vocab_size=len(tokenizer), max_position_embeddings=tokenizer.model_max_length,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id),
        vision_config=dict(tower, image_size=scenes.IMAGE_SIZE, patch_size=cfg.patch, num_channels=3),
        projection_dim=cfg.projection_dim,
    )
    return CLIPModel(config)


def make_processor(tokenizer: CLIPTokenizer) -> CLIPProcessor:
    size = scenes.IMAGE_SIZE
    image_processor = CLIPImageProcessor(
        do_resize=True, size={"shortest_edge": size}, do_center_crop=True, crop_size={"height": size, "width": size},
        do_rescale=True, rescale_factor=1 / 255, do_normalize=True, image_mean=list(PIXEL_MEAN),
        image_std=list(PIXEL_STD), do_convert_rgb=True)
    return CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)


def pixel_values(images: np.ndarray) -> torch.Tensor:
    """(B, 64, 64, 3) uint8 -> the vision tower's input; equal to the processor's output at 64 px."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255.0
    mean, std = torch.tensor(PIXEL_MEAN).view(1, 3, 1, 1), torch.tensor(PIXEL_STD).view(1, 3, 1, 1)
    return (x - mean) / std


# ---- captions: variants and hard negatives ------------------------------------------------------------------

def with_attribute(scene: scenes.Scene, index: int, attribute: str, value: str) -> scenes.Scene:
    objects = list(scene.objects)
    objects[index] = replace(objects[index], **{attribute: value})
    return replace(scene, objects=tuple(objects))


def hard_negatives(scene: scenes.Scene, rng: np.random.Generator, k: int) -> list[str]:
    """k captions that differ from the scene's own in one attribute of one object, or (two objects, half the
    time) in one attribute swapped between the objects."""
    true_caption = scenes.caption(scene)
    out: list[str] = []
    while len(out) < k:
        attribute = str(rng.choice(list(ATTRIBUTE_VALUES)))
        objs = scene.objects
        if len(objs) == 2 and rng.random() < 0.5 and getattr(objs[0], attribute) != getattr(objs[1], attribute):
            a, b = getattr(objs[0], attribute), getattr(objs[1], attribute)
            negative = with_attribute(with_attribute(scene, 0, attribute, b), 1, attribute, a)
        else:
            index = int(rng.integers(len(objs)))
            current = getattr(objs[index], attribute)
            value = str(rng.choice([v for v in ATTRIBUTE_VALUES[attribute] if v != current]))
            negative = with_attribute(scene, index, attribute, value)
        text = scenes.caption(negative)
        if text != true_caption:
            out.append(text)
    return out


# ---- training -------------------------------------------------------------------------------------------------

def _step_rng(seed: int, step: int) -> np.random.Generator:
    return np.random.default_rng((seed, 7, step))


@torch.no_grad()
def vae_round_trip_pool(cfg: JudgeConfig, work: Path) -> tuple[np.ndarray, list[scenes.Scene]]:
    """`vae_pool` renders passed through the autoencoder of `vae_from`, cached in work_dir."""
    from diffusers import AutoencoderKL

    cache = work / f"vae-pool-{cfg.vae_pool}.npz"
    pool_scenes = [scenes.sample_scene(np.random.default_rng((cfg.seed, 8, i)), allow_held_out=cfg.held_out_pairs)
                   for i in range(cfg.vae_pool)]
    if cache.exists():
        return np.load(cache)["images"], pool_scenes
    vae = AutoencoderKL.from_pretrained(Path(cfg.vae_from) / "vae").eval()
    out = []
    for i in tqdm(range(0, cfg.vae_pool, 256), desc="autoencoder pool"):
        renders = np.stack([scenes.render(s) for s in pool_scenes[i:i + 256]])
        x = torch.from_numpy(renders).permute(0, 3, 1, 2).float() / 127.5 - 1
        y = vae.decode(vae.encode(x).latent_dist.mean).sample
        out.append(((y.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy())
    images = np.concatenate(out)
    np.savez(cache, images=images)
    return images, pool_scenes


def contrastive_loss(model: CLIPModel, pixels: torch.Tensor, captions: list[str], negatives: list[str],
                     tokenizer: CLIPTokenizer) -> torch.Tensor:
    texts = tokenizer(captions + negatives, padding=True, return_tensors="pt")
    image = F.normalize(model.get_image_features(pixel_values=pixels).pooler_output, dim=-1)
    text = F.normalize(model.get_text_features(**texts).pooler_output, dim=-1)
    logits = model.logit_scale.exp() * image @ text.T  # (B, B + B * k)
    b = len(captions)
    same = torch.tensor([[i != j and captions[i] == captions[j] for j in range(b)] for i in range(b)])
    logits[:, :b] = logits[:, :b].masked_fill(same, float("-inf"))
    target = torch.arange(b)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits[:, :b].T, target))


def lr_at(cfg: JudgeConfig, step: int) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * progress))


def export(cfg: JudgeConfig, model: CLIPModel, processor: CLIPProcessor, step: int, final_loss: float | None) -> Path:
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)
    (out / "training.json").write_text(json.dumps(
        {"recipe": asdict(cfg), "steps_done": step, "final_loss_mean_last_100": final_loss}, indent=2))
    return out


def train_judge(cfg: JudgeConfig, stop_after: int | None = None) -> Path | None:
    """Train (or resume) and export; with `stop_after`, checkpoint after that many steps and return None (a run
    split across sessions: the next call resumes exactly where this one stopped)."""
    torch.set_num_threads(cfg.threads)
    work = Path(cfg.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    tokenizer = CLIPTokenizer.from_pretrained(Path(cfg.tokenizer_from) / "tokenizer")
    processor = make_processor(tokenizer)
    torch.manual_seed(cfg.seed)
    model = make_judge(cfg, tokenizer)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
    ckpt, start, losses = work / "judge.pt", 0, []
    if ckpt.exists():
        state = torch.load(ckpt, weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        start, losses = state["step"], state["losses"]
    pool, pool_scenes = vae_round_trip_pool(cfg, work) if cfg.vae_share > 0 else (None, [])
    model.train()
    log = open(work / "judge_log.csv", "a")
    t0 = time.time()
    bar = tqdm(range(start, cfg.steps), desc="judge", initial=start, total=cfg.steps)
    for step in bar:
        rng = _step_rng(cfg.seed, step)
        n_vae = int(round(cfg.vae_share * cfg.batch)) if pool is not None else 0
        idx = rng.integers(0, len(pool_scenes), n_vae) if n_vae else np.zeros(0, dtype=int)
        fresh = [scenes.sample_scene(rng, allow_held_out=cfg.held_out_pairs) for _ in range(cfg.batch - n_vae)]
        batch_scenes = [pool_scenes[i] for i in idx] + fresh
        images = np.concatenate([pool[idx], np.stack([scenes.render(s) for s in fresh])]) if n_vae else \
            np.stack([scenes.render(s) for s in fresh])
        captions = [scenes.caption(s) for s in batch_scenes]
        negatives = [t for s in batch_scenes for t in hard_negatives(s, rng, cfg.negatives)]
        for group in opt.param_groups:
            group["lr"] = lr_at(cfg, step)
        loss = contrastive_loss(model, pixel_values(images), captions, negatives, tokenizer)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        with torch.no_grad():  # CLIP clamps its temperature at 100
            model.logit_scale.clamp_(0, math.log(100))
        losses = (losses + [loss.item()])[-100:]
        bar.set_postfix(loss=f"{loss.item():.4f}")
        log.write(f"{step},{loss.item():.5f},{time.time() - t0:.1f}\n")
        done = step + 1
        if done % cfg.checkpoint_every == 0 or done == cfg.steps or done == stop_after:
            torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": done, "losses": losses}, ckpt)
            log.flush()
        if done == stop_after:
            log.close()
            return None
    log.close()
    model.eval()
    return export(cfg, model, processor, max(start, cfg.steps), float(np.mean(losses)) if losses else None)


def config_from_args(args) -> JudgeConfig:
    overrides = {k: v for k, v in vars(args).items() if k in JudgeConfig.__dataclass_fields__ and v is not None}
    return JudgeConfig(**overrides)
