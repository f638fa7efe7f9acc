"""Benchmark: where one UNet step spends its time, and how much of the counted savings each technique delivers.

`python -m analysis.bench` (to be wired as `python -m analysis bench`) prints progress lines and ONE JSON object
on its last line. Four parts:

1. Breakdown (`breakdown`). One baseline pipeline call with coarse hooks (text encoder, UNet, VAE decode,
   scheduler step) gives the non-UNet share of the pipeline and captures the UNet inputs of the middle step.
   Then the UNet is called directly on those inputs, alternating two passes:
   - "fused": the pipeline's own attention processors (fused SDPA) with module forward pre/post hooks
     (`time.perf_counter`, `torch.cuda.synchronize` on GPU) on ResnetBlock2D / Downsample2D / Upsample2D /
     conv_in / conv_out (convolutions), FeedForward, every Attention module, the transformer blocks and the
     top-level UNet blocks (encoder = conv_in + down blocks + mid block, decoder = up blocks + output head);
   - "explicit": the same hooks plus a timing attention processor (this module's own, installed with
     `set_attn_processor` and removed after) that runs the explicit path of `analysis.attention.attention_with_probs`
     and times its parts: Q/K projections, QK^T + softmax (together "attention maps"), V projection,
     probs @ V, output projection (together "values + output"), and the prologue/epilogue (norms, reshapes).
   `shares_explicit` are the shares of the explicit-path UNet call. `shares` are the shares of the real (fused)
   UNet call: each attention module's fused time is split into maps / values by its explicit parts (the
   projections as measured; the fused SDPA core in the explicit QK^T+softmax : probs@V proportion; the rest
   to "rest"). Both sum to 1 (rest = UNet total minus the other four). The cost model uses `shares`.

2. Honest speed (`techniques[*].measured_speedup`). After one warm-up run of every configuration, `--repeats`
   rounds, each running the baseline and every technique once (the order rotates per round), all in this
   process, through `analysis.run.run_once` (wall clock of the full pipeline call, no probes). Medians; also
   the per-round paired speed-ups (`paired_speedup`, quartiles `paired_q1`/`paired_q3`), and a `noise_floor`:
   a second baseline run in every round, whose paired speed-up is 1 up to the machine's noise, so a technique
   whose quartiles sit inside the floor's has an effect this run cannot resolve.

3. Ideal speedup from counted work (`techniques[*].ideal_speedup`): the technique's `counters()` from its
   run times the per-component costs of part 1, in units of one baseline UNet call u, converted to pipeline
   time with the UNet's measured share (saved_fraction = saved_units * unet_call_s / pipeline_s):
   - reuse: maps_reused x (mean attention-map time of an in-scope module), i.e. Q/K projections + QK^T +
     softmax of those calls (R steps x in-scope modules). V, probs@V and to_out still run.
   - tgate: per step with CFG dropped, (rows dropped / rows) of the whole UNet (UNet cost linear in batch
     rows); plus each reused cross-attention call's full module time and each reused self-attention call's
     full module time, at the batch rows of its step (rows from counters["unet"]["batch_rows"], which steps
     reuse from the technique's plan; the counts agree with counters(), `counts_match`).
   - fastdiff: encoder_passes_skipped x encoder time (conv_in + down + mid). Parallel decoding batches the
     decoder calls of several steps but saves no FLOPs, so it counts nothing.
   - atedm: for each transformer (Transformer2DModel), pruned fraction of its token-calls
     (tokens_pruned / tokens_total over the run) x its post-pruning work (one-layer block: the block minus
     norm1 and attn1, i.e. attn2 + ff + norms; multi-layer: the blocks after the first) x steps. Linear in
     tokens: the quadratic self-attention of later blocks is under-counted, and the ranking/gather/copy
     overheads are not subtracted ("minus nothing"): the approximation is the paper's FLOPs view.
   - steps: (N - n) / N of the denoising loop (UNet + scheduler); text encoder and VAE stay.
   ideal_speedup = 1 / (1 - saved_fraction); efficiency = measured_speedup / ideal_speedup.
   `expected_speedup` also charges the overheads this implementation knowingly pays: reuse runs the explicit
   (non-SDPA) attention on the calls that cache a map and on the reused calls (probs @ V), atedm runs attn1
   explicitly (its map ranks the tokens) on pruning calls. `efficiency_vs_expected` = measured / expected.

4. Quality at equal latency (`quality`, default model; --prompts N on any model): for N shapes-world prompts
   (analysis.toy.scenes.evaluation_scenes + caption), every technique and a sweep of reduced step counts
   (0.3 N .. N-1); per prompt the PSNR to the full-compute image (analysis.metrics.psnr), fidelity on the
   default model, and the step-reduction PSNR at the technique's latency: a line fitted to the sweep's
   relative latency against the step count gives the equal-latency count n*, and the prompt's PSNR is
   interpolated linearly between the neighbouring counts (outside the sweep: the closest count, flagged).
   psnr_minus_steps_psnr = technique PSNR - that, median over prompts (positive = better than plain step
   reduction at equal cost). Also with process CPU time instead of wall clock (`*_cpu`).

Timing on a shared CPU. With more runnable processes than cores, multi-threaded kernels stall on preempted
threads (2 threads measured 5x slower than 1 here), so the default on an oversubscribed CPU is 1 torch
thread (`--threads` overrides). The breakdown then times with the thread's CPU time (every kernel runs on the
calling thread), which preemption does not inflate; part 2 reports wall clock (the honest number, DESIGN.md)
and, beside it, the process CPU time of the same calls (`measured_speedup_cpu`, `efficiency_cpu`).
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import os
import platform
import statistics
import sys
import time
from functools import partial
from typing import Any

import numpy as np
import torch

MODELS = ("default", "sd15-random")
HIDDEN_MODELS = ("tiny",)  # random_pipeline("sd15") at width 32, 64 px: for tests
STEPS_FRACTION = 0.8  # the default step-reduction comparison: round(0.8 * N) steps
TGATE_GATE_FRACTION = 0.4  # the reference's gate_step=10 of 25 steps, for runs too short for the default gate

BOUNDS_TEXT = {
    "reuse": "bounded by the attention-map share (Q/K projections + QK^T + softmax) of the in-scope kind "
             "(self/cross/both) times R/N of the UNet share; V, probs@V, to_out, convolutions and FF always run",
    "tgate": "bounded by the CFG half of the UNet on post-gate steps plus the cross-attention share (all of it "
             "after the gate) plus the self-attention share of the self-attn steps it caches; convolutions and FF "
             "of the remaining half always run",
    "fastdiff": "bounded by the encoder share (conv_in + down blocks + mid block) times the fraction of skipped "
                "encoder passes; the decoder runs at every step, and parallel decoding saves no FLOPs",
    "atedm": "bounded by the pruned fraction of the post-pruning transformer work (attn2 + FF, later blocks); the "
             "ResNets/convolutions, attn1 of the pruning layer, proj_in/out run on every token",
    "steps": "bounded by the denoising loop share (UNet + scheduler): text encoder and VAE decode stay",
    "all": "no technique can beat 1 / non_unet_share of the pipeline (Amdahl)",
}


def _log(msg: str) -> None:
    print(f"bench: {msg}", flush=True)


# --- models ----------------------------------------------------------------------------------------------

def load_model(name: str):
    from analysis.models import load_pipeline, random_pipeline, set_scheduler

    if name == "default":
        pipe = load_pipeline("default")
    elif name == "sd15-random":
        pipe = random_pipeline("sd15", image_size=256, width=320)
        pipe.diffscope_name = "sd15-random"
    elif name == "tiny":
        pipe = random_pipeline("sd15", image_size=64)
        pipe.diffscope_name = "tiny"
    else:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(MODELS)}")
    if name != "default":
        from analysis.models import pick_device

        dev, dtype = pick_device()
        pipe = pipe.to(dev, dtype)
        set_scheduler(pipe, "ddim")
    pipe.set_progress_bar_config(disable=True)
    return pipe


def shapes_prompts(n: int, seed: int = 0) -> list[str]:
    from analysis.toy.scenes import caption, evaluation_scenes

    return [caption(s) for s in evaluation_scenes(n, seed=seed, held_out=False)]


# --- timing primitives -----------------------------------------------------------------------------------

class _Clock:
    """perf_counter (with torch.cuda.synchronize on GPU), or this thread's CPU time (time.thread_time) for the
    breakdown on a 1-thread CPU run: every kernel then runs on the calling thread, and CPU time does not count
    the time the OS scheduler gives to other processes (on a shared machine wall-clock per-module timings
    mostly measure preemption)."""

    def __init__(self, device: torch.device, cpu_time: bool = False):
        self.sync = device.type == "cuda"
        self.cpu_time = cpu_time and not self.sync

    def __call__(self) -> float:
        if self.sync:
            torch.cuda.synchronize()
        return time.thread_time() if self.cpu_time else time.perf_counter()


def breakdown_clock_is_cpu(device: torch.device) -> bool:
    return device.type == "cpu" and torch.get_num_threads() == 1


class ModuleTimer:
    """Forward pre/post hooks that add each module's wall time (per name) to `times`; `close()` removes them."""

    def __init__(self, modules: dict[str, torch.nn.Module], now: _Clock):
        self.now, self.times, self.kinds, self.queries = now, {}, {}, {}
        self._start: dict[str, float] = {}
        self._handles = []
        for name, module in modules.items():
            self._handles.append(module.register_forward_pre_hook(partial(self._pre, name), with_kwargs=True))
            self._handles.append(module.register_forward_hook(partial(self._post, name)))

    def _pre(self, name, module, args, kwargs):
        if name not in self.kinds and hasattr(module, "to_q"):  # an Attention module: self or cross?
            ehs = kwargs.get("encoder_hidden_states", args[1] if len(args) > 1 else None)
            self.kinds[name] = "cross" if ehs is not None else "self"
            h = args[0] if args else kwargs.get("hidden_states")
            self.queries[name] = int(h.shape[2] * h.shape[3] if h.ndim == 4 else h.shape[1])
        self._start[name] = self.now()

    def _post(self, name, module, args, output):
        self.times[name] = self.times.get(name, 0.0) + self.now() - self._start.pop(name)

    def reset(self) -> None:
        self.times = {}

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


