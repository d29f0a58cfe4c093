"""The permutation two-sample test against scipy.stats.permutation_test and its calibration."""
import numpy as np
import pytest
import scipy.stats
import torch

import ddmetrics as ddm


def _mean_gap(a, b):
    return float((np.mean(a) - np.mean(b)) ** 2)


def test_exact_test_matches_scipy_permutation_test():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=5), rng.normal(size=4) + 0.8
    # mmd with the linear kernel is the squared mean gap: the same statistic scipy is given
    ours = ddm.two_sample_test(torch.tensor(x)[:, None], torch.tensor(y)[:, None], "mmd",
                               loss_kwargs={"kernel": "linear"}, permutations=1000)
    ref = scipy.stats.permutation_test((x, y), _mean_gap, permutation_type="independent", vectorized=False,
                                       n_resamples=np.inf, alternative="greater")
    assert ours.exact and ours.permutations == 126 == len(ref.null_distribution)
    assert ours.statistic == pytest.approx(ref.statistic, rel=1e-12)
    assert ours.pvalue == pytest.approx(ref.pvalue, abs=1e-12)
    assert np.sort(ours.null) == pytest.approx(np.sort(ref.null_distribution), rel=1e-10)


def test_random_test_is_valid_and_detects_a_shift():
    gen = torch.Generator().manual_seed(0)
    same = [ddm.two_sample_test(torch.randn(15, 2, generator=gen), torch.randn(15, 2, generator=gen), "energy",
                                permutations=99, seed=s).pvalue for s in range(40)]
    # under H0 the p-value is uniform on {1/100, ..., 1}: P(p <= 0.1) = 0.1; 40 tests, binomial(40, 0.1) <= 12
    # with probability > 0.9999
    assert sum(p <= 0.1 for p in same) <= 12 and min(same) >= 1 / 100
    shifted = ddm.two_sample_test(torch.randn(30, 2, generator=gen), torch.randn(30, 2, generator=gen) + 1.5,
                                  "energy", permutations=99, seed=0)
    assert not shifted.exact and shifted.pvalue == pytest.approx(1 / 100)


def test_bad_arguments_are_refused_by_name():
    x, y = torch.randn(4, 2), torch.randn(4, 2)
    with pytest.raises(ValueError, match="permutations"):
        ddm.two_sample_test(x, y, "mmd", permutations=0)
    with pytest.raises(TypeError, match="loss must be"):
        ddm.two_sample_test(x, y, len)
    with pytest.raises(ValueError, match="loss_kwargs"):
        ddm.two_sample_test(x, y, ddm.get_loss("mmd"), loss_kwargs={"kernel": "linear"})
