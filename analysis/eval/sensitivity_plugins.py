"""The plug-ins of the sensitivity analysis (analysis/eval/sensitivity.py): every attention call computed
explicitly (`ExplicitConfig`, the common arithmetic of the reference and the perturbed runs), Gaussian noise on
one step's attention maps (`NoiseConfig`), and a copy of the latents after every step (`LatentRecorderConfig`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from analysis.attention import AttentionPlugin, AttnCall, attention_probs
from analysis.plugins import HandleBase


@dataclass(frozen=True)
class ExplicitConfig:
    """Every attention call computes softmax(QK^T) explicitly (no fused kernel): the common arithmetic of the
    reference and the perturbed runs."""

    name: ClassVar[str] = "explicit_attention"

    def attach(self, ctx) -> HandleBase:
        plugin = _Explicit()
        dispatcher = ctx.attention()
        dispatcher.add(plugin)
        handle = HandleBase()
        handle.detach = lambda: plugin in dispatcher.plugins and dispatcher.plugins.remove(plugin)
        return handle


class _Explicit(AttentionPlugin):
    observer = False

    def wants_probs(self, call: AttnCall) -> bool:
        return True


@dataclass(frozen=True)
class NoiseConfig:
    """Adds Gaussian noise of relative Frobenius size `relative` to every attention map at `step` only."""

    name: ClassVar[str] = "attention_noise"
    step: int
    relative: float = 0.05
    seed: int = 0

    def __post_init__(self):
        if self.step < 0 or not 0 < self.relative <= 10:
            raise ValueError(f"attention noise: need step >= 0 and 0 < relative <= 10, got {self.step}, {self.relative}")

    def attach(self, ctx) -> "_NoiseHandle":
        handle = _NoiseHandle(self)
        handle.dispatcher = ctx.attention()
        handle.dispatcher.add(handle)
        return handle


class _NoiseHandle(AttentionPlugin, HandleBase):
    observer = False

    def __init__(self, config: NoiseConfig):
        self.config = config
        self.generator = torch.Generator().manual_seed(config.seed)
        self.dispatcher = None
        self.perturbed = 0
        self.sizes: list[float] = []

    def reuse_probs(self, call: AttnCall) -> torch.Tensor | None:
        if call.step != self.config.step:
            return None
        probs = attention_probs(call.attn, call.hidden_states, call.encoder_hidden_states)
        noise = torch.randn(probs.shape, generator=self.generator, dtype=torch.float32).to(probs.dtype)
        noise = noise * (self.config.relative * probs.norm() / noise.norm())
        out = (probs + noise).clamp_min(0)
        out = out / out.sum(dim=-1, keepdim=True).clamp_min(1e-12)
        self.perturbed += 1
        self.sizes.append(float((out - probs).norm() / probs.norm()))
        return out

    def detach(self) -> None:
        if self.dispatcher is not None and self in self.dispatcher.plugins:
            self.dispatcher.plugins.remove(self)

    def counters(self) -> dict[str, Any]:
        return {"maps_perturbed": self.perturbed,
                "relative_size": float(np.mean(self.sizes)) if self.sizes else None}


@dataclass(frozen=True)
class LatentRecorderConfig:
    """Keeps a copy of the latents after every scheduler step (signal `latents`, (steps, ...) float32)."""

    name: ClassVar[str] = "latent_recorder"

    def attach(self, ctx) -> "_Recorder":
        rec = _Recorder()
        ctx.on_step_end(rec.record)
        return rec


class _Recorder(HandleBase):
    def __init__(self):
        self.latents: list[np.ndarray] = []

    def record(self, step_index: int, timestep: float, latents: torch.Tensor) -> None:
        self.latents.append(latents.detach().to(torch.float32).cpu().numpy().copy())

    def signals(self) -> dict[str, Any]:
        return {"latents": np.stack(self.latents)} if self.latents else {}