ATTN_PARTS = ("prologue", "qk_proj", "scores_softmax", "v_proj", "probs_v", "out_proj", "epilogue")


class TimedAttnProcessor:
    """The explicit attention path (`analysis.attention.attention_with_probs`), timed part by part."""

    def __init__(self, name: str, now: _Clock, parts: dict[str, dict[str, float]]):
        self.name, self.now, self.parts = name, now, parts

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args, **kwargs):
        from analysis.attention import _project

        now = self.now
        t0 = now()
        residual, input_shape, hs, context, mask = _project(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
        t1 = now()
        query = attn.head_to_batch_dim(attn.to_q(hs))
        key = attn.head_to_batch_dim(attn.to_k(context))
        t2 = now()
        probs = attn.get_attention_scores(query, key, mask)
        t3 = now()
        value = attn.head_to_batch_dim(attn.to_v(context))
        t4 = now()
        out = torch.bmm(probs.to(value.dtype), value)
        t5 = now()
        out = attn.to_out[1](attn.to_out[0](attn.batch_to_head_dim(out)))
        t6 = now()
        if len(input_shape) == 4:
            out = out.transpose(-1, -2).reshape(input_shape)
        if attn.residual_connection:
            out = out + residual
        out = out / attn.rescale_output_factor
        t7 = now()
        d = self.parts.setdefault(self.name, dict.fromkeys(ATTN_PARTS, 0.0))
        for part, dt in zip(ATTN_PARTS, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t6 - t5, t7 - t6)):
            d[part] += dt
        return out


