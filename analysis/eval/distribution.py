"""Distances between image sets, FD and KID on feature vectors, with bootstrap intervals over prompts.

- **FD** (Fréchet distance, the statistic of FID; Heusel et al. 2017): ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^1/2)
  between Gaussians fitted to the two sets. Tr (S1 S2)^1/2 is computed exactly from the centred data: with
  S1 = A A^T / (m - 1) and S2 = B B^T / (n - 1), the eigenvalues of S1 S2 are the squared singular values of
  A^T B / sqrt((m - 1)(n - 1)), so the trace is their sum: an SVD of an m x n matrix instead of a d x d
  matrix square root, cheap enough for thousands of bootstrap draws. FD is biased upwards at small n (it is
  not 0 between two draws of one distribution); compare settings at equal n.
- **KID** (Bińkowski et al. 2018): the unbiased estimate of the squared MMD with the polynomial kernel
  k(x, y) = (x . y / d + 1)^3. Unbiased, so two draws of one distribution give values around 0 (negative
  ones too) and small sets are usable.
Both agree with torchmetrics' FrechetInceptionDistance / KernelInceptionDistance on the same features
(tests/test_judge_metrics.py); this file exists because a bootstrap needs the statistic on thousands of
resampled index sets, which is fast from precomputed kernels and centred data, and slow through a Metric.

**Sets paired by prompt** (`PairedSets`). A sweep compares images of the *same* prompts: each set is a
mixture over a fixed prompt list, with a few draws (seeds) per prompt, and an accelerated image is made from
the same seed as its full-compute image, so the two are far from independent. The plain U-statistic is then
biased (with two seeds per prompt, its within-set term counts same-prompt pairs half as often as two
independent draws from the mixture would meet them, while the cross term counts them fully: a negative KID
when nothing changed). `PairedSets` estimates the mixtures' MMD^2 from prompt-by-prompt block means: block
(p, q) is the mean kernel between the draws of prompt p in one set and of q in the other, leaving out a row
with itself and, across sets, two rows of the same unit (prompt and seed: the same draw made twice); every
block gets equal weight. Each block is then an unbiased mean of independent pairs, so the estimate is 0 in
expectation when the settings do not differ, and a wrong colour for a prompt shows (its cross block with the
prompt's references drops). With one draw per prompt the same-prompt blocks cannot be estimated and are left
out of all three terms (the MMD between the prompt-population marginals, which a swap can leave unchanged).

**Intervals** (`estimate`, `paired_difference`, `bootstrap_mean`): resample prompts with replacement (every
image of a drawn prompt, in every set, comes along), recompute, take the 2.5 / 97.5 percentiles. Seeded, so
reproducible. A prompt drawn twice counts twice, but its two copies are not a pair of each other (which would
double the weight of the same-prompt blocks, where a defect like a wrong colour shows, and bias the
resampled KID upwards). FD has
no such cure: a resample holds fewer distinct prompts, so FD's small-sample bias grows in it and the percentile
interval can lie above the estimate; FD is reported for comparison at equal n, decisions use KID and CLIP score.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

DEFAULT_BOOTSTRAP = 1000


def frechet_distance(x: np.ndarray, y: np.ndarray) -> float:
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    m, n = len(x), len(y)
    if m < 2 or n < 2:
        raise ValueError(f"a Fréchet distance needs at least 2 images per set, got {m} and {n}")
    a, b = x - x.mean(0), y - y.mean(0)
    trace_sqrt = np.linalg.svd(a @ b.T, compute_uv=False).sum() / np.sqrt((m - 1) * (n - 1))
    mean_term = np.sum((x.mean(0) - y.mean(0)) ** 2)
    return float(mean_term + (a * a).sum() / (m - 1) + (b * b).sum() / (n - 1) - 2 * trace_sqrt)


def poly_kernel(x: np.ndarray, y: np.ndarray, degree: int = 3, coef: float = 1.0) -> np.ndarray:
    return (np.asarray(x, np.float64) @ np.asarray(y, np.float64).T / x.shape[1] + coef) ** degree


def kid(x: np.ndarray, y: np.ndarray, degree: int = 3, coef: float = 1.0) -> float:
    """The plain unbiased KID of two independent samples (torchmetrics' estimator for equal sizes)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(x) < 2 or len(y) < 2:
        raise ValueError(f"KID needs at least 2 images per set, got {len(x)} and {len(y)}")
    kxx, kyy = poly_kernel(x, x, degree, coef), poly_kernel(y, y, degree, coef)
    m, n = len(x), len(y)
    return float((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
                 - 2 * poly_kernel(x, y, degree, coef).mean())


@dataclass(frozen=True)
class Estimate:
    value: float
    low: float
    high: float
    n: int  # images in the set
    n_prompts: int  # the bootstrap's resampling unit
    n_bootstrap: int

    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def as_dict(self) -> dict:
        return {"value": self.value, "low": self.low, "high": self.high, "n": self.n, "n_prompts": self.n_prompts,
                "n_bootstrap": self.n_bootstrap}


class PairedSets:
    """Feature sets that share prompts: `sets[name]` is (n_i, d), `prompts[name]` the prompt id of each row and
    `units[name]` (optional) its coupling key: rows of two sets with equal keys are one draw made twice (same
    prompt and seed) and never form a cross pair. Statistics between sets, and bootstrap draws that resample
    prompt ids for all sets at once."""

    def __init__(self, sets: dict[str, np.ndarray], prompts: dict[str, Sequence[int]],
                 units: dict[str, Sequence] | None = None):
        self.sets = {k: np.asarray(v, dtype=np.float64) for k, v in sets.items()}
        self.units = {k: list((units or {}).get(k) or [(k, i) for i in range(len(v))]) for k, v in sets.items()}
        self.rows = {k: {} for k in sets}
        for name, ids in prompts.items():
            for row, pid in enumerate(ids):
                self.rows[name].setdefault(int(pid), []).append(row)
        self.prompt_ids = sorted(set.intersection(*(set(r) for r in self.rows.values())))
        if not self.prompt_ids:
            raise ValueError("the sets share no prompt")
        position = {pid: i for i, pid in enumerate(self.prompt_ids)}
        self.membership = {}  # (rows, n_prompts) one-hot of each row's prompt (rows of other prompts: all 0)
        for name, ids in prompts.items():
            m = np.zeros((len(ids), len(self.prompt_ids)))
            for row, pid in enumerate(ids):
                if int(pid) in position:
                    m[row, position[int(pid)]] = 1.0
            self.membership[name] = m
        self._blocks: dict[tuple[str, str], np.ndarray] = {}

    def block_means(self, a: str, b: str) -> np.ndarray:
        """(n_prompts, n_prompts) mean kernel between prompt p's rows of `a` and prompt q's rows of `b`, over
        pairs of different draws; NaN where no such pair exists (one draw of a prompt, against itself)."""
        if (a, b) not in self._blocks:
            kernel = poly_kernel(self.sets[a], self.sets[b])
            ua, ub = self.units[a], self.units[b]
            allowed = np.array([[x != y for y in ub] for x in ua], dtype=float)
            ma, mb = self.membership[a], self.membership[b]
            sums, counts = ma.T @ (kernel * allowed) @ mb, ma.T @ allowed @ mb
            with np.errstate(invalid="ignore", divide="ignore"):
                self._blocks[(a, b)] = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
        return self._blocks[(a, b)]

    def _kid(self, a: str, b: str, weights: np.ndarray) -> float:
        blocks = [self.block_means(a, a), self.block_means(b, b), self.block_means(a, b)]
        valid = ~np.any([np.isnan(x) for x in blocks], axis=0)
        # a prompt drawn c times counts c times, but its copies are not pairs of each other: the same-prompt
        # blocks keep their share of the sample's pairs (1/n), as in the estimate itself
        pair_weights = np.outer(weights, weights)
        np.fill_diagonal(pair_weights, weights)
        pair_weights = pair_weights * valid
        total = pair_weights.sum()
        if total == 0:  # a resample of a single prompt with one draw each: no pair to compare
            return float("nan")
        aa, bb, ab = (float((np.nan_to_num(x) * pair_weights).sum() / total) for x in blocks)
        return aa + bb - 2 * ab

    def indices(self, name: str, prompt_draw: Sequence[int]) -> np.ndarray:
        return np.array([row for pid in prompt_draw for row in self.rows[name][pid]], dtype=int)

    def statistic(self, kind: str, a: str, b: str, prompt_draw: Sequence[int] | None = None) -> float:
        draw = self.prompt_ids if prompt_draw is None else prompt_draw
        if kind == "fd":
            return frechet_distance(self.sets[a][self.indices(a, draw)], self.sets[b][self.indices(b, draw)])
        if kind == "kid":
            position = {pid: i for i, pid in enumerate(self.prompt_ids)}
            weights = np.bincount([position[int(p)] for p in draw], minlength=len(self.prompt_ids)).astype(float)
            return self._kid(a, b, weights)
        raise ValueError(f"unknown statistic {kind!r} (fd or kid)")

    def draws(self, n_bootstrap: int, seed: int) -> np.ndarray:
        rng = np.random.default_rng(seed)
        ids = np.array(self.prompt_ids)
        return ids[rng.integers(0, len(ids), size=(n_bootstrap, len(ids)))]

    def estimate(self, kind: str, a: str, b: str, n_bootstrap: int = DEFAULT_BOOTSTRAP, seed: int = 0) -> Estimate:
        values = [self.statistic(kind, a, b, d) for d in self.draws(n_bootstrap, seed)]
        return _estimate(self.statistic(kind, a, b), values, len(self.indices(a, self.prompt_ids)),
                         len(self.prompt_ids), n_bootstrap)

    def paired_difference(self, kind: str, a: str, b: str, reference: str, n_bootstrap: int = DEFAULT_BOOTSTRAP,
                          seed: int = 0) -> Estimate:
        """stat(a, reference) - stat(b, reference), on the same prompt draws; an interval that excludes 0
        says a and b differ."""
        def diff(draw=None):
            return self.statistic(kind, a, reference, draw) - self.statistic(kind, b, reference, draw)

        values = [diff(d) for d in self.draws(n_bootstrap, seed)]
        return _estimate(diff(), values, len(self.indices(a, self.prompt_ids)), len(self.prompt_ids), n_bootstrap)


def _estimate(value: float, draws: Sequence[float], n: int, n_prompts: int, n_bootstrap: int) -> Estimate:
    draws = np.asarray(draws, dtype=float)
    draws = draws[np.isfinite(draws)]  # resamples where the statistic is undefined (see _kid) are left out
    low, high = np.percentile(draws, [2.5, 97.5]) if len(draws) else (float("nan"), float("nan"))
    return Estimate(float(value), float(low), float(high), n, n_prompts, n_bootstrap)


def bootstrap_mean(values: Sequence[float], prompt_ids: Sequence[int], n_bootstrap: int = DEFAULT_BOOTSTRAP,
                   seed: int = 0) -> Estimate:
    """Mean of per-image values (e.g. CLIP score) with a bootstrap interval over prompts."""
    return _per_prompt_bootstrap(values, prompt_ids, n_bootstrap, seed)


def bootstrap_mean_difference(a: Sequence[float], b: Sequence[float], prompt_ids: Sequence[int],
                              n_bootstrap: int = DEFAULT_BOOTSTRAP, seed: int = 0) -> Estimate:
    """mean(a) - mean(b) for per-image values paired row by row (same prompt and seed)."""
    return _per_prompt_bootstrap(np.asarray(a, float) - np.asarray(b, float), prompt_ids, n_bootstrap, seed)


def _per_prompt_bootstrap(values, prompt_ids, n_bootstrap: int, seed: int) -> Estimate:
    values, ids = np.asarray(values, dtype=float), np.asarray(prompt_ids)
    unique = np.unique(ids)
    sums = np.array([values[ids == p].sum() for p in unique])
    counts = np.array([(ids == p).sum() for p in unique])
    rng = np.random.default_rng(seed)
    draw = rng.integers(0, len(unique), size=(n_bootstrap, len(unique)))
    means = sums[draw].sum(1) / counts[draw].sum(1)
    return _estimate(float(values.mean()), means, len(values), len(unique), n_bootstrap)
