"""Is the judge a good judge? Its zero-shot accuracy on renders, its agreement with the hand-written scorer on
generations, and whether FD / KID on its embeddings rise with each defect acceleration can cause.

Used by `python -m benchmarks.eval_judge` (the shipped numbers) and by the tests (small sets).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from analysis.eval import distribution
from analysis.eval.judge import accuracy_by_attribute, joint_features, zero_shot
from analysis.toy import scenes
from analysis.toy.judge import ATTRIBUTE_VALUES

# Strength 0 is the clean set; each defect then gets stronger.
DEFECT_STRENGTHS: dict[str, tuple[float, ...]] = {
    "blur": (0.0, 0.6, 1.2, 2.4),  # Gaussian sigma in px on 64 px images
    "noise": (0.0, 8.0, 16.0, 32.0),  # Gaussian sigma in 0-255 levels
    "colour_swap": (0.0, 0.25, 0.5, 1.0),  # share of images with one object recoloured
    "shape_swap": (0.0, 0.25, 0.5, 1.0),  # share of images with one object's shape changed
}


def render_set(captions: Sequence[str], per_caption: int, seed: int) -> tuple[list[scenes.Scene], np.ndarray]:
    """Scenes and renders of each caption, `per_caption` times, background and jitter drawn from `seed`."""
    out = scenes.caption_scenes(captions, per_caption, seed)
    return out, np.stack([scenes.render(s) for s in out])


def _swap(scene_list: Sequence[scenes.Scene], attribute: str, share: float, seed: int) -> np.ndarray:
    """Renders where a share of the scenes has one object's `attribute` changed to another value (colours stay
    distinct between the objects, as in the world)."""
    rng = np.random.default_rng(seed)
    chosen = set(rng.permutation(len(scene_list))[: int(round(share * len(scene_list)))].tolist())
    images = []
    for i, scene in enumerate(scene_list):
        if i in chosen:
            k = int(rng.integers(len(scene.objects)))
            taken = {getattr(o, attribute) for o in scene.objects} if attribute == "colour" else {getattr(scene.objects[k], attribute)}
            value = str(rng.choice([v for v in ATTRIBUTE_VALUES[attribute] if v not in taken]))
            objects = list(scene.objects)
            objects[k] = replace(objects[k], **{attribute: value})
            scene = replace(scene, objects=tuple(objects))
        images.append(scenes.render(scene))
    return np.stack(images)


def apply_defect(kind: str, strength: float, scene_list: Sequence[scenes.Scene], images: np.ndarray,
                 seed: int = 0) -> np.ndarray:
    from skimage.filters import gaussian

    if strength == 0:
        return images
    if kind == "blur":
        out = gaussian(images.astype(float), sigma=(0, strength, strength, 0), preserve_range=True)
        return np.clip(np.rint(out), 0, 255).astype(np.uint8)
    if kind == "noise":
        out = images + np.random.default_rng(seed).normal(0, strength, images.shape)
        return np.clip(np.rint(out), 0, 255).astype(np.uint8)
    if kind in ("colour_swap", "shape_swap"):
        return _swap(scene_list, kind.split("_")[0], strength, seed)
    raise ValueError(f"unknown defect {kind!r}")


def sensitivity(model, processor, captions: Sequence[str], per_caption: int = 2, n_bootstrap: int = 200,
                strengths: dict[str, Sequence[float]] | None = None, vae=None) -> dict:
    """FD and KID (with intervals) of defected renders (seed 1) against clean renders (seed 0) of the same
    captions, per defect and strength. Strength 0 is a disjoint clean draw: KID's interval should hold 0.
    With `vae`, also the autoencoder round trip of the clean draw (what every generation goes through)."""
    strengths = strengths or DEFECT_STRENGTHS
    ids = [p for p in range(len(captions)) for _ in range(per_caption)]
    texts = [c for c in captions for _ in range(per_caption)]
    _, reference = render_set(captions, per_caption, seed=0)
    test_scenes, test_images = render_set(captions, per_caption, seed=1)

    def features(images):
        return joint_features(model, processor, images, texts)

    sets = {"reference": features(reference)}
    for kind, levels in strengths.items():
        for s in levels:
            sets[f"{kind}@{s}"] = features(apply_defect(kind, s, test_scenes, test_images))
    if vae is not None:
        sets["autoencoder"] = features(autoencoder_round_trip(vae, test_images))
    paired = distribution.PairedSets(sets, {name: ids for name in sets})
    out: dict = {"n_images": len(ids), "n_prompts": len(captions), "n_bootstrap": n_bootstrap}
    if vae is not None:
        out["autoencoder"] = {stat: paired.estimate(stat, "autoencoder", "reference", n_bootstrap).as_dict()
                              for stat in ("fd", "kid")}
    for kind, levels in strengths.items():
        out[kind] = [{"strength": s, **{stat: paired.estimate(stat, f"{kind}@{s}", "reference", n_bootstrap).as_dict()
                                        for stat in ("fd", "kid")}} for s in levels]
        for stat in ("fd", "kid"):
            values = [row[stat]["value"] for row in out[kind]]
            out[kind + "_monotonic_" + stat] = bool(all(b > a for a, b in zip(values, values[1:])))
    return out


def zero_shot_report(model, processor, n: int = 200, seed: int = 2000, vae=None) -> dict:
    """Zero-shot attribute accuracy on fresh renders (a seed the judge never trained on): per split (seen /
    held-out colour-shape pairs), per object count and per attribute; with `vae`, also after an autoencoder
    round trip."""
    report = {}
    for split, held_out, split_seed in (("seen", False, seed), ("held_out", True, seed + 1)):
        split_scenes = scenes.evaluation_scenes(n, seed=split_seed, held_out=held_out)
        captions = [scenes.caption(s) for s in split_scenes]
        variants = {"renders": np.stack([scenes.render(s) for s in split_scenes])}
        if vae is not None:
            variants["autoencoder"] = autoencoder_round_trip(vae, variants["renders"])
        for name, images in variants.items():
            rows = zero_shot(model, processor, images, captions)
            entry = {"all": accuracy_by_attribute(rows), "n_images": len(captions)}
            for label, k in (("one_object", 1), ("two_objects", 2)):
                idx = {i for i, s in enumerate(split_scenes) if len(s.objects) == k}
                entry[label] = accuracy_by_attribute([r for r in rows if r["image"] in idx])
            report[f"{split}/{name}"] = entry
    return report


def autoencoder_round_trip(vae, images: np.ndarray) -> np.ndarray:
    import torch

    with torch.inference_mode():
        x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
        y = vae.decode(vae.encode(x).latent_dist.mean).sample
    return ((y.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()


def agreement(model, processor, images, prompts: Sequence[str]) -> dict:
    """Per attribute: how often the judge and the hand-written scorer agree on whether an image shows what its
    prompt states (both judge each stated attribute of each object), and each one's accuracy."""
    from analysis.toy.fidelity import score_image

    judge_rows = zero_shot(model, processor, images, prompts)
    judge = {(r["image"], r["object"], r["attribute"]): r["correct"] for r in judge_rows}
    judge_observed = {(r["image"], r["object"], r["attribute"]): r["observed"] for r in judge_rows}
    pairs: dict[str, list[tuple[bool, bool]]] = {a: [] for a in ATTRIBUTE_VALUES}
    disagreements = []
    for i, (image, prompt) in enumerate(zip(images, prompts)):
        for r in score_image(image, prompt)["attributes"]:
            key = (i, r["object"], r["attribute"])
            pairs[r["attribute"]].append((bool(r["correct"]), judge[key]))
            if bool(r["correct"]) != judge[key]:
                disagreements.append({"image": i, "object": r["object"], "attribute": r["attribute"],
                                      "expected": r["expected"], "scorer": r["observed"], "judge": judge_observed[key]})
    out = {}
    for attribute, values in pairs.items():
        if values:
            out[attribute] = {"agreement": sum(a == b for a, b in values) / len(values),
                              "scorer_accuracy": sum(a for a, _ in values) / len(values),
                              "judge_accuracy": sum(b for _, b in values) / len(values), "n": len(values)}
    every = [v for vals in pairs.values() for v in vals]
    out["overall"] = {"agreement": sum(a == b for a, b in every) / len(every), "n": len(every)}
    out["disagreements"] = disagreements
    return out
