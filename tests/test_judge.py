"""shapes-CLIP, the shapes world's judge: shipped weights load offline with no custom code, it reads the world,
its FD and KID react to every defect, the quality registry offers it on the default model only, and its
training recipe resumes exactly."""
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from analysis.eval import judge, judge_checks
from analysis.toy import scenes
from analysis.toy.judge import JUDGE_DIR, JudgeConfig, hard_negatives, make_processor, pixel_values


@pytest.fixture(scope="module")
def shipped_judge():
    return judge.load_judge()


def test_shipped_judge_is_a_stock_clip_under_10_mb_with_its_recipe():
    from transformers import CLIPModel, CLIPProcessor

    model = CLIPModel.from_pretrained(JUDGE_DIR, local_files_only=True)
    processor = CLIPProcessor.from_pretrained(JUDGE_DIR, local_files_only=True)
    assert type(model) is CLIPModel and model.config.vision_config.image_size == scenes.IMAGE_SIZE
    assert sum(f.stat().st_size for f in JUDGE_DIR.iterdir()) < 10 * 2**20
    recipe = json.loads((JUDGE_DIR / "training.json").read_text())
    assert recipe["steps_done"] == recipe["recipe"]["steps"]
    assert processor.tokenizer.tokenize("purple triangle") == ["purple</w>", "triangle</w>"]


def test_processor_and_training_transform_agree(shipped_judge):
    _, processor = shipped_judge
    images = judge_checks.render_set(["a small red circle on the left"], 3, seed=0)[1]
    by_processor = processor(images=list(images), return_tensors="pt")["pixel_values"]
    assert torch.allclose(by_processor, pixel_values(images), atol=1e-6)


def test_zero_shot_reads_fresh_renders(shipped_judge):
    model, processor = shipped_judge
    split_scenes = scenes.evaluation_scenes(30, seed=4242, held_out=True) + scenes.evaluation_scenes(30, 4243, False)
    rows = judge.zero_shot(model, processor, np.stack([scenes.render(s) for s in split_scenes]),
                           [scenes.caption(s) for s in split_scenes])
    acc = judge.accuracy_by_attribute(rows)
    assert all(acc[a] >= 0.95 for a in ("colour", "shape", "size", "position")), acc


def test_clip_score_prefers_the_true_caption(shipped_judge):
    model, processor = shipped_judge
    scene = scenes.caption_scene("a large green square at the top and a small orange triangle on the right")
    image = scenes.render(scene)[None]
    right = judge.clip_scores(model, processor, image, [scenes.caption(scene)])[0]
    swapped = judge.clip_scores(model, processor, image,
                                ["a large orange square at the top and a small green triangle on the right"])[0]
    assert 0 <= swapped < right <= 100


@pytest.mark.parametrize("defect", list(judge_checks.DEFECT_STRENGTHS))
def test_fd_and_kid_rise_with_each_defect(shipped_judge, defect):
    model, processor = shipped_judge
    captions = [scenes.caption(s) for s in scenes.evaluation_scenes(24, seed=77, held_out=False)]
    out = judge_checks.sensitivity(model, processor, captions, per_caption=2, n_bootstrap=50,
                                   strengths={defect: judge_checks.DEFECT_STRENGTHS[defect]})
    assert out[f"{defect}_monotonic_fd"] and out[f"{defect}_monotonic_kid"], out[defect]
    clean = out[defect][0]["kid"]
    assert clean["low"] <= 0 <= clean["high"], "a disjoint clean draw is not told apart from the reference"
    if defect != "noise":  # the judge barely sees pixel noise (sigma 32 of 255 stays inside KID's interval)
        assert out[defect][-1]["kid"]["low"] > 0


def test_registry_offers_the_judge_on_the_default_model_only(shipped_judge, monkeypatch):
    from analysis.eval import quality

    image = scenes.render(scenes.caption_scene("a small blue square at the bottom"))[None]
    scores = quality.score_all(quality.scorers_for("default"), image, ["a small blue square at the bottom"], image)
    assert scores["clip_score"]["model"] == "shapes-clip" and scores["clip_score"]["clip_score"] > 0
    assert scores["clip_score"]["clip_score"] == scores["clip_score"]["baseline"]
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    quality._clip.cache_clear()
    hub = quality.score_all(quality.scorers_for("stabilityai/sd-turbo"), image, ["a cat"], image)["clip_score"]
    assert hub["available"] is False and quality.CLIP_MODEL in hub["reason"]
    quality._clip.cache_clear()


def test_missing_judge_is_reported_not_raised(tmp_path, monkeypatch):
    from analysis.eval import quality

    monkeypatch.setenv("DIFFSCOPE_JUDGE", str(tmp_path))
    judge.load_judge.cache_clear()
    try:
        reason = quality.JudgeCLIPScore().unavailable_reason()
        assert reason and "train-judge" in reason and str(tmp_path) not in reason
    finally:
        judge.load_judge.cache_clear()


def test_hard_negatives_change_one_attribute_or_swap_one_between_objects():
    rng = np.random.default_rng(0)
    for _ in range(50):
        scene = scenes.sample_scene(rng, allow_held_out=True)
        for negative in hard_negatives(scene, rng, 3):
            assert negative != scenes.caption(scene)
            stated, true = scenes.parse_caption(negative), scenes.parse_caption(scenes.caption(scene))
            changed = sum(a[k] != b[k] for a, b in zip(stated, true) for k in a)
            assert changed in (1, 2)  # one attribute changed, or one attribute swapped between two objects


def test_training_resumes_exactly(tmp_path):
    from safetensors.torch import load_file

    from analysis.toy.judge import train_judge

    tiny = JudgeConfig(steps=4, batch=6, vae_pool=8, layers=1, width=32, heads=2, checkpoint_every=2, threads=1)
    straight = train_judge(replace(tiny, out_dir=str(tmp_path / "a"), work_dir=str(tmp_path / "wa")))
    interrupted = replace(tiny, out_dir=str(tmp_path / "b"), work_dir=str(tmp_path / "wb"))
    assert train_judge(interrupted, stop_after=3) is None and not (tmp_path / "b").exists()
    resumed = train_judge(interrupted)
    a, b = load_file(Path(straight) / "model.safetensors"), load_file(Path(resumed) / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((Path(resumed) / "training.json").read_text())["recipe"]["steps"] == 4
