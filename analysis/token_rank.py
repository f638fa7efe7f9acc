"""G-WPR token importance (AT-EDM, CVPR 2024), shared by the `token_rank` probe and the AT-EDM pruning.

The AT-EDM paper's exact G-WPR formula is not public (no code was released), so this is a documented
reading of the paper (README, "Techniques"); `damping`, `iterations` and `head_reduce` are the alternatives,
as parameters. This module implements the Weighted-PageRank reading of it, the
WPR of the same first author's Zero-TPrune generalised with damping:

- each head's self-attention map A (rows = queries, columns = keys, row-stochastic: every query's
  probabilities sum to 1) is the adjacency matrix of a weighted directed graph in which query i "votes"
  for key j with weight A[i, j];
- a token is important when important tokens attend to it: start from the uniform distribution
  s0 = 1/N and iterate  s <- (1 - damping)/N + damping * A^T s  for `iterations` steps (PageRank with
  teleportation; damping = 0.85 is PageRank's classic value, 5 iterations keeps it cheap);
- heads are combined by the mean of their score distributions (`head_reduce="mean"`), or by their root
  mean square (`"rms"`, Zero-TPrune's "emphasise informative regions" reading), then renormalised.

Because A is row-stochastic, every iteration preserves sum(s) = 1, so the result is a probability
distribution over tokens per batch row. It is vectorised over batch and heads (one `bmm` per iteration,
no Python loop over heads), costs `iterations` matrix-vector products per head, and is deterministic.
The iteration runs on N*s (mean 1) rather than s, so half-precision maps with thousands of tokens do not
underflow; the final normalisation is done in float32.

The signature is a contract: AT-EDM pruning (analysis/accel/atedm.py) imports exactly this function.
"""
from __future__ import annotations

import torch

HEAD_REDUCTIONS = ("mean", "rms")


def gwpr(
    probs: torch.Tensor, heads: int, iterations: int = 5, damping: float = 0.85, head_reduce: str = "mean"
) -> torch.Tensor:
    """G-WPR importance of every token.

    probs: (batch * heads, N, N) self-attention probabilities, rows ordered batch-major as produced by
    diffusers' `head_to_batch_dim` (row b * heads + h is batch b, head h).
    Returns a float32 tensor (batch, N) on probs' device; each row sums to 1.
    """
    if probs.ndim != 3 or probs.shape[1] != probs.shape[2]:
        raise ValueError(f"gwpr needs square self-attention maps (batch*heads, N, N), got shape {tuple(probs.shape)}")
    if heads < 1 or probs.shape[0] % heads:
        raise ValueError(f"gwpr: {probs.shape[0]} attention rows are not a multiple of heads={heads}")
    if iterations < 0:
        raise ValueError(f"gwpr: iterations must be non-negative, got {iterations}")
    if not 0.0 <= damping <= 1.0:
        raise ValueError(f"gwpr: damping must be between 0 and 1, got {damping}")
    if head_reduce not in HEAD_REDUCTIONS:
        raise ValueError(f"gwpr: head_reduce must be one of {', '.join(HEAD_REDUCTIONS)}, got {head_reduce!r}")
    rows, n, _ = probs.shape
    compute_dtype = probs.dtype if probs.is_floating_point() else torch.float32
    a = probs.to(compute_dtype)
    # x = N * s: starts at 1, and x <- (1 - d) + d * x^T A  (x^T A is A^T s as a row vector, no transpose).
    x = torch.ones(rows, 1, n, dtype=compute_dtype, device=probs.device)
    teleport = x.new_full((1, 1, 1), 1.0 - damping)
    for _ in range(iterations):
        x = torch.baddbmm(teleport, x, a, beta=1.0, alpha=damping)
    scores = x.view(rows // heads, heads, n).float()
    if head_reduce == "mean":
        scores = scores.mean(dim=1)
    else:
        scores = scores.pow(2).mean(dim=1).sqrt()
    return scores / scores.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
