"""viz: every figure builds from schema-shaped data (docs/signals.md); export writes PNG/PDF."""
from __future__ import annotations

import json
import math

import numpy as np
import plotly.graph_objects as go
import pytest

from fakes import TOKENS, fake_result, fake_signals
from viz import _attention_data as AD
from viz import _data as D
from viz import attention_figs as A
from viz import export as E
from viz import plotly_figs as P
from viz import signal_figs as S


@pytest.fixture(scope="module")
def sig():
    return fake_signals(steps=5, nan_step=2)


def _check(fig):
    assert isinstance(fig, go.Figure)
    assert fig.layout.height and fig.layout.height >= 200
    json.loads(fig.to_json())  # serialisable, as gr.Plot needs
    return fig


def test_cross_attention_excludes_padding_and_names_normalisation(sig):
    maps = sig["attention_maps"]
    fig = _check(A.cross_attention_figure(maps, TOKENS, step=2, layer=AD.MEAN_LAYER))
    titles = [a.text for a in fig.layout.annotations]
    assert titles == ["a", "red", "circle", "on", "the", "left"]
    assert "per-token min-max" in fig.layout.title.text
    layer = next(iter(maps["cross"]))
    shared = _check(A.cross_attention_figure(maps, TOKENS, step=0, layer=layer, norm="shared", special=True))
    assert "<|startoftext|>" in [a.text for a in shared.layout.annotations]
    assert "<pad>" not in [a.text for a in shared.layout.annotations]
    assert "shared scale" in shared.layout.title.text
    heat = [t for t in shared.data if isinstance(t, go.Heatmap)]
    assert heat[0].zmin == 0 and heat[0].zmax > 0


def test_cross_attention_overlay_on_image(sig):
    img = np.zeros((64, 64, 3), np.uint8)
    fig = _check(A.cross_attention_figure(sig["attention_maps"], TOKENS, step=3, image=img, alpha=0.4))
    images = [t for t in fig.data if isinstance(t, go.Image)]
    heats = [t for t in fig.data if isinstance(t, go.Heatmap)]
    assert len(images) == len(heats) == 6
    assert heats[0].opacity == pytest.approx(0.4)
    assert np.asarray(heats[0].z).shape == (64, 64)


def test_cross_attention_nearest_kept_step_and_bad_layer(sig):
    maps = dict(sig["attention_maps"], steps=[0, 2, 4])
    maps["cross"] = {k: v[[0, 2, 4]] for k, v in sig["attention_maps"]["cross"].items()}
    fig = A.cross_attention_figure(maps, TOKENS, step=3, timesteps=[999, 750, 500, 250, 1])
    assert "step 2 (t=500)" in fig.layout.title.text or "step 4 (t=1)" in fig.layout.title.text
    with pytest.raises(ValueError, match="not captured"):
        A.cross_attention_figure(maps, TOKENS, step=0, layer="nope")


def test_convergence_and_drift(sig):
    conv = _check(S.convergence_figure(sig["cross_attn_convergence"], log_y=True))
    assert conv.layout.yaxis.type == "log"
    names = [t.name for t in conv.data]
    assert names.count("mean over layers") == 2
    drift = _check(S.drift_figure(sig["feature_drift"]))
    boxes = [t for t in drift.data if isinstance(t, go.Box)]
    assert len(boxes) == len(sig["feature_drift"]["blocks"])
    lines = [t for t in drift.data if isinstance(t, go.Scatter)]
    enc = [t.line.color for t in lines if "(encoder)" in t.name]
    dec = [t.line.color for t in lines if "(decoder)" in t.name]
    assert enc and dec and not set(enc) & set(dec)


def test_drift_figure_draws_the_relative_change_where_the_signal_has_it(sig):
    drift = dict(sig["feature_drift"])
    drift["relative"] = np.full_like(np.asarray(drift["mse"], dtype=float), 0.25)
    rel = S.drift_figure(drift)
    assert "relative" in rel.layout.annotations[0].text
    assert all(set(t.y) == {0.25} for t in rel.data if isinstance(t, go.Scatter))
    raw = S.drift_figure(drift, measure="mse")
    assert "MSE" in raw.layout.annotations[0].text
    del drift["relative"]  # a run saved before the relative change existed: the MSE, labelled so
    assert "MSE" in S.drift_figure(drift).layout.annotations[0].text
    assert E.drift_figure(drift, measure="relative").axes[0].get_ylabel().startswith("MSE")


