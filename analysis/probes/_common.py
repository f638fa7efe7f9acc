"""Helpers shared by the probes: conditional rows, token grids, on-device downsampling, the latent size."""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from analysis.attention import AttentionPlugin, AttnCall, attention_probs
from analysis.clock import StepClock


def cond_slice(clock: StepClock, batch: int) -> slice:
    """Rows of a batch of `batch` samples that belong to the conditional branch of the current step.

    Decided from the batch actually seen (not only `clock.rows`), so a technique that changes the batch
    inside the UNet call does not make a probe slice the wrong rows:
    - a batch of 2 * n_prompts under guidance is [uncond; cond]: the second half;
    - a batch of n_prompts (T-GATE after its gate sends one half only) is kept whole;
    - a larger multiple is Faster-Diffusion's batched decoder (k steps stacked half-major,
      [uncond s0..sk; cond s0..sk], see analysis/accel/fastdiff.py RowLayout): the rows of the key step, i.e.
      the first n_prompts rows of the conditional half (guidance) or the first n_prompts rows (none). The
      other steps of that call are not observed (they are NaN in the signals, like the skipped encoder).
    """
    n = clock.n_prompts
    if n <= 0 or batch <= n:
        return slice(0, batch)
    if clock.guidance:
        if batch == 2 * n:
            return slice(n, batch)
        if batch % (2 * n) == 0:
            return slice(batch // 2, batch // 2 + n)
    elif batch % n == 0:
        return slice(0, n)
    return slice(0, batch)


def block_prefix(name: str) -> str:
    """'down_blocks.1.attentions.0.transformer_blocks.1.attn2' -> 'down_blocks.1.attentions.0' (the
    attention block, i.e. AT-EDM's pruning unit)."""
    return name.rsplit(".transformer_blocks.", 1)[0]


class LatentSize:
    """Seam interceptor that records the latent (H, W) of the current UNet call, so attention probes can lay
    a flat token axis back onto its 2-D grid."""

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


def stack_steps(per_step: dict[int, Any], steps: list[int], like: torch.Tensor) -> torch.Tensor:
    """Stack per-step tensors in `steps` order; a step with no entry (its call was skipped by a technique)
    becomes NaN."""
    rows = [per_step[s] if s in per_step else torch.full_like(like, float("nan")) for s in steps]
    return torch.stack(rows)


def cond_probs(call: AttnCall, clock: StepClock) -> torch.Tensor:
    """softmax(QK^T) of this call's conditional rows, (n_cond, heads, n_queries, n_keys), computed once per
    call and shared by every probe (kept in AttnCall.cond_probs; the call lives for one attention call).

    When the dispatcher already has probabilities for the call (a technique asked for them, or reused
    cached ones) those are sliced; otherwise only the conditional rows are computed, beside the original
    processor's output (half the work of the whole CFG batch). UNet attention in SD 1.x/2.x/SDXL is
    called without an attention mask, which is what this assumes.
    """
    if call.cond_probs is not None:
        return call.cond_probs
    heads = call.attn.heads
    full = call.probs
    if full is not None:
        batch = full.shape[0] // heads
        p = full.view(batch, heads, full.shape[1], full.shape[2])[cond_slice(clock, batch)]
    else:
        hs, ehs = call.hidden_states, call.encoder_hidden_states
        rows = cond_slice(clock, hs.shape[0])
        probs = attention_probs(call.attn, hs[rows], None if ehs is None else ehs[rows])
        p = probs.view(probs.shape[0] // heads, heads, probs.shape[1], probs.shape[2])
    call.cond_probs = p
    return p


class AttentionProbe(AttentionPlugin):
    """Base of the attention-probe handles (an AttentionPlugin, observer): registers on the shared
    dispatcher, starts the step clock, and unregisters in `detach()` (the dispatcher itself is removed by
    the run's ExitStack).

    Subclasses say which calls they need (`needs(call)`) and receive the conditional rows' probabilities
    (`observe(call, probs)`, probs: (n_cond, heads, n_queries, n_keys)) and the module output
    (`observe_output`). The probabilities are not requested through `wants_probs`, which would make the
    dispatcher compute them for the whole CFG batch: `wants_probs` only notes that this call needs them and
    `on_output` computes them for the conditional rows (once per call for all probes, see `cond_probs`).
    Where the dispatcher has probabilities anyway (another plug-in wanted them, or they were reused from a
    cache, so they are what the output was really computed with) those are used. A call whose output a
    technique replaced (T-GATE's cache) never reaches `wants_probs` and is not observed.
    """

    observer = True

    def _register(self, ctx) -> None:
        self.clock: StepClock = ctx.clock
        self.latent = attach_clock(ctx)
        self._seam = ctx.seam()
        self._pending: AttnCall | None = None
        self._full_tokens: dict[str, int] = {}  # attention block -> its token count in the current UNet call
        self._dispatcher = ctx.attention()
        self._dispatcher.add(self)

    # --- subclass interface --------------------------------------------------------------------------
    def needs(self, call: AttnCall) -> bool:
        return False

    def observe(self, call: AttnCall, probs: torch.Tensor) -> None:
        pass

    def observe_output(self, call: AttnCall, output: torch.Tensor) -> None:
        pass

    # --- dispatcher hooks (replace_output / reuse_probs: AttentionPlugin's no-ops) ----------------------
    def token_subset(self, call: AttnCall) -> bool:
        """Whether the call runs on a subset of its attention block's tokens (AT-EDM pruned the rest): its
        queries are not the block's spatial grid, so it is not observed (NaN in the signals; the pruned
        tokens themselves are the `atedm_pruning` signal). The grid is the query count of the block's first
        self-attention, which runs before any pruning in the same UNet call."""
        full = self._full_tokens.get(block_prefix(call.name))
        return full is not None and call.n_queries != full

    def _note_tokens(self, call: AttnCall) -> None:
        if call.name.endswith(".transformer_blocks.0.attn1"):
            self._full_tokens[block_prefix(call.name)] = call.n_queries

    def wants_probs(self, call: AttnCall) -> bool:
        self._note_tokens(call)
        if call.step < 0 or self.token_subset(call) or not self.needs(call):
            return False
        self._pending = call
        return call.reused  # reused probabilities cost nothing and are the ones actually used

    def on_output(self, call: AttnCall, output: torch.Tensor) -> None:
        self._note_tokens(call)  # a replaced call (T-GATE's cache) never reached wants_probs
        if self._pending is call:
            self._pending = None
            self.observe(call, cond_probs(call, self.clock))
        if not self.token_subset(call):
            self.observe_output(call, output)

    # --- handle --------------------------------------------------------------------------------------
    def detach(self) -> None:
        dispatcher = getattr(self, "_dispatcher", None)
        if dispatcher is not None and self in dispatcher.plugins:
            dispatcher.plugins.remove(self)
        self._dispatcher = None
        self._pending = None
        seam = getattr(self, "_seam", None)
        if seam is not None and self.latent in seam.interceptors:
            seam.interceptors.remove(self.latent)
        self._seam = None
        self._release()

    def _release(self) -> None:
        """Drop on-device state (previous-step tensors); collected signals stay."""

    def counters(self) -> dict[str, Any]:
        return {}
