r"""Does a distance rank synthetic sets as their students' accuracy does?

Rank correlations between a distance (one number per synthetic set) and the accuracy its
students reach, with bootstrap intervals over both sources of noise: which sets were made, and
which student seeds trained on them.

Definitions
-----------
Spearman's :math:`\rho` is Pearson's correlation of the ranks, ties given their average rank.
Kendall's :math:`\tau_b` counts concordant (:math:`C`) and discordant (:math:`D`) pairs,

.. math::

    \tau_b = \frac{C - D}{\sqrt{(P - T_x)(P - T_y)}},

with :math:`P` pairs in all, :math:`T_x` of them tied in :math:`x` and :math:`T_y` tied in
:math:`y` (both values coincide with ``scipy.stats.spearmanr`` / ``kendalltau``).

Strata (here: the images per class, IPC) keep sets of different sizes from being compared: a
larger set is more accurate *and* farther or nearer for reasons that have nothing to do with its
quality. The stratified :math:`\tau_b` counts only pairs within one stratum (:math:`C, D, P,
T_x, T_y` summed over strata); the stratified :math:`\rho` is the mean of the strata's
:math:`\rho`, weighted by their numbers of sets. A stratum with fewer than two sets, or constant
in either variable, adds nothing.

The bootstrap resamples, within each stratum, the sets with replacement and, for each drawn set,
its student runs with replacement (the set's accuracy is the mean of the drawn runs); the
percentile interval of the statistic over the resamples is reported. Statistics of several
distances computed on the *same* resamples give paired differences.

References
----------
.. [1] M. G. Kendall, "The treatment of ties in ranking problems", Biometrika 33 (1945).
.. [2] B. Efron and R. J. Tibshirani, *An Introduction to the Bootstrap*, Chapman & Hall (1993),
   ch. 13 (percentile intervals).
"""
from __future__ import annotations

from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

__all__ = ["ranks", "spearman", "kendall", "stratified", "bootstrap", "agreement_study"]

ArrayLike = Sequence[float]


def _pair(x: ArrayLike, y: ArrayLike, name_x: str = "x", name_y: str = "y") -> Tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.ndim != 1 or y.ndim != 1:
        raise ValueError(f"{name_x} and {name_y} must be 1-D, got shapes {x.shape} and {y.shape}")
    if len(x) != len(y):
        raise ValueError(f"{name_x} and {name_y} must have the same length, got {len(x)} and {len(y)}")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError(f"{name_x} and {name_y} must be finite")
    return x, y


def ranks(x: ArrayLike) -> np.ndarray:
    """Ranks 1..n of ``x``, tied values given the mean of the ranks they span."""
    x = np.asarray(x, dtype=np.float64)
    order = np.argsort(x, kind="mergesort")
    sorted_x = x[order]
    out = np.empty(len(x), dtype=np.float64)
    start = 0
    while start < len(x):
        stop = start + 1
        while stop < len(x) and sorted_x[stop] == sorted_x[start]:
            stop += 1
        out[order[start:stop]] = 0.5 * (start + stop - 1) + 1.0
        start = stop
    return out


def _spearman_parts(x: np.ndarray, y: np.ndarray) -> Optional[float]:
    if len(x) < 2:
        return None
    rx, ry = ranks(x) - (len(x) + 1) / 2.0, ranks(y) - (len(y) + 1) / 2.0
    den = np.sqrt((rx * rx).sum() * (ry * ry).sum())
    return None if den == 0 else float((rx * ry).sum() / den)


def _kendall_parts(x: np.ndarray, y: np.ndarray) -> Tuple[float, float, float, float]:
    """(C - D, P, T_x, T_y) over the pairs of one stratum (O(n²): strata hold tens of sets)."""
    dx = np.sign(x[:, None] - x[None, :])
    dy = np.sign(y[:, None] - y[None, :])
    upper = np.triu(np.ones((len(x), len(x)), dtype=bool), k=1)
    s = float((dx * dy)[upper].sum())
    pairs = float(upper.sum())
    return s, pairs, float((dx[upper] == 0).sum()), float((dy[upper] == 0).sum())


def spearman(x: ArrayLike, y: ArrayLike) -> Optional[float]:
    r"""Spearman's :math:`\rho` of ``x`` and ``y`` (average ranks for ties); ``None`` when either
    is constant or there are fewer than two values."""
    return _spearman_parts(*_pair(x, y))


def kendall(x: ArrayLike, y: ArrayLike) -> Optional[float]:
    r"""Kendall's :math:`\tau_b` of ``x`` and ``y``; ``None`` when either is constant or there are
    fewer than two values."""
    return stratified(x, y, None, "kendall")