def _clone(x):
    if torch.is_tensor(x):
        return x.detach().clone()
    if isinstance(x, dict):
        return {k: _clone(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_clone(v) for v in x)
    return x


# --- part 1: breakdown ------------------------------------------------------------------------------------

def _unet_modules(unet) -> dict[str, dict[str, torch.nn.Module]]:
    from diffusers.models.attention import BasicTransformerBlock, FeedForward
    from diffusers.models.attention_processor import Attention
    from diffusers.models.downsampling import Downsample2D
    from diffusers.models.resnet import ResnetBlock2D
    from diffusers.models.transformers.transformer_2d import Transformer2DModel
    from diffusers.models.upsampling import Upsample2D

    groups: dict[str, dict[str, torch.nn.Module]] = {k: {} for k in ("conv", "ff", "attn", "block", "norm1", "t2d", "top")}
    for name, m in unet.named_modules():
        if not name:
            continue
        if isinstance(m, (ResnetBlock2D, Downsample2D, Upsample2D)) or name in ("conv_in", "conv_out"):
            groups["conv"][name] = m
        if isinstance(m, FeedForward):
            groups["ff"][name] = m
        if isinstance(m, Attention):
            groups["attn"][name] = m
        if isinstance(m, BasicTransformerBlock):
            groups["block"][name] = m
            groups["norm1"][name + ".norm1"] = m.norm1
        if isinstance(m, Transformer2DModel):
            groups["t2d"][name] = m
    for name, m in unet.named_children():
        if isinstance(m, torch.nn.ModuleList):
            for i, child in enumerate(m):
                groups["top"][f"{name}.{i}"] = child
        elif m is not None:
            groups["top"][name] = m
    return groups


def _outermost(names) -> list[str]:
    names = set(names)
    return [n for n in names if not any(n.startswith(o + ".") for o in names if o != n)]


def _mean_dicts(dicts: list[dict[str, float]]) -> dict[str, float]:
    keys = set().union(*dicts) if dicts else set()
    return {k: sum(d.get(k, 0.0) for d in dicts) / len(dicts) for k in keys}


def pipeline_breakdown(pipe, config, steps: int) -> tuple[dict, tuple]:
    """One baseline pipeline call with coarse hooks. Returns (timings, captured UNet inputs of the middle step)."""
    from analysis.run import run_once

    now = _Clock(pipe.device, breakdown_clock_is_cpu(pipe.device))
    acc = {"unet": 0.0, "text_encoder": 0.0, "vae_decode": 0.0, "scheduler": 0.0}
    calls = {"unet": 0}
    captured: list = []
    start: dict[str, float] = {}
    handles = []

    def pre(key, module, args, kwargs):
        start[key] = now()
        if key == "unet":
            if calls["unet"] == steps // 2:
                captured.append((_clone(args), _clone(kwargs)))
            calls["unet"] += 1

    def post(key, module, args, output):
        acc[key] += now() - start.pop(key)

    def wrap(obj, attr, key):
        original = getattr(obj, attr)

        def timed(*a, **k):
            t = now()
            try:
                return original(*a, **k)
            finally:
                acc[key] += now() - t

        setattr(obj, attr, timed)
        return lambda: obj.__dict__.pop(attr, None)

    run_once(pipe, config, (), steps)  # warm-up, not timed
    undo = []
    try:
        handles.append(pipe.unet.register_forward_pre_hook(partial(pre, "unet"), with_kwargs=True))
        handles.append(pipe.unet.register_forward_hook(partial(post, "unet")))
        for te in ("text_encoder", "text_encoder_2"):
            module = getattr(pipe, te, None)
            if module is not None:
                handles.append(module.register_forward_pre_hook(partial(pre, "text_encoder"), with_kwargs=True))
                handles.append(module.register_forward_hook(partial(post, "text_encoder")))
        undo.append(wrap(pipe.vae, "decode", "vae_decode"))
        undo.append(wrap(pipe.scheduler, "step", "scheduler"))
        thread_start = time.thread_time()
        _, total, _, _, _ = run_once(pipe, config, (), steps)
        thread_total = time.thread_time() - thread_start
    finally:
        for h in handles:
            h.remove()
        for u in undo:
            u()
    wall_total = total
    if now.cpu_time:
        total = thread_total
    other = max(0.0, total - sum(acc.values()))
    out = {"clock": "thread CPU time" if now.cpu_time else "wall (perf_counter)", "total_s": total,
           "wall_s": wall_total, "unet_calls": calls["unet"], **{f"{k}_s": v for k, v in acc.items()},
           "other_s": other}
    out["shares"] = {k: (v / total if total else 0.0) for k, v in {**acc, "other": other}.items()}
    out["non_unet_share"] = 1.0 - out["shares"]["unet"]
    out["loop_share"] = out["shares"]["unet"] + out["shares"]["scheduler"]
    out["unet_call_s"] = acc["unet"] / max(1, calls["unet"])
    return out, captured[0] if captured else None


def unet_breakdown(unet, inputs, calls: int) -> dict:
    """Fused and explicit passes over direct UNet calls on `inputs`, alternating; per-call means."""
    now = _Clock(unet.device, breakdown_clock_is_cpu(unet.device))
    groups = _unet_modules(unet)
    modules = {}
    for g in groups.values():
        modules.update(g)
    timer = ModuleTimer(modules, now)
    args, kwargs = inputs
    originals = dict(unet.attn_processors)
    parts: dict[str, dict[str, float]] = {}
    timed = {key: TimedAttnProcessor(key[: -len(".processor")], now, parts) for key in originals}
    runs: dict[str, list] = {"fused": [], "explicit": []}
    try:
        with torch.inference_mode():
            for i in range(2 * (calls + 1)):  # the first call of each pass is a warm-up
                mode = "fused" if i % 2 == 0 else "explicit"
                unet.set_attn_processor(dict(originals) if mode == "fused" else dict(timed))
                timer.reset()
                parts.clear()
                t0 = now()
                unet(*args, **kwargs)
                total = now() - t0
                if i >= 2:
                    runs[mode].append(({"__total__": total, **timer.times},
                                       {f"{n}|{p}": v for n, d in parts.items() for p, v in d.items()}))
    finally:
        unet.set_attn_processor(dict(originals))
        timer.close()
    fused = _mean_dicts([r[0] for r in runs["fused"]])
    expl = _mean_dicts([r[0] for r in runs["explicit"]])
    flat = _mean_dicts([r[1] for r in runs["explicit"]])
    parts_mean: dict[str, dict[str, float]] = {}
    for key, v in flat.items():
        n, p = key.split("|")
        parts_mean.setdefault(n, {})[p] = v
    out = _analyse(unet, groups, fused, expl, parts_mean, timer.kinds, timer.queries, calls)
    out["clock"] = "thread CPU time" if now.cpu_time else "wall (perf_counter)"
    return out


def _analyse(unet, groups, fused, expl, parts, kinds, queries, calls) -> dict:
    u_f, u_e = fused["__total__"], expl["__total__"]
    conv_names = _outermost(groups["conv"])
    attn_names = sorted(groups["attn"])

    def cat(times, names):
        return sum(times.get(n, 0.0) for n in names)

    per_module = {}
    for name in attn_names:
        p = parts.get(name, dict.fromkeys(ATTN_PARTS, 0.0))
        e_total = sum(p.values())
        f_total = fused.get(name, 0.0)
        proj_map, proj_val = p["qk_proj"], p["v_proj"] + p["out_proj"]
        core_e = p["scores_softmax"] + p["probs_v"]
        core_f = f_total - proj_map - proj_val - p["prologue"] - p["epilogue"]
        if core_f >= 0 and core_e > 0:
            map_f = proj_map + core_f * p["scores_softmax"] / core_e
            val_f = proj_val + core_f * p["probs_v"] / core_e
        else:  # the fused call was faster than the explicit projections alone (noise): scale everything
            r = f_total / e_total if e_total else 0.0
            map_f, val_f = (proj_map + p["scores_softmax"]) * r, (proj_val + p["probs_v"]) * r
        per_module[name] = {
            "kind": kinds.get(name, "self"), "queries": queries.get(name), "fused_s": f_total, "explicit_s": e_total,
            "map_s": map_f, "values_s": val_f, "map_explicit_s": proj_map + p["scores_softmax"],
            "values_explicit_s": proj_val + p["probs_v"],
            "reuse_step_explicit_s": e_total - proj_map - p["scores_softmax"],  # V, probs@V, to_out, pro/epilogue
            **{f"{k}_s": v for k, v in p.items()},
        }

    def shares(total, conv, ff, maps, values):
        rest = total - conv - ff - maps - values
        d = {"convolutions": conv, "attention_maps": maps, "attention_values_out": values, "feed_forward": ff,
             "rest": rest}
        return {k: (v / total if total else 0.0) for k, v in d.items()}

    maps_f = sum(m["map_s"] for m in per_module.values())
    vals_f = sum(m["values_s"] for m in per_module.values())
    maps_e = sum(m["map_explicit_s"] for m in per_module.values())
    vals_e = sum(m["values_explicit_s"] for m in per_module.values())
    by_kind = {}
    for kind in ("self", "cross"):
        ms = [m for m in per_module.values() if m["kind"] == kind]
        by_kind[kind] = {
            "modules": len(ms),
            "attention_s": sum(m["fused_s"] for m in ms),
            "map_s": sum(m["map_s"] for m in ms),
            "values_s": sum(m["values_s"] for m in ms),
            "attention_share": sum(m["fused_s"] for m in ms) / u_f if u_f else 0.0,
            "map_share": sum(m["map_s"] for m in ms) / u_f if u_f else 0.0,
            "values_share": sum(m["values_s"] for m in ms) / u_f if u_f else 0.0,
            "explicit_map_share": sum(m["map_explicit_s"] for m in ms) / u_e if u_e else 0.0,
        }
    top = groups["top"]
    enc_names = [n for n in top if n == "conv_in" or n.startswith("down_blocks.") or n == "mid_block"]
    dec_names = [n for n in top if n.startswith("up_blocks.") or n in ("conv_norm_out", "conv_act", "conv_out")]
    enc, dec = cat(fused, enc_names), cat(fused, dec_names)

    layers = {}
    for name, model in groups["t2d"].items():
        blocks = [f"{name}.transformer_blocks.{i}" for i in range(len(model.transformer_blocks))]
        if len(blocks) == 1:
            b = blocks[0]
            post = fused.get(b, 0.0) - fused.get(b + ".attn1", 0.0) - fused.get(b + ".norm1", 0.0)
        else:
            post = sum(fused.get(b, 0.0) for b in blocks[1:])
        attn1 = blocks[0] + ".attn1"
        layers[name] = {"blocks": len(blocks), "s": fused.get(name, 0.0), "post_pruning_s": max(0.0, post),
                        "attn1": attn1, "attn1_queries": queries.get(attn1),
                        "attn1_explicit_overhead_s": per_module.get(attn1, {}).get("explicit_s", 0.0)
                        - per_module.get(attn1, {}).get("fused_s", 0.0)}
    conv_f, ff_f = cat(fused, conv_names), cat(fused, groups["ff"])
    conv_e, ff_e = cat(expl, conv_names), cat(expl, groups["ff"])
    attn_f = sum(m["fused_s"] for m in per_module.values())
    attn_e = sum(m["explicit_s"] for m in per_module.values())
    return {
        "calls_per_pass": calls,
        "unet_call_s": u_f,
        "unet_call_explicit_s": u_e,
        "shares": shares(u_f, conv_f, ff_f, maps_f, vals_f),
        "shares_explicit": shares(u_e, conv_e, ff_e, maps_e, vals_e),
        "attention_by_kind": by_kind,
        "attention_s": attn_f,
        "attention_explicit_s": attn_e,
        "explicit_over_fused_attention": attn_e / attn_f if attn_f else None,
        "encoder_decoder": {"encoder": enc / u_f if u_f else 0.0, "decoder": dec / u_f if u_f else 0.0,
                            "other": (u_f - enc - dec) / u_f if u_f else 0.0,
                            "encoder_s": enc, "decoder_s": dec,
                            "encoder_modules": sorted(enc_names), "decoder_modules": sorted(dec_names)},
        "transformer_layers": layers,
        "attention_modules": per_module,
    }


def breakdown(pipe, config, steps: int, calls: int) -> dict:
    _log("breakdown: pipeline pass (coarse hooks)")
    pipeline, inputs = pipeline_breakdown(pipe, config, steps)
    if inputs is None:
        raise RuntimeError("bench: the pipeline never called the UNet")
    _log(f"breakdown: pipeline {pipeline['total_s']:.3f}s, UNet share {pipeline['shares']['unet']:.3f}; "
         f"UNet passes (fused / explicit attention, {calls} calls each)")
    unet = unet_breakdown(pipe.unet, inputs, calls)
    unet["pipeline"] = pipeline
    unet["unet_batch_rows"] = int(inputs[0][0].shape[0]) if inputs[0] else None
    unet["bounds"] = _bounds(unet, steps)
    s = unet["shares"]
    _log("breakdown: " + ", ".join(f"{k} {v:.3f}" for k, v in s.items()))
    return unet


def _bounds(b: dict, steps: int) -> dict:
    """The largest speedup each technique could reach if it removed its whole share at every step."""
    p = b["pipeline"]
    unet_share = p["shares"]["unet"]
    k = b["attention_by_kind"]
    sh = b["shares"]
    cross_all = k["cross"]["attention_share"]

    def speed(saved):
        return 1.0 / (1.0 - saved) if saved < 1 else math.inf

    return {
        "text": BOUNDS_TEXT,
        "max_speedup": {
            "reuse": speed(unet_share * sh["attention_maps"]),
            "tgate": speed(unet_share * (0.5 + 0.5 * cross_all)),
            "fastdiff": speed(unet_share * b["encoder_decoder"]["encoder"]),
            "atedm": speed(unet_share * sum(v["post_pruning_s"] for v in b["transformer_layers"].values())
                           / b["unet_call_s"] if b["unet_call_s"] else 0.0),
            "steps": speed(p["loop_share"] * (steps - 1) / steps),
            "all": speed(unet_share),
        },
        "note": "max_speedup: the technique's share removed at every step (reuse: every map; tgate: CFG half + all "
                "cross-attention; fastdiff: every encoder pass; atedm: all post-pruning transformer work; steps: "
                "one step left) - an upper bound, never reached",
    }


# --- part 3: cost model -----------------------------------------------------------------------------------

def saved_units(name: str, config, counters: dict, b: dict, steps: int) -> dict:
    """Work the run's counters say was skipped, in units of one baseline UNet call (ideal and expected)."""
    u = b["unet_call_s"]
    mods = b["attention_modules"]
    c = counters.get(name, {})
    rows_log = counters.get("unet", {}).get("batch_rows") or []
    note = None
    if name == "reuse":
        kinds = {"self": ("self",), "cross": ("cross",), "both": ("self", "cross")}[c.get("scope", config.scope)]
        scope = [m for m in mods.values() if m["kind"] in kinds]
        n = max(1, len(scope))
        map_call = sum(m["map_s"] for m in scope) / n
        reused, cached = c.get("maps_reused", 0), c.get("maps_cached", 0)
        ideal = reused * map_call
        saved_r = sum(m["fused_s"] - m["reuse_step_explicit_s"] for m in scope) / n
        extra_c = sum(m["explicit_s"] - m["fused_s"] for m in scope) / n
        expected = reused * saved_r - cached * extra_c
        detail = {"maps_reused": reused, "maps_cached": cached, "in_scope_modules": len(scope),
                  "map_per_call_s": map_call, "reused_call_saving_s": saved_r, "cache_call_extra_s": extra_c}
    elif name == "tgate":
        from analysis.accel.tgate import REUSE

        ca, sa, _ = config.plan(steps)
        base = rows_log[0] if rows_log else 1
        frac = [(rows_log[s] / base if s < len(rows_log) else 1.0) for s in range(steps)]
        cross = [m for m in mods.values() if m["kind"] == "cross"]
        self_ = [m for m in mods.values() if m["kind"] == "self"]
        cross_s, self_s = sum(m["fused_s"] for m in cross), sum(m["fused_s"] for m in self_)
        cfg = sum(1.0 - f for f in frac)
        cross_steps = [s for s in range(steps) if ca[s] == REUSE]
        self_steps = [s for s in range(steps) if sa[s] == REUSE]
        # per reused call at its step's batch rows; counts from counters(), rows from the plan's steps
        ca_rows = statistics.mean(frac[s] for s in cross_steps) if cross_steps else 1.0
        sa_rows = statistics.mean(frac[s] for s in self_steps) if self_steps else 1.0
        ca_n, sa_n = c.get("cross_attn_reused", 0), c.get("self_attn_reused", 0)
        saved_cross = ca_n * (cross_s / max(1, len(cross))) * ca_rows
        saved_self = sa_n * (self_s / max(1, len(self_))) * sa_rows
        ideal = cfg * u + saved_cross + saved_self
        expected = ideal
        detail = {"cfg_rows_saved_units": cfg, "cross_reused": ca_n, "self_reused": sa_n,
                  "cross_saved_s": saved_cross, "self_saved_s": saved_self, "cfg_saved_s": cfg * u,
                  "counts_match": ca_n == len(cross_steps) * len(cross) and sa_n == len(self_steps) * len(self_)}
        if config.gate_step >= steps:
            note = (f"gate_step={config.gate_step} >= {steps} steps: no CFG drop and no cross-attention reuse in this "
                    f"run; only the pre-gate self-attention caching acts")
    elif name == "fastdiff":
        skipped = c.get("encoder_passes_skipped", 0)
        ideal = skipped * b["encoder_decoder"]["encoder_s"]
        expected = ideal
        detail = {"encoder_passes_skipped": skipped, "encoder_s": b["encoder_decoder"]["encoder_s"],
                  "parallel": config.parallel}
    elif name == "atedm":
        ideal = expected = 0.0
        per_layer = {}
        for lname, lc in (c.get("layers") or {}).items():
            layer = b["transformer_layers"].get(lname)
            if not layer or not lc.get("tokens_total"):
                continue
            f = lc["tokens_pruned"] / lc["tokens_total"]
            s = f * steps * layer["post_pruning_s"]
            n_tok = layer["attn1_queries"] or 1
            per_call = lc["tokens_total"] / max(1, steps)
            n_prune = min(int(config.ratio * n_tok), n_tok - 1)
            events = lc["tokens_pruned"] / (per_call / n_tok * n_prune) if n_prune > 0 and per_call else 0.0
            ideal += s
            expected += s - events * max(0.0, layer["attn1_explicit_overhead_s"])
            per_layer[lname] = {"pruned_fraction": f, "post_pruning_s": layer["post_pruning_s"], "saved_s": s,
                                "pruning_calls": events}
        detail = {"pruned_fraction": c.get("pruned_fraction"), "layers": per_layer}
        note = "linear in tokens; G-WPR ranking, gather/copy-back and the explicit attn1 are not subtracted in ideal"
    else:
        raise ValueError(name)
    return {"ideal_unet_units": ideal / u if u else 0.0, "expected_unet_units": expected / u if u else 0.0,
            "detail": detail, "note": note}


def cost_model(name: str, config, counters: dict, b: dict, steps: int, accel_steps: int) -> dict:
    p = b["pipeline"]
    per_unit = p["shares"]["unet"] / max(1, p["unet_calls"])  # pipeline fraction of one baseline UNet call
    if name == "steps":
        saved = (steps - accel_steps) / steps * p["loop_share"]
        out = {"saved_fraction": saved, "expected_saved_fraction": saved,
               "detail": {"steps": accel_steps, "loop_share": p["loop_share"]}, "note": None}
    else:
        s = saved_units(name, config, counters, b, steps)
        out = {"saved_fraction": s["ideal_unet_units"] * per_unit,
               "expected_saved_fraction": s["expected_unet_units"] * per_unit,
               "saved_unet_calls": s["ideal_unet_units"], "detail": s["detail"], "note": s["note"]}
    out["ideal_speedup"] = 1.0 / (1.0 - out["saved_fraction"])
    out["expected_speedup"] = 1.0 / (1.0 - out["expected_saved_fraction"])
    return out


# --- parts 2 and 4: timed runs --------------------------------------------------------------------------

@dataclasses.dataclass
class Job:
    label: str
    name: str  # technique name, "baseline" or "steps"
    config: Any  # the technique config (None for the baseline)
    plugins: tuple
    steps: int
    images: np.ndarray | None = None
    counters: dict | None = None
    latencies: list = dataclasses.field(default_factory=list)  # wall clock of the pipeline call (run_once)
    cpu: list = dataclasses.field(default_factory=list)  # process CPU time around the same call


def make_jobs(specs: list[str], steps: int, base_config) -> list[Job]:
    from analysis.accel import parse_accel
    from analysis.run import RunConfig

    jobs = [Job("baseline", "baseline", None, (), steps)]
    for spec in specs:
        cfg = parse_accel(spec)
        rc = RunConfig(prompt=base_config.prompt, steps=steps, size=base_config.size, seed=base_config.seed,
                       guidance=base_config.guidance, accel=(cfg,))
        jobs.append(Job(spec, type(cfg).name, cfg, rc.hooked_accel(), rc.accel_steps))
    return jobs


def run_jobs(pipe, config, jobs: list[Job], repeats: int, tag: str = "") -> None:
    """Warm-up (one run each: images, counters), then `repeats` rounds of every job, order rotated per round."""
    from analysis.run import run_once

    for job in jobs:
        t = time.perf_counter()
        job.images, _, job.counters, _, _ = run_once(pipe, config, job.plugins, job.steps)
        _log(f"{tag}warm-up {job.label}: {time.perf_counter() - t:.2f}s")
    for r in range(repeats):
        order = jobs[r % len(jobs):] + jobs[: r % len(jobs)]
        for job in order:
            cpu = time.process_time()
            images, seconds, counters, _, _ = run_once(pipe, config, job.plugins, job.steps)
            job.cpu.append(time.process_time() - cpu)
            job.latencies.append(seconds)
            job.counters = counters
        _log(f"{tag}round {r + 1}/{repeats}: " + ", ".join(f"{j.label} {j.latencies[-1]:.2f}s" for j in jobs))


def default_specs(steps: int) -> list[str]:
    from analysis.accel import TECHNIQUES, _load_all

    _load_all()
    specs = [n for n in TECHNIQUES if n != "steps"]
    tgate = TECHNIQUES.get("tgate")
    if tgate is not None and tgate().gate_step >= steps and steps > 2:
        specs.append(f"tgate:gate_step={max(1, round(TGATE_GATE_FRACTION * steps))}")
    specs.append(f"steps:steps={max(1, min(steps - 1, round(STEPS_FRACTION * steps)))}")
    return specs


def paired_speedup(base_latencies: list[float], latencies: list[float]) -> dict:
    """Per-round speed-ups (baseline / technique, the two runs of one round are minutes apart at most), their
    median and quartiles: robust to the slow drift of a shared machine, which moves both runs of a round."""
    ratios = [b / t for b, t in zip(base_latencies, latencies) if t > 0]
    if not ratios:
        return {"paired_speedups": [], "paired_speedup": None, "paired_q1": None, "paired_q3": None}
    q1, _, q3 = statistics.quantiles(ratios, n=4, method="inclusive") if len(ratios) > 1 else (ratios[0],) * 3
    return {"paired_speedups": ratios, "paired_speedup": statistics.median(ratios), "paired_q1": q1, "paired_q3": q3}


def speed(pipe, config, specs, steps, repeats, b: dict | None) -> dict:
    from analysis import metrics

    jobs = make_jobs(specs, steps, config)
    # A second, identical baseline in every round: its speed-up over the baseline is 1 by construction, so its
    # spread is the smallest effect this machine can resolve with these repeats.
    floor = Job("noise_floor", "baseline", None, (), steps)
    run_jobs(pipe, config, jobs + [floor], repeats)
    base = jobs[0]
    base_med, base_cpu = statistics.median(base.latencies), statistics.median(base.cpu)
    out = {"baseline": {"latency_s": base_med, "latencies_s": base.latencies, "cpu_s": base_cpu,
                        "cpus_s": base.cpu},
           "noise_floor": {"latencies_s": floor.latencies, **paired_speedup(base.latencies, floor.latencies)},
           "techniques": {}}
    _log(f"noise floor (baseline vs itself): paired median {out['noise_floor']['paired_speedup']:.3f}x, "
         f"quartiles {out['noise_floor']['paired_q1']:.3f}-{out['noise_floor']['paired_q3']:.3f}")
    for job in jobs[1:]:
        med, cpu = statistics.median(job.latencies), statistics.median(job.cpu)
        measured = base_med / med
        entry = {"name": job.name, "config": dataclasses.asdict(job.config), "steps": job.steps,
                 "latency_s": med, "latencies_s": job.latencies, "measured_speedup": measured,
                 "cpu_s": cpu, "cpus_s": job.cpu, "measured_speedup_cpu": base_cpu / cpu if cpu else None,
                 **paired_speedup(base.latencies, job.latencies),
                 "psnr_db": metrics.json_number(metrics.psnr(base.images, job.images)),
                 "counters": job.counters}
        if b is not None:
            cm = cost_model(job.name, job.config, job.counters or {}, b, steps, job.steps)
            entry.update(cm)
            entry["saved_s"] = cm["saved_fraction"] * base_med
            entry["efficiency"] = measured / cm["ideal_speedup"]
            entry["efficiency_vs_expected"] = measured / cm["expected_speedup"]
            if entry["measured_speedup_cpu"]:
                entry["efficiency_cpu"] = entry["measured_speedup_cpu"] / cm["ideal_speedup"]
        out["techniques"][job.label] = entry
        _log(f"{job.label}: measured {measured:.3f}x (CPU time {entry['measured_speedup_cpu'] or 0:.3f}x)" + (
            f", ideal {entry['ideal_speedup']:.3f}x, efficiency {entry['efficiency']:.3f}" if b is not None else ""))
    return out


def _fit_line(points: list[tuple[float, float]]) -> tuple[float, float]:
    """Least-squares y = a + b x."""
    xs = np.array([p[0] for p in points], dtype=float)
    ys = np.array([p[1] for p in points], dtype=float)
    if len(points) < 2 or np.ptp(xs) == 0:
        return float(ys.mean()) if len(ys) else 0.0, 0.0
    b, a = np.polyfit(xs, ys, 1)
    return float(a), float(b)


def _interp(points: list[tuple[float, float]], x: float) -> tuple[float, bool]:
    """Linear interpolation of y at x over (x, y) points; outside the range, the closest end (flagged)."""
    pts = sorted(points)
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    if x <= xs[0]:
        return ys[0], x < xs[0]
    if x >= xs[-1]:
        return ys[-1], x > xs[-1]
    for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
        if x0 <= x <= x1:
            return (y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)), False
    return ys[-1], True


