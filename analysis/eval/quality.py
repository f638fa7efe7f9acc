"""Quality scorers, chosen by the model in use through a small registry.

A scorer has a `name` and
    score(images, prompts, reference_images) -> dict
where `images` are the accelerated (B, H, W, 3) uint8 images, `prompts` their B prompts and
`reference_images` the same-seed full-compute images. `unavailable_reason()` is None when the scorer can
run here, else one line saying why not (a learned metric whose weights do not load offline); `score` then
raises `ScorerUnavailable`. `score_all` runs a list of scorers and reports an unavailable one as
{"available": False, "reason": ...}: never a made-up number.

Registered (`scorers_for(model_name)`):
- "closeness" (every model): PSNR (dB; +inf for identical images, written "inf" in JSON) and SSIM to the
  full-compute image (analysis/metrics.py; no weights);
- "lpips" (every model): LPIPS (Zhang et al. 2018, AlexNet features) to the full-compute image through the
  `lpips` package, where it is installed and its weights load. It is not a DiffScope dependency: on PyPI it
  needs torchvision, which pulls a torch other than the pinned 2.13.0, so here it reports unavailable;
- "fidelity" (the default shapes-world model): prompt fidelity from analysis/toy/fidelity.py, the share of
  stated attributes (colour, shape, size, position) the image shows: the analog of the CLIP score for a
  world whose captions can be checked exactly. Its dict is `attribute_accuracy(images, prompts)` plus
  "baseline" (the reference images' overall accuracy): RunResult.fidelity / run.json "fidelity";
- "clip_score": CLIP score (Hessel et al. 2021, as torchmetrics defines it: 100 * max(cos(image embedding,
  text embedding), 0), mean over images; analysis/eval/judge.py) for the accelerated and the reference
  images. On the default model the CLIP is shapes-CLIP, the world's own judge (assets/shapes-clip, trained by
  `python -m analysis train-judge`); on every other model transformers' CLIPModel with CLIP_MODEL
  (openai/clip-vit-base-patch32, the checkpoint torchmetrics defaults to), whose weights come from the
  Hugging Face Hub (a Space); where they do not load (offline) it reports unavailable with the reason.
Set-level measures (FD and KID on the judge's embeddings, with bootstrap intervals) need many images: they
are computed by sweeps (analysis/eval/sweep_results.py, analysis/eval/distribution.py), not per run.
"""
from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np

CLIP_MODEL = os.environ.get("DIFFSCOPE_CLIP_MODEL", "openai/clip-vit-base-patch32")


class ScorerUnavailable(RuntimeError):
    """A scorer that cannot run here; the message is the reason (one line)."""


class Scorer(Protocol):
    name: str

    def unavailable_reason(self) -> str | None: ...

    def score(self, images: np.ndarray, prompts: Sequence[str], reference_images: np.ndarray) -> dict[str, Any]: ...


_REGISTRY: list[tuple[Callable[[str], bool], Callable[[], Scorer]]] = []


def register_scorer(applies_to: Callable[[str], bool]):
    """Class decorator: the scorer is offered for every model name for which `applies_to(name)` is true."""
    def decorate(cls):
        _REGISTRY.append((applies_to, cls))
        return cls

    return decorate


def scorers_for(model_name: str) -> list[Scorer]:
    """The scorers that apply to `model_name` (`analysis.models.model_name` of a pipeline), in registration order."""
    return [factory() for applies, factory in _REGISTRY if applies(model_name)]


def score_all(scorers: Sequence[Scorer], images, prompts, reference_images) -> dict[str, dict[str, Any]]:
    """{scorer name: its scores, or {"available": False, "reason": ...}}."""
    out = {}
    for scorer in scorers:
        reason = scorer.unavailable_reason()
        if reason is not None:
            out[scorer.name] = {"available": False, "reason": reason}
            continue
        try:
            out[scorer.name] = scorer.score(images, list(prompts), reference_images)
        except ScorerUnavailable as err:
            out[scorer.name] = {"available": False, "reason": str(err)}
    return out


def _batch(images) -> np.ndarray:
    images = np.asarray(images)
    return images[None] if images.ndim == 3 else images


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def _every_model(name: str) -> bool:
    return True


def _default_model(name: str) -> bool:
    return name == "default"


@register_scorer(_every_model)
class Closeness:
    """PSNR and SSIM to the full-compute image."""

    name = "closeness"

    def unavailable_reason(self) -> str | None:
        return None

    def score(self, images, prompts, reference_images) -> dict[str, Any]:
        from analysis import metrics

        ref, img = _batch(reference_images), _batch(images)
        return {"psnr_db": metrics.psnr(ref, img), "ssim": metrics.ssim(ref, img)}


