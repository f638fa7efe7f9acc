"""The judge's measures over a sweep's images: CLIP score per image, and per setting CLIP score, FD and KID (on
joint image-caption features, analysis/eval/judge.py `joint_features`) with 95% bootstrap intervals over prompts, and paired comparisons with full compute and with step reduction at
equal latency. Called by the sweep's merge (analysis/eval/sweep_results.py).

References, both paired with the setting's images by prompt:
- "full": the full-compute images of the same prompts and seeds (the setting's own scheduler);
- "renders": true renders of the same captions, as many per caption as the sweep has seeds (background and
  jitter drawn as in training, seed 0): the analog of FID's real images.
A setting *differs* from another only where the paired bootstrap interval of the difference excludes 0.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from analysis.accel import ladder_families
from analysis.eval import distribution

# Summary columns; each also has _low and _high (95% bootstrap interval).
ESTIMATES = ("clip_score", "clip_score_vs_full", "kid_full", "fd_full", "kid_renders", "fd_renders")
EMPTY_COLUMNS = {f"{name}{end}": None for name in ESTIMATES for end in ("", "_low", "_high")}


def _verdict(est: distribution.Estimate, higher_is_better: bool) -> str:
    if not est.excludes_zero():
        return "no difference shown"
    return "better" if (est.value > 0) == higher_is_better else "worse"


def _flat(name: str, est: distribution.Estimate | None) -> dict:
    if est is None:
        return {name: None, f"{name}_low": None, f"{name}_high": None}
    return {name: est.value, f"{name}_low": est.low, f"{name}_high": est.high}


def baseline_name(row: dict, summary: list[dict]) -> str | None:
    """The full-compute setting on the row's scheduler."""
    names = [r["setting"] for r in summary if r.get("technique") == "baseline" and r.get("scheduler") == row.get("scheduler")]
    return names[0] if names else None


def _nearest_step_setting(summary_row: dict, summary: list[dict]) -> dict | None:
    # the ladder ends at full compute, which is the nearest point for settings as slow as it or slower
    ladder = [r for r in summary if r.get("technique") in ladder_families()
              and r.get("scheduler") == summary_row.get("scheduler") and r.get("relative_latency") is not None]
    lat = summary_row.get("relative_latency")
    if not ladder or lat is None:
        return None
    return min(ladder, key=lambda r: abs(r["relative_latency"] - lat))


@dataclass
class JudgeScores:
    row_clip: dict[tuple, float] = field(default_factory=dict)  # CLIP score per row key
    columns: dict[str, dict] = field(default_factory=dict)  # ESTIMATES (+ _low, _high) per setting
    meta: dict = field(default_factory=dict)
    paired: distribution.PairedSets | None = None  # embeddings of every setting and of the renders
    clip: np.ndarray | None = None  # per-image CLIP score, in row order
    by_setting: dict[str, list[int]] = field(default_factory=dict)  # setting -> row indices, ordered by (prompt, seed)
    prompt_ids: dict[str, list[int]] = field(default_factory=dict)  # setting -> prompt id of each of those rows


def _features_model(model_name: str):
    """(CLIP model, processor, label, renders available) for a sweep of `model_name`; raises RuntimeError with
    the reason where its CLIP does not load (a Hub CLIP offline, a missing judge)."""
    from analysis.eval import quality
    from analysis.eval.judge import JudgeUnavailable, load_judge

    if model_name == "default":
        try:
            return (*load_judge(), "shapes-clip", True)
        except JudgeUnavailable as err:
            raise RuntimeError(str(err)) from None
    clip, processor, reason = quality._clip(quality.CLIP_MODEL)
    if clip is None:
        raise RuntimeError(reason)
    return clip, processor, quality.CLIP_MODEL, False