def _med(xs):
    xs = [x for x in xs if x is not None and not (isinstance(x, float) and math.isnan(x))]
    return statistics.median(xs) if xs else None


def quality(pipe, prompts: list[str], base_config, specs, steps, repeats, with_fidelity: bool) -> dict:
    """Part 4: per prompt, PSNR (and fidelity) of every technique and of a sweep of reduced step counts.

    Equal latency: the step sweep's latency relative to the prompt's baseline is fitted (over all prompts) by a
    line in the step count n (latency is affine in n; the fit removes the timing noise of single points);
    a technique's equal-latency step count n* solves line(n*) = its median relative latency; the step-reduction
    PSNR at n* interpolates the prompt's PSNR linearly between the neighbouring counts (so linearly in latency).
    Outside the swept counts the closest count is used and the prompt is counted in `extrapolated_prompts`; a
    technique no faster than the baseline (n* >= N) has no step-reduction counterpart (difference null).
    Done with wall clock (primary) and with process CPU time (`*_cpu`, immune to other processes' load)."""
    from analysis import metrics

    counts = list(range(max(1, round(0.3 * steps)), steps))
    sweep = [f"steps:steps={n}" for n in counts]
    techniques = [s for s in specs if s not in sweep]
    per_prompt = []
    for i, prompt in enumerate(prompts):
        config = dataclasses.replace(base_config, prompt=prompt)
        jobs = make_jobs(techniques + sweep, steps, config)
        run_jobs(pipe, config, jobs, repeats, tag=f"quality {i + 1}/{len(prompts)}: ")
        base = jobs[0]
        base_lat, base_cpu = statistics.median(base.latencies), statistics.median(base.cpu)
        row = {"prompt": prompt, "baseline_latency_s": base_lat, "baseline_cpu_s": base_cpu, "techniques": {},
               "steps": {}}
        if with_fidelity:
            from analysis.toy.fidelity import attribute_accuracy

            row["baseline_fidelity"] = attribute_accuracy(list(base.images), [prompt])["overall"]
        for job in jobs[1:]:
            lat, cpu = statistics.median(job.latencies), statistics.median(job.cpu)
            d = {"latency_s": lat, "relative_latency": lat / base_lat, "speedup": base_lat / lat,
                 "relative_cpu": cpu / base_cpu if base_cpu else None, "speedup_cpu": base_cpu / cpu if cpu else None,
                 "psnr_db": metrics.psnr(base.images, job.images)}
            if with_fidelity:
                from analysis.toy.fidelity import attribute_accuracy

                d["fidelity"] = attribute_accuracy(list(job.images), [prompt])["overall"]
            (row["steps"] if job.label in sweep else row["techniques"])[job.steps if job.label in sweep else job.label] = d
        per_prompt.append(row)

    fits = {}
    for clock, key in (("wall", "relative_latency"), ("cpu", "relative_cpu")):
        pts = [(n, r["steps"][n][key]) for r in per_prompt for n in counts if r["steps"][n][key] is not None]
        pts += [(steps, 1.0)] * len(per_prompt)  # the baseline itself
        fits[clock] = _fit_line(pts) if counts else (0.0, 0.0)

    summary = {}
    for label in techniques:
        rows = [r["techniques"][label] for r in per_prompt]
        entry = {
            "median_speedup": _med([r["speedup"] for r in rows]),
            "median_speedup_cpu": _med([r["speedup_cpu"] for r in rows]),
            "median_psnr_db": metrics.json_number(_med([r["psnr_db"] for r in rows])),
            "mean_finite_psnr_db": _mean_finite([r["psnr_db"] for r in rows]),
            "fidelity": _med([r.get("fidelity") for r in rows]) if with_fidelity else None,
        }
        for clock, key, suffix in (("wall", "relative_latency", ""), ("cpu", "relative_cpu", "_cpu")):
            a, b = fits[clock]
            rel = _med([r[key] for r in rows])
            if not counts or rel is None or b <= 0:
                entry.update({f"equal_latency_steps{suffix}": None, f"median_steps_psnr_db{suffix}": None,
                              f"median_psnr_minus_steps_psnr{suffix}": None, f"extrapolated_prompts{suffix}": None})
                continue
            n_star = (rel - a) / b
            if n_star >= steps:  # no faster than the baseline: at equal latency step reduction is the full image
                entry.update({f"equal_latency_steps{suffix}": n_star, f"median_steps_psnr_db{suffix}": "inf",
                              f"median_psnr_minus_steps_psnr{suffix}": None,
                              f"extrapolated_prompts{suffix}": len(rows)})
                continue
            diffs, steps_psnr, outside = [], [], 0
            for r, t in zip(per_prompt, rows):
                sp, out = _interp([(n, r["steps"][n]["psnr_db"]) for n in counts], n_star)
                outside += out
                steps_psnr.append(sp)
                diffs.append(t["psnr_db"] - sp)
            entry.update({f"equal_latency_steps{suffix}": n_star, f"median_steps_psnr_db{suffix}": _med(steps_psnr),
                          f"median_psnr_minus_steps_psnr{suffix}": _med(diffs),
                          f"extrapolated_prompts{suffix}": outside})
        summary[label] = entry
    steps_curve = {n: {"median_relative_latency": _med([r["steps"][n]["relative_latency"] for r in per_prompt]),
                       "median_relative_cpu": _med([r["steps"][n]["relative_cpu"] for r in per_prompt]),
                       "median_psnr_db": _med([r["steps"][n]["psnr_db"] for r in per_prompt]),
                       "fidelity": _med([r["steps"][n].get("fidelity") for r in per_prompt]) if with_fidelity else None}
                   for n in counts}
    return {
        "prompts": prompts,
        "baseline_fidelity": _med([r.get("baseline_fidelity") for r in per_prompt]) if with_fidelity else None,
        "techniques": summary,
        "steps_curve": steps_curve,
        "latency_fit": {clock: {"intercept": a, "per_step": b} for clock, (a, b) in fits.items()},
        "per_prompt": _jsonable(per_prompt),
        "method": " ".join(quality.__doc__.split("\n\n", 1)[1].split()),
    }


