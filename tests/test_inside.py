"""Inside the accelerated run: technique marks, AT-EDM's pruned tokens, probes under techniques, and the
figures that mark gate steps, key steps, reused maps and pruned tokens (issue 8, item 5)."""

import numpy as np
import pytest

from analysis.accel import parse_accel, reused_attention_steps, technique_marks
from analysis.accel.atedm import ATEDMConfig
from analysis.accel.fastdiff import PAPER_KEY_STEPS_20, FastDiffConfig
from analysis.probes import AttentionMapsConfig, ConvergenceConfig, DriftConfig, TokenRankConfig, default_probes
from analysis.run import RunConfig, run_once
from viz import _attention_data as AD
from viz import _data as D
from viz import attention_figs as A
from viz import export as E
from viz import plotly_figs as P
from viz import signal_figs as S

PROMPT = "a red circle on the left"
STEPS = 4


def _run(pipe, plugins, steps=STEPS, size=None):
    config = RunConfig(PROMPT, steps=steps, seed=3, size=size)
    result = run_once(pipe, config, tuple(plugins), steps)
    img, counters, signals = result.images, result.counters, result.signals
    return img, counters, signals


# --- marks ------------------------------------------------------------------------------------------------

def test_marks_of_known_configs():
    m = technique_marks([parse_accel("tgate:gate_step=8,sp_interval=1"), parse_accel("reuse:scope=self")], 20)
    assert m["steps"] == 20
    assert m["techniques"]["tgate"]["gate_step"] == 8 and m["techniques"]["tgate"]["gated"]
    assert m["techniques"]["tgate"]["cross"][7] == "cache" and set(m["techniques"]["tgate"]["cross"][8:]) == {"reuse"}
    assert m["techniques"]["reuse"]["policy"] == "CCCCCCCCCCRCRRCRRCRR" and m["techniques"]["reuse"]["scope"] == "self"
    assert m["techniques"]["reuse"]["reused_steps"] == [10, 12, 13, 15, 16, 18, 19]
    # cross maps not computed: T-GATE's cached steps only (reuse is scope=self); self: reuse's R steps
    assert reused_attention_steps(m, "cross") == list(range(8, 20))
    assert reused_attention_steps(m, "self") == [10, 12, 13, 15, 16, 18, 19]

    m = technique_marks([parse_accel("fastdiff"), parse_accel("atedm")], 20)
    assert m["techniques"]["fastdiff"]["key_steps"] == list(PAPER_KEY_STEPS_20)
    assert sorted(m["techniques"]["fastdiff"]["key_steps"] + m["techniques"]["fastdiff"]["skipped_steps"]) == list(range(20))
    assert m["techniques"]["atedm"]["early_steps"] == list(range(6))  # int(0.3 * 20 + 0.5)
    assert technique_marks([parse_accel("fastdiff")], 10)["techniques"]["fastdiff"]["key_steps"] == [0, 1, 2, 3, 5, 7]
    assert technique_marks([ATEDMConfig(dsap=False)], 10)["techniques"]["atedm"]["early_steps"] == []

    # a steps technique sets the run length the other marks are resolved for
    m = technique_marks([parse_accel("steps:steps=10"), parse_accel("fastdiff")], 20)
    assert m["steps"] == 10 and m["techniques"]["fastdiff"]["key_steps"] == [0, 1, 2, 3, 5, 7]
    # the gate is not reached in a run shorter than it
    assert technique_marks([parse_accel("tgate:gate_step=10")], 8)["techniques"]["tgate"]["gated"] is False
    with pytest.raises(ValueError, match="entries but the run has"):
        technique_marks([parse_accel("reuse:policy=CCR")], 5)


