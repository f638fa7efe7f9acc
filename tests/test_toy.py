"""The shapes world: renderer, captions, tokenizer, the training command, the shipped default model."""
import json

from dataclasses import replace

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTokenizer

from analysis.models import DEFAULT_MODEL_DIR, load_pipeline
from analysis.toy import scenes
from analysis.toy.tokenizer import build_tokenizer, unknown_words


def test_renderer_is_deterministic():
    a, caps_a, _ = scenes.sample_dataset(20, seed=3)
    b, caps_b, _ = scenes.sample_dataset(20, seed=3)
    c, _, _ = scenes.sample_dataset(20, seed=4)
    assert a.shape == (20, 64, 64, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b) and caps_a == caps_b
    assert not np.array_equal(a, c)


def test_captions_match_scenes():
    rng = np.random.default_rng(0)
    for _ in range(200):
        scene = scenes.sample_scene(rng)
        stated = scenes.parse_caption(scenes.caption(scene))
        assert stated == [dict(colour=o.colour, shape=o.shape, size=o.size, position=o.position) for o in scene.objects]
        image = scenes.render(scene)
        for obj in scene.objects:  # the object's colour is really drawn at its stated position
            x, y = scenes.POSITIONS[obj.position]
            assert tuple(image[y + obj.dy, x + obj.dx]) == scenes.COLOURS[obj.colour]


def test_held_out_pairs_never_in_training_distribution():
    _, _, train = scenes.sample_dataset(2000, seed=0)
    assert not any((o.colour, o.shape) in scenes.HELD_OUT_PAIRS for s in train for o in s.objects)
    held = scenes.evaluation_scenes(20, seed=1, held_out=True)
    assert all(any((o.colour, o.shape) in scenes.HELD_OUT_PAIRS for o in s.objects) for s in held)


def test_tokenizer_single_tokens_and_unknown_words(tmp_path):
    tok = build_tokenizer(tmp_path)
    for word in scenes.vocabulary():
        assert len(tok.tokenize(word)) == 1, word
    reloaded = CLIPTokenizer.from_pretrained(tmp_path)
    text = "a large red circle on the left and a small blue square at the top"
    assert reloaded(text).input_ids == tok(text).input_ids
    assert len(reloaded(text).input_ids) == len(text.split()) + 2
    ids = tok("a purple zebra").input_ids  # unknown word: characters, no error
    assert len(ids) > 5
    assert unknown_words(tok, "a purple zebra") == ["zebra"]


def test_training_command_smoke(tmp_path):
    from analysis.__main__ import main

    out, work = tmp_path / "model", tmp_path / "work"
    args = ["train-default", "--out-dir", str(out), "--work-dir", str(work), "--vae-steps", "2", "--unet-steps", "2",
            "--n-scenes", "16", "--batch", "4"]
    assert main(args) == 0
    pipe = StableDiffusionPipeline.from_pretrained(out)
    assert isinstance(pipe.unet, UNet2DConditionModel) and isinstance(pipe.vae, AutoencoderKL)
    assert isinstance(pipe.text_encoder, CLIPTextModel)
    assert json.loads((out / "training.json").read_text())["steps_done"] == 2
    # resuming a finished run does no more steps and keeps the export
    assert main(args) == 0
    assert main(args[:-1] + ["0"]) == 2  # invalid batch: exit 2


def test_text_encoder_variants_share_the_joint_initialisation():
    from analysis.toy import architecture
    from analysis.toy.train import text_encoder_variant

    torch.manual_seed(0)
    joint = architecture.make_text_encoder(40, 38, 39)
    reference = {k: v.clone() for k, v in joint.state_dict().items()}
    embeddings = text_encoder_variant(joint, "embeddings")
    assert embeddings.config.num_hidden_layers == 0 and joint.config.num_hidden_layers == 3
    for key, value in embeddings.state_dict().items():
        assert torch.equal(value, reference[key])
    ids = torch.tensor([[38, 1, 2, 3, 39], [38, 5, 2, 3, 39]])  # only token 1 differs
    with torch.no_grad():
        alone, contextual = embeddings(ids)[0], joint(ids)[0]
    # each token's state is its own word: changing token 1 leaves every other token's state as it was
    assert torch.equal(alone[0, 2:], alone[1, 2:]) and not torch.equal(alone[0, 1], alone[1, 1])
    # the contextual encoder carries token 1 into the causal tokens after it
    assert not torch.allclose(contextual[0, 2:], contextual[1, 2:])
    frozen = text_encoder_variant(joint, "frozen")
    assert not any(p.requires_grad for p in frozen.parameters())