def _mean_finite(xs):
    xs = [x for x in xs if x is not None and math.isfinite(x)]
    return statistics.fmean(xs) if xs else None


# --- main -------------------------------------------------------------------------------------------------

def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.floating, float)):
        x = float(x)
        return x if math.isfinite(x) else ("inf" if x > 0 else "-inf" if x < 0 else None)
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    return x


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m analysis bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="default", choices=MODELS + HIDDEN_MODELS, metavar="|".join(MODELS))
    p.add_argument("--steps", type=int, default=10, metavar="N")
    p.add_argument("--size", type=int, default=None, metavar="PX")
    p.add_argument("--repeats", type=int, default=3, metavar="N")
    p.add_argument("--techniques", nargs="+", default=None, metavar="NAME[:k=v,...]",
                   help="default: every registered technique at its defaults, plus steps at about 0.8 N")
    p.add_argument("--prompts", type=int, default=None, metavar="N",
                   help="quality over N shapes-world prompts (default: 4 on the default model, 0 otherwise)")
    p.add_argument("--breakdown-only", action="store_true")
    p.add_argument("--breakdown-calls", type=int, default=None, metavar="N",
                   help="timed UNet calls per breakdown pass (default: max(2, repeats))")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="torch CPU threads (default: torch's, or 1 when the CPU is oversubscribed: with more runnable "
                        "processes than cores, multi-threaded kernels stall on descheduled threads and timings blow up)")
    return p