def test_gate_step_follows_the_run_unless_set():
    from analysis.accel.tgate import TGateConfig

    def gate(config, steps):
        return technique_marks([config], steps)["techniques"]["tgate"]["gate_step"]

    assert gate(TGateConfig(), 20) == 8 and gate(TGateConfig(), 25) == 10  # round(0.4 x steps), the paper's
    assert gate(TGateConfig(gate_step=5), 20) == 5
    m = technique_marks([TGateConfig(), parse_accel("fastdiff:parallel=false")], 20)
    assert m["lines"] == {"convergence": {"label": "T-GATE gate", "steps": [8]},
                          "drift": {"label": "key steps (encoder runs)", "steps": [0, 1, 2, 3, 5, 10, 15]}}
    m = technique_marks([parse_accel("deepcache:cache_interval=5"), parse_accel("tgate")], 20)
    assert m["lines"]["drift"] == {"label": "full steps (the deep UNet runs)", "steps": [0, 5, 10, 15]}


# --- AT-EDM's pruned tokens and the probes under techniques ---------------------------------------------

@pytest.mark.parametrize("kind", ["sd15", "sdxl"])
def test_atedm_pruned_tokens_are_the_lowest_ranked(request, kind):
    pipe = request.getfixturevalue(f"{kind}_pipe")
    cfg = ATEDMConfig(ratio=0.5, dsap=True, dsap_fraction=0.5)
    img_plain, counters_plain, signals_plain = _run(pipe, (cfg,))
    assert signals_plain == {}  # nothing is recorded in a run without probes (the timed one)
    img, counters, signals = _run(pipe, (cfg, TokenRankConfig(), ConvergenceConfig(), DriftConfig(),
                                         AttentionMapsConfig()))
    assert np.array_equal(img, img_plain), "probes must not change the accelerated image"
    assert counters["atedm"] == counters_plain["atedm"]
    pr, rank = signals["atedm_pruning"], signals["token_rank"]
    assert pr["steps"] == list(range(STEPS)) and not pr["truncated"]
    by_block = counters["atedm"]["layers"]
    for layer in pr["layers"]:
        mask = pr["pruned"][layer]
        h, w = pr["grid"][layer]
        assert mask.dtype == bool and mask.shape == (STEPS, 1, h, w)
        np.testing.assert_array_equal(pr["n_pruned"][layer], mask.reshape(STEPS, 1, -1).sum(-1))
        # the counters count both CFG rows, the signal the conditional one
        assert 2 * int(mask.sum()) == by_block[pr["blocks"][layer]]["tokens_pruned"]
        assert layer.endswith("transformer_blocks.0.attn1") and layer.startswith(pr["blocks"][layer])
        scores = rank["scores"][layer]
        for step in range(STEPS):
            m, s = mask[step, 0].ravel(), scores[step, 0].ravel()
            assert m.sum() in (0, int(0.5 * m.size))
            if m.any():  # the same G-WPR scores on the same map: pruned = lowest ranked
                assert s[m].max() <= s[~m].min()
    # DSAP: protected blocks prune nothing in the early half, everything else prunes from step 0
    early = [layer for layer in pr["layers"] if pr["n_pruned"][layer][:2].sum() == 0]
    assert early and len(early) < len(pr["layers"])
    # probes skip calls on the pruned token subset (NaN), and keep full-grid ones
    maps = signals["attention_maps"]
    assert maps["kept_bytes"] <= maps["budget_bytes"]
    for layer, arr in maps["self"].items():
        assert arr.shape[2:4] == tuple(maps["resolution"][layer]["kept"])


def test_probes_follow_fastdiff_batched_decoder(sd15_pipe):
    cfg = FastDiffConfig(key_steps=(0, 2), noise=False)  # steps 1 and 3 run the decoder only, batched
    img_plain, _, _ = _run(sd15_pipe, (cfg,))
    img, _, signals = _run(sd15_pipe, (cfg,) + default_probes())
    assert np.array_equal(img, img_plain)
    drift = signals["feature_drift"]
    roles = [drift["role"][b] for b in drift["blocks"]]
    mse, frob = drift["mse"], drift["frobenius"]
    for i, role in enumerate(roles):
        if role == "decoder":  # every step observed, the batched rows split back onto their steps
            assert np.isfinite(frob[i]).all() and np.isfinite(mse[i]).all()
        else:  # the encoder is skipped at steps 1 and 3
            assert np.isfinite(frob[i, [0, 2]]).all() and np.isnan(frob[i, [1, 3]]).all()
    rank = signals["token_rank"]
    assert rank["steps"] == [0, 2]  # attention inside the batched call is observed at the key step


