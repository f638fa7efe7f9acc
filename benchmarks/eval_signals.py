"""Do the captured signals mean something on the default model? `python -m benchmarks.eval_signals`.

For single-object prompts, with every probe attached:
- attention localisation: the share of a word's cross-attention mass that falls on the object (the
  generated image's foreground), divided by the object's share of the image area (1.0 = no better than
  uniform; the target for the colour and shape words is >= 2), per word kind (colour, shape, size, the
  position noun such as "left", and the function words "a"/"on"/"the"/"at"/"in", averaged) and per layer;
- cross-attention convergence (T-GATE's observation): mean L2 change of the attn2 outputs over the last
  quarter of the steps divided by that over the first quarter (target < 0.10);
- feature drift (Faster-Diffusion's observation): mean adjacent-step MSE of the encoder (down) blocks
  divided by that of the decoder (up) blocks (target: well below 1).
For two-object prompts (`--binding-prompts`, issue 16): binding, each colour and shape word's cross-attention
mass on its own object over its mass on the other object (objects found by their stated, distinct colours in
the generated image), per layer and as the mean of layers; 1.0 = the word does not tell its object from the
other one. A raw mass ratio as the issue defines it: the objects' sizes are drawn independently, so a
size bias cancels in the median over prompts rather than per prompt.
Prints one JSON object on its last line.
"""
from __future__ import annotations

import argparse
import statistics

import numpy as np
import torch
import torch.nn.functional as F
from skimage import color

from analysis.jsonsafe import dumps
from analysis.models import load_pipeline
from analysis.probes import default_probes
from analysis.run import RunConfig, generate
from analysis.toy import scenes
from analysis.toy.detect import FOREGROUND_DELTA_E, colour_masks, estimate_background


def foreground_mask(image: np.ndarray) -> np.ndarray:
    lab = color.rgb2lab(image)
    bg = color.rgb2lab(estimate_background(image)[None, None, :] / 255.0)[0, 0]
    return np.linalg.norm(lab - bg, axis=-1) > FOREGROUND_DELTA_E


def layer_maps(cross: dict[str, np.ndarray], token: int, size: int) -> dict[str, np.ndarray]:
    """Per layer, the token's cross-attention mass averaged over steps, upsampled to the image size, sum 1."""
    maps = {}
    for name, arr in cross.items():
        m = torch.from_numpy(arr[:, 0, token].astype(np.float32)).mean(0)  # steps -> (h, w)
        m = F.interpolate(m[None, None], size=(size, size), mode="bilinear", align_corners=False)[0, 0]
        maps[name] = (m / m.sum().clamp_min(1e-12)).numpy()
    return maps


WORD_KINDS = ("colour", "shape", "size", "position", "function")


def words_by_kind(obj: scenes.SceneObject) -> dict[str, list[str]]:
    """The caption words of a one-object prompt, by what they say about the object."""
    *function_words, position_noun = scenes.POSITION_PHRASES[obj.position].split()
    return {"colour": [obj.colour], "shape": [obj.shape], "size": [obj.size], "position": [position_noun],
            "function": ["a", *function_words]}


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None  # None: the model drew no object to measure