def score_sweep(out: Path, rows: list[dict], model_name: str = "default",
                n_bootstrap: int = distribution.DEFAULT_BOOTSTRAP, seed: int = 0) -> JudgeScores:
    """The judge's measures of a sweep's rows and images. On the default model the judge is shapes-CLIP and
    true renders are a second reference; on any other model the Hub CLIP (CLIP score, and FD / KID on CLIP
    features against full compute, as Kynkäänniemi et al. 2023 recommend over Inception). Unavailable: only
    meta {"judge": "unavailable: ..."}."""
    from analysis.eval.judge import clip_scores, joint_features
    from analysis.eval.sweep_results import image_path, load_png, row_key
    from analysis.models import DEFAULT_MODEL_DIR
    from analysis.toy import scenes
    from analysis.toy.train import world_of

    captions = sorted({r["prompt"] for r in rows})
    seeds = sorted({int(r["seed"]) for r in rows})
    try:
        model, processor, label, with_renders = _features_model(model_name)
        renders = (scenes.true_renders(captions, len(seeds), seed=0, world=world_of(DEFAULT_MODEL_DIR))
                   if with_renders else None)  # the default model's own world (its recipe's), as it was trained
    except (RuntimeError, ValueError) as err:
        return JudgeScores(meta={"judge": f"unavailable: {err}"})
    pid_of = {r["prompt"]: int(r["prompt_id"]) for r in rows}
    rows = sorted(rows, key=row_key)
    images = [load_png(image_path(out, r["setting"], int(r["prompt_id"]), int(r["seed"]))) for r in rows]
    embeddings = joint_features(model, processor, images, [r["prompt"] for r in rows])
    clip = clip_scores(model, processor, images, [r["prompt"] for r in rows])
    row_clip = {row_key(r): float(c) for r, c in zip(rows, clip)}

    by_setting: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        by_setting.setdefault(r["setting"], []).append(i)
    if len(captions) < 2:  # an interval over prompts, FD and KID need at least two
        columns = {name: {**EMPTY_COLUMNS, "clip_score": float(clip[idx].mean())} for name, idx in by_setting.items()}
        return JudgeScores(row_clip, columns, {"judge": label, "judge_sets": "unavailable: FD, KID and "
                                               "intervals need at least 2 prompts"})
    sets = {name: embeddings[idx] for name, idx in by_setting.items()}
    prompts = {name: [int(rows[i]["prompt_id"]) for i in idx] for name, idx in by_setting.items()}
    if renders is not None:
        sets["renders"] = joint_features(model, processor, renders, [c for c in captions for _ in seeds])
        prompts["renders"] = [pid_of[c] for c in captions for _ in seeds]
    # an accelerated image and its full-compute image share (prompt, seed): one draw made twice, never a cross pair
    units = {name: [(rows[i]["prompt_id"], rows[i]["seed"]) for i in idx] for name, idx in by_setting.items()}
    paired = distribution.PairedSets(sets, prompts, units)
    baseline_of = {rows[idx[0]]["scheduler"]: name for name, idx in by_setting.items()
                   if rows[idx[0]]["technique"] == "baseline"}

    columns: dict[str, dict] = {}
    for name, idx in by_setting.items():
        full = baseline_of.get(rows[idx[0]]["scheduler"])
        is_reference = full == name or full is None
        values, ids = clip[idx], prompts[name]
        col = {**_flat("clip_score", distribution.bootstrap_mean(values, ids, n_bootstrap, seed)),
               **_flat("kid_renders", None if renders is None else paired.estimate("kid", name, "renders", n_bootstrap, seed)),
               **_flat("fd_renders", None if renders is None else paired.estimate("fd", name, "renders", n_bootstrap, seed))}
        if is_reference:
            col.update({**_flat("clip_score_vs_full", None), **_flat("kid_full", None), **_flat("fd_full", None)})
        else:
            col.update(_flat("clip_score_vs_full", distribution.bootstrap_mean_difference(
                values, clip[by_setting[full]], ids, n_bootstrap, seed)))
            col.update(_flat("kid_full", paired.estimate("kid", name, full, n_bootstrap, seed)))
            col.update(_flat("fd_full", paired.estimate("fd", name, full, n_bootstrap, seed)))
        columns[name] = col
    meta = {"judge": label, "judge_images_per_setting": max(map(len, by_setting.values())),
            "judge_prompts": len(captions), "judge_bootstrap": n_bootstrap, "judge_interval": "95% percentile bootstrap over prompts",
            "judge_renders_per_caption": len(seeds) if renders is not None else None}
    return JudgeScores(row_clip, columns, meta, paired, clip, by_setting, prompts)


def versus_steps(summary: list[dict], scores: JudgeScores, n_bootstrap: int = distribution.DEFAULT_BOOTSTRAP,
                 seed: int = 0) -> list[dict]:
    """Every setting against the step-reduction setting nearest in measured relative latency (same scheduler; the
    ladder includes full compute):
    paired differences of CLIP score and of KID (to true renders on the default model, else to full compute),
    with a verdict each."""
    if scores.paired is None:
        return []
    paired, clip, by_setting = scores.paired, scores.clip, scores.by_setting
    out = []
    for r in summary:
        if r.get("technique") in ladder_families():
            continue
        ladder = _nearest_step_setting(r, summary)
        if ladder is None:
            continue
        name, other = r["setting"], ladder["setting"]
        d_clip = distribution.bootstrap_mean_difference(clip[by_setting[name]], clip[by_setting[other]],
                                                        scores.prompt_ids[name],
                                                        n_bootstrap, seed)
        reference = "renders" if "renders" in paired.sets else baseline_name(r, summary)
        if reference is None:
            continue
        d_kid = paired.paired_difference("kid", name, other, reference, n_bootstrap, seed)
        out.append({"setting": name, "technique": r["technique"], "relative_latency": r["relative_latency"],
                    "steps_setting": other, "steps_relative_latency": ladder["relative_latency"],
                    **_flat("d_clip_score", d_clip), "clip_score_verdict": _verdict(d_clip, True),
                    **_flat("d_kid", d_kid), "kid_reference": reference, "kid_verdict": _verdict(d_kid, False)})
    return out