def _choose_threads(requested: int | None) -> tuple[int, str]:
    if requested is not None:
        return max(1, requested), "--threads"
    if torch.cuda.is_available():
        return torch.get_num_threads(), "torch default (GPU run)"
    cores = os.cpu_count() or 1
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = 0.0
    if torch.get_num_threads() > 1 and load > cores - 0.5:
        return 1, f"1-minute load average {load:.1f} on {cores} cores: oversubscribed, 1 thread"
    return torch.get_num_threads(), "torch default"


def main(argv=None) -> int:
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as done:  # --help, or a usage error (argparse already printed it): return, never exit
        return done.code if isinstance(done.code, int) else 2
    if args.steps < 1 or args.repeats < 1:
        print("error: --steps and --repeats must be at least 1", file=sys.stderr)
        return 2
    from analysis.run import RunConfig

    wall = time.perf_counter()
    try:
        specs = args.techniques if args.techniques is not None else default_specs(args.steps)
        prompts_n = args.prompts if args.prompts is not None else (4 if args.model == "default" else 0)
        prompt = shapes_prompts(1, seed=args.seed)[0]
        config = RunConfig(prompt=prompt, steps=args.steps, size=args.size, seed=args.seed)
        make_jobs(specs, args.steps, config)  # validate the technique specs before loading anything
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    threads_before = torch.get_num_threads()
    threads, reason = _choose_threads(args.threads)
    torch.set_num_threads(threads)
    try:
        return _run(args, specs, prompts_n, prompt, config, threads, reason, wall)
    finally:
        torch.set_num_threads(threads_before)