def test_per_head_maps_stay_within_the_budget(toy_pipe):
    _, _, full = _run(toy_pipe, (AttentionMapsConfig(),), size=64)
    full = full["attention_maps"]
    assert full["self_heads"] and full["cross_heads"] and not full["reductions"]
    for layer, heads in full["self_heads"].items():
        np.testing.assert_allclose(heads.astype(np.float32).mean(axis=2), full["self"][layer].astype(np.float32),
                                   atol=2e-3)
    for budget in (full["kept_bytes"], full["kept_bytes"] - 1):
        _, _, s = _run(toy_pipe, (AttentionMapsConfig(budget_mb=budget / 2**20),), size=64)
        s = s["attention_maps"]
        assert s["kept_bytes"] <= s["budget_bytes"]
        assert bool(s["self_heads"]) == (budget == full["kept_bytes"])
    _, _, off = _run(toy_pipe, (AttentionMapsConfig(self_heads=False, cross_heads=False),), size=64)
    assert off["attention_maps"]["self_heads"] == {} and off["attention_maps"]["cross_heads"] == {}


# --- figures ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def atedm_run(sd15_pipe):
    cfg = ATEDMConfig(ratio=0.5, dsap=False)
    _, _, signals = _run(sd15_pipe, (cfg,) + default_probes())
    return signals


@pytest.fixture(scope="module")
def full_run(sd15_pipe):
    _, _, signals = _run(sd15_pipe, default_probes())
    return signals


def _vlines(fig):
    return [s for s in fig.layout.shapes if s.type == "line" and s.x0 == s.x1]


def test_convergence_gate_line(full_run):
    conv = full_run["cross_attn_convergence"]
    base = S.convergence_figure(conv)
    assert not base.layout.shapes
    fig = S.convergence_figure(conv, gate_step=2, title_prefix="accelerated")
    lines = _vlines(fig)
    assert len(lines) == 2 and {s.x0 for s in lines} == {2}
    assert any("T-GATE gate (step 2)" == (a.text or "") for a in fig.layout.annotations)
    assert fig.layout.title.text.startswith("accelerated · ")
    assert len(fig.data) == len(base.data)
    E.convergence_figure(conv, gate_step=2)


def test_drift_key_steps(full_run):
    drift = full_run["feature_drift"]
    assert not S.drift_figure(drift).layout.shapes
    fig = S.drift_figure(drift, key_steps=[0, 1, 3])
    assert sorted(s.x0 for s in _vlines(fig)) == [1, 3]  # step 0 has no MSE (it is the distance to step t-1)
    assert any("key steps" in (a.text or "") and "0, 1, 3" in a.text for a in fig.layout.annotations)
    E.drift_figure(drift, key_steps=[0, 1, 3])


def test_token_rank_outlines_the_pruned_tokens(atedm_run):
    rank, pr = atedm_run["token_rank"], atedm_run["atedm_pruning"]
    for step in range(STEPS):
        fig = S.token_rank_figure(rank, step=step, pruned=pr, title_prefix="accelerated")
        outlined = [t for t in fig.data if t.type == "scatter" and t.name == "pruned by AT-EDM"]
        assert sum(len(t.x) for t in outlined) == sum(int(pr["n_pruned"][l][step, 0]) for l in pr["layers"]) > 0
        # each layer's outlines follow its heat map and sit exactly on the cells it pruned
        k = -1
        for trace in fig.data:
            if trace.type == "heatmap":
                k += 1
                continue
            rows, cols = D.pruned_cells(pr, rank["layers"][k], step)
            assert sorted(zip(trace.y, trace.x)) == sorted(zip(rows.tolist(), cols.tolist()))
    plain = S.token_rank_figure(rank, step=1)
    assert all(t.type == "heatmap" for t in plain.data)
    E.token_rank_figure(rank, step=1, pruned=pr)


