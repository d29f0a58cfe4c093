"""Rank agreement: Spearman / Kendall against hand-computed values and scipy, strata, and the
bootstrap against distributions whose spread is known."""
import numpy as np
import pytest
import scipy.stats

from ddmetrics.rank_agreement import agreement_study, bootstrap, kendall, ranks, spearman, stratified


def test_ranks_give_ties_their_average_rank():
    assert ranks([10, 20, 20, 5]).tolist() == [2.0, 3.5, 3.5, 1.0]


def test_spearman_and_kendall_with_ties_against_hand_computation():
    x = [1, 2, 2, 3]
    y = [1, 3, 2, 4]
    # ranks x: 1, 2.5, 2.5, 4 (centred -1.5, 0, 0, 1.5); ranks y: 1, 3, 2, 4 (centred -1.5, .5, -.5, 1.5)
    # rho = (2.25 + 0 + 0 + 2.25) / sqrt(4.5 * 5) = 4.5 / sqrt(22.5)
    assert spearman(x, y) == pytest.approx(4.5 / np.sqrt(22.5), abs=1e-15)
    # pairs: (1,2)+ (1,3)+ (1,4)+ (2,3) tie in x (2,4)+ (3,4)+: C=5, D=0, P=6, Tx=1, Ty=0
    assert kendall(x, y) == pytest.approx(5 / np.sqrt(5 * 6), abs=1e-15)


def test_against_scipy_on_random_data_with_ties():
    rng = np.random.default_rng(0)
    for _ in range(20):
        x = rng.integers(0, 5, 30).astype(float)   # many ties
        y = x + rng.integers(-3, 4, 30)
        assert spearman(x, y) == pytest.approx(scipy.stats.spearmanr(x, y).statistic, abs=1e-12)
        assert kendall(x, y) == pytest.approx(scipy.stats.kendalltau(x, y).statistic, abs=1e-12)


def test_constant_or_tiny_inputs_give_none():
    assert spearman([1, 1, 1], [1, 2, 3]) is None and kendall([1, 2, 3], [4, 4, 4]) is None
    assert spearman([1], [2]) is None


def test_strata_compare_only_within_a_stratum():
    # within each stratum x and y agree perfectly; across strata they disagree
    x = [1, 2, 3, 11, 12, 13]
    y = [10, 11, 12, 0, 1, 2]
    strata = [1, 1, 1, 10, 10, 10]
    assert spearman(x, y) < 0 and kendall(x, y) < 0
    assert stratified(x, y, strata, "spearman") == pytest.approx(1.0)
    assert stratified(x, y, strata, "kendall") == pytest.approx(1.0)
    # a weighted mean of the strata's rho: 3 sets at +1, 4 sets at -1
    x2 = [1, 2, 3, 1, 2, 3, 4]
    y2 = [1, 2, 3, 4, 3, 2, 1]
    assert stratified(x2, y2, [0, 0, 0, 1, 1, 1, 1], "spearman") == pytest.approx((3 - 4) / 7)
    # constant within one stratum: the other stratum's value, or None when every stratum must vary
    x3 = [5, 5, 5, 1, 2, 3, 4]
    assert stratified(x3, y2, [0, 0, 0, 1, 1, 1, 1], "spearman") == pytest.approx(-1.0)
    assert stratified(x3, y2, [0, 0, 0, 1, 1, 1, 1], "spearman", every_stratum=True) is None


def test_bad_input_is_refused_by_name():
    with pytest.raises(ValueError, match="same length"):
        spearman([1, 2], [1, 2, 3])
    with pytest.raises(ValueError, match="method"):
        stratified([1, 2], [1, 2], None, "pearson")
    with pytest.raises(ValueError, match=r"runs\[1\]"):
        bootstrap(lambda i, a: a.mean(), [[0.5], []])
    with pytest.raises(ValueError, match="distances\\['d'\\]"):
        agreement_study({"d": [1.0, 2.0]}, [[0.1], [0.2], [0.3]])


def test_bootstrap_over_sets_matches_the_normal_interval_of_a_mean():
    # 400 sets, one run each, accuracies N(0, 1): the percentile interval of the mean is close to
    # mean +- 1.96 s / sqrt(n); 4000 resamples put the interval ends within ~3 % of that width
    rng = np.random.default_rng(1)
    acc = rng.standard_normal(400)
    out = bootstrap(lambda index, a: a.mean(), [[v] for v in acc], resamples=4000, seed=0)
    half = 1.96 * acc.std(ddof=1) / np.sqrt(len(acc))
    assert out["estimate"][0] == pytest.approx(acc.mean())
    assert out["low"][0] == pytest.approx(acc.mean() - half, abs=0.1 * half)
    assert out["high"][0] == pytest.approx(acc.mean() + half, abs=0.1 * half)


def test_bootstrap_over_runs_matches_the_normal_interval_of_a_mean():
    # one set with 400 runs: the runs are resampled, so the set's accuracy varies as a mean of 400
    rng = np.random.default_rng(2)
    runs = rng.standard_normal(400)
    out = bootstrap(lambda index, a: a[0], [runs], resamples=4000, seed=0)
    half = 1.96 * runs.std(ddof=1) / np.sqrt(len(runs))
    assert out["high"][0] - out["low"][0] == pytest.approx(2 * half, rel=0.1)


def test_bootstrap_keeps_strata_sizes():
    sizes = []
    bootstrap(lambda index, a: sizes.append(np.bincount(index // 3, minlength=2).tolist()) or 0.0,
              [[0.0]] * 6, strata=[0, 0, 0, 1, 1, 1], resamples=50, seed=0)
    assert all(s == [3, 3] for s in sizes)


def test_agreement_study_finds_the_predictive_distance():
    # accuracy falls with `good`; `noise` is unrelated: good agrees (near 1), its lead is detectable
    rng = np.random.default_rng(3)
    good = rng.uniform(0, 1, 60)
    runs = [[1.0 - g + 0.02 * rng.standard_normal() for _ in range(3)] for g in good]
    study = agreement_study({"good": good, "noise": rng.uniform(0, 1, 60)}, runs, resamples=300, seed=0)
    assert study["per_distance"]["good"]["spearman"]["estimate"] > 0.95
    assert abs(study["per_distance"]["noise"]["spearman"]["estimate"]) < 0.4
    vs = study["versus_best"]["spearman"]["noise"]
    assert vs["best"] == "good" and vs["low"] > 0
    # a distance that could not score a set leaves only that set out
    with_gap = good.copy()
    with_gap[0] = np.nan
    again = agreement_study({"good": with_gap}, runs, resamples=20, seed=0)
    assert again["per_distance"]["good"]["spearman"]["sets"] == 59
