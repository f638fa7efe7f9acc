"""RunResult -> run.json + images + signals.npz (the CLI's output contract; the app's export reuses it).

`run_json(result)` is the JSON-ready dict. Small curves (cross-attention convergence, feature drift) are
inlined as lists; every larger array (attention maps, token-rank maps, PCA images) is written to
`signals.npz` and referenced from run.json as `{"npz_key": ..., "shape": [...], "dtype": ...}`.
`write_run(result, out_dir)` writes run.json, baseline.png, accelerated.png (a grid when the request had
several prompts) and, when there are arrays, signals.npz. `load_signals(out_dir)` rebuilds the
schema-shaped signals dict (docs/signals.md) from those files, so `viz` can redraw a saved run.

JSON numbers follow the project's one convention (analysis/jsonsafe.py): +-infinity is the string "inf" /
"-inf" (PSNR of identical images), NaN (not measured, e.g. a step a technique skipped) is null.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from analysis.jsonsafe import json_number, jsonable, read_number  # noqa: F401 (jsonable: public)

RUN_FORMAT = "diffscope.run/1"
RUN_JSON = "run.json"
SIGNALS_NPZ = "signals.npz"
BASELINE_PNG = "baseline.png"
ACCELERATED_PNG = "accelerated.png"

# Arrays with at most this many elements and at most 2 dims are inlined as lists (curves);
# anything larger goes to signals.npz.
INLINE_MAX_ELEMENTS = 20_000
# Signal groups whose arrays always go to the npz, however small (maps, not curves).
_ALWAYS_NPZ = ("attention_maps", "token_rank/scores", "feature_drift/pca")


# --- signals: summary for run.json + arrays for the npz -------------------------------------------------

def _split(obj: Any, path: str, arrays: dict[str, np.ndarray]) -> Any:
    def sub(k):
        return f"{path}/{k}" if path else str(k)

    if isinstance(obj, dict):
        return {str(k): _split(v, sub(k), arrays) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)) and any(isinstance(v, np.ndarray) for v in obj):
        return [_split(v, sub(i), arrays) for i, v in enumerate(obj)]
    if isinstance(obj, np.ndarray):
        forced = any(path.startswith(p + "/") or path == p for p in _ALWAYS_NPZ)
        if not forced and obj.ndim <= 2 and obj.size <= INLINE_MAX_ELEMENTS:
            return jsonable(obj)
        arrays[path] = obj
        return {"npz_key": path, "shape": list(obj.shape), "dtype": str(obj.dtype)}
    return jsonable(obj)


def _nanmean(a: np.ndarray, axis) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    with np.errstate(all="ignore"):
        count = np.sum(~np.isnan(a), axis=axis)
        total = np.nansum(a, axis=axis)
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def _token_rank_summary(tr: dict) -> dict:
    """Per layer and step: how concentrated the G-WPR importance is (mean over prompts).
    entropy: normalised Shannon entropy of the scores (1 = uniform, 0 = one token has all the mass);
    top1_mass: the largest single token's share."""
    layers = list(tr.get("layers", []))
    entropy, top1 = [], []
    for layer in layers:
        s = np.asarray(tr["scores"][layer], dtype=np.float64)  # (steps, prompts, h, w)
        flat = s.reshape(s.shape[0], s.shape[1], -1)
        n = flat.shape[-1]
        p = flat / np.where(flat.sum(-1, keepdims=True) > 0, flat.sum(-1, keepdims=True), 1)
        with np.errstate(all="ignore"):
            h = -np.nansum(np.where(p > 0, p * np.log(p), 0.0), axis=-1) / (math.log(n) if n > 1 else 1.0)
        h = np.where(np.isnan(flat).all(-1), np.nan, h)
        entropy.append(_nanmean(h, axis=1))
        top1.append(_nanmean(np.where(np.isnan(flat).all(-1), np.nan, np.nanmax(np.nan_to_num(p, nan=-1), axis=-1)), axis=1))
    return {"entropy": jsonable(np.array(entropy)) if layers else [],
            "top1_mass": jsonable(np.array(top1)) if layers else []}


def split_signals(signals: dict) -> tuple[dict, dict[str, np.ndarray]]:
    """(summary for run.json, {npz_key: array}). Known groups get extra summary curves."""
    arrays: dict[str, np.ndarray] = {}
    summary = _split(signals, "", arrays) if signals else {}
    conv = signals.get("cross_attn_convergence") if signals else None
    if conv:
        for key in ("output_l2", "probs_l2"):
            if key in conv and np.size(conv[key]):
                summary["cross_attn_convergence"][f"{key}_mean"] = jsonable(_nanmean(conv[key], axis=0))
    drift = signals.get("feature_drift") if signals else None
    if drift and "mse" in drift and drift.get("blocks"):
        mse = np.asarray(drift["mse"], dtype=np.float64)
        roles = drift.get("role", {})
        by_role = {}
        for role in ("encoder", "bottleneck", "decoder"):
            idx = [i for i, b in enumerate(drift["blocks"]) if roles.get(b) == role]
            if idx:
                by_role[role] = jsonable(_nanmean(mse[idx], axis=0))
        summary["feature_drift"]["mse_mean_by_role"] = by_role
        if "relative" in drift:
            relative = np.asarray(drift["relative"], dtype=np.float64)
            summary["feature_drift"]["relative_mean_by_role"] = {
                role: jsonable(_nanmean(relative[[i for i, b in enumerate(drift["blocks"]) if roles.get(b) == role]], axis=0))
                for role in by_role}
    tr = signals.get("token_rank") if signals else None
    if tr and tr.get("scores"):
        summary["token_rank"].update(_token_rank_summary(tr))
    if arrays:
        summary["arrays_file"] = SIGNALS_NPZ
    return summary, arrays


