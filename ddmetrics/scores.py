r"""DD-Ranking's scores of a synthetic set, and Student-t intervals over evaluation runs.

Pure functions of test accuracies (fractions in [0, 1], one value per evaluation run; runs
paired by seed: run ``r`` of every list used student seed ``seed + r`` and random subset
``seed + r``). Each score is computed per run and then averaged, as DD-Ranking does; the
interval is over those per-run values.

The four scores [1]_ compare trainings of a student (the evaluation protocol's model) on

- the synthetic set with the method's own evaluation (``syn``: hard or soft labels, with the
  protocol's augmentation), and with hard labels (``syn_hard``);
- a random real subset of the same size under the same evaluation (``random``);
- the full real training set with hard labels (``full_hard``);
- both sets again without augmentation (``syn_no_aug``, ``random_no_aug``).

.. math::

    \mathrm{HLR} = \mathrm{Acc}_\text{real-hard} - \mathrm{Acc}_\text{syn-hard}, \qquad
    \mathrm{IOR} = \mathrm{Acc}_\text{syn-any} - \mathrm{Acc}_\text{rdm-any},

    \alpha = w\,\mathrm{IOR} - (1 - w)\,\mathrm{HLR}, \qquad
    \mathrm{LRS} = \frac{e^{\alpha} - e^{-1}}{e - e^{-1}},

    \beta = w\,(\mathrm{Acc}_\text{syn-aug} - \mathrm{Acc}_\text{rdm-aug})
          + (1 - w)\,(\mathrm{Acc}_\text{syn-naug} - \mathrm{Acc}_\text{rdm-naug}), \qquad
    \mathrm{ARS} = \frac{e^{\beta} - e^{-1}}{e - e^{-1}},

with :math:`w \in [0, 1]` (0.5 on DD-Ranking's leaderboard). With accuracies as fractions,
HLR and IOR lie in [-1, 1], so :math:`\alpha, \beta \in [-1, 1]` and LRS, ARS in [0, 1]
(:math:`1/(e + 1) \approx 0.269` when :math:`\alpha = 0`). DD-Ranking's released code (v0.2.0,
``ddranking/metrics/soft_label.py``, ``aug_robust.py``) applies the same expressions to
percentages, where they leave [0, 1]; the definitions here are the stated ones
(``benchmarks/results/ddranking_crosscheck.md`` compares the two).

References
----------
.. [1] Z. Li et al. DD-Ranking: Rethinking the Evaluation of Dataset Distillation.
   arXiv:2505.13300, 2025; code github.com/NUS-HPC-AI-Lab/DD-Ranking (README, ``ddranking/metrics``).
"""
from __future__ import annotations

import math
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import numpy as np
from scipy import stats

__all__ = ["hard_label_recovery", "improvement_over_random", "label_robust_score", "augmentation_robust_score",
           "normalized_exp", "t_interval", "dd_ranking_scores"]

Accuracies = Union[Sequence[float], np.ndarray]


def _accuracies(name: str, values: Union[Accuracies, float]) -> np.ndarray:
    """``values`` as a 1-D float64 array of accuracies in [0, 1]; a clear error naming ``name`` otherwise."""
    if isinstance(values, (bool, str, bytes)) or values is None:
        raise TypeError(f"{name} must be a sequence of accuracies in [0, 1], got {type(values).__name__}")
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a sequence of accuracies in [0, 1], got {values!r}") from None
    arr = arr.reshape(-1) if arr.ndim == 0 else arr
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D sequence of accuracies, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)) or arr.min() < 0.0 or arr.max() > 1.0:
        raise ValueError(f"{name} must hold accuracies as fractions in [0, 1] (not percentages), got {arr.tolist()}")
    return arr


