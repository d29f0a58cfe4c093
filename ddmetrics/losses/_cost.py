"""Pairwise ground costs shared by the backends."""
from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor


def squared_distances(x: Tensor, y: Tensor) -> Tensor:
    r"""Matrix of :math:`\|x_i - y_j\|^2`, shape ``(n, m)``, clamped at zero; for batched
    ``(B, n, d)`` / ``(B, m, d)`` clouds one matrix per problem, ``(B, n, m)``.

    Uses the expansion :math:`\|x\|^2 + \|y\|^2 - 2 x^\top y` (one matmul, O(nm) memory),
    the same formula as ``ot.dist``.
    """
    d2 = (x * x).sum(-1, keepdim=True) + (y * y).sum(-1).unsqueeze(-2) - 2.0 * (x @ y.mT)
    return d2.clamp_min(0.0)


def safe_sqrt(d2: Tensor) -> Tensor:
    r""":math:`\sqrt{d^2}` of non-negative ``d2``, with a zero (not NaN) gradient where ``d2`` is zero."""
    positive = d2 > 0
    # sqrt has an infinite derivative at 0: evaluate it only where it is safe.
    return torch.where(positive, d2.where(positive, torch.ones_like(d2)).sqrt(), torch.zeros_like(d2))


def distances(x: Tensor, y: Tensor) -> Tensor:
    r"""Matrix of :math:`\|x_i - y_j\|`, with a zero (not NaN) gradient where the distance is zero."""
    return safe_sqrt(squared_distances(x, y))


def ground_cost(x: Tensor, y: Tensor, p: int) -> Tensor:
    r"""Cost matrix :math:`\|x_i - y_j\|^p` for ``p`` in {1, 2}."""
    return squared_distances(x, y) if p == 2 else distances(x, y)


def weighted_mean(x: Tensor, w: Tensor) -> Tensor:
    """``sum_i w_i x_i``: ``(d,)`` for ``x`` ``(n, d)``, ``w`` ``(n,)``; ``(B, d)`` for a batch."""
    return (w.unsqueeze(-2) @ x).squeeze(-2)


def quadratic_form(a: Tensor, k: Tensor, b: Tensor) -> Tensor:
    """``a^T K b``: a scalar for ``K`` ``(n, m)``; ``(B,)`` for a batch ``(B, n, m)``, ``(B, n)``, ``(B, m)``."""
    return ((a.unsqueeze(-2) @ k) @ b.unsqueeze(-1)).squeeze(-1).squeeze(-1)


def working_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype a backend computes in: the input's, at least float32 (half precision loses the
    small differences that divergences are made of)."""
    return torch.promote_types(dtype, torch.float32)


def centered_working_inputs(x: Tensor, y: Tensor, a: Tensor, b: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    r"""``x, y, a, b`` in the :func:`working_dtype`, the clouds shifted by their joint mean.

    For losses invariant to a common shift (distances, covariances): the shift changes nothing but
    the rounding, which shrinks from the scale of :math:`\|x\|^2` to that of the spread. The
    mean is taken outside autograd (a constant shift). Batched ``(B, n, d)`` clouds are shifted
    per problem.
    """
    work = working_dtype(x.dtype)
    x, y, a, b = (t.to(work) for t in (x, y, a, b))
    center = torch.cat([x, y], dim=-2).detach().mean(-2, keepdim=True)  # per problem when batched
    return x - center, y - center, a, b
