"""The profile of one pipeline: where a generation spends its time, per component and per UNet part.

`breakdown(pipe, config, steps, calls)`:
1. One baseline pipeline call with coarse hooks (text encoder, UNet, VAE decode, scheduler step) gives the
   pipeline's per-component seconds and shares, and captures the UNet inputs of the middle step.
2. The UNet is then called directly on those inputs, alternating two passes:
   - "fused": the pipeline's own attention processors (fused SDPA) with module forward pre/post hooks
     (analysis/eval/timing.py) on ResnetBlock2D / Downsample2D / Upsample2D / conv_in / conv_out
     (convolutions), FeedForward, every Attention module, the transformer blocks and the top-level UNet
     blocks (encoder = conv_in + down blocks + mid block, decoder = up blocks + output head);
   - "explicit": the same hooks plus `timing.TimedAttnProcessor`, which runs the techniques' own explicit path
     (`analysis.attention.attention_with_probs`) and times its parts: Q/K projections, QK^T + softmax
     (together "attention maps"), V projection, probs @ V, output projection (together "values + output"),
     and the prologue/epilogue (norms, reshapes).
   `shares_explicit` are the shares of the explicit-path UNet call. `shares` are the shares of the real
   (fused) UNet call: each attention module's fused time is split into maps / values by its explicit parts
   (the projections as measured; the fused SDPA core in the explicit QK^T+softmax : probs@V proportion; the
   rest to "rest"). Both sum to 1 (rest = UNet total minus the other four). The cost functions use `shares`
   and the per-module / per-layer seconds (analysis/eval/cost.py).
`bounds` gives, per technique, the largest speed-up removing its whole share at every step could reach.
"""
from __future__ import annotations

import contextlib
import math
import time
from functools import partial
from typing import Callable

import torch

from analysis.attention import ATTENTION_PARTS
from analysis.eval.timing import ModuleTimer, TimedAttnProcessor, clone, profile_clock

def _bounds_text() -> dict[str, str]:
    from analysis.accel import registry

    return {**{name: t.bound_text for name, t in registry().items()},
            "all": "no technique can beat 1 / non_unet_share of the pipeline (Amdahl)"}


def _quiet(msg: str) -> None:
    pass


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

    now = profile_clock(pipe.device)
    acc = {"unet": 0.0, "text_encoder": 0.0, "vae_decode": 0.0, "scheduler": 0.0}
    calls = {"unet": 0}
    captured: list = []
    start: dict[str, float] = {}
    handles = []

    def pre(key, module, args, kwargs):
        start[key] = now()
        if key == "unet":
            if calls["unet"] == steps // 2:
                captured.append((clone(args), clone(kwargs)))
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
        total = run_once(pipe, config, (), steps).seconds
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
    out = {"clock": now.label, "total_s": total, "steps": steps,
           "wall_s": wall_total, "unet_calls": calls["unet"], **{f"{k}_s": v for k, v in acc.items()},
           "other_s": other}
    out["shares"] = {k: (v / total if total else 0.0) for k, v in {**acc, "other": other}.items()}
    out["non_unet_share"] = 1.0 - out["shares"]["unet"]
    out["loop_share"] = out["shares"]["unet"] + out["shares"]["scheduler"]
    out["unet_call_s"] = acc["unet"] / max(1, calls["unet"])
    return out, captured[0] if captured else None


def unet_breakdown(unet, inputs, calls: int) -> dict:
    """Fused and explicit passes over direct UNet calls on `inputs`, alternating; per-call means."""
    now = profile_clock(unet.device)
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
    out["clock"] = now.label
    return out


def _analyse(unet, groups, fused, expl, parts, kinds, queries, calls) -> dict:
    u_f, u_e = fused["__total__"], expl["__total__"]
    conv_names = _outermost(groups["conv"])
    per_module = {name: _attention_module(parts.get(name, dict.fromkeys(ATTENTION_PARTS, 0.0)), fused.get(name, 0.0),
                                          kinds.get(name, "self"), queries.get(name))
                  for name in sorted(groups["attn"])}
    maps_f = sum(m["map_s"] for m in per_module.values())
    vals_f = sum(m["values_s"] for m in per_module.values())
    maps_e = sum(m["map_explicit_s"] for m in per_module.values())
    vals_e = sum(m["values_explicit_s"] for m in per_module.values())
    top = groups["top"]
    enc_names = [n for n in top if n == "conv_in" or n.startswith("down_blocks.") or n == "mid_block"]
    dec_names = [n for n in top if n.startswith("up_blocks.") or n in ("conv_norm_out", "conv_act", "conv_out")]
    enc, dec = _summed(fused, enc_names), _summed(fused, dec_names)
    conv_f, ff_f = _summed(fused, conv_names), _summed(fused, groups["ff"])
    conv_e, ff_e = _summed(expl, conv_names), _summed(expl, groups["ff"])
    attn_f = sum(m["fused_s"] for m in per_module.values())
    attn_e = sum(m["explicit_s"] for m in per_module.values())
    return {
        "calls_per_pass": calls,
        "unet_call_s": u_f,
        "unet_call_explicit_s": u_e,
        "shares": _shares(u_f, conv_f, ff_f, maps_f, vals_f),
        "shares_explicit": _shares(u_e, conv_e, ff_e, maps_e, vals_e),
        "attention_by_kind": _attention_by_kind(per_module, u_f, u_e),
        "attention_s": attn_f,
        "attention_explicit_s": attn_e,
        "explicit_over_fused_attention": attn_e / attn_f if attn_f else None,
        "encoder_decoder": {"encoder": enc / u_f if u_f else 0.0, "decoder": dec / u_f if u_f else 0.0,
                            "other": (u_f - enc - dec) / u_f if u_f else 0.0,
                            "encoder_s": enc, "decoder_s": dec,
                            "encoder_modules": sorted(enc_names), "decoder_modules": sorted(dec_names)},
        "transformer_layers": _transformer_layers(groups["t2d"], fused, queries, per_module),
        "attention_modules": per_module,
    }