def test_training_variant_frozen_text_encoder_and_borrowed_autoencoder(tmp_path):
    from analysis.__main__ import main
    from analysis.toy import architecture
    from analysis.toy.tokenizer import build_tokenizer

    first, second, work = tmp_path / "first", tmp_path / "second", tmp_path / "work"
    small = ["--vae-steps", "2", "--unet-steps", "2", "--n-scenes", "16", "--batch", "4"]
    assert main(["train-default", "--out-dir", str(first), "--work-dir", str(work / "a"), *small]) == 0
    args = ["train-default", "--out-dir", str(second), "--work-dir", str(work / "b"), *small,
            "--text-encoder", "frozen", "--vae-from", str(first)]
    assert main(args) == 0
    pipe = StableDiffusionPipeline.from_pretrained(second)
    source = AutoencoderKL.from_pretrained(first / "vae")
    for key, value in pipe.vae.state_dict().items():
        assert torch.equal(value, source.state_dict()[key])
    tok = build_tokenizer(tmp_path / "tok")
    torch.manual_seed(0)
    initial = architecture.make_text_encoder(len(tok), tok.bos_token_id, tok.eos_token_id).state_dict()
    for key, value in pipe.text_encoder.state_dict().items():  # frozen: exported exactly as initialised
        assert torch.equal(value, initial[key])
    recipe = json.loads((second / "training.json").read_text())["recipe"]
    assert recipe["text_encoder"] == "frozen" and recipe["vae_from"] == str(first)
    assert main(args[:-4] + ["--text-encoder", "contextual"]) == 2


def test_default_model_loads_offline_and_is_deterministic():
    assert (DEFAULT_MODEL_DIR / "model_index.json").exists(), "the embedded default model is missing from assets/"
    pipe = load_pipeline("default")
    assert type(pipe).__name__ == "StableDiffusionPipeline"
    pipe.set_progress_bar_config(disable=True)
    size = sum(p.stat().st_size for p in DEFAULT_MODEL_DIR.rglob("*") if p.is_file())
    assert size < 50 * 2**20
    run = lambda: pipe("a large red circle on the left", num_inference_steps=5, guidance_scale=5,  # noqa: E731
                       generator=torch.Generator().manual_seed(1), output_type="np").images
    assert np.array_equal(run(), run())


@pytest.mark.parametrize("prediction_type", ["v_prediction", "epsilon"])
def test_loss_weight_is_min_one_plus_snr_on_the_x0_error(prediction_type):
    """Whatever the model predicts, weight * (prediction error)^2 equals min(1 + snr, gamma) * (x0 error)^2."""
    from analysis.toy import architecture
    from analysis.toy.train import _snr, loss_weight

    sched = architecture.make_scheduler()
    t = torch.tensor([0, 10, 200, 500, 900, 999])
    x0, noise = torch.randn(6, 4, 2, 2, generator=torch.Generator().manual_seed(0)).double(), torch.randn(6, 4, 2, 2).double()
    error = 1e-3 * torch.randn(6, 4, 2, 2).double()
    ab = sched.alphas_cumprod[t].double().view(-1, 1, 1, 1)
    x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * noise
    if prediction_type == "v_prediction":
        x0_hat = ab.sqrt() * x_t - (1 - ab).sqrt() * (ab.sqrt() * noise - (1 - ab).sqrt() * x0 + error)
    else:
        t, x_t, ab, x0, noise, error = t[:-1], x_t[:-1], ab[:-1], x0[:-1], noise[:-1], error[:-1]  # eps undefined at SNR 0
        x0_hat = (x_t - (1 - ab).sqrt() * (noise + error)) / ab.sqrt()
    snr = _snr(sched, t).double()
    weighted = loss_weight(snr, prediction_type, 5.0) * error.square().mean(dim=(1, 2, 3))
    expected = torch.clamp(1 + snr, max=5.0) * (x0_hat - x0).square().mean(dim=(1, 2, 3))
    torch.testing.assert_close(weighted, expected, rtol=1e-6, atol=0)


