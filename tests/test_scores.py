"""DD-Ranking's scores (ddmetrics.scores) against hand computations of the paper's formulas, and the
Student-t interval against scipy and its known coverage."""
import math

import numpy as np
import pytest
from scipy import stats

from ddmetrics.scores import (augmentation_robust_score, dd_ranking_scores, hard_label_recovery,
                              improvement_over_random, label_robust_score, normalized_exp, t_interval)

# float64 arithmetic on numbers of order 1: a few ulps of 1.0
TOL = 1e-12


def test_hlr_and_ior_are_paired_differences():
    # one full-data model (a scalar) is subtracted from every run, as DD-Ranking's cached full accuracy is
    assert hard_label_recovery(0.9, [0.6, 0.7, 0.85]) == pytest.approx([0.3, 0.2, 0.05], abs=TOL)
    assert hard_label_recovery([0.9, 0.8], [0.6, 0.7]) == pytest.approx([0.3, 0.1], abs=TOL)
    assert improvement_over_random([0.70, 0.72], [0.65, 0.75]) == pytest.approx([0.05, -0.03], abs=TOL)


def test_lrs_by_hand():
    # HLR = 0.85 - 0.60 = 0.25, IOR = 0.70 - 0.65 = 0.05, alpha = 0.5 * 0.05 - 0.5 * 0.25 = -0.1,
    # LRS = (e^-0.1 - e^-1) / (e - e^-1) = (0.904837418 - 0.367879441) / (2.718281828 - 0.367879441)
    assert label_robust_score(0.85, [0.60], [0.70], [0.65]) == pytest.approx([0.22845363830836396], abs=TOL)


def test_ars_by_hand():
    # beta = 0.5 * (0.70 - 0.65) + 0.5 * (0.50 - 0.40) = 0.075; ARS = (e^0.075 - e^-1) / (e - e^-1)
    assert augmentation_robust_score([0.70], [0.65], [0.50], [0.40]) == pytest.approx([0.3020779393151249], abs=TOL)


def test_equal_accuracies_give_hlr_ior_zero_and_lrs_ars_one_over_e_plus_one():
    # alpha = beta = 0: (1 - e^-1) / (e - e^-1) = 1 / (e + 1) for every weight
    acc = [0.8, 0.8, 0.8]
    for w in (0.0, 0.3, 0.5, 1.0):
        assert label_robust_score(0.8, acc, acc, acc, w=w) == pytest.approx([1 / (math.e + 1)] * 3, abs=TOL)
        assert augmentation_robust_score(acc, acc, acc, acc, w=w) == pytest.approx([1 / (math.e + 1)] * 3, abs=TOL)
    assert np.all(hard_label_recovery(0.8, acc) == 0) and np.all(improvement_over_random(acc, acc) == 0)


def test_weights_zero_and_one_keep_one_term():
    # w = 1: alpha = IOR only (HLR = 0.25 ignored); w = 0: alpha = -HLR only (IOR = 0.05 ignored)
    assert label_robust_score(0.85, [0.6], [0.7], [0.65], w=1.0) == pytest.approx(normalized_exp(0.05), abs=TOL)
    assert label_robust_score(0.85, [0.6], [0.7], [0.65], w=0.0) == pytest.approx(normalized_exp(-0.25), abs=TOL)
    # ARS w = 1: the augmented difference only; w = 0: the one without augmentation only
    assert augmentation_robust_score([0.7], [0.65], [0.5], [0.4], w=1.0) == pytest.approx(normalized_exp(0.05))
    assert augmentation_robust_score([0.7], [0.65], [0.5], [0.4], w=0.0) == pytest.approx(normalized_exp(0.1))


def test_extremes_map_to_zero_and_one():
    # best case: the set beats the full data by 1 (HLR = -1) and random by 1 (IOR = 1): alpha = 1, LRS = 1
    assert label_robust_score(0.0, [1.0], [1.0], [0.0]) == pytest.approx([1.0], abs=TOL)
    # worst case: alpha = -1, LRS = 0
    assert label_robust_score(1.0, [0.0], [0.0], [1.0]) == pytest.approx([0.0], abs=TOL)
    assert augmentation_robust_score([0.0], [1.0], [0.0], [1.0]) == pytest.approx([0.0], abs=TOL)


@pytest.mark.parametrize("call,needle", [
    (lambda: hard_label_recovery(85.0, [60.0]), "fractions"),          # percentages, as DD-Ranking's code uses
    (lambda: improvement_over_random([0.7, 0.8], [0.6]), "one length"),
    (lambda: hard_label_recovery([0.9, 0.8, 0.7], [0.6, 0.7]), "one length"),
    (lambda: label_robust_score(0.9, [0.6], [0.7], [0.6], w=1.5), "w must be"),
    (lambda: augmentation_robust_score([0.7], [0.6], [0.5], [0.4], w=-0.1), "w must be"),
    (lambda: improvement_over_random([], []), "non-empty"),
    (lambda: improvement_over_random([float("nan")], [0.5]), "fractions"),
    (lambda: improvement_over_random("0.7", [0.5]), "sequence"),
])
def test_bad_input_is_refused_naming_it(call, needle):
    with pytest.raises((ValueError, TypeError), match=needle):
        call()