def _summed(times: dict, names) -> float:
    """The seconds of the named modules, summed (0 for a module that was not timed)."""
    return sum(times.get(n, 0.0) for n in names)


def _attention_module(p: dict, f_total: float, kind: str, queries) -> dict:
    """One attention module's profile: its fused time split into maps and values in the proportion of its
    explicit parts `p` (see the module doc), and the explicit parts themselves."""
    e_total = sum(p.values())
    proj_map, proj_val = p["qk_proj"], p["v_proj"] + p["out_proj"]
    core_e = p["scores_softmax"] + p["probs_v"]
    core_f = f_total - proj_map - proj_val - p["prologue"] - p["epilogue"]
    if core_f >= 0 and core_e > 0:
        map_f = proj_map + core_f * p["scores_softmax"] / core_e
        val_f = proj_val + core_f * p["probs_v"] / core_e
    else:  # the fused call was faster than the explicit projections alone (noise): scale everything
        r = f_total / e_total if e_total else 0.0
        map_f, val_f = (proj_map + p["scores_softmax"]) * r, (proj_val + p["probs_v"]) * r
    return {
        "kind": kind, "queries": queries, "fused_s": f_total, "explicit_s": e_total,
        "map_s": map_f, "values_s": val_f, "map_explicit_s": proj_map + p["scores_softmax"],
        "values_explicit_s": proj_val + p["probs_v"],
        "reuse_step_explicit_s": e_total - proj_map - p["scores_softmax"],  # V, probs@V, to_out, pro/epilogue
        **{f"{k}_s": v for k, v in p.items()},
    }


def _shares(total, conv, ff, maps, values) -> dict:
    """Each part's share of a UNet call's `total` seconds; rest = the total minus the four parts."""
    rest = total - conv - ff - maps - values
    d = {"convolutions": conv, "attention_maps": maps, "attention_values_out": values, "feed_forward": ff,
         "rest": rest}
    return {k: (v / total if total else 0.0) for k, v in d.items()}


def _attention_by_kind(per_module: dict, u_f: float, u_e: float) -> dict:
    """Self- and cross-attention modules: how many, their fused seconds and shares of the fused UNet call `u_f`,
    and their explicit map share of the explicit call `u_e`."""
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
    return by_kind


def _transformer_layers(t2d: dict, fused: dict, queries: dict, per_module: dict) -> dict:
    """Per Transformer2D layer: its blocks, fused seconds, the seconds AT-EDM's pruning can save (after the first
    block's attn1), and that attn1's queries and explicit-path overhead."""
    layers = {}
    for name, model in t2d.items():
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
    return layers


def unet_profile(pipe, inputs, calls: int, attention: str) -> dict:
    """`unet_breakdown` on one UNet call's `inputs` under the run's attention backend ("fused" there is that
    backend: under attention=explicit the baseline's attention is explicit), each transformer layer with its
    AT-EDM ranking costs (`layer_profile.add_ranking_costs`). Shared by the bench and the layer profile."""
    from analysis.accel.layer_profile import add_ranking_costs
    from analysis.run import use_attention_backend

    with contextlib.ExitStack() as stack:
        use_attention_backend(pipe, attention, stack)
        unet = unet_breakdown(pipe.unet, inputs, calls)
        sample = inputs[0][0]
        add_ranking_costs(pipe.unet, unet["transformer_layers"], int(sample.shape[0]),
                          tuple(int(v) for v in sample.shape[-2:]))
    return unet


def breakdown(pipe, config, steps: int, calls: int, log: Callable[[str], None] = _quiet) -> dict:
    """The profile: pipeline shares at `steps` steps, then `calls` timed UNet calls per pass (see module doc)."""
    log("breakdown: pipeline pass (coarse hooks)")
    pipeline, inputs = pipeline_breakdown(pipe, config, steps)
    if inputs is None:
        raise RuntimeError("bench: the pipeline never called the UNet")
    log(f"breakdown: pipeline {pipeline['total_s']:.3f}s, UNet share {pipeline['shares']['unet']:.3f}; "
         f"UNet passes (fused / explicit attention, {calls} calls each)")
    unet = unet_profile(pipe, inputs, calls, config.attention)
    unet["pipeline"] = pipeline
    unet["unet_batch_rows"] = int(inputs[0][0].shape[0]) if inputs[0] else None
    unet["bounds"] = _bounds(unet, steps)
    s = unet["shares"]
    log("breakdown: " + ", ".join(f"{k} {v:.3f}" for k, v in s.items()))
    return unet


def _bounds(b: dict, steps: int) -> dict:
    """The largest speedup each technique could reach if it removed its whole share at every step
    (`Technique.bound`: the share of the pipeline, from this breakdown)."""
    from analysis.accel import registry

    def speed(saved):
        return 1.0 / (1.0 - saved) if saved < 1 else math.inf

    return {
        "text": _bounds_text(),
        "max_speedup": {**{name: speed(t.bound(b, steps)) for name, t in registry().items()},
                        "all": speed(b["pipeline"]["shares"]["unet"])},
        "note": "max_speedup: each technique's share (see text) removed at every step - an upper bound, never "
                "reached",
    }
