"""Which layers pay for a technique, on this model at this resolution: a one-off profile, cached (issue 20).

Why per layer. Map reuse and AT-EDM need attention probabilities, and the fused kernel never materialises
them: at 512 px on SD 1.5 an explicit map costs 3.9x the fused call, concentrated in the 4,096-token
self-attention of the first down and last up blocks. There the technique's own overhead exceeds what it
saves, while in the 1,024-token and smaller layers it pays. `layers="auto"` (reuse, atedm) applies the
technique only in layers whose measured saving, overhead included, is positive; the decision is each
technique's (`reuse.auto_modules`, `pruning_log.auto_layers`), made from this profile.

What is measured (`measure`): one UNet call's real inputs at the run's size (a 1-step generation stopped at
the UNet, nothing decoded), then `analysis.eval.profile.unet_profile` on them (the bench's own): fused and explicit
attention passes, alternating, with every attention module's parts timed (fused_s, explicit_s,
reuse_step_explicit_s) and every transformer layer's post-pruning work; then `add_ranking_costs`: per
transformer layer, the seconds of one AT-EDM ranking by each `rank_map` (exact G-WPR on the explicit map,
pooled, streamed) and of one plan + gather + copy-back.

Cache. In memory per process and on disk as JSON in `cache_dir()` ($DIFFSCOPE_CACHE, default
~/.cache/diffscope/layer_profiles), one file per key: model, a hash of the UNet's config, latent size,
batch rows, attention backend, device, dtype and torch threads. A profile is timing, so it belongs to the
machine that measured it; delete the folder to re-measure.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from analysis.jsonsafe import dumps

_MEMORY: dict[str, dict] = {}


def cache_dir() -> Path:
    root = os.environ.get("DIFFSCOPE_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "diffscope" / "layer_profiles"


# A run whose latent has fewer positions than this (the embedded model at 64 px has 16 x 16 = 256) is not
# profiled: its maps cost little, a per-layer decision would follow timing noise, and
# results shipped for the embedded model must not depend on one machine's timings. layers=auto is then every
# layer. SD-class runs (256 px and up: 1,024 positions and more) are profiled.
PROFILE_MIN_POSITIONS = 257


def latent_side(pipe, size: int | None) -> int:
    scale = getattr(pipe, "vae_scale_factor", 8)
    return (size or int(pipe.unet.config.sample_size) * scale) // scale


def profiled(pipe, size: int | None) -> bool:
    """Whether layers=auto measures this run (see PROFILE_MIN_POSITIONS)."""
    return latent_side(pipe, size) ** 2 >= PROFILE_MIN_POSITIONS


def wants_profile(config: Any, pipe, size: int | None) -> bool:
    """A technique config that decides its layers from the profile (a declared `layers` field set to auto),
    in a run large enough to be profiled."""
    return getattr(config, "layers", None) == "auto" and profiled(pipe, size)


def profile_key(pipe, size: int | None, rows: int, attention: str) -> str:
    from analysis.models import model_name

    unet = pipe.unet
    config_hash = hashlib.sha1(json.dumps(dict(unet.config), sort_keys=True, default=str).encode()).hexdigest()[:10]
    param = next(unet.parameters())
    side = latent_side(pipe, size)
    return (f"{model_name(pipe)}-{config_hash}-{side}x{side}-b{rows}-{attention}-{param.device.type}-"
            f"{str(param.dtype).removeprefix('torch.')}-t{torch.get_num_threads()}").replace("/", "_")


def remember(key: str, profile: dict) -> None:
    """Put a profile in the in-memory cache (tests use it to hand a run a profile of their own)."""
    _MEMORY[key] = profile


def for_run(pipe, run_config, calls: int = 2) -> dict:
    """The layer profile for `run_config`'s model, size, batch and attention backend: cached, else measured."""
    rows = len(run_config.prompts) * (2 if run_config.guidance > 1.0 else 1)
    key = profile_key(pipe, run_config.size, rows, run_config.attention)
    if key in _MEMORY:
        return _MEMORY[key]
    path = cache_dir() / f"{key}.json"
    if path.is_file():
        with contextlib.suppress(ValueError, OSError):
            profile = json.loads(path.read_text())
            if profile.get("key") == key:
                _MEMORY[key] = profile
                return profile
    profile = measure(pipe, run_config, calls)
    profile["key"] = key
    _MEMORY[key] = profile
    with contextlib.suppress(OSError):  # a read-only home still gets the in-memory profile
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(dumps(profile) + "\n")
    return profile


class _Captured(Exception):
    pass


class _CaptureUNetInputs:
    """A plug-in that records the first UNet call's inputs and stops the run there."""

    name = "capture"

    def __init__(self):
        self.inputs = None

    def attach(self, ctx):
        from analysis.eval.timing import clone
        from analysis.plugins import HandleBase

        def pre(module, args, kwargs):
            self.inputs = (clone(args), clone(kwargs))
            raise _Captured

        ctx.stack.callback(ctx.unet.register_forward_pre_hook(pre, with_kwargs=True).remove)
        return HandleBase()