def test_t_interval_matches_scipy_and_the_known_quantile():
    # t_{0.975, 2} = 4.3027 (tables); s = 0.05 for (0.9, 0.95, 1.0): 4.302652729749462 * 0.05 / sqrt(3)
    mean, half = t_interval([0.9, 0.95, 1.0])
    assert mean == pytest.approx(0.95, abs=TOL) and half == pytest.approx(0.12420688558751651, rel=1e-12)
    values = [0.91, 0.93, 0.90, 0.95, 0.92]
    low, high = stats.t.interval(0.9, df=4, loc=np.mean(values), scale=stats.sem(values))
    mean, half = t_interval(values, confidence=0.9)
    assert (mean - half, mean + half) == pytest.approx((low, high), rel=1e-12)


def test_t_interval_degenerate_cases():
    assert t_interval([0.7]) == (0.7, None)          # one run: no spread to estimate
    assert t_interval([0.7, 0.7, 0.7]) == (pytest.approx(0.7), 0.0)
    with pytest.raises(ValueError, match="confidence"):
        t_interval([0.7, 0.8], confidence=95)


def test_t_interval_covers_the_mean_95_percent_of_the_time():
    # 4000 samples of 5 normal draws: coverage 0.95 up to 3 binomial standard errors (3 * 0.0034)
    rng = np.random.default_rng(0)
    samples = rng.normal(0.7, 0.02, size=(4000, 5))
    covered = 0
    for row in samples:
        mean, half = t_interval(row)
        covered += abs(mean - 0.7) <= half
    assert abs(covered / 4000 - 0.95) < 3 * math.sqrt(0.95 * 0.05 / 4000)


def test_dd_ranking_scores_are_per_run_then_averaged():
    full, syn_hard = 0.9, [0.6, 0.7, 0.65]
    syn, rdm, syn_naug, rdm_naug = [0.8, 0.78, 0.82], [0.7, 0.74, 0.71], [0.6, 0.62, 0.61], [0.5, 0.55, 0.52]
    out = dd_ranking_scores(full, syn_hard, syn, rdm, syn_naug, rdm_naug, lrs_weight=0.3, ars_weight=0.7)
    per_run_lrs = [normalized_exp(0.3 * (s - r) - 0.7 * (full - h)) for s, r, h in zip(syn, rdm, syn_hard)]
    per_run_ars = [normalized_exp(0.7 * (a - b) + 0.3 * (c - d)) for a, b, c, d in zip(syn, rdm, syn_naug, rdm_naug)]
    assert out["lrs"]["runs"] == pytest.approx(per_run_lrs, abs=TOL)
    assert out["ars"]["runs"] == pytest.approx(per_run_ars, abs=TOL)
    # the mean of the per-run LRS (DD-Ranking's aggregation), not the LRS of the mean accuracies
    assert out["lrs"]["mean"] == pytest.approx(np.mean(per_run_lrs), abs=TOL)
    assert out["lrs"]["mean"] != pytest.approx(float(label_robust_score(full, [np.mean(syn_hard)], [np.mean(syn)],
                                                                        [np.mean(rdm)], w=0.3)[0]), abs=1e-9)
    mean, half = t_interval(per_run_ars)
    assert out["ars"]["interval"] == pytest.approx([mean - half, mean + half], abs=TOL)
    assert out["settings"] == {"lrs_weight": 0.3, "ars_weight": 0.7, "confidence": 0.95}


def test_scores_match_ddranking_0_2_0_on_its_recorded_outputs():
    # benchmarks/ddranking_crosscheck.py ran ddranking's released compute_metrics on fixed accuracy lists (in
    # its own environment: it cannot be installed beside ours); its per-run outputs, fed fractions, are the reference
    import json
    import os

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", "results",
                        "ddranking_crosscheck.json")
    with open(path, encoding="utf-8") as fh:
        record = json.load(fh)
    assert record["ddranking"] == "0.2.0" and len(record["cases"]) >= 5
    for entry in record["cases"]:
        case, theirs = entry["case"], entry["ddranking_fractions"]
        ours = dd_ranking_scores(case["full"], case["syn_hard"], case["syn"], case["rdm"], case["syn_naug"],
                                 case["rdm_naug"], lrs_weight=case["w"], ars_weight=case["gamma"])
        for key in ("hlr", "ior", "lrs", "ars"):
            assert ours[key]["runs"] == pytest.approx(theirs[key], abs=TOL), (case["name"], key)
