"""FD, KID and the bootstrap (analysis/eval/distribution.py): the math against torchmetrics, and the
properties the intervals rely on. No judge weights needed."""
import numpy as np
import pytest
import torch

from analysis.eval import distribution


class _Features(torch.nn.Module):
    """A torchmetrics feature extractor whose 'images' already are the feature vectors."""

    def __init__(self, d):
        super().__init__()
        self.num_features = d

    def forward(self, x):
        return x.double()


def _sets(seed=0, n=50, d=16, shift=0.3):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)), rng.normal(shift, 1.2, size=(n, d))


def test_fd_matches_torchmetrics():
    from torchmetrics.image.fid import FrechetInceptionDistance

    x, y = _sets()
    fid = FrechetInceptionDistance(feature=_Features(x.shape[1]))
    fid.update(torch.from_numpy(y), real=True)
    fid.update(torch.from_numpy(x), real=False)
    assert distribution.frechet_distance(x, y) == pytest.approx(float(fid.compute()), rel=1e-6)


def test_fd_with_fewer_images_than_dimensions_matches_torchmetrics():
    from torchmetrics.image.fid import FrechetInceptionDistance

    x, y = _sets(n=12, d=40)  # rank-deficient covariances, as with a sweep's 60 images in 64 dimensions
    fid = FrechetInceptionDistance(feature=_Features(40))
    fid.update(torch.from_numpy(y), real=True)
    fid.update(torch.from_numpy(x), real=False)
    assert distribution.frechet_distance(x, y) == pytest.approx(float(fid.compute()), rel=1e-4)


def test_kid_matches_torchmetrics():
    from torchmetrics.image.kid import KernelInceptionDistance

    x, y = _sets()
    kid = KernelInceptionDistance(feature=_Features(x.shape[1]), subsets=1, subset_size=len(x))
    kid.update(torch.from_numpy(y), real=True)
    kid.update(torch.from_numpy(x), real=False)
    mean, _ = kid.compute()
    assert distribution.kid(x, y) == pytest.approx(float(mean), rel=1e-6)


def test_identical_sets():
    x, _ = _sets()
    assert distribution.frechet_distance(x, x) == pytest.approx(0.0, abs=1e-9)
    # the unbiased KID of a set against itself is -O(1/n), not exactly 0
    assert abs(distribution.kid(x, x)) < 0.05 * distribution.kid(*_sets(shift=1.0))


def test_distances_grow_with_the_shift():
    fds = [distribution.frechet_distance(*_sets(shift=s)) for s in (0.0, 0.5, 1.0)]
    kids = [distribution.kid(*_sets(shift=s)) for s in (0.0, 0.5, 1.0)]
    assert fds == sorted(fds) and kids == sorted(kids)


def test_input_checks():
    with pytest.raises(ValueError, match="at least 2"):
        distribution.frechet_distance(np.zeros((1, 3)), np.zeros((4, 3)))
    with pytest.raises(ValueError, match="at least 2"):
        distribution.kid(np.zeros((1, 3)), np.zeros((4, 3)))
    with pytest.raises(ValueError, match="share no prompt"):
        distribution.PairedSets({"a": np.zeros((2, 3)), "b": np.zeros((2, 3))}, {"a": [0, 1], "b": [2, 3]})


def _paired(shift=0.0, seed=0, prompts=30, per=2, d=8):
    rng = np.random.default_rng(seed)
    ids = [p for p in range(prompts) for _ in range(per)]
    centres = rng.normal(size=(prompts, d))  # images of one prompt are alike, as generations are
    a = centres[ids] + 0.3 * rng.normal(size=(len(ids), d))
    b = centres[ids] + 0.3 * rng.normal(size=(len(ids), d)) + shift
    return distribution.PairedSets({"a": a, "b": b}, {"a": ids, "b": ids})


def test_bootstrap_is_seeded_and_reproducible():
    p = _paired(shift=0.5)
    one, two = p.estimate("kid", "a", "b", 200, seed=3), p.estimate("kid", "a", "b", 200, seed=3)
    assert one == two
    assert p.estimate("kid", "a", "b", 200, seed=4) != one
    assert one.low <= one.value <= one.high and one.n == 60 and one.n_prompts == 30


def test_kid_interval_of_two_draws_of_one_distribution_holds_zero_and_a_shift_excludes_it():
    assert not _paired(shift=0.0).estimate("kid", "a", "b", 300).excludes_zero()
    assert _paired(shift=0.5).estimate("kid", "a", "b", 300).low > 0


def test_paired_difference_of_a_setting_with_itself_is_exactly_zero():
    p = _paired(shift=0.4)
    est = p.paired_difference("kid", "b", "b", "a", 100)
    assert est.value == est.low == est.high == 0.0


def test_bootstrap_mean_and_difference():
    ids = [p for p in range(20) for _ in range(2)]
    values = np.arange(40, dtype=float)
    est = distribution.bootstrap_mean(values, ids, 500, seed=1)
    assert est.value == pytest.approx(19.5) and est.low < 19.5 < est.high
    same = distribution.bootstrap_mean_difference(values, values, ids, 100)
    assert same.value == same.low == same.high == 0.0
    better = distribution.bootstrap_mean_difference(values + 1.0, values, ids, 100)
    assert better.low == pytest.approx(1.0) and better.excludes_zero()