def stratified(x: ArrayLike, y: ArrayLike, strata: Optional[Sequence] = None, method: str = "spearman",
               every_stratum: bool = False) -> Optional[float]:
    """Rank correlation of ``x`` and ``y`` within ``strata`` (see the module docstring); no strata:
    the plain correlation. ``method``: ``"spearman"`` or ``"kendall"``. ``every_stratum``: ``None``
    unless ``x`` varies within every stratum of two or more values (a distance that cannot tell the
    sets of one stratum apart, such as a covariance gap at one image per class, is not credited with
    the agreement of the others)."""
    x, y = _pair(x, y)
    if method not in ("spearman", "kendall"):
        raise ValueError(f"method must be 'spearman' or 'kendall', got {method!r}")
    labels = np.zeros(len(x), dtype=np.int64) if strata is None else np.unique(np.asarray(strata),
                                                                             return_inverse=True)[1].ravel()
    if len(labels) != len(x):
        raise ValueError(f"strata must have one entry per value, got {len(labels)} for {len(x)}")
    if every_stratum and any((labels == s).sum() >= 2 and np.ptp(x[labels == s]) == 0 for s in np.unique(labels)):
        return None
    if method == "spearman":
        total, weight = 0.0, 0
        for s in np.unique(labels):
            rho = _spearman_parts(x[labels == s], y[labels == s])
            if rho is not None:
                n = int((labels == s).sum())
                total, weight = total + n * rho, weight + n
        return None if weight == 0 else total / weight
    s_sum = pairs = tx = ty = 0.0
    for s in np.unique(labels):
        part = _kendall_parts(x[labels == s], y[labels == s])
        s_sum, pairs, tx, ty = s_sum + part[0], pairs + part[1], tx + part[2], ty + part[3]
    den = np.sqrt((pairs - tx) * (pairs - ty))
    return None if den == 0 else float(s_sum / den)


def _check_runs(runs: Sequence[ArrayLike]) -> List[np.ndarray]:
    out = [np.asarray(r, dtype=np.float64).ravel() for r in runs]
    for i, r in enumerate(out):
        if len(r) == 0 or not np.isfinite(r).all():
            raise ValueError(f"runs[{i}] must hold at least one finite accuracy, got {r.tolist()}")
    return out


