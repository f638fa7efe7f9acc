"""analysis.report: run.json contents, the signals.npz split, and reading a run back."""
from __future__ import annotations

import json

import numpy as np
from PIL import Image

from analysis import report
from fakes import fake_result

REQUIRED = {"prompt", "seed", "steps", "model", "accel", "baseline_latency_s", "latency_s", "speedup", "psnr_db",
            "ssim", "fidelity", "counters", "signals"}


def test_run_json_is_strict_json_with_required_keys():
    data = report.run_json(fake_result())
    assert REQUIRED <= set(data)
    text = json.dumps(data, allow_nan=False)  # no NaN/inf anywhere
    assert json.loads(text)["accel"] == {"tgate": {"gate_step": 2, "key_steps": [0, 1]}}
    assert data["speedup"] == 2.0
    assert data["counters"]["tgate"]["attn_reused"] == 6
    sig = data["signals"]
    assert set(sig) >= {"cross_attn_convergence", "feature_drift", "token_rank", "attention_maps"}
    conv = sig["cross_attn_convergence"]
    assert len(conv["output_l2"]) == len(conv["layers"]) and len(conv["output_l2_mean"]) == 3
    assert isinstance(sig["feature_drift"]["mse"][0], list)
    assert set(sig["feature_drift"]["mse_mean_by_role"]) == {"encoder", "bottleneck", "decoder"}
    assert len(sig["token_rank"]["entropy"]) == len(sig["token_rank"]["layers"])
    maps = sig["attention_maps"]
    layer = next(iter(maps["cross"]))
    assert maps["cross"][layer]["npz_key"] == f"attention_maps/cross/{layer}"
    assert maps["resolution"][layer]["kept"] == [16, 16]
    assert sig["arrays_file"] == "signals.npz"


def test_identical_images_report_inf_and_nan_becomes_null():
    r = fake_result(accelerated=False)
    r.signals["cross_attn_convergence"]["output_l2"][:, 0] = np.nan
    data = report.run_json(r)
    assert data["psnr_db"] == "inf"
    assert data["signals"]["cross_attn_convergence"]["output_l2"][0][0] is None
    json.dumps(data, allow_nan=False)


def test_no_signals_is_null():
    assert report.run_json(fake_result(signals=False))["signals"] is None


def test_write_and_load_round_trip(tmp_path):
    r = fake_result(n_prompts=3)
    report.write_run(r, tmp_path / "run")
    files = {p.name for p in (tmp_path / "run").iterdir()}
    assert files == {"run.json", "baseline.png", "accelerated.png", "signals.npz"}
    grid = np.asarray(Image.open(tmp_path / "run" / "accelerated.png"))
    assert grid.shape == (128, 128, 3)  # 3 prompts -> a 2x2 grid of 64 px images
    data, signals = report.load_run(tmp_path / "run")
    assert data["images"]["n"] == 3
    for layer, arr in r.signals["attention_maps"]["cross"].items():
        np.testing.assert_array_equal(signals["attention_maps"]["cross"][layer], arr)
    np.testing.assert_allclose(signals["feature_drift"]["mse"], r.signals["feature_drift"]["mse"], rtol=1e-6)
    assert set(signals["feature_drift"]["pca"]["down_blocks.0"]) == {0, 3}
