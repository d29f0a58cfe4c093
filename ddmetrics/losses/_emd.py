"""Exact OT solver calls (POT's network simplex): optimal plan, cost and dual potentials.

Solver-only: no loss, no autograd. :mod:`ddmetrics.losses._exact` (the ``wasserstein`` loss)
and :mod:`ddmetrics.losses._barycenter` (the exact barycenter) both solve through here.
"""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["emd_plan"]

# POT's default of 100 000 simplex pivots is too few for n = 10^4 .. 10^5 points.
_MAX_ITER = 100_000_000


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
    # POT is imported on first use (then it is a dict lookup): `import ot` also imports
    # scikit-learn (ot.lowrank) and GeomLoss/KeOps (ot.bregman), which `import ddmetrics` must not pay for.
    import ot

    a64, b64, c64 = (t.detach().to("cpu", torch.float64).numpy() for t in (a, b, cost))
    a64, b64 = a64 / a64.sum(), b64 / b64.sum()  # remove float32 rounding of the marginals
    # the network simplex compares costs with absolute tolerances (~1e-15): solve the same LP on
    # the cost scaled to max 1, so tiny clouds are solved as exactly as unit-scale ones
    scale = float(c64.max()) if c64.size else 0.0
    if scale > 0:
        c64 = c64 / scale
    if log:
        plan, info = ot.emd(a64, b64, c64, numItermax=_MAX_ITER, log=True)
        unit = scale if scale > 0 else 1.0
        u = torch.as_tensor(info["u"] * unit, dtype=cost.dtype, device=cost.device)
        v = torch.as_tensor(info["v"] * unit, dtype=cost.dtype, device=cost.device)
        return torch.as_tensor(plan, dtype=cost.dtype, device=cost.device), u, v
    plan = ot.emd(a64, b64, c64, numItermax=_MAX_ITER)
    return torch.as_tensor(plan, dtype=cost.dtype, device=cost.device)
