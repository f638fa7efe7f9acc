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

**Sets paired by prompt** (`PairedSets`). A sweep compares images of the *same* prompts (and seeds): an
accelerated image and its full-compute image, or two seeds of one prompt, are far more alike than two
independent draws, and the plain KID then comes out negative when nothing changed (the cross term gets more
same-prompt pairs than the within-set terms). The distributions being compared are over prompts, so
`PairedSets` estimates the MMD^2 from pairs of *different* prompts only, in all three terms: such pairs are
independent draws of the two marginals, so the estimate is unbiased (0 in expectation when the settings do
not differ), whatever the coupling within a prompt. With one image per prompt and no shared prompts it is
the plain KID.

**Intervals** (`estimate`, `paired_difference`, `bootstrap_mean`): resample prompts with replacement (every
image of a drawn prompt, in every set, comes along), recompute, take the 2.5 / 97.5 percentiles. Seeded, so
reproducible. A prompt drawn twice is still one prompt: its copies never pair with each other in KID.
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


def _mmd2(kxx, kyy, kxy, gx: np.ndarray, gy: np.ndarray, ix: np.ndarray, iy: np.ndarray) -> float:
    """MMD^2 from kernel matrices over the (possibly repeated) row indices ix, iy, averaging each term over
    the pairs whose groups differ (gx, gy: the group of each row; a group is a prompt, or a row alone)."""
    def mean_over_other_groups(k, g1, g2, i1, i2):
        keep = g1[i1][:, None] != g2[i2][None, :]
        return k[np.ix_(i1, i2)][keep].sum() / max(1, keep.sum())

    return float(mean_over_other_groups(kxx, gx, gx, ix, ix) + mean_over_other_groups(kyy, gy, gy, iy, iy)
                 - 2 * mean_over_other_groups(kxy, gx, gy, ix, iy))


def kid(x: np.ndarray, y: np.ndarray, degree: int = 3, coef: float = 1.0) -> float:
    """The plain unbiased KID of two independent samples (torchmetrics' estimator for equal sizes)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(x) < 2 or len(y) < 2:
        raise ValueError(f"KID needs at least 2 images per set, got {len(x)} and {len(y)}")
    gx, gy = np.arange(len(x)), -1 - np.arange(len(y))  # every row its own group; no pair excluded across sets
    return _mmd2(poly_kernel(x, x, degree, coef), poly_kernel(y, y, degree, coef), poly_kernel(x, y, degree, coef),
                 gx, gy, np.arange(len(x)), np.arange(len(y)))


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
    """Feature sets that share prompts: `sets[name]` is (n_i, d) with `prompts[name]` the prompt id of each row.
    Statistics between sets, and bootstrap draws that resample prompt ids for all sets at once."""

    def __init__(self, sets: dict[str, np.ndarray], prompts: dict[str, Sequence[int]]):
        self.sets = {k: np.asarray(v, dtype=np.float64) for k, v in sets.items()}
        self.groups = {k: np.asarray(prompts[k], dtype=int) for k in sets}
        self.rows = {k: {} for k in sets}
        for name, ids in prompts.items():
            for row, pid in enumerate(ids):
                self.rows[name].setdefault(int(pid), []).append(row)
        self.prompt_ids = sorted(set.intersection(*(set(r) for r in self.rows.values())))
        if not self.prompt_ids:
            raise ValueError("the sets share no prompt")
        self._kernels: dict[tuple[str, str], np.ndarray] = {}

    def _kernel(self, a: str, b: str) -> np.ndarray:
        if (a, b) not in self._kernels:
            self._kernels[(a, b)] = poly_kernel(self.sets[a], self.sets[b])
        return self._kernels[(a, b)]

    def indices(self, name: str, prompt_draw: Sequence[int]) -> np.ndarray:
        return np.array([row for pid in prompt_draw for row in self.rows[name][pid]], dtype=int)

    def statistic(self, kind: str, a: str, b: str, prompt_draw: Sequence[int] | None = None) -> float:
        draw = self.prompt_ids if prompt_draw is None else prompt_draw
        ia, ib = self.indices(a, draw), self.indices(b, draw)
        if kind == "fd":
            return frechet_distance(self.sets[a][ia], self.sets[b][ib])
        if kind == "kid":
            return _mmd2(self._kernel(a, a), self._kernel(b, b), self._kernel(a, b), self.groups[a], self.groups[b],
                         ia, ib)
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
    low, high = np.percentile(np.asarray(draws, dtype=float), [2.5, 97.5])
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