def test_token_rank(sig):
    fig = _check(S.token_rank_figure(sig["token_rank"], step=1))
    assert len([t for t in fig.data if isinstance(t, go.Heatmap)]) == len(sig["token_rank"]["layers"])
    summary = _check(S.token_rank_summary_figure(sig["token_rank"]))
    z = np.asarray(summary.data[0].z, dtype=float)
    assert z.shape == (len(sig["token_rank"]["layers"]), 5)
    assert np.nanmax(z) <= 1.0 + 1e-6


def test_counters_and_empty_inputs():
    fig = _check(P.counters_figure({"tgate": {"attn_reused": 6, "attn_computed": 10},
                                    "unet": {"batch_rows": [2, 2, 1]}, "atedm": {"dsap": True}}))
    table = [t for t in fig.data if isinstance(t, go.Table)][0]
    assert "batch_rows" in table.cells.values[1]
    for fig in (P.counters_figure({}), A.cross_attention_figure({}, TOKENS), S.convergence_figure({}),
                S.drift_figure(None), S.token_rank_figure({}), S.token_rank_summary_figure({})):
        _check(fig)


def test_layer_labels_and_tokens():
    assert D.layer_label("down_blocks.1.attentions.0.transformer_blocks.1.attn2") == "down1.a0.t1.attn2"
    assert D.layer_label("mid_block.attentions.0.transformer_blocks.0.attn1") == "mid.a0.t0.attn1"
    assert AD.token_entries(["<|startoftext|>", "a", "a", "<|endoftext|>", "<pad>"]) == [(1, "a #1"), (2, "a #2")]


def test_export_png_and_pdf(tmp_path, sig):
    r = fake_result(steps=5)
    figs = {
        "attn": E.cross_attention_figure(sig["attention_maps"], TOKENS, step=2, image=r.image[0]),
        "conv": E.convergence_figure(sig["cross_attn_convergence"], log_y=True),
        "drift": E.drift_figure(sig["feature_drift"]),
        "rank": E.token_rank_figure(sig["token_rank"], step=1),
        "rank_summary": E.token_rank_summary_figure(sig["token_rank"]),
        "counters": E.counters_figure(r.counters),
        "empty": E.counters_figure({}),
    }
    for name, fig in figs.items():
        path = E.save(fig, tmp_path / f"{name}.png", dpi=60)
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    pdf = E.save(figs["drift"], tmp_path / "drift.pdf")
    assert pdf.read_bytes()[:5] == b"%PDF-"


def test_live_tradeoff_clip_axis_draws_shipped_intervals():
    from viz.tradeoff import tradeoff_figure

    runs = [{"id": 1, "label": "tgate", "technique": "tgate", "latency_s": 0.5, "speedup": 2.0, "psnr_db": 30.0,
             "ssim": 0.9, "fidelity": 0.9, "clip_score": 31.5, "current": True}]
    frontier = [{"steps": 10, "latency_s": 0.5, "psnr_db": 35.0, "ssim": 0.95, "fidelity": 0.9, "clip_score": 31.0},
                {"steps": 20, "latency_s": 1.0, "psnr_db": math.inf, "ssim": 1.0, "fidelity": 1.0, "clip_score": 32.0}]
    shipped = [{"setting": "a", "technique": "tgate", "speedup": 2.0, "clip_score": 30.0, "clip_score_low": 29.0,
                "clip_score_high": 30.5}]
    fig = tradeoff_figure(runs, frontier, shipped, baseline_latency_s=1.0, y="clip")
    ship = fig.data[0]
    assert list(ship.y) == [30.0] and list(ship.error_y.arrayminus) == [1.0] and list(ship.error_y.array) == [0.5]
    assert fig.layout.yaxis.title.text == "CLIP score" and list(fig.data[-1].y) == [31.5]
    assert "CLIP score 31.5" in fig.data[-1].text[0]
    psnr = tradeoff_figure(runs, frontier, shipped, baseline_latency_s=1.0, y="psnr")
    assert psnr.data[0].error_y.array is None  # no interval on that axis: no bars drawn
