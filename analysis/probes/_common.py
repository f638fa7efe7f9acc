"""Helpers shared by the probes: conditional rows, token grids, on-device downsampling, the latent size."""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from analysis.clock import StepClock


def cond_slice(clock: StepClock, batch: int) -> slice:
    """Rows of a batch of `batch` samples that belong to the conditional branch.

    Decided from the batch actually seen (not only `clock.rows`), so a technique that drops the CFG half
    inside the UNet call (T-GATE after its gate) does not make a probe slice the wrong rows: a batch of
    2 * n_prompts under guidance is [uncond; cond], any other batch is kept whole.
    """
    n = clock.n_prompts
    if clock.guidance and batch == 2 * n:
        return slice(n, batch)
    return slice(0, batch)


class LatentSize:
    """Seam interceptor that records the latent (H, W) and batch of the current UNet call, so attention
    probes can lay a flat token axis back onto its 2-D grid. Innermost when attached after techniques."""

    def __init__(self) -> None:
        self.hw: tuple[int, int] | None = None

    def __call__(self, call_next, sample, timestep, encoder_hidden_states, *args, **kwargs):
        self.hw = (int(sample.shape[-2]), int(sample.shape[-1]))
        return call_next(sample, timestep, encoder_hidden_states, *args, **kwargs)


def attach_clock(ctx) -> LatentSize:
    """Make sure the UNet seam (which advances the step clock) is attached, and record the latent size."""
    tracker = LatentSize()
    ctx.seam().interceptors.append(tracker)
    return tracker


def token_grid(n_tokens: int, latent_hw: tuple[int, int] | None) -> tuple[int, int]:
    """(h, w) of an attention layer with `n_tokens` queries in a UNet whose latent is `latent_hw`:
    the level k with ceil(H / 2^k) * ceil(W / 2^k) == n_tokens (UNet downsamplers round up)."""
    if latent_hw is not None:
        h, w = latent_hw
        for _ in range(12):
            if h * w == n_tokens:
                return h, w
            if h * w < n_tokens:
                break
            h, w = math.ceil(h / 2), math.ceil(w / 2)
    side = math.isqrt(n_tokens)
    if side * side == n_tokens:
        return side, side
    return 1, n_tokens


def pool(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Adaptive average pooling over the last two dims of x (any leading dims)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    lead = x.shape[:-2]
    y = x.reshape(-1, 1, *x.shape[-2:])
    if y.device.type == "cpu" and y.dtype in (torch.float16, torch.bfloat16):
        y = y.float()
    y = F.adaptive_avg_pool2d(y, size)
    return y.reshape(*lead, *size).to(x.dtype)


def halve(size: tuple[int, int], minimum: int) -> tuple[int, int]:
    """Half the resolution, not below `minimum` per side (sides already below it stay)."""
    return tuple(max(min(minimum, d), (d + 1) // 2) for d in size)  # type: ignore[return-value]


def to_cpu16(x: torch.Tensor) -> torch.Tensor:
    return x.detach().to(dtype=torch.float16).to("cpu")


def stack_steps(per_step: dict[int, Any], steps: list[int], like: torch.Tensor) -> torch.Tensor:
    """Stack per-step tensors in `steps` order; a step with no entry (its call was skipped by a technique)
    becomes NaN."""
    rows = [per_step[s] if s in per_step else torch.full_like(like, float("nan")) for s in steps]
    return torch.stack(rows)


class AttentionProbe:
    """Mixin for attention-probe handles: registers on the shared dispatcher, starts the step clock, and
    unregisters in `detach()` (the dispatcher itself is removed by the run's ExitStack)."""

    observer = True

    def _register(self, ctx) -> None:
        self.clock: StepClock = ctx.clock
        self.latent = attach_clock(ctx)
        self._seam = ctx.seam()
        self._dispatcher = ctx.attention()
        self._dispatcher.add(self)

    def detach(self) -> None:
        dispatcher = getattr(self, "_dispatcher", None)
        if dispatcher is not None and self in dispatcher.plugins:
            dispatcher.plugins.remove(self)
        self._dispatcher = None
        seam = getattr(self, "_seam", None)
        if seam is not None and self.latent in seam.interceptors:
            seam.interceptors.remove(self.latent)
        self._seam = None
        self._release()

    def _release(self) -> None:
        """Drop on-device state (previous-step tensors); collected signals stay."""

    def counters(self) -> dict[str, Any]:
        return {}
