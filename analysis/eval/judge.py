"""CLIP features for quality: embeddings and CLIP score from any stock `CLIPModel`, the shapes world's judge
(shapes-CLIP, trained by `python -m analysis train-judge`, shipped in assets/shapes-clip) and its zero-shot
attribute classification.

The same code path serves a Hub CLIP on Stable Diffusion and shapes-CLIP on the default model: both are a
`CLIPModel` plus its `CLIPProcessor`. CLIP score is as torchmetrics and the papers define it:
100 * max(cos(image embedding, text embedding), 0), per image (mean over a set).
"""
from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from analysis.toy import scenes
from analysis.toy.judge import ATTRIBUTE_VALUES, JUDGE_DIR, with_attribute

BATCH = 256


class JudgeUnavailable(RuntimeError):
    """The judge's weights do not load here; the message says why in one line."""


def judge_dir() -> Path:
    return Path(os.environ.get("DIFFSCOPE_JUDGE", JUDGE_DIR))


@functools.lru_cache(maxsize=2)
def load_judge(path: str | None = None):
    """(model, processor) of shapes-CLIP, loaded once per process; JudgeUnavailable if it is missing."""
    from transformers import CLIPModel, CLIPProcessor

    folder = Path(path) if path else judge_dir()
    if not (folder / "config.json").is_file():
        raise JudgeUnavailable("the shapes-world judge is not installed (train it: python -m analysis train-judge)")
    try:
        model = CLIPModel.from_pretrained(folder, local_files_only=True).eval()
        processor = CLIPProcessor.from_pretrained(folder, local_files_only=True)
    except Exception as err:  # noqa: BLE001 - a damaged export is reported, not raised into a run
        raise JudgeUnavailable(f"the shapes-world judge did not load ({type(err).__name__})") from None
    return model, processor


def _pooled(out):
    # transformers 5 returns a model output whose pooler_output is the projected embedding; 4.x a tensor
    return getattr(out, "pooler_output", out)


def image_embeddings(model, processor, images: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
    """(n, projection_dim) unit-norm image embeddings of uint8 (H, W, 3) images (any size: the processor resizes)."""
    import torch

    images = list(np.asarray(images)) if not isinstance(images, list) else images
    out = []
    with torch.inference_mode():
        for i in range(0, len(images), BATCH):
            pixels = processor(images=images[i:i + BATCH], return_tensors="pt")["pixel_values"]
            out.append(torch.nn.functional.normalize(_pooled(model.get_image_features(pixel_values=pixels)), dim=-1))
    return torch.cat(out).double().numpy()


def text_embeddings(model, processor, texts: Sequence[str]) -> np.ndarray:
    import torch

    out = []
    with torch.inference_mode():
        for i in range(0, len(texts), BATCH):
            tokens = processor(text=list(texts[i:i + BATCH]), return_tensors="pt", padding=True, truncation=True)
            feats = model.get_text_features(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])
            out.append(torch.nn.functional.normalize(_pooled(feats), dim=-1))
    return torch.cat(out).double().numpy()


def clip_scores(model, processor, images, prompts: Sequence[str]) -> np.ndarray:
    """Per-image CLIP score, 100 * max(cos, 0)."""
    if len(images) != len(prompts):
        raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
    cos = (image_embeddings(model, processor, images) * text_embeddings(model, processor, prompts)).sum(-1)
    return 100 * np.clip(cos, 0, None)


def joint_features(model, processor, images, captions: Sequence[str]) -> np.ndarray:
    """(n, 2 d) features of (image, caption) pairs for FD and KID: [sqrt(d) image embedding, sqrt(d) caption
    embedding], both unit-norm before scaling.

    Why joint: a sweep's sets share their captions, and a generator that paints a prompt's red circle blue
    and its blue one red keeps the image marginal; only the image-caption pairing shows it (as conditional
    FID does, Soloveitchik et al. 2021). Why the sqrt(d) scale: KID's kernel (x . y / D + 1)^3 expects features
    of unit scale per dimension (as Inception's); on unit-norm embeddings x . y / D is ~1/D and the kernel is
    nearly linear (it then sees only mean shifts). Scaled, it is ((cos_image + cos_caption) / 2 + 1)^3.
    """
    image = image_embeddings(model, processor, images)
    text = text_embeddings(model, processor, captions)
    return np.concatenate([image, text], axis=1) * np.sqrt(image.shape[1])


# ---- zero-shot attribute classification ------------------------------------------------------------------------

def attribute_questions(caption: str) -> list[dict]:
    """For each stated attribute of each object: the caption variants that change only it, one per value
    (the true caption among them), as {object, attribute, expected, values, captions}."""
    scene = scenes.caption_scene(caption)
    questions = []
    for index, obj in enumerate(scene.objects):
        for attribute, values in ATTRIBUTE_VALUES.items():
            captions = [scenes.caption(with_attribute(scene, index, attribute, v)) for v in values]
            questions.append({"object": index, "attribute": attribute, "expected": getattr(obj, attribute),
                              "values": values, "captions": captions})
    return questions


def zero_shot(model, processor, images, captions: Sequence[str]) -> list[dict]:
    """One row per (image, object, attribute): expected value, the judge's argmax over the variants, correct."""
    image_emb = image_embeddings(model, processor, images)
    per_image = [attribute_questions(c) for c in captions]
    variants = sorted({t for qs in per_image for q in qs for t in q["captions"]})
    text_emb = dict(zip(variants, text_embeddings(model, processor, variants)))
    rows = []
    for i, questions in enumerate(per_image):
        for q in questions:
            sims = [float(image_emb[i] @ text_emb[t]) for t in q["captions"]]
            observed = q["values"][int(np.argmax(sims))]
            rows.append({"image": i, "object": q["object"], "attribute": q["attribute"], "expected": q["expected"],
                         "observed": observed, "correct": observed == q["expected"]})
    return rows


def accuracy_by_attribute(rows: Sequence[dict]) -> dict[str, float | None]:
    out = {}
    for attribute in ATTRIBUTE_VALUES:
        hits = [r["correct"] for r in rows if r["attribute"] == attribute]
        out[attribute] = (sum(hits) / len(hits)) if hits else None
    out["overall"] = (sum(r["correct"] for r in rows) / len(rows)) if rows else None
    return out