def test_default_schedule_has_zero_terminal_snr_and_starts_sampling_at_t_max():
    # Why: with SD 1.5's schedule the pure-noise step still shows the layout, and position words are ignored.
    pipe = load_pipeline("default")
    sched = pipe.scheduler
    assert sched.config.prediction_type == "v_prediction"
    assert float(sched.alphas_cumprod[-1]) == 0.0
    sched.set_timesteps(30)
    assert int(sched.timesteps[0]) == sched.config.num_train_timesteps - 1


def test_judge_text_encoder_is_the_clip_text_tower_frozen():
    from transformers import CLIPModel

    from analysis.eval.judge import judge_dir
    from analysis.toy import architecture
    from analysis.toy.train import text_encoder_variant

    clip = CLIPModel.from_pretrained(judge_dir())
    joint = architecture.make_text_encoder(clip.config.text_config.vocab_size, clip.config.text_config.bos_token_id,
                                           clip.config.text_config.eos_token_id)
    tower = text_encoder_variant(joint, "judge", str(judge_dir()))
    assert not any(p.requires_grad for p in tower.parameters())
    theirs = clip.state_dict()
    for key, value in tower.state_dict().items():  # every weight of the tower is the judge's text tower's
        assert torch.equal(value, theirs[f"text_model.{key}"]), key
    narrow = architecture.make_text_encoder(clip.config.text_config.vocab_size + 1, 0, 1)
    with pytest.raises(ValueError, match="vocab_size"):
        text_encoder_variant(narrow, "judge", str(judge_dir()))


def test_the_detail_world_adds_unstated_detail_and_leaves_the_flat_world_alone():
    flat, flat_captions, flat_scenes = scenes.sample_dataset(50, seed=5)
    assert all(s.grain_std == 0 and all(o.shade == 0 for o in s.objects) for s in flat_scenes)
    detail, captions, detail_scenes = scenes.sample_dataset(50, seed=5, world="detail")
    assert max(len(s.objects) for s in detail_scenes) == 3
    for image, scene, text in zip(detail, detail_scenes, captions):
        assert scenes.parse_caption(text) == [dict(colour=o.colour, shape=o.shape, size=o.size, position=o.position)
                                              for o in scene.objects]  # the detail is not in the caption
        assert np.array_equal(image, scenes.render(scene))  # a pure function of the scene
        background = image[:3, :, :].reshape(-1, 3).astype(float)  # a top border strip: grain, not flat
        assert background.std(axis=0).max() > 2
    with pytest.raises(ValueError, match="world must be one of"):
        from analysis.toy.train import TrainConfig

        TrainConfig(world="nowhere")


def test_the_tiles_world_darkens_whole_cells_and_states_none_of_it():
    world = scenes.WORLDS["tiles"]
    images, captions, scene_list = scenes.sample_dataset(40, seed=6, world="tiles")
    assert all(s.grain_std == 0 and s.tile_strength == world.tile_strength for s in scene_list)
    dark_shares = []
    for image, scene, text in zip(images, scene_list, captions):
        assert scenes.parse_caption(text) == [dict(colour=o.colour, shape=o.shape, size=o.size, position=o.position)
                                              for o in scene.objects]
        plain = scenes.render(replace(scene, tile_strength=0.0)).astype(float)
        ratio = image.astype(float) / np.maximum(plain, 1.0)
        cells = ratio.reshape(16, 4, 16, 4, 3)[..., 0].transpose(0, 2, 1, 3).reshape(16, 16, 16)
        red = plain.reshape(16, 4, 16, 4, 3)[..., 0].transpose(0, 2, 1, 3).reshape(16, 16, 16)
        bright = (red > 100) & (red < 250)  # clear of rounding error and of the clip at 255 (shading can exceed it)
        for cell, lit in zip(cells.reshape(256, 16), bright.reshape(256, 16)):
            if lit.all():  # a cell is either untouched or darkened by tile_strength throughout (rounding aside)
                assert np.allclose(cell, cell[0], atol=0.02) and min(abs(cell[0] - 1), abs(cell[0] - 0.85)) < 0.02
        dark_shares.append(float((cells[..., 0] < 0.93).mean()))
    assert abs(np.mean(dark_shares) - world.tile_prob) < 0.05