def _run(args, specs, prompts_n, prompt, config, threads, reason, wall) -> int:
    import json

    _log(f"loading model {args.model} ({threads} torch thread(s): {reason})")
    import diffusers.utils.logging
    import transformers.utils.logging

    for lib in (diffusers.utils.logging, transformers.utils.logging):
        lib.set_verbosity_error()
        lib.disable_progress_bar()
    try:
        pipe = load_model(args.model)
    except (ValueError, OSError) as err:
        print(f"error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    from diffusers.utils import logging as dlogging

    dlogging.set_verbosity_error()
    result: dict[str, Any] = {
        "bench": "diffscope-bench/1", "model": args.model, "steps": args.steps, "repeats": args.repeats,
        "size": args.size or pipe.unet.config.sample_size * pipe.vae_scale_factor, "prompt": prompt,
        "device": str(pipe.device), "dtype": str(pipe.unet.dtype), "torch_threads": torch.get_num_threads(),
        "threads_reason": reason,
        "torch": torch.__version__, "machine": platform.machine(), "cpu_count": os.cpu_count(),
    }
    calls = args.breakdown_calls or max(2, args.repeats)
    b = breakdown(pipe, config, args.steps, calls)
    result["breakdown"] = b
    if not args.breakdown_only:
        _log(f"speed: {len(specs)} techniques x {args.repeats} repeats: {', '.join(specs)}")
        sp = speed(pipe, config, specs, args.steps, args.repeats, b)
        result["baseline"] = sp["baseline"]
        result["noise_floor"] = sp["noise_floor"]
        result["techniques"] = sp["techniques"]
        result["cost_model"] = {
            "units": "saved work in baseline UNet calls u (timed in `breakdown`), converted to pipeline time with "
                     "the UNet's share of the pipeline: saved_fraction = saved_units * shares.unet / unet_calls",
            "ideal_speedup": "1 / (1 - saved_fraction)",
            "efficiency": "measured_speedup / ideal_speedup",
            "expected_speedup": "ideal minus the overheads this implementation pays: explicit (non-SDPA) attention "
                                "on map-caching and reused calls (reuse) and on attn1 of pruning calls (atedm)",
            "reuse": "maps_reused x mean map time (Q/K proj + QK^T + softmax) of an in-scope module",
            "tgate": "(rows dropped / rows) x UNet per step + reused cross-/self-attention calls x module time at "
                     "their step's rows",
            "fastdiff": "encoder_passes_skipped x encoder (conv_in + down + mid); parallel decoding counts nothing",
            "atedm": "sum over transformers of pruned token fraction x post-pruning work (attn2 + FF + norms; later "
                     "blocks) x steps; overheads (G-WPR, gather, copy-back) not subtracted",
            "steps": "(N - n) / N x (UNet + scheduler share)",
        }
        if prompts_n > 0:
            _log(f"quality: {prompts_n} prompts")
            prompts = shapes_prompts(prompts_n, seed=args.seed)
            result["quality"] = quality(pipe, prompts, config, specs, args.steps, args.repeats,
                                        with_fidelity=args.model == "default")
    result["wall_s"] = time.perf_counter() - wall
    print(json.dumps(_jsonable(result), allow_nan=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