def signal_report(pipe, n_prompts: int, steps: int, guidance: float) -> dict:
    """Localisation per word kind and layer, convergence and drift over n_prompts one-object prompts."""
    rng = np.random.default_rng(5)
    ratios: dict[str, list[float]] = {kind: [] for kind in WORD_KINDS}
    layer_ratios: dict[str, dict[str, list[float]]] = {}
    convergence, drift, relative_drift = [], [], []
    for i in range(n_prompts):
        obj = scenes.sample_object(rng, str(rng.choice(list(scenes.POSITIONS))))
        prompt = obj.phrase()
        result = generate(pipe, RunConfig(prompt, seed=i, steps=steps, guidance=guidance,
                                          probes=default_probes()), measure_latency=False)
        image = result.image[0]
        mask = foreground_mask(image)
        if mask.sum() < 20:  # the model drew nothing: no object to localise
            continue
        area_share = mask.mean()
        tokens = result.tokens[0]
        for kind, words in words_by_kind(obj).items():
            maps = [layer_maps(result.signals["attention_maps"]["cross"], tokens.index(w), image.shape[0]) for w in words]
            per_layer = {name: np.mean([m[name] for m in maps], axis=0) for name in maps[0]}
            m = np.mean(list(per_layer.values()), axis=0)
            ratios[kind].append(float(m[mask].sum() / area_share))
            for name, lm in per_layer.items():
                layer_ratios.setdefault(name, {k: [] for k in WORD_KINDS})[kind].append(float(lm[mask].sum() / area_share))
        conv = result.signals["cross_attn_convergence"]["output_l2"].mean(0)
        q = max(1, len(conv) // 4)
        convergence.append(float(conv[-q:].mean() / conv[:q].mean()))
        fd = result.signals["feature_drift"]
        mse = fd["mse"]
        enc = [j for j, b in enumerate(fd["blocks"]) if fd["role"][b] == "encoder"]
        dec = [j for j, b in enumerate(fd["blocks"]) if fd["role"][b] == "decoder"]
        drift.append(float(mse[enc].mean() / mse[dec].mean()))
        relative_drift.append(float(fd["relative"][enc].mean() / fd["relative"][dec].mean()))
        print(f"{i}: {prompt}: " + " ".join(f"{k} x{ratios[k][-1]:.2f}" for k in WORD_KINDS) + " "
              f"late/early {convergence[-1]:.3f} enc/dec {drift[-1]:.3f}", flush=True)
    return {
        "steps": steps, "prompts": n_prompts, "objects_found": len(convergence),
        "colour_mass_over_area_median": _median(ratios["colour"]),
        "shape_mass_over_area_median": _median(ratios["shape"]),
        "mass_over_area_median": {kind: _median(v) for kind, v in ratios.items()},
        "colour_ratio_ge_2_fraction": float(np.mean(np.array(ratios["colour"]) >= 2)) if ratios["colour"] else None,
        "shape_ratio_ge_2_fraction": float(np.mean(np.array(ratios["shape"]) >= 2)) if ratios["shape"] else None,
        "per_layer_mass_over_area_median": {name: {k: _median(v) for k, v in r.items()}
                                            for name, r in layer_ratios.items()},
        "cross_attn_late_over_early_median": _median(convergence),
        "encoder_over_decoder_drift_median": _median(drift),
        "encoder_over_decoder_relative_drift_median": _median(relative_drift),
    }


def object_words(tokens: list[str], scene: scenes.Scene) -> list[dict[str, int]]:
    """Token index of each object's colour and shape word in its own phrase ("... and ..." splits them; a
    shape named twice is found in the right phrase)."""
    split = tokens.index("and") if "and" in tokens else len(tokens)
    spans = [(0, split), (split, len(tokens))]
    return [{kind: start + tokens[start:end].index(getattr(obj, kind)) for kind in ("colour", "shape")}
            for obj, (start, end) in zip(scene.objects, spans)]


def binding_ratio(word_map: np.ndarray, own: np.ndarray, other: np.ndarray) -> float | None:
    """Mass of a word's map on its own object over its mass on the other object; None if either is missing."""
    if own.sum() < 20 or other.sum() < 20:
        return None
    other_mass = float(word_map[other].sum())
    return float(word_map[own].sum()) / other_mass if other_mass > 0 else None


def binding_report(pipe, n_prompts: int, steps: int, guidance: float) -> dict:
    """Binding of colour and shape words on two-object prompts (see the module docstring)."""
    rng = np.random.default_rng(6)
    ratios: dict[str, list[float]] = {"colour": [], "shape": []}
    layer_ratios: dict[str, dict[str, list[float]]] = {}
    measured = 0
    for i in range(n_prompts):
        scene = scenes.sample_scene(rng)
        while len(scene.objects) != 2:
            scene = scenes.sample_scene(rng)
        prompt = scenes.caption(scene)
        result = generate(pipe, RunConfig(prompt, seed=100 + i, steps=steps, guidance=guidance,
                                          probes=default_probes()), measure_latency=False)
        image = result.image[0]
        masks = colour_masks(image)
        own_masks = [masks[o.colour] for o in scene.objects]
        words = object_words(result.tokens[0], scene)
        found = False
        for k in (0, 1):
            for kind in ("colour", "shape"):
                per_layer = layer_maps(result.signals["attention_maps"]["cross"], words[k][kind], image.shape[0])
                mean_map = np.mean(list(per_layer.values()), axis=0)
                ratio = binding_ratio(mean_map, own_masks[k], own_masks[1 - k])
                if ratio is None:
                    continue
                found = True
                ratios[kind].append(ratio)
                for name, lm in per_layer.items():
                    r = binding_ratio(lm, own_masks[k], own_masks[1 - k])
                    if r is not None:
                        layer_ratios.setdefault(name, {"colour": [], "shape": []})[kind].append(r)
        measured += found
        print(f"binding {i}: {prompt}: colour x{ratios['colour'][-1] if ratios['colour'] else float('nan'):.2f} "
              f"shape x{ratios['shape'][-1] if ratios['shape'] else float('nan'):.2f}", flush=True)
    return {"binding_prompts": n_prompts, "binding_prompts_measured": measured,
            "colour_binding_median": _median(ratios["colour"]), "shape_binding_median": _median(ratios["shape"]),
            "binding_words_measured": {k: len(v) for k, v in ratios.items()},
            "per_layer_binding_median": {name: {k: _median(v) for k, v in r.items()} for name, r in layer_ratios.items()}}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="default")
    parser.add_argument("--prompts", type=int, default=20)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--guidance", type=float, default=5.0)
    parser.add_argument("--binding-prompts", type=int, default=20, help="two-object prompts for binding (0: none)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    pipe = load_pipeline(args.model)
    pipe.set_progress_bar_config(disable=True)
    report = {"model": args.model, **signal_report(pipe, args.prompts, args.steps, args.guidance)}
    if args.binding_prompts:
        report.update(binding_report(pipe, args.binding_prompts, args.steps, args.guidance))
    print(dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