# --- run.json ------------------------------------------------------------------------------------------

def run_json(result) -> dict:
    """The run.json dict of a RunResult (the contract in docs/cli.md): request, resolved technique configs,
    honest latencies, quality, counters, and (when probes ran) a summary of the signals."""
    cfg = dict(result.config)
    summary, _ = split_signals(result.signals or {})
    n = int(np.shape(result.image)[0]) if np.ndim(result.image) == 4 else 1
    return {
        "format": RUN_FORMAT,
        "prompt": cfg.get("prompt"),
        "negative_prompt": cfg.get("negative_prompt", ""),
        "seed": cfg.get("seed"),
        "steps": cfg.get("steps"),
        "guidance": jsonable(cfg.get("guidance")),
        "scheduler": cfg.get("scheduler"),
        "size": cfg.get("size"),
        "model": result.model,
        "accel": jsonable(cfg.get("accel", {})),
        "probes": jsonable(cfg.get("probes", [])),
        "repeats": cfg.get("repeats"),
        "baseline_latency_s": json_number(result.baseline_latency_s),
        "latency_s": json_number(result.latency_s),
        "instrumented_latency_s": json_number(result.instrumented_latency_s),
        "latencies": jsonable(result.latencies or {}),
        "speedup": json_number(result.speedup),
        "psnr_db": json_number(result.psnr_db),
        "ssim": json_number(result.ssim),
        "fidelity": jsonable(result.fidelity) if result.fidelity is not None else None,
        "counters": jsonable(result.counters or {}),
        "timesteps": jsonable(list(result.timesteps or [])),
        "tokens": jsonable(result.tokens or []),
        "images": {"baseline": BASELINE_PNG, "accelerated": ACCELERATED_PNG, "n": n,
                   "height": int(np.shape(result.image)[-3]), "width": int(np.shape(result.image)[-2])},
        "signals": summary or None,
    }


def image_grid(images: np.ndarray) -> np.ndarray:
    """(B, H, W, 3) uint8 -> one (rows*H, cols*W, 3) image, cols = ceil(sqrt(B)), white fill."""
    images = np.asarray(images)
    if images.ndim == 3:
        return images
    b, h, w, c = images.shape
    if b == 1:
        return images[0]
    cols = math.ceil(math.sqrt(b))
    rows = math.ceil(b / cols)
    grid = np.full((rows * h, cols * w, c), 255, dtype=images.dtype)
    for i, img in enumerate(images):
        r, q = divmod(i, cols)
        grid[r * h:(r + 1) * h, q * w:(q + 1) * w] = img
    return grid


def save_png(images: np.ndarray, path: str | Path) -> None:
    from PIL import Image

    Image.fromarray(image_grid(images)).save(path)


def write_run(result, out_dir: str | Path) -> Path:
    """Write run.json, baseline.png, accelerated.png and (if any arrays) signals.npz into out_dir
    (created if missing). Returns the run.json path. The CLI calls this on a temporary directory and
    renames it into place, so a failure never leaves a half-written run behind."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = run_json(result)
    _, arrays = split_signals(result.signals or {})
    if arrays:
        np.savez_compressed(out / SIGNALS_NPZ, **arrays)
    save_png(result.baseline_image, out / BASELINE_PNG)
    save_png(result.image, out / ACCELERATED_PNG)
    path = out / RUN_JSON
    path.write_text(json.dumps(data, indent=2, allow_nan=False) + "\n")
    return path


# --- reading a saved run back -------------------------------------------------------------------------

_CURVES = {("cross_attn_convergence", "output_l2"), ("cross_attn_convergence", "probs_l2"),
           ("feature_drift", "mse"), ("feature_drift", "relative"), ("feature_drift", "frobenius")}


def _restore(obj: Any, npz) -> Any:
    if isinstance(obj, dict):
        if "npz_key" in obj and set(obj) <= {"npz_key", "shape", "dtype"}:
            return npz[obj["npz_key"]]
        return {(int(k) if isinstance(k, str) and k.isdigit() else k): _restore(v, npz) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_restore(v, npz) for v in obj]
    return obj


def load_run(out_dir: str | Path) -> tuple[dict, dict]:
    """(run.json dict, schema-shaped signals dict with numpy arrays) of a run written by `write_run`."""
    out = Path(out_dir)
    data = json.loads((out / RUN_JSON).read_text())
    summary = data.get("signals") or {}
    npz_path = out / SIGNALS_NPZ
    npz = dict(np.load(npz_path)) if npz_path.exists() else {}
    signals = _restore({k: v for k, v in summary.items() if k != "arrays_file"}, npz)
    for group, key in _CURVES:
        if group in signals and key in signals[group]:
            signals[group][key] = np.array([[read_number(v) for v in row] for row in signals[group][key]],
                                           dtype=np.float32).reshape(len(signals[group][key]), -1)
    return data, signals
