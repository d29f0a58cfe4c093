r"""Permutation two-sample test with any registered distance as the statistic.

Under :math:`H_0: \alpha = \beta` the labels "from x" / "from y" are exchangeable, so the
statistic :math:`T = \mathcal{L}(x, y)` of the observed split is compared with its value on
re-splits of the pooled sample into groups of sizes :math:`n` and :math:`m`:

.. math::

    p = \frac{\#\{\pi : T_\pi \ge T\} + \delta}{N + \delta}

over all :math:`N = \binom{n+m}{n}` splits (exact test, :math:`\delta = 0`; the observed split is
one of them) when there are at most ``permutations`` of them, else over ``permutations`` random
re-splits (:math:`\delta = 1`, the observed split counted once: a valid p-value). Ties within
a relative :math:`100\,\varepsilon` of :math:`T` count as :math:`\ge` (floating-point sums of the
same values in another order). These are ``scipy.stats.permutation_test``'s conventions
(``permutation_type="independent"``, ``alternative="greater"``).

References
----------
.. [1] A. Gretton, K. Borgwardt, M. Rasch, B. Schölkopf, A. Smola. A kernel two-sample test.
   JMLR 2012 (permutation null of the MMD).
.. [2] P. Good. *Permutation, Parametric, and Bootstrap Tests of Hypotheses*, Springer (2005).
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Union

import numpy as np
import torch
from torch import Tensor

from .losses.base import DistributionLoss, check_inputs, get_loss

__all__ = ["TwoSampleResult", "two_sample_test"]


@dataclass
class TwoSampleResult:
    """``statistic`` (the loss on the observed split), ``pvalue``, the ``null`` distribution (one
    value per split evaluated), its size ``permutations`` and whether the test was ``exact``."""

    statistic: float
    pvalue: float
    null: np.ndarray
    permutations: int
    exact: bool


def two_sample_test(x: Tensor, y: Tensor, loss: Union[str, DistributionLoss], permutations: int = 1000,
                    seed: int = 0, loss_kwargs: Optional[Dict[str, Any]] = None) -> TwoSampleResult:
    """Test :math:`H_0`: ``x`` and ``y`` are samples of one distribution (see the module docstring).

    Parameters
    ----------
    x, y : Tensor
        ``(n, d)`` and ``(m, d)`` samples (flattened beyond the first dimension, as every loss
        does); uniform weights.
    loss : str or DistributionLoss
        A registered name (a fresh instance, built with ``loss_kwargs``, for every split, so a
        seeded random loss such as ``sliced`` gives every split the same directions) or an
        instance (used as it is for every split: state it carries between calls, such as a
        warm-started critic, then changes with the order of the splits).
    permutations : int
        Random re-splits; when the splits number at most this, all of them are used (exact).
    seed : int
        Seed of the random re-splits.

    Returns
    -------
    TwoSampleResult
    """
    if not isinstance(permutations, int) or isinstance(permutations, bool) or permutations < 1:
        raise ValueError(f"permutations must be a positive integer, got {permutations!r}")
    if isinstance(loss, str):
        get_loss(loss, **(loss_kwargs or {}))  # an unknown name or setting fails before any work
        make: Callable[[], DistributionLoss] = lambda: get_loss(loss, **(loss_kwargs or {}))  # noqa: E731
    elif isinstance(loss, DistributionLoss):
        if loss_kwargs:
            raise ValueError("loss_kwargs applies to a loss given by name, not to an instance")
        make = lambda: loss  # noqa: E731
    else:
        raise TypeError(f"loss must be a registered name or a DistributionLoss, got {type(loss).__name__}")
    x, y, _, _ = check_inputs(x, y)
    n, m = len(x), len(y)
    pooled = torch.cat([x.detach(), y.detach()])

    def statistic(first: Tensor) -> float:
        mask = torch.zeros(n + m, dtype=torch.bool, device=pooled.device)
        mask[first] = True
        with torch.no_grad():
            return float(make()(pooled[mask], pooled[~mask]))

    observed = statistic(torch.arange(n))
    total = math.comb(n + m, n)
    exact = total <= permutations
    if exact:
        null = np.array([statistic(torch.tensor(c)) for c in itertools.combinations(range(n + m), n)])
    else:
        gen = torch.Generator().manual_seed(seed)
        null = np.array([statistic(torch.randperm(n + m, generator=gen)[:n].to(pooled.device))
                         for _ in range(permutations)])
    gamma = abs(100 * np.finfo(np.float64).eps * observed)
    count = int((null >= observed - gamma).sum())
    pvalue = count / len(null) if exact else (count + 1) / (len(null) + 1)
    return TwoSampleResult(statistic=observed, pvalue=float(pvalue), null=null, permutations=len(null), exact=exact)