def test_cross_attention_heads_and_reused_badge(full_run):
    maps = full_run["attention_maps"]
    tokens = ["<|startoftext|>", "a", "red", "circle", "on", "the", "left", "<|endoftext|>"]
    layer = AD.cross_layers(maps)[0]
    plain = A.cross_attention_figure(maps, tokens, step=2, layer=layer, norm="shared")
    assert "mean over heads" in plain.layout.title.text
    assert not any(a.name == "reused-badge" for a in plain.layout.annotations)
    fig = A.cross_attention_figure(maps, tokens, step=2, layer=layer, norm="shared", head=1, reused_steps=[2, 3])
    assert "head 1" in fig.layout.title.text and "map of step 1" in fig.layout.title.text
    assert any(a.name == "reused-badge" for a in fig.layout.annotations)
    first = next(i for i, _ in AD.token_entries(tokens))
    np.testing.assert_array_equal(fig.data[0].z, maps["cross_heads"][layer][2, 0, 1, first].astype(np.float32))
    with pytest.raises(ValueError, match="pick one layer"):
        A.cross_attention_figure(maps, tokens, head=0)
    with pytest.raises(ValueError, match="head must be between"):
        A.cross_attention_figure(maps, tokens, layer=layer, head=99)
    assert AD.reuse_source(5, [3, 4, 5]) == 2 and AD.reuse_source(2, [3]) is None
    E.cross_attention_figure(maps, tokens, step=2, layer=layer, head=1, reused_steps=[2])


def test_self_attention_of_one_pixel(full_run):
    maps = full_run["attention_maps"]
    layer = max(AD.self_layers(maps), key=lambda l: maps["self"][l].shape[2])
    hq, wq = maps["self"][layer].shape[2:4]
    fig = A.self_attention_figure(maps, step=1, layer=layer, pixel=(1, 2), title_prefix="full compute")
    z = np.asarray(fig.data[0].z)
    np.testing.assert_array_equal(z, maps["self"][layer][1, 0, 1, 2].astype(np.float32))
    assert abs(z.sum() - 1) < 2e-2
    assert list(fig.data[1].x) == [2.0] and list(fig.data[1].y) == [1.0]
    head = A.self_attention_figure(maps, step=1, layer=layer, pixel=(1, 2), head=0)
    np.testing.assert_array_equal(np.asarray(head.data[0].z), maps["self_heads"][layer][1, 0, 0, 1, 2].astype(np.float32))
    # in image pixels: the bottom-right pixel is the last query cell
    image = np.zeros((64, 64, 3), np.uint8)
    m, _, cell = AD.self_attention_map(maps, 1, layer, (63, 63), image_hw=(64, 64))
    assert cell == (hq - 1, wq - 1)
    over = A.self_attention_figure(maps, step=1, layer=layer, pixel=(63, 63), image=image)
    assert over.data[0].type == "image"
    mean, _, _ = AD.self_attention_map(maps, 1, AD.MEAN_LAYER, (0.5, 0.5), image_hw=(1, 1))
    assert abs(float(np.nansum(mean)) - 1) < 2e-2
    with pytest.raises(ValueError, match="pick one layer"):
        AD.self_attention_map(maps, 1, AD.MEAN_LAYER, (0, 0), head=0)
    E.self_attention_figure(maps, step=1, layer=layer, pixel=(63, 63), image=image, head=0, reused_steps=[1])


def test_step_strip():
    m = technique_marks([parse_accel("tgate:gate_step=3,sp_interval=1"), parse_accel("reuse:scope=self,policy=CCRCR")], 5)
    fig = P.step_strip_figure(m, current_step=2, title_prefix="accelerated")
    hm = fig.data[0]
    assert list(hm.y) == ["reuse (self)", "T-GATE cross-attn", "T-GATE self-attn"]
    assert list(hm.text[0]) == list("CCRCR") and list(hm.text[1]) == ["C", "C", "S", "R", "R"]
    assert [list(r) for r in hm.z][0] == [0, 0, 2, 0, 2]
    assert [s.x0 for s in fig.layout.shapes] == [1.5]
    assert P.step_strip_figure(technique_marks([], 5)).layout.annotations  # a message, no strip
    E.step_strip_figure(m, current_step=2)


