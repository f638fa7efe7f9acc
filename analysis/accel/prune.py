"""Token pruning helpers for AT-EDM (analysis/accel/atedm.py): pick, gather, and restore tokens.

Tokens are really removed (`torch.gather` to a shorter sequence), so the layers that follow run on fewer
tokens; nothing is masked. Every batch row keeps the same number of tokens (its own best ones).

Recovery is AT-EDM's "similarity-based copy": every pruned token takes the value of its most similar kept
token, where similarity is the cosine similarity of the hidden states *at the pruning point* (the paper
does not publish its metric; cosine on the residual stream is the standard choice, as in ToMe). The
pairing is fixed when tokens are pruned, so restoring is one gather.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class Pruning:
    """The outcome of one pruning decision for a (batch, N, C) token sequence."""

    keep: torch.Tensor  # (batch, K) indices of kept tokens, ascending (raster order)
    source: torch.Tensor  # (batch, N) for every position, the index (into the kept list) it is restored from
    n_tokens: int


def plan(hidden_states: torch.Tensor, scores: torch.Tensor, n_prune: int) -> Pruning:
    """Keep the N - n_prune highest-scoring tokens of each row; pair each pruned token with its most similar
    (cosine) kept token. hidden_states: (B, N, C); scores: (B, N), higher = more important."""
    b, n, _ = hidden_states.shape
    order = scores.argsort(dim=1, descending=True, stable=True)
    keep = order[:, : n - n_prune].sort(dim=1).values
    pruned = order[:, n - n_prune :]
    kept_x = F.normalize(gather(hidden_states, keep).float(), dim=-1)
    pruned_x = F.normalize(gather(hidden_states, pruned).float(), dim=-1)
    nearest = torch.bmm(pruned_x, kept_x.transpose(1, 2)).argmax(dim=-1)  # (B, n_prune) into the kept list
    source = torch.empty(b, n, dtype=torch.long, device=hidden_states.device)
    source.scatter_(1, keep, torch.arange(n - n_prune, device=source.device).expand(b, -1))
    source.scatter_(1, pruned, nearest)
    return Pruning(keep=keep, source=source, n_tokens=n)


def gather(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x: (B, N, C), index: (B, K) -> (B, K, C)."""
    return x.gather(1, index.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def prune(x: torch.Tensor, p: Pruning) -> torch.Tensor:
    return gather(x, p.keep)


def restore(x: torch.Tensor, p: Pruning) -> torch.Tensor:
    """(B, K, C) kept tokens -> (B, N, C) full grid, pruned positions copied from their paired kept token."""
    return gather(x, p.source)
