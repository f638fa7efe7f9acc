"""Token importance (probe "token_rank"): G-WPR scores of every self-attention layer (attn1), per step, on
the conditional rows, laid out on the layer's spatial grid. The scores are those AT-EDM prunes by
(analysis.token_rank.gwpr, the same function), so the UI shows which tokens a pruning ratio would drop.
Scores stay on the device (a few KB per call) until the run ends.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from analysis.attention import AttnCall
from analysis.probes._common import AttentionProbe, stack_steps, token_grid
from analysis.token_rank import HEAD_REDUCTIONS, gwpr


@dataclass(frozen=True)
class TokenRankConfig:
    name: ClassVar[str] = "token_rank"
    iterations: int = 5
    damping: float = 0.85
    head_reduce: str = "mean"  # "mean" | "rms"
    steps: tuple[int, ...] = ()  # steps to score; empty = every step

    def __post_init__(self):
        if isinstance(self.iterations, bool) or not isinstance(self.iterations, int) or not 1 <= self.iterations <= 100:
            raise ValueError(f"token_rank: iterations must be an integer between 1 and 100, got {self.iterations!r}")
        if not isinstance(self.damping, (int, float)) or not 0.0 <= self.damping <= 1.0:
            raise ValueError(f"token_rank: damping must be between 0 and 1, got {self.damping!r}")
        if self.head_reduce not in HEAD_REDUCTIONS:
            raise ValueError(f"token_rank: head_reduce must be one of {', '.join(HEAD_REDUCTIONS)}, got {self.head_reduce!r}")
        steps = tuple(self.steps)
        if any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in steps):
            raise ValueError(f"token_rank: steps must be non-negative step indices, got {self.steps!r}")
        object.__setattr__(self, "steps", tuple(sorted(set(steps))))

    def attach(self, ctx) -> "TokenRankProbe":
        return TokenRankProbe(self, ctx)


class TokenRankProbe(AttentionProbe):
    def __init__(self, config: TokenRankConfig, ctx):
        self.config = config
        self._steps = set(config.steps)
        self.scores: dict[str, dict[int, torch.Tensor]] = {}
        self.seen_steps: set[int] = set()
        self._register(ctx)

    def needs(self, call: AttnCall) -> bool:
        return not call.is_cross and (not self._steps or call.step in self._steps)

    def observe(self, call: AttnCall, p: torch.Tensor) -> None:
        prompts, heads, n, _ = p.shape
        scores = gwpr(p.reshape(prompts * heads, n, n), heads, self.config.iterations, self.config.damping,
                      self.config.head_reduce)
        h, w = token_grid(n, self.latent.hw)
        self.scores.setdefault(call.name, {})[call.step] = scores.reshape(prompts, h, w)
        self.seen_steps.add(call.step)

    def signals(self) -> dict[str, Any]:
        steps = sorted(self.seen_steps)
        out = {}
        for name, per_step in self.scores.items():
            like = next(iter(per_step.values()))
            out[name] = stack_steps(per_step, steps, like).float().cpu().numpy()
        return {
            "token_rank": {
                "layers": list(self.scores),
                "steps": steps,
                "scores": out,
                "params": {"iterations": self.config.iterations, "damping": float(self.config.damping),
                           "head_reduce": self.config.head_reduce},
            }
        }
