"""Peers on the same axes: DeepCache (Ma et al., CVPR 2024) and ToMe for SD (tomesd; Bolya & Hoffman, 2023)
as extra sweep rows on the same pipeline, prompts and seeds, marked technique="peer".

They are optional (requirements-peers.txt, installed with `pip install --no-deps` so that they cannot change
torch or diffusers); the app and the tests never need them. A peer that is not installed, or that fails on
this pipeline, is a ValueError saying so: the sweep refuses the grid before running rather than faking rows.

Setting spec: `peer:<name>:key=value,...`
- `peer:deepcache:cache_interval=3,cache_branch_id=0` -> DeepCacheSDHelper.set_params (skip_mode uniform):
  the UNet runs in full every `cache_interval` steps; in between only the shallow branch up to
  `cache_branch_id` runs and the deep features are taken from the cache;
- `peer:tomesd:ratio=0.5,max_downsample=1` -> tomesd.apply_patch (token merging in the self-attention of
  the transformer blocks at the given downsampling levels).
Each peer is attached around one pipeline call and removed in `finally`, whatever happens.
"""
from __future__ import annotations

import contextlib
import time

import numpy as np
import torch

PEERS = {
    "deepcache": {"cache_interval": int, "cache_branch_id": int},
    "tomesd": {"ratio": float, "max_downsample": int, "sx": int, "sy": int, "use_rand": lambda v: v.lower() == "true"},
}


def parse_peer(spec: str) -> tuple[str, dict]:
    """'peer:deepcache:cache_interval=3' -> ("deepcache", {"cache_interval": 3}); checks the peer imports."""
    parts = spec.split(":", 2)
    if len(parts) < 2 or parts[0] != "peer" or parts[1] not in PEERS:
        raise ValueError(f"peer spec must be peer:<{'|'.join(PEERS)}>:key=value,..., got {spec!r}")
    name, kwargs = parts[1], {}
    for item in filter(None, (p.strip() for p in (parts[2] if len(parts) > 2 else "").split(","))):
        key, eq, value = item.partition("=")
        if not eq or key not in PEERS[name]:
            raise ValueError(f"peer {name}: unknown parameter {item!r}; known: {', '.join(PEERS[name])}")
        try:
            kwargs[key] = PEERS[name][key](value)
        except ValueError:
            raise ValueError(f"peer {name}: bad value {item!r}") from None
    _module(name)
    return name, kwargs


def _module(name: str):
    try:
        if name == "deepcache":
            from DeepCache import DeepCacheSDHelper

            return DeepCacheSDHelper
        import tomesd

        return tomesd
    except ImportError:
        raise ValueError(f"peer {name} is not installed: pip install --no-deps -r requirements-peers.txt") from None


@contextlib.contextmanager
def attached(pipe, name: str, kwargs: dict):
    """The peer patched into `pipe` for the duration of the block."""
    if name == "deepcache":
        helper = _module("deepcache")(pipe=pipe)
        helper.set_params(**kwargs)
        # DeepCache's disable() puts the original bound methods back as instance attributes; our UNet seam
        # (rightly) refuses a UNet whose forward is an instance attribute, so remove what it added.
        wrapped_before = {id(m) for m in pipe.unet.modules() if "forward" in m.__dict__}
        helper.enable()
        try:
            yield
        finally:
            helper.disable()
            for m in pipe.unet.modules():
                if "forward" in m.__dict__ and id(m) not in wrapped_before:
                    del m.__dict__["forward"]
    else:
        tomesd = _module("tomesd")
        tomesd.apply_patch(pipe, **kwargs)
        try:
            yield
        finally:
            tomesd.remove_patch(pipe)


def run_peer(pipe, config, specs: tuple[str, ...]) -> tuple[np.ndarray, float, dict]:
    """One generation with the peer(s) attached: (images uint8 (B, H, W, 3), seconds, counters)."""
    from analysis.run import _pipe_kwargs, _to_uint8

    peers = [parse_peer(s) for s in specs if s.startswith("peer:")]
    with contextlib.ExitStack() as stack:
        for name, kwargs in peers:
            stack.enter_context(attached(pipe, name, kwargs))
        start = time.perf_counter()
        with torch.inference_mode():
            images = pipe(**_pipe_kwargs(pipe, config, config.steps)).images
        seconds = time.perf_counter() - start
    return _to_uint8(images), seconds, {name: dict(kwargs) for name, kwargs in peers}