@functools.lru_cache(maxsize=1)
def _lpips_model():
    """(model, None) or (None, reason): tried once per process."""
    try:
        import lpips  # noqa: F401  (optional; not in requirements: it pulls a torch other than the pinned one)
    except ImportError:
        return None, "the lpips package is not installed (optional; its torchvision dependency needs another torch)"
    try:
        model = lpips.LPIPS(net="alex", verbose=False).eval()
    except Exception as err:  # noqa: BLE001 - weights that do not load (offline) are the expected failure
        return None, f"LPIPS weights did not load ({_one_line(err)})"
    return model, None


@register_scorer(_every_model)
class LPIPS:
    """LPIPS (AlexNet) distance to the full-compute image; lower is closer; 0 for identical images."""

    name = "lpips"

    def unavailable_reason(self) -> str | None:
        return _lpips_model()[1]

    def score(self, images, prompts, reference_images) -> dict[str, Any]:
        import torch

        model, reason = _lpips_model()
        if model is None:
            raise ScorerUnavailable(reason)

        def tensor(x):  # uint8 (B, H, W, 3) -> float (B, 3, H, W) in [-1, 1], as LPIPS expects
            return torch.from_numpy(_batch(x)).permute(0, 3, 1, 2).float() / 127.5 - 1.0

        with torch.inference_mode():
            d = model(tensor(reference_images), tensor(images))
        return {"lpips": float(d.mean())}


@register_scorer(_default_model)
class PromptFidelity:
    """Shapes-world prompt fidelity of the images, and of the full-compute images as "baseline"."""

    name = "fidelity"

    def unavailable_reason(self) -> str | None:
        return None

    def score(self, images, prompts, reference_images) -> dict[str, Any]:
        from analysis.toy.fidelity import attribute_accuracy

        out = attribute_accuracy(list(_batch(images)), list(prompts))
        out["baseline"] = attribute_accuracy(list(_batch(reference_images)), list(prompts))["overall"]
        return out


@functools.lru_cache(maxsize=2)
def _clip(model_id: str):
    """(model, processor, None) or (None, None, reason): local cache first, the Hub unless HF_HUB_OFFLINE=1."""
    from transformers import CLIPModel, CLIPProcessor

    attempts = [True] if os.environ.get("HF_HUB_OFFLINE") == "1" else [True, False]
    reason = None
    for local in attempts:
        try:
            model = CLIPModel.from_pretrained(model_id, local_files_only=local).eval()
            processor = CLIPProcessor.from_pretrained(model_id, local_files_only=local)
            return model, processor, None
        except Exception as err:  # noqa: BLE001 - no weights here (offline) is the expected failure
            reason = f"CLIP weights {model_id} did not load ({_one_line(err)})"
    return None, None, reason


def _judge():
    """(model, processor, None) or (None, None, reason) for the shapes world's own CLIP."""
    from analysis.eval.judge import JudgeUnavailable, load_judge

    try:
        return (*load_judge(), None)
    except JudgeUnavailable as err:
        return None, None, str(err)


def clip_score(model, processor, images: np.ndarray, prompts: Sequence[str]) -> float:
    """100 * max(cos(image, text), 0), mean over the images (torchmetrics' CLIPScore)."""
    from analysis.eval.judge import clip_scores

    return float(clip_scores(model, processor, list(_batch(images)), list(prompts)).mean())


@register_scorer(lambda name: not _default_model(name))
class CLIPScore:
    """CLIP score of the images and of the full-compute images against their prompts (higher = closer)."""

    name = "clip_score"

    def __init__(self, model_id: str | None = None):
        self.model_id = model_id or CLIP_MODEL

    def _load(self):
        return _clip(self.model_id)

    def unavailable_reason(self) -> str | None:
        return self._load()[2]

    def score(self, images, prompts, reference_images) -> dict[str, Any]:
        model, processor, reason = self._load()
        if model is None:
            raise ScorerUnavailable(reason)
        return {"clip_score": clip_score(model, processor, images, prompts),
                "baseline": clip_score(model, processor, reference_images, prompts),
                "model": self.model_id}


@register_scorer(_default_model)
class JudgeCLIPScore(CLIPScore):
    """CLIP score with shapes-CLIP, the default model's world's own judge."""

    def __init__(self):
        super().__init__("shapes-clip")

    def _load(self):
        return _judge()