def bootstrap(statistic: Callable[[np.ndarray, np.ndarray], np.ndarray], runs: Sequence[ArrayLike],
              strata: Optional[Sequence] = None, resamples: int = 2000, seed: int = 0,
              level: float = 0.95) -> Dict[str, np.ndarray]:
    """Bootstrap a statistic of the sets over sets (within strata) and over each set's runs.

    Parameters
    ----------
    statistic : callable
        ``statistic(index, accuracy) -> array``: ``index`` (int array) says which sets were drawn,
        ``accuracy`` holds each drawn set's mean accuracy over its drawn runs. Called once on the
        data as observed (``index = arange(n)``, every run) and once per resample.
    runs : sequence of 1-D arrays
        Per set, the accuracies of its student runs (seeds).
    strata : sequence, optional
        Per set, its stratum; sets are drawn within their stratum, so each resample keeps the
        strata's sizes.
    resamples, seed, level
        Number of resamples, the seed of the draws, the interval's coverage.

    Returns
    -------
    dict
        ``estimate`` (the statistic on the data), ``low`` / ``high`` (percentile interval),
        ``draws`` (resamples × statistic; ``nan`` where the statistic was undefined).
    """
    runs = _check_runs(runs)
    n = len(runs)
    if n == 0:
        raise ValueError("runs must hold at least one set")
    if not isinstance(resamples, int) or isinstance(resamples, bool) or resamples < 1:
        raise ValueError(f"resamples must be a positive integer, got {resamples!r}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    labels = np.zeros(n, dtype=np.int64) if strata is None else np.unique(np.asarray(strata), return_inverse=True)[1]
    if len(labels) != n:
        raise ValueError(f"strata must have one entry per set, got {len(labels)} for {n}")
    groups = [np.flatnonzero(labels == s) for s in np.unique(labels)]
    observed = np.atleast_1d(np.asarray(statistic(np.arange(n), np.array([r.mean() for r in runs])), dtype=float))
    rng = np.random.default_rng(seed)
    draws = np.empty((resamples, observed.size))
    lengths = np.array([len(r) for r in runs])
    # runs padded into one array: the draws of run indices below never reach the padding
    table = np.zeros((n, int(lengths.max())))
    for i, r in enumerate(runs):
        table[i, :len(r)] = r
    for b in range(resamples):
        index = np.concatenate([g[rng.integers(0, len(g), len(g))] for g in groups])
        picks = np.floor(rng.random((len(index), table.shape[1])) * lengths[index, None]).astype(np.int64)
        valid = np.arange(table.shape[1])[None, :] < lengths[index, None]
        acc = (table[index[:, None], picks] * valid).sum(1) / lengths[index]
        draws[b] = np.atleast_1d(np.asarray(statistic(index, acc), dtype=float))
    tail = 100.0 * (1.0 - level) / 2.0
    with np.errstate(all="ignore"):
        low, high = np.nanpercentile(draws, [tail, 100.0 - tail], axis=0) if np.isfinite(draws).any() else \
            (np.full(observed.size, np.nan), np.full(observed.size, np.nan))
    return {"estimate": observed, "low": np.asarray(low), "high": np.asarray(high), "draws": draws}


def agreement_study(distances: Mapping[str, ArrayLike], runs: Sequence[ArrayLike], strata: Optional[Sequence] = None,
                    resamples: int = 2000, seed: int = 0, level: float = 0.95) -> Dict[str, Dict]:
    """How well each distance ranks the sets as their accuracy does, with paired comparisons.

    The *agreement* of a distance is the rank correlation of its negative with accuracy (a nearer
    set should be a better one: 1 is perfect agreement, 0 none), Spearman and Kendall, stratified;
    undefined (``None``) for a distance constant within a stratum (``every_stratum``).

    Parameters
    ----------
    distances : dict
        ``{name: per-set values}``; ``nan`` marks a set the distance could not score (that set is
        left out of that distance's correlations, in the data and in every resample).
    runs, strata, resamples, seed, level
        As in :func:`bootstrap` (one set of resamples shared by every distance, so differences
        are paired).

    Returns
    -------
    dict
        ``per_distance[name][method] = {"estimate", "low", "high", "sets"}`` and
        ``versus_best[method][name] = {"best", "estimate", "low", "high"}``: the paired difference
        (best − name) of each distance to the one with the highest estimate.
    """
    names = list(distances)
    values = {k: np.asarray(distances[k], dtype=np.float64) for k in names}
    for k, v in values.items():
        if v.shape != (len(runs),):
            raise ValueError(f"distances[{k!r}] must hold one value per set ({len(runs)}), got shape {v.shape}")
    labels = np.zeros(len(runs), dtype=np.int64) if strata is None else np.asarray(strata)
    methods = ("spearman", "kendall")

    def statistic(index: np.ndarray, acc: np.ndarray) -> np.ndarray:
        out = []
        for k in names:
            d = values[k][index]
            ok = np.isfinite(d)
            for m in methods:
                r = stratified(-d[ok], acc[ok], labels[index][ok], m, every_stratum=True) if ok.sum() >= 2 else None
                out.append(np.nan if r is None else r)
        return np.array(out)

    boot = bootstrap(statistic, runs, strata, resamples, seed, level)
    est, draws = boot["estimate"], boot["draws"]
    tail = 100.0 * (1.0 - level) / 2.0
    per: Dict[str, Dict] = {}
    for i, k in enumerate(names):
        per[k] = {}
        for j, m in enumerate(methods):
            c = i * len(methods) + j
            per[k][m] = {"estimate": None if np.isnan(est[c]) else float(est[c]),
                         "low": None if np.isnan(boot["low"][c]) else float(boot["low"][c]),
                         "high": None if np.isnan(boot["high"][c]) else float(boot["high"][c]),
                         "sets": int(np.isfinite(values[k]).sum())}
    versus: Dict[str, Dict] = {}
    for j, m in enumerate(methods):
        cols = [i * len(methods) + j for i in range(len(names))]
        defined = [c for c in cols if not np.isnan(est[c])]
        if not defined:
            continue
        best = max(defined, key=lambda c: est[c])
        versus[m] = {}
        for i, c in zip(range(len(names)), cols):
            if np.isnan(est[c]):
                continue
            diff = draws[:, best] - draws[:, c]
            diff = diff[np.isfinite(diff)]
            low, high = (np.percentile(diff, [tail, 100 - tail]) if len(diff) else (np.nan, np.nan))
            versus[m][names[i]] = {"best": names[cols.index(best)], "estimate": float(est[best] - est[c]),
                                   "low": float(low), "high": float(high)}
    return {"per_distance": per, "versus_best": versus, "resamples": resamples, "level": level, "seed": seed}