def _paired(**named: np.ndarray) -> None:
    """Refuse lists of different lengths: run ``r`` of each is paired with run ``r`` of the others."""
    lengths = {k: len(v) for k, v in named.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError("the accuracy lists are paired run by run and must have one length, got "
                         + ", ".join(f"{k}: {n}" for k, n in lengths.items()))


def _weight(name: str, w: float) -> float:
    if isinstance(w, bool) or not isinstance(w, (int, float)) or not 0.0 <= w <= 1.0:
        raise ValueError(f"{name} must be a number in [0, 1], got {w!r}")
    return float(w)


def normalized_exp(x: Union[float, np.ndarray]) -> np.ndarray:
    r""":math:`(e^{x} - e^{-1}) / (e - e^{-1})`: maps [-1, 1] increasingly onto [0, 1]."""
    return (np.exp(x) - math.exp(-1.0)) / (math.e - math.exp(-1.0))


def hard_label_recovery(full_hard: Union[float, Accuracies], syn_hard: Accuracies) -> np.ndarray:
    r"""Per-run :math:`\mathrm{HLR} = \mathrm{Acc}_\text{real-hard} - \mathrm{Acc}_\text{syn-hard}`.

    Parameters
    ----------
    full_hard : float or sequence of float
        Test accuracy of the model trained on the full training set with hard labels: one value
        (one full-data model, subtracted from every run) or one per run.
    syn_hard : sequence of float
        Per-run test accuracies of students trained on the synthetic set with hard labels.

    Returns
    -------
    ndarray, shape (runs,)
        In accuracy units (fractions; lower is better: the set recovers more of the full data).
    """
    syn_hard = _accuracies("syn_hard", syn_hard)
    full = _accuracies("full_hard", full_hard)
    if len(full) != 1:
        _paired(full_hard=full, syn_hard=syn_hard)
    return full - syn_hard


def improvement_over_random(syn: Accuracies, random: Accuracies) -> np.ndarray:
    r"""Per-run :math:`\mathrm{IOR} = \mathrm{Acc}_\text{syn-any} - \mathrm{Acc}_\text{rdm-any}`: the
    synthetic set against a same-size random real subset under the same evaluation (fractions)."""
    syn, random = _accuracies("syn", syn), _accuracies("random", random)
    _paired(syn=syn, random=random)
    return syn - random


def label_robust_score(full_hard: Union[float, Accuracies], syn_hard: Accuracies, syn: Accuracies,
                       random: Accuracies, w: float = 0.5) -> np.ndarray:
    r"""Per-run label-robust score
    :math:`\mathrm{LRS} = (e^{\alpha} - e^{-1}) / (e - e^{-1})`,
    :math:`\alpha = w\,\mathrm{IOR} - (1 - w)\,\mathrm{HLR}`.

    Parameters
    ----------
    full_hard, syn_hard
        As :func:`hard_label_recovery`.
    syn, random
        As :func:`improvement_over_random`.
    w : float
        In [0, 1]: the weight of IOR (``1 - w`` that of HLR); DD-Ranking's default 0.5.

    Returns
    -------
    ndarray, shape (runs,)
        In [0, 1]: 1 when IOR = 1 and HLR = -1 at once (w = 0.5), 0 at the other extreme.
    """
    w = _weight("w", w)
    hlr, ior = hard_label_recovery(full_hard, syn_hard), improvement_over_random(syn, random)
    _paired(syn_hard=hlr, syn=ior)
    return normalized_exp(w * ior - (1.0 - w) * hlr)


def augmentation_robust_score(syn_aug: Accuracies, random_aug: Accuracies, syn_no_aug: Accuracies,
                              random_no_aug: Accuracies, w: float = 0.5) -> np.ndarray:
    r"""Per-run augmentation-robust score :math:`\mathrm{ARS} = (e^{\beta} - e^{-1}) / (e - e^{-1})`.

    .. math::

        \beta = w\,(\mathrm{Acc}_\text{syn-aug} - \mathrm{Acc}_\text{rdm-aug})
              + (1 - w)\,(\mathrm{Acc}_\text{syn-naug} - \mathrm{Acc}_\text{rdm-naug})

    Parameters
    ----------
    syn_aug, random_aug : sequence of float
        The synthetic set and the random subset under the evaluation with its augmentation (the
        lists of IOR).
    syn_no_aug, random_no_aug : sequence of float
        The same two without augmentation (no per-image augmentation, no batch mixing).
    w : float
        In [0, 1]: the weight of the augmented difference (DD-Ranking's ``ars_lambda``, 0.5).

    Returns
    -------
    ndarray, shape (runs,), in [0, 1].
    """
    w = _weight("w", w)
    arrays = {k: _accuracies(k, v) for k, v in (("syn_aug", syn_aug), ("random_aug", random_aug),
                                                 ("syn_no_aug", syn_no_aug), ("random_no_aug", random_no_aug))}
    _paired(**arrays)
    beta = w * (arrays["syn_aug"] - arrays["random_aug"]) + (1.0 - w) * (arrays["syn_no_aug"] - arrays["random_no_aug"])
    return normalized_exp(beta)


def t_interval(values: Accuracies, confidence: float = 0.95) -> Tuple[float, Optional[float]]:
    r"""Mean and half-width of the Student-t confidence interval for the mean of ``values``.

    :math:`\bar x \pm t_{(1 + c)/2,\,n-1}\, s / \sqrt{n}` with :math:`s` the sample standard
    deviation (ddof 1): exact for independent normal values, the usual choice for a handful of
    evaluation runs. The half-width is ``None`` for a single value (no spread to estimate) and 0
    when all values are equal.
    """
    if isinstance(confidence, bool) or not isinstance(confidence, (int, float)) or not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be a number in (0, 1), got {confidence!r}")
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    if arr.size == 0 or not np.all(np.isfinite(arr)):
        raise ValueError(f"values must be a non-empty sequence of finite numbers, got {arr.tolist()}")
    mean = float(arr.mean())
    if arr.size == 1:
        return mean, None
    if np.all(arr == arr[0]):  # exactly no spread (the two-pass std leaves a rounding residue)
        return float(arr[0]), 0.0
    quantile = float(stats.t.ppf(0.5 + confidence / 2.0, df=arr.size - 1))
    return mean, quantile * float(arr.std(ddof=1)) / math.sqrt(arr.size)


def _summary(values: np.ndarray, confidence: float) -> Dict[str, Any]:
    mean, half = t_interval(values, confidence)
    return {"runs": [float(v) for v in values], "mean": mean, "half_width": half,
            "interval": None if half is None else [mean - half, mean + half]}


def dd_ranking_scores(full_hard: Union[float, Accuracies], syn_hard: Accuracies, syn: Accuracies, random: Accuracies,
                      syn_no_aug: Accuracies, random_no_aug: Accuracies, lrs_weight: float = 0.5,
                      ars_weight: float = 0.5, confidence: float = 0.95) -> Dict[str, Dict[str, Any]]:
    """HLR, IOR, LRS and ARS per run, their means and Student-t intervals (:func:`t_interval`).

    The arguments are the accuracy lists of :func:`label_robust_score` and
    :func:`augmentation_robust_score` (``syn`` / ``random`` are also the augmented lists of ARS).

    Returns
    -------
    dict
        ``{"hlr" | "ior" | "lrs" | "ars": {"runs", "mean", "half_width", "interval"}}`` (HLR and
        IOR in accuracy fractions, LRS and ARS in [0, 1]) and ``"settings"``: the two weights and
        the confidence level.
    """
    scores = {
        "hlr": hard_label_recovery(full_hard, syn_hard),
        "ior": improvement_over_random(syn, random),
        "lrs": label_robust_score(full_hard, syn_hard, syn, random, w=lrs_weight),
        "ars": augmentation_robust_score(syn, random, syn_no_aug, random_no_aug, w=ars_weight),
    }
    _paired(syn_hard=scores["hlr"], syn=scores["ior"], syn_no_aug=scores["ars"])
    out: Dict[str, Dict[str, Any]] = {k: _summary(v, confidence) for k, v in scores.items()}
    out["settings"] = {"lrs_weight": float(lrs_weight), "ars_weight": float(ars_weight), "confidence": confidence}
    return out