def test_every_figure_takes_a_title_prefix(full_run):
    sig = full_run
    figs = [
        A.cross_attention_figure(sig["attention_maps"], ["a", "red"], title_prefix="X"),
        S.convergence_figure(sig["cross_attn_convergence"], title_prefix="X"),
        S.drift_figure(sig["feature_drift"], title_prefix="X"),
        S.token_rank_figure(sig["token_rank"], title_prefix="X"),
        S.token_rank_summary_figure(sig["token_rank"], title_prefix="X"),
        P.counters_figure({"atedm": {"tokens_pruned": 3}}, title_prefix="X"),
        A.self_attention_figure(sig["attention_maps"], title_prefix="X"),
        P.step_strip_figure(technique_marks([parse_accel("fastdiff")], 4), title_prefix="X"),
    ]
    for fig in figs:
        assert fig.layout.title.text.startswith("X · ")


def test_reading_note_follows_the_text_encoder():
    from types import SimpleNamespace

    from ui.inside import reading_note

    def pipe(layers):
        return SimpleNamespace(text_encoder=SimpleNamespace(config=SimpleNamespace(num_hidden_layers=layers)))

    assert "its own word" in reading_note(pipe(0))
    assert "12-layer causal transformer" in reading_note(pipe(12)) and "left context" in reading_note(pipe(12))
    assert reading_note(SimpleNamespace()) == ""  # no text encoder: nothing to say


def test_reading_note_names_the_recipe_of_a_trained_model(tmp_path):
    import json
    from types import SimpleNamespace

    from ui.inside import reading_note

    def pipe(kind, world="flat"):
        folder = tmp_path / f"{kind}-{world}"
        folder.mkdir()
        (folder / "training.json").write_text(json.dumps({"recipe": {"text_encoder": kind, "world": world}}))
        return SimpleNamespace(text_encoder=SimpleNamespace(config=SimpleNamespace(num_hidden_layers=3)),
                               config=SimpleNamespace(_name_or_path=str(folder)))

    note = reading_note(pipe("judge"))
    assert "CLIP text tower" in note and "frozen" in note and "no caption states" not in note
    assert "trained jointly with the UNet" in reading_note(pipe("joint"))
    tiles = reading_note(pipe("embeddings", "tiles"))  # a world with unstated detail says what it draws
    assert "4 px cells" in tiles and "no caption states" in tiles


def test_a_step_that_computed_no_attention_shows_the_map_the_unet_used(full_run):
    """T-GATE after its gate and reuse R steps compute no attention: nothing is captured there (NaN), and the
    view shows the source step's map under the REUSED badge instead of an empty overlay."""
    import copy

    maps = copy.deepcopy(full_run["attention_maps"])
    tokens = ["<|startoftext|>", "a", "red", "circle", "on", "the", "left", "<|endoftext|>"]
    layer = AD.cross_layers(maps)[0]
    maps["cross"][layer][2:] = np.nan
    fig = A.cross_attention_figure(maps, tokens, step=2, layer=layer, norm="shared", reused_steps=[2, 3])
    first = next(i for i, _ in AD.token_entries(tokens))
    heat = [t for t in fig.data if t.type == "heatmap"][0]
    np.testing.assert_array_equal(heat.z, maps["cross"][layer][1, 0, first].astype(np.float32))
    assert "map of step 1" in fig.layout.title.text
    E.cross_attention_figure(maps, tokens, step=2, layer=layer, reused_steps=[2, 3])
    # a reused step that did capture something keeps its own data (reuse records the map it used)
    same, _, source = AD.cross_maps_shown(full_run["attention_maps"], layer, 2, None, 0, [2])
    assert source == 1 and np.array_equal(same, AD.cross_maps(full_run["attention_maps"], layer, 2)[0])
    self_layer = AD.self_layers(maps)[0]
    maps["self"][self_layer][2:] = np.nan
    m, shown, _, source = AD.self_map_shown(maps, 2, self_layer, (0, 0), None, 0, None, [2])
    assert shown == 2 and source == 1 and not np.isnan(m).all()
    A.self_attention_figure(maps, step=2, layer=self_layer, reused_steps=[2])
