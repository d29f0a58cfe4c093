"""Exact OT solver calls (POT's network simplex): optimal plan, cost and dual potentials.

Solver-only: no loss, no autograd. :mod:`ddmetrics.losses._exact` (the ``wasserstein`` loss)
and :mod:`ddmetrics.losses._barycenter` (the exact barycenter) both solve through here.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import numpy as np
import torch
from torch import Tensor

from ._keops_notice import import_holding_keops_notice

__all__ = ["Arcs", "emd_arcs", "emd_plan"]

# POT's default of 100 000 simplex pivots is too few for n = 10^4 .. 10^5 points.
_MAX_ITER = 100_000_000


def _solve(a: Tensor, b: Tensor, cost: Tensor, log: bool):
    """POT's network simplex on float64 copies: ``(plan, u, v)`` as numpy arrays (``u, v`` None
    without ``log``), duals in the units of ``cost``."""
    # POT is imported on first use (then it is a dict lookup): `import ot` also imports
    # scikit-learn (ot.lowrank) and GeomLoss/KeOps (ot.bregman), which `import ddmetrics` must not pay for,
    # and KeOps' CUDA notice, which concerns no exact solve (held back: see _keops_notice)
    ot = import_holding_keops_notice("ot")

    a64, b64, c64 = (t.detach().to("cpu", torch.float64).numpy() for t in (a, b, cost))
    a64, b64 = a64 / a64.sum(), b64 / b64.sum()  # remove float32 rounding of the marginals
    # the network simplex compares costs with absolute tolerances (~1e-15): solve the same LP on
    # the cost scaled to max 1, so tiny clouds are solved as exactly as unit-scale ones
    scale = float(c64.max()) if c64.size else 0.0
    if scale > 0:
        c64 = c64 / scale
    if not log:
        return ot.emd(a64, b64, c64, numItermax=_MAX_ITER), None, None
    plan, info = ot.emd(a64, b64, c64, numItermax=_MAX_ITER, log=True)
    unit = scale if scale > 0 else 1.0
    return plan, info["u"] * unit, info["v"] * unit


def emd_plan(a: Tensor, b: Tensor, cost: Tensor, log: bool = False):
    """Optimal plan (and, with ``log``, the dual potentials) of the exact OT problem, on detached tensors.

    Solved by POT's network simplex in float64; returned in ``cost``'s dtype and device.

    Parameters
    ----------
    a, b : Tensor
        Marginals ``(n,)`` and ``(m,)``; renormalised to sum 1 in float64.
    cost : Tensor
        Cost matrix ``(n, m)``.
    log : bool
        Also return the dual potentials ``u`` (n,) and ``v`` (m,), in the units of ``cost``.

    Returns
    -------
    plan : Tensor
        ``(n, m)``; with ``log``, the tuple ``(plan, u, v)``.
    """
    plan, u, v = _solve(a, b, cost, log)
    plan = torch.as_tensor(plan, dtype=cost.dtype, device=cost.device)
    if not log:
        return plan
    return (plan, torch.as_tensor(u, dtype=cost.dtype, device=cost.device),
            torch.as_tensor(v, dtype=cost.dtype, device=cost.device))


class Arcs(NamedTuple):
    """The support of an optimal plan: ``mass[k]`` goes from ``rows[k]`` to ``cols[k]``; with the
    dual potentials ``u`` (n,) and ``v`` (m,) when asked for (else None)."""

    rows: Tensor
    cols: Tensor
    mass: Tensor
    u: Optional[Tensor] = None
    v: Optional[Tensor] = None


def emd_arcs(a: Tensor, b: Tensor, cost: Tensor, log: bool = False) -> Arcs:
    """:func:`emd_plan` as its non-zero arcs (a basic solution has at most ``n + m - 1``).

    Sums over the plan then cost O((n + m) d) instead of O(n m d): the barycenter's position
    step is an ``index_add`` over the arcs, not a dense ``(m, n) @ (n, d)`` product.
    """
    plan, u, v = _solve(a, b, cost, log)
    rows, cols = np.nonzero(plan)
    dev = cost.device
    out = Arcs(torch.as_tensor(rows, device=dev), torch.as_tensor(cols, device=dev),
               torch.as_tensor(plan[rows, cols], dtype=cost.dtype, device=dev))
    if log:
        out = out._replace(u=torch.as_tensor(u, dtype=cost.dtype, device=dev),
                           v=torch.as_tensor(v, dtype=cost.dtype, device=dev))
    return out