def measure(pipe, run_config, calls: int = 2) -> dict:
    """Measure the profile now (see the module doc); a few UNet calls at the run's size."""
    from analysis.eval.profile import unet_profile
    from analysis.run import run_once

    capture = _CaptureUNetInputs()
    plain = dataclasses.replace(run_config, accel=(), probes=(), repeats=1, warmup=False)
    with contextlib.suppress(_Captured):
        run_once(pipe, plain, (capture,), 1)
    if capture.inputs is None:
        raise RuntimeError("layer profile: the pipeline never called the UNet")
    t0 = time.perf_counter()
    unet = unet_profile(pipe, capture.inputs, calls, run_config.attention)
    sample = capture.inputs[0][0]
    return {"attention_modules": unet["attention_modules"], "transformer_layers": unet["transformer_layers"],
            "unet_call_s": unet["unet_call_s"], "unet_call_explicit_s": unet["unet_call_explicit_s"],
            "batch_rows": int(sample.shape[0]), "latent_hw": [int(v) for v in sample.shape[-2:]], "calls_per_pass": calls,
            "measured_s": time.perf_counter() - t0}


def _seconds(fn, repeats: int = 3) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _streamed_seconds(qk, heads: int, scale: float, iterations: int = 5) -> float:
    from analysis.token_rank import gwpr_streamed

    t0 = time.perf_counter()
    q, k = qk()
    gwpr_streamed(q, k, heads, scale, iterations=1)
    one = time.perf_counter() - t0
    return one * iterations


def add_ranking_costs(unet, transformer_layers: dict, rows: int, latent_hw: tuple[int, int], pool: int = 2,
                      prune_ratio: float = 0.5) -> None:
    """Adds to each transformer layer of a profile (in place): `rank_s` (one ranking of `rows` batch rows by each rank map, Q/K projections
    included where the map is not the attention call's own) and `prune_s` (plan + gather + copy-back at
    `prune_ratio`, where the pairing's pruned x kept similarity is largest). Inputs are random tensors of
    the layer's shapes: costs depend on shapes, not values."""
    from analysis.accel import prune
    from analysis.probes._common import token_grid
    from analysis.token_rank import gwpr, gwpr_pooled

    modules = dict(unet.named_modules())
    generator = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        for layer in transformer_layers.values():
            attn = modules[layer["attn1"]]
            n = layer.get("attn1_queries")
            if not n:
                continue
            channels, heads = attn.to_q.in_features, attn.heads
            device, dtype = attn.to_q.weight.device, attn.to_q.weight.dtype
            hidden = torch.randn(rows, n, channels, generator=generator).to(device, dtype)
            grid = token_grid(n, latent_hw)

            def qk():
                return attn.head_to_batch_dim(attn.to_q(hidden)), attn.head_to_batch_dim(attn.to_k(hidden))

            q, k = qk()
            probs = torch.softmax(torch.bmm(q, k.transpose(1, 2)) * attn.scale, dim=-1)
            n_prune = int(prune_ratio * n)
            scores = torch.rand(rows, n, generator=generator).to(device)
            layer.update({
                "rank_s": {
                    "exact": _seconds(lambda: gwpr(probs, heads)),
                    "pooled": _seconds(lambda: gwpr_pooled(*qk(), heads, attn.scale, grid, pool)),
                    # streamed recomputes QK^T + softmax at each of its 5 iterations: one iteration timed, x 5
                    # (timing all five, twice, took a minute per 4,096-token layer on a 2-core CPU)
                    "streamed": _streamed_seconds(qk, heads, attn.scale),
                },
                "prune_s": _seconds(lambda: prune.restore(prune.prune(hidden, p := prune.plan(hidden, scores, n_prune)), p)),
            })
            probs = None  # about 1 GB at 4,096 tokens: free it before the next layer


LAYER_CHOICES = (("auto: only where it saves time", "auto"), ("every layer (the papers' method)", "all"))
LAYERS_INFO = ("auto: from a one-off profile of this model and size, only the layers where the technique saves "
               "time net of its own overhead; every layer at 64 px (the embedded model)")


def check_layers(value: Any, technique: str) -> None:
    """A technique's `layers` field: "all", "auto", or module names joined by '+' (the CLI's list syntax)."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{technique}: layers must be 'all', 'auto' or module names joined by '+', got {value!r}")


def chosen(value: str, available: list[str], technique: str, auto: "set[str] | None" = None) -> set[str] | None:
    """The layers a `layers` value selects among `available` (None = all of them); `auto` is the technique's
    decision from the profile when value is "auto" (None: the model is not profiled, see `profiled`: every
    layer). Unknown names raise, listing what exists."""
    if value == "all" or (value == "auto" and auto is None):
        return None
    if value == "auto":
        return set(auto)
    names = {v.strip() for v in value.replace(",", "+").split("+") if v.strip()}
    unknown = sorted(names - set(available))
    if unknown:
        raise ValueError(f"{technique}: unknown layers {', '.join(unknown)}; this UNet has: {', '.join(available)}")
    return names
