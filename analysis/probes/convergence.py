"""Cross-attention convergence (probe "cross_attn_convergence"), T-GATE's measurement (Liu et al., TMLR 2025).

For every cross-attention module (attn2) and step t >= 1: the L2 distance between step t and step t-1 of
- `output_l2`: the module's output after `to_out` (what T-GATE calls the cross-attention "map" and caches), and
- `probs_l2`: the head-averaged probability map softmax(QK^T) (what the UI shows),
on the conditional rows only (the second half of a [uncond; cond] batch; the whole batch when there is no
CFG half, e.g. after T-GATE's gate), one norm per prompt, averaged over prompts. Only the previous step's
tensors are kept per layer (on the device); the distances stay on the device as scalars until the run ends,
so the probe adds no device-host synchronisation inside the loop.

What is recorded when a technique serves a call from a cache (T-GATE after its gate): the probe sees the
cached tensor as the call's output, so `output_l2` is recorded, and it is exactly 0 from the second cached
step on (the same tensor again); at the first cached step it is the distance between the cache (T-GATE's
mean of the uncond and cond outputs of the gate step) and that step's conditional output. No probabilities
are computed for a cached call, so `probs_l2` is NaN at a cached step and at the step after it (no
previous map). NaN also marks any step whose previous step was not observed (columns start at step 1).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from analysis.attention import AttnCall
from analysis.probes._common import AttentionProbe, cond_slice


@dataclass(frozen=True)
class ConvergenceConfig:
    name: ClassVar[str] = "cross_attn_convergence"
    probs: bool = True  # also measure the probability maps (needs explicit cross-attention probabilities)

    def __post_init__(self):
        if not isinstance(self.probs, bool):
            raise ValueError(f"cross_attn_convergence: probs must be true or false, got {self.probs!r}")

    def attach(self, ctx) -> "ConvergenceProbe":
        return ConvergenceProbe(self, ctx)


def _distance(cur: torch.Tensor, prev: torch.Tensor) -> torch.Tensor:
    """Mean over prompts of ||cur - prev||_2 (one norm per prompt row), float32 0-d tensor."""
    return (cur.float() - prev.float()).flatten(1).norm(dim=1).mean()


class ConvergenceProbe(AttentionProbe):
    def __init__(self, config: ConvergenceConfig, ctx):
        self.config = config
        self.layers: list[str] = []
        self._prev_out: dict[str, tuple[int, torch.Tensor]] = {}
        self._prev_probs: dict[str, tuple[int, torch.Tensor]] = {}
        self._out_d: dict[tuple[str, int], torch.Tensor] = {}
        self._probs_d: dict[tuple[str, int], torch.Tensor] = {}
        self._register(ctx)

    def needs(self, call: AttnCall) -> bool:
        return self.config.probs and call.is_cross

    def observe(self, call: AttnCall, p: torch.Tensor) -> None:
        self._record(call, p.mean(dim=1), self._prev_probs, self._probs_d)

    def observe_output(self, call: AttnCall, output: torch.Tensor) -> None:
        if not call.is_cross or call.step < 0 or not torch.is_tensor(output):
            return
        if call.name not in self._prev_out and call.name not in self.layers:
            self.layers.append(call.name)
        cur = output[cond_slice(self.clock, output.shape[0])].detach().clone()
        self._record(call, cur, self._prev_out, self._out_d)

    def _record(self, call: AttnCall, cur: torch.Tensor, prev: dict, dist: dict) -> None:
        step = call.step
        before = prev.get(call.name)
        if before is not None and before[0] == step - 1 and before[1].shape == cur.shape:
            dist[(call.name, step)] = _distance(cur, before[1])
        prev[call.name] = (step, cur)

    def _matrix(self, dist: dict, steps: list[int]) -> np.ndarray:
        out = np.full((len(self.layers), len(steps)), np.nan, dtype=np.float32)
        keys = list(dist)
        if keys:
            values = torch.stack([dist[k] for k in keys]).cpu().numpy()
            row = {name: i for i, name in enumerate(self.layers)}
            col = {s: j for j, s in enumerate(steps)}
            for (name, step), v in zip(keys, values):
                if name in row and step in col:
                    out[row[name], col[step]] = v
        return out

    def signals(self) -> dict[str, Any]:
        steps = list(range(1, self.clock.num_steps))
        return {
            "cross_attn_convergence": {
                "layers": list(self.layers),
                "steps": steps,
                "output_l2": self._matrix(self._out_d, steps),
                "probs_l2": self._matrix(self._probs_d, steps),
            }
        }

    def _release(self) -> None:
        self._prev_out.clear()
        self._prev_probs.clear()
