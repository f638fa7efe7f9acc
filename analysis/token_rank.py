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

Without the N x N map (issue 20: at 512 px an SD 1.5 first-block map is 4,096 x 4,096 per head, and
materialising it costs the fused attention kernel's whole advantage). Both start from the call's Q and K
(batch * heads, N, head_dim), so the attention output itself can stay on the fused kernel:
- `gwpr_streamed`: the same power iteration, exactly, with A recomputed chunk by chunk of queries at every
  iteration (x^T A = sum over query chunks), so no more than `budget_bytes` of map exists at once. It is
  exact but not cheap: `iterations` times the QK^T + softmax work. It buys memory, not time.
- `gwpr_pooled`: a documented approximation (our reading, not the paper's). Q and K are average-pooled over
  `pool` x `pool` cells of the token grid, the iteration runs on the pooled map (pool^4 times smaller),
  then one last damped vote from the pooled queries onto every full-resolution key gives each token its own
  score. Cost about (1 / pool^4 + 1 / pool^2) of one explicit map. benchmarks/gwpr_approx.py measures its
  ranking against the exact one (top-k overlap of the kept set, Spearman).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

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
    _check_parameters(probs.shape[0], heads, iterations, damping, head_reduce)
    rows, n, _ = probs.shape
    compute_dtype = probs.dtype if probs.is_floating_point() else torch.float32
    a = probs.to(compute_dtype)
    # x = N * s: starts at 1, and x <- (1 - d) + d * x^T A  (x^T A is A^T s as a row vector, no transpose).
    x = torch.ones(rows, 1, n, dtype=compute_dtype, device=probs.device)
    teleport = x.new_full((1, 1, 1), 1.0 - damping)
    for _ in range(iterations):
        x = torch.baddbmm(teleport, x, a, beta=1.0, alpha=damping)
    return _reduce_heads(x, heads, head_reduce)


def _check_qk(query: torch.Tensor, key: torch.Tensor, heads: int, iterations: int, damping: float,
              head_reduce: str) -> None:
    if query.ndim != 3 or query.shape != key.shape:
        raise ValueError(f"gwpr needs self-attention Q and K of one shape (batch*heads, N, d), got "
                         f"{tuple(query.shape)} and {tuple(key.shape)}")
    _check_parameters(query.shape[0], heads, iterations, damping, head_reduce)


def _check_parameters(rows: int, heads: int, iterations: int, damping: float, head_reduce: str) -> None:
    if heads < 1 or rows % heads:
        raise ValueError(f"gwpr: {rows} attention rows are not a multiple of heads={heads}")
    if iterations < 0:
        raise ValueError(f"gwpr: iterations must be non-negative, got {iterations}")
    if not 0.0 <= damping <= 1.0:
        raise ValueError(f"gwpr: damping must be between 0 and 1, got {damping}")
    if head_reduce not in HEAD_REDUCTIONS:
        raise ValueError(f"gwpr: head_reduce must be one of {', '.join(HEAD_REDUCTIONS)}, got {head_reduce!r}")


def _softmax_rows(query: torch.Tensor, key: torch.Tensor, scale: float) -> torch.Tensor:
    """softmax(Q K^T * scale) in float32, as diffusers' `get_attention_scores` with upcast."""
    return torch.softmax(torch.bmm(query.float(), key.float().transpose(1, 2)) * scale, dim=-1)


def gwpr_streamed(query: torch.Tensor, key: torch.Tensor, heads: int, scale: float, iterations: int = 5,
                  damping: float = 0.85, head_reduce: str = "mean", budget_bytes: int = 64 * 2**20) -> torch.Tensor:
    """G-WPR of `gwpr`, equal to it up to float rounding, never holding more than `budget_bytes` of the map.
    query, key: (batch * heads, N, head_dim), batch-major rows. Returns (batch, N) float32, rows sum to 1."""
    _check_qk(query, key, heads, iterations, damping, head_reduce)
    rows, n, _ = query.shape
    chunk = max(1, min(n, budget_bytes // max(1, rows * n * 4)))
    x = torch.ones(rows, 1, n, dtype=torch.float32, device=query.device)
    for _ in range(iterations):
        voted = x.new_full((rows, 1, n), 1.0 - damping)
        for start in range(0, n, chunk):
            a = _softmax_rows(query[:, start:start + chunk], key, scale)
            voted = torch.baddbmm(voted, x[:, :, start:start + chunk], a, alpha=damping)
        x = voted
    return _reduce_heads(x, heads, head_reduce)


def gwpr_pooled(query: torch.Tensor, key: torch.Tensor, heads: int, scale: float, grid: tuple[int, int],
                pool: int = 2, iterations: int = 5, damping: float = 0.85, head_reduce: str = "mean") -> torch.Tensor:
    """An approximation of `gwpr` on a `pool` x `pool` pooled token grid (see the module doc).
    grid: (h, w) of the N = h * w tokens, raster order. Returns (batch, N) float32, rows sum to 1."""
    _check_qk(query, key, heads, iterations, damping, head_reduce)
    rows, n, d = query.shape
    h, w = grid
    if h * w != n:
        raise ValueError(f"gwpr_pooled: grid {h}x{w} does not hold {n} tokens")
    if pool < 1:
        raise ValueError(f"gwpr_pooled: pool must be >= 1, got {pool}")

    def pooled(t: torch.Tensor) -> torch.Tensor:
        t = t.float().transpose(1, 2).reshape(rows, d, h, w)
        return F.avg_pool2d(t, pool, ceil_mode=True).flatten(2).transpose(1, 2)

    q_pooled = pooled(query)
    m = q_pooled.shape[1]
    a = _softmax_rows(q_pooled, pooled(key), scale)
    x = torch.ones(rows, 1, m, dtype=torch.float32, device=query.device)
    for _ in range(max(0, iterations - 1)):
        x = torch.baddbmm(x.new_full((1, 1, 1), 1.0 - damping), x, a, alpha=damping)
    # the last iteration: pooled queries vote on full-resolution keys; n / m keeps x's mean at 1
    votes = torch.bmm(x, _softmax_rows(q_pooled, key, scale)) * (n / m)
    return _reduce_heads((1.0 - damping) + damping * votes, heads, head_reduce)


def _reduce_heads(x: torch.Tensor, heads: int, head_reduce: str) -> torch.Tensor:
    """x: (batch * heads, 1, N) per-head scores -> (batch, N) float32 distributions."""
    rows, n = x.shape[0], x.shape[-1]
    scores = x.view(rows // heads, heads, n).float()
    if head_reduce == "mean":
        scores = scores.mean(dim=1)
    else:
        scores = scores.pow(2).mean(dim=1).sqrt()
    return scores / scores.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
