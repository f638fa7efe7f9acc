"""The plug-in protocol shared by probes (analysis/probes) and techniques (analysis/accel).

A plug-in is a frozen `Config` dataclass (defaults from the paper, validated in `__post_init__`) with
`attach(ctx: RunContext) -> handle`. The handle owns the plug-in's state for one run and has
`detach()` (restore the pipeline exactly), `counters()` (work actually skipped; techniques) and
`signals()` (plain numpy/python data; probes). `generate()` enters every handle into one ExitStack, so
an exception, a cancel or Ctrl-C can never leave a hook behind.

Plug-ins never call `set_attn_processor` or patch `unet.forward` themselves: they register on the shared
`ctx.attention()` dispatcher, `ctx.seam()` UNet-call seam, or `ctx.on_step_end(fn)`.
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Protocol

import torch

from analysis.attention import AttentionDispatcher
from analysis.clock import StepClock, UNetSeam

StepEndFn = Callable[[int, float, torch.Tensor], "torch.Tensor | None"]


class Handle(Protocol):
    def detach(self) -> None: ...
    def counters(self) -> dict[str, Any]: ...
    def signals(self) -> dict[str, Any]: ...


class RunContext:
    """Everything a plug-in may attach to during one generation. Shared hooks are installed lazily, once,
    and removed by the run's ExitStack."""

    def __init__(self, pipe, clock: StepClock, stack: contextlib.ExitStack, layer_profile: dict | None = None):
        self.pipe, self.clock, self.stack = pipe, clock, stack
        # analysis/accel/layer_profile.py: per-layer costs at this run's size, when a config asked for layers=auto
        self.layer_profile = layer_profile
        self._attention: AttentionDispatcher | None = None
        self._seam: UNetSeam | None = None
        self.step_end_fns: list[StepEndFn] = []

    @property
    def unet(self) -> torch.nn.Module:
        return self.pipe.unet

    def attention(self) -> AttentionDispatcher:
        if self._attention is None:
            self.seam()  # the seam advances the clock that every attention plug-in reads
            self._attention = AttentionDispatcher(self.unet, self.clock).attach()
            self.stack.callback(self._attention.detach)
        return self._attention

    def seam(self) -> UNetSeam:
        if self._seam is None:
            self._seam = UNetSeam(self.unet, self.clock).attach()
            self.stack.callback(self._seam.detach)
        return self._seam

    def on_step_end(self, fn: StepEndFn) -> None:
        """fn(step_index, timestep, latents) after each scheduler step; it may return replacement latents."""
        self.step_end_fns.append(fn)

    def step_end_callback(self, pipe, step_index: int, timestep, callback_kwargs: dict) -> dict:
        """For diffusers' `callback_on_step_end`."""
        latents = callback_kwargs["latents"]
        for fn in self.step_end_fns:
            new = fn(step_index, float(timestep), latents)
            if new is not None:
                latents = new
        return {"latents": latents}


class HandleBase:
    """Convenience base for handles: no counters, no signals, nothing to detach."""

    def detach(self) -> None:
        pass

    def counters(self) -> dict[str, Any]:
        return {}

    def signals(self) -> dict[str, Any]:
        return {}
