r"""Free-support barycenters: the summary of one point cloud by ``m`` weighted atoms.

For a reference measure :math:`\mu = \sum_i a_i \delta_{x_i}` and a loss :math:`\mathcal{L}`,

.. math::
    \min_{B \in \mathbb{R}^{m \times d},\ w \in \Delta^{m-1}} \mathcal{L}\Big(\mu, \sum_j w_j \delta_{b_j}\Big)

Two algorithms:

- :func:`exact_barycenter` — the WMDD alternation for the exact :math:`W_2^2` (squared
  Euclidean cost): the optimal plan and weights (in closed form when the weights are learned:
  each point to its nearest atom; or, as in the paper, an exact OT solve and a mirror-descent
  step along the atoms' dual potentials), then a Newton (fixed-point) step on the positions.
- :func:`gradient_flow_barycenter` — the generic default of every
  :class:`~ddmetrics.losses.DistributionLoss`: Adam on the support points and on
  softmax-parametrised weights.

This module does not import :mod:`ddmetrics.losses.base`: the gradient flow takes the loss as
an argument, so ``base`` and ``_exact`` can import it at module level without a cycle.
"""
from __future__ import annotations

from typing import Callable, NamedTuple, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from ._cost import squared_distances
from ._emd import Arcs, emd_arcs
from ._validate import as_samples, check_weights

__all__ = ["Barycenter", "exact_barycenter", "gradient_flow_barycenter", "init_support", "barycenter_objective"]


class Barycenter(NamedTuple):
    """``support`` (m, d) atoms and their ``weights`` (m,) on the simplex; ``objective``
    is the loss value reached (for the exact solver: :math:`W_2^2`); ``history`` the exact
    :math:`W_2^2` of every iterate the exact solver evaluated (the start first), in order."""

    support: Tensor
    weights: Tensor
    objective: float = float("nan")
    history: tuple = ()


def _check(x: Tensor, m: int, a: Optional[Tensor]):
    x = as_samples(x, "x")
    if not isinstance(m, int) or isinstance(m, bool) or m < 1:
        raise ValueError(f"m must be a positive integer, got {m!r}")
    if m > x.shape[0]:
        raise ValueError(f"m={m} exceeds the number of points in x ({x.shape[0]})")
    return x, check_weights(a, x.shape[0], x, "a")


def init_support(x: Tensor, m: int, a: Tensor, seed: int = 0, method: str = "kmeans++") -> Tensor:
    """``m`` distinct rows of ``x``: k-means++ (D² sampling, weighted by ``a``) or uniformly at random.

    The draws come from a CPU generator seeded with ``seed`` (one uniform number per k-means++
    pick, inverted through the cumulative D² weights), so a seed picks the same rows on every device.
    """
    gen = torch.Generator(device="cpu").manual_seed(seed)
    n = x.shape[0]
    if method == "random":
        return x[torch.randperm(n, generator=gen, device="cpu")[:m].to(x.device)].clone()
    if method != "kmeans++":
        raise ValueError(f"init must be 'kmeans++' or 'random', got {method!r}")
    prob = a.detach().double().cpu()
    xd = x.detach()
    x_sq = (xd * xd).sum(1)  # ||x_i||², once: each step then costs one matrix-vector product

    def dist2_to(i: int) -> Tensor:
        c = xd[i]
        # to the CPU in float64: the draws are made there; n numbers per pick
        return torch.addmv(x_sq + c.dot(c), xd, c, alpha=-2.0).clamp_min_(0.0).double().cpu()

    def draw(weights: Tensor) -> int:
        # inverse CDF: the first index whose cumulative weight exceeds u·total, u ~ U[0, 1)
        cdf = weights.cumsum(0)
        u = torch.rand(1, generator=gen, dtype=torch.float64, device="cpu") * cdf[-1]
        i = min(int(torch.searchsorted(cdf, u, right=True)), n - 1)
        # rounding can put u·total at the very top: take the last index that carries weight
        return i if weights[i] > 0 else int(torch.nonzero(weights)[-1])

    idx = [draw(prob)]
    d2 = dist2_to(idx[0])
    for _ in range(1, m):
        score = prob * d2
        if not bool((score > 0).any()):  # fewer distinct points than m: pick unused ones
            unused = torch.ones(n, dtype=torch.bool, device="cpu")
            unused[idx] = False
            idx.append(int(torch.nonzero(unused)[0]))
        else:
            idx.append(draw(score))
        d2 = torch.minimum(d2, dist2_to(idx[-1]))
    return x[torch.tensor(idx, device=x.device)].clone()


def barycenter_objective(x: Tensor, support: Tensor, weights: Tensor, a: Optional[Tensor] = None) -> float:
    r""":math:`W_2^2(\sum_i a_i \delta_{x_i}, \sum_j w_j \delta_{b_j})` by an exact OT solve."""
    x, a = _check(x, 1, a)
    cost = squared_distances(x, support)
    arcs = emd_arcs(a, weights, cost)
    return float((arcs.mass * cost[arcs.rows, arcs.cols]).sum())


@torch.no_grad()
def exact_barycenter(
    x: Tensor,
    m: int,
    a: Optional[Tensor] = None,
    learn_weights: bool = True,
    iters: int = 10,
    seed: int = 0,
    init: Union[str, Tensor] = "kmeans++",
    weight_update: str = "exact",
    balanced_rounds: Sequence[int] = (2,),
    weight_step: float = 1.0,
    damping: float = 1.0,
    stop_thr: float = 1e-7,
) -> Barycenter:
    r"""Free-support :math:`W_2` barycenter of one measure, with learned weights (WMDD).

    Minimises :math:`W_2^2(\mu, \sum_j w_j \delta_{b_j})` over the atoms :math:`B` and (when
    ``learn_weights``) the weights :math:`w \in \Delta^{m-1}`. Each of the ``iters`` rounds, with
    cost :math:`c_{ij} = \|x_i - b_j\|^2`:

    1. the plan :math:`T` and the weights, by ``weight_update``:

       - ``"exact"`` (default): the minimiser over the weights in closed form. With the weights
         free, every point can send all its mass to its nearest atom, and no plan does better:

         .. math::
             \min_{w \in \Delta^{m-1}} W_2^2\Big(\mu, \sum_j w_j \delta_{b_j}\Big)
             = \sum_i a_i \min_j c_{ij}, \qquad
             w_j = \sum_{i:\ j = \arg\min_k c_{ik}} a_i ,

         so :math:`T` is the nearest-atom assignment and no OT problem is solved (the rounds are
         weighted Lloyd iterations, whose objective does not increase). An atom left without
         points moves onto the point that costs most (the usual k-means repair), so that
         every atom carries mass. The rounds listed in ``balanced_rounds`` (default: the third)
         instead take the exact plan at uniform weights (network simplex): a round that moves
         every atom to the mean of an equal share of the cloud, which lets Lloyd leave the
         local optimum it was heading for (see ``balanced_rounds``). The weights are then what
         the objective asks for, however uneven: an atom on an isolated point keeps that
         point's mass alone (1/n on the clustered clouds of ``benchmarks/large_support.py``).
       - ``"mirror"``: the WMDD paper's Algorithm 2: an exact OT solve at the current weights
         (network simplex), then a mirror-descent step along the atoms' dual potentials
         :math:`\beta` (a subgradient of :math:`W_2^2` in :math:`w`),
         :math:`w_j \leftarrow w_j \exp(-\eta_k \beta_j / \max c) / Z` with
         :math:`\eta_k = \eta / \sqrt{k+1}` (``weight_step`` :math:`\eta`).

       With ``learn_weights=False`` the weights stay uniform and :math:`T` is the exact plan.
    2. positions: Newton step :math:`b_j \leftarrow b_j - \frac{1}{w_j} \sum_i T_{ij}(b_j - x_i)`,
       i.e. the :math:`T`-weighted mean of the points sent to :math:`b_j`, damped by ``damping``
       (1 = the full step).

    The rounds stop early, as POT's do, once an update moves the atoms and weights by less than
    ``stop_thr`` (squared displacement summed over atoms and weights) and no balanced round is
    ahead. The objective is evaluated at every round and once more at the end; the best iterate
    is returned, so the result is never worse than the start. With ``learn_weights=False`` and
    ``damping=1`` the positions follow POT's ``ot.lp.free_support_barycenter`` exactly.

    Parameters
    ----------
    x : Tensor
        Reference points ``(n, d)`` (any rank; flattened).
    m : int
        Number of atoms, ``1 <= m <= n``.
    a : Tensor, optional
        Weights of ``x`` (uniform by default).
    learn_weights : bool
        Learn the atoms' weights (else they stay uniform).
    iters : int
        Number of rounds ``K`` (10 suffices per the WMDD paper).
    seed : int
        Seed of the initialisation.
    init : str or Tensor
        ``"kmeans++"`` (default), ``"random"``, or an ``(m, d)`` tensor of initial atoms.
    weight_update : {"exact", "mirror"}
        How learned weights are updated (above). ``"exact"`` solves the network simplex only in
        its ``balanced_rounds``; ``"mirror"``, the paper's algorithm, kept to reproduce it,
        solves it every round. The closed form ends lower in the committed benchmarks: on 10⁴
        points of N(0, I/512), m = 100 (``benchmarks/metric_speed.py``), and on the clustered
        features of ``benchmarks/large_support.py`` (W₂² 96.91 against 101.01 at n = 10⁴);
        with 3 balanced rounds first, its former default, the mirror rule had ended lower on
        the Gaussian cloud.
    balanced_rounds : sequence of int
        The rounds (0-based, out of ``iters``; later ones are never reached) whose plan is the
        exact one at uniform weights (``"exact"`` only; default ``(2,)``: one network-simplex
        solve, after two Lloyd rounds). From a k-means++ start Lloyd alone settles in a poor
        local optimum in high dimension (its atoms start on data points); one balanced round
        after the atoms have left the points moves them out of it. Compared by
        ``benchmarks/metric_speed.py`` (barycenter section; 10⁴ points of N(0, I/512),
        m = 100): no balanced round ends above POT's uniform-weight barycenter, the default
        below it. ``()`` gives Lloyd alone.
    weight_step : float
        Mirror step :math:`\eta` on the max-normalised cost (``"mirror"`` only; default 1). The
        WMDD authors use about 10; on clustered clouds that oscillates and stalls the positions
        (e.g. objective 238 against 92 for step 1 on an 8-cluster mixture, n=400, d=64, m=12),
        and it cannot recover 0.8/0.2 masses in 10 rounds, so 1 is the default here.
    damping : float
        Fraction of the Newton step taken, in (0, 1].
    stop_thr : float
        Stop when a round moves the atoms and weights by less than this (squared, summed);
        POT's ``stopThr`` (default 1e-7). 0 runs all ``iters`` rounds.

    Returns
    -------
    Barycenter

    References
    ----------
    .. [1] M. Cuturi, A. Doucet. Fast computation of Wasserstein barycenters. ICML 2014.
    .. [2] H. Liu et al. Dataset distillation via the Wasserstein metric. ICCV 2025, §4.2.
    .. [3] G. Canas, L. Rosasco. Learning probability measures with respect to optimal transport
       metrics. NeurIPS 2012 (k-means as the :math:`W_2` optimal quantizer).
    """
    x, a = _check(x, m, a)
    if not isinstance(iters, int) or iters < 0:
        raise ValueError(f"iters must be a non-negative integer, got {iters!r}")
    if weight_update not in WEIGHT_UPDATES:
        raise ValueError(f"weight_update must be one of {sorted(WEIGHT_UPDATES)}, got {weight_update!r}")
    balanced_rounds = _check_rounds(balanced_rounds)
    if not 0 < damping <= 1:
        raise ValueError(f"damping must lie in (0, 1], got {damping!r}")
    if not stop_thr >= 0:
        raise ValueError(f"stop_thr must be non-negative, got {stop_thr!r}")
    support = _initial(x, m, a, seed, init)
    uniform_w = torch.full((m,), 1.0 / m, dtype=x.dtype, device=x.device)
    w = uniform_w
    closed_form = learn_weights and weight_update == "exact"
    balanced = frozenset(r for r in balanced_rounds if r < iters) if closed_form else frozenset()
    # early stopping waits for the last balanced round: a Lloyd fixed point is where it helps
    free_from = max(balanced, default=-1) + 1
    x_sq = (x * x).sum(1, keepdim=True)  # ||x_i||², the same every round
    uniform_a = bool((a == a[0]).all())
    best, converged, history = None, False, []
    for k in range(iters + 1):
        # ||x - b||² = ||x||² + ||b||² - 2 x·b in one addmm (the expansion of squared_distances)
        cost = torch.addmm(x_sq + (support * support).sum(1), x, support.T, alpha=-2.0).clamp_min_(0.0)
        lloyd = closed_form and k not in balanced
        if lloyd:  # every point to its nearest atom: an assignment, the weights its masses
            cols, nearest, w = _nearest_atom_plan(a, cost)
            objective = float((a * nearest).sum())
        else:  # the plan has at most n + m - 1 arcs: every sum over it runs on the arcs, not on n × m
            if closed_form:
                w = uniform_w
            arcs = emd_arcs(a, w, cost, log=weight_update == "mirror")
            objective = float((arcs.mass * cost[arcs.rows, arcs.cols]).sum())
        history.append(objective)
        if best is None or objective < best.objective:
            best = Barycenter(support, w, objective)  # no clone: every round makes new tensors
        if k == iters or converged:
            break
        previous = (support, w)
        if learn_weights and weight_update == "mirror":
            beta = arcs.v
            step = weight_step / ((k + 1) ** 0.5 * float(cost.max().clamp_min(1e-30)))
            logw = torch.log(w.clamp_min(1e-30)) - step * (beta - beta.mean())
            w = torch.softmax(logw, 0)
        if lloyd:
            mass, target = w, _assigned_sums(x, a, cols, m, uniform_a)
        else:
            mass = torch.zeros(m, dtype=x.dtype, device=x.device).index_add_(0, arcs.cols, arcs.mass)
            target = _plan_t_matmul(arcs, x, m)
        sent = mass > 0
        target = target / mass.clamp_min(1e-30).unsqueeze(1)
        step_to = target if damping == 1 else support + damping * (target - support)
        support = torch.where(sent.unsqueeze(1), step_to, support)
        if lloyd and not bool(sent.all()):
            support = _reseat_empty_atoms(x, support, ~sent, nearest, a)
        if stop_thr > 0 and k + 1 >= free_from:
            # the next round evaluates this last iterate, then the loop stops
            moved = float((support - previous[0]).square().sum() + (w - previous[1]).square().sum())
            converged = moved < stop_thr
    return best._replace(history=tuple(history))


def _check_rounds(rounds) -> Tuple[int, ...]:
    """``balanced_rounds`` as a tuple of non-negative ints (else a TypeError or ValueError naming it)."""
    try:
        out = tuple(rounds)
    except TypeError:
        raise TypeError(f"balanced_rounds must be a sequence of non-negative integers, got {rounds!r}") from None
    if any(isinstance(r, bool) or not isinstance(r, int) or r < 0 for r in out):
        raise ValueError(f"balanced_rounds must be a sequence of non-negative integers, got {rounds!r}")
    return out


def _nearest_atom_plan(a: Tensor, cost: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """The optimal plan and weights when the weights are free: every point to its nearest atom.

    Returns ``(cols, nearest, weights)``: point ``i`` sends ``a_i`` to atom ``cols[i]`` at cost
    ``nearest[i]``; ``weights[j]`` is the mass atom ``j`` receives.
    """
    nearest, cols = cost.min(1)
    weights = torch.zeros(cost.shape[1], dtype=a.dtype, device=a.device).index_add_(0, cols, a)
    return cols, nearest, weights


#: the values of ``weight_update``: how learned weights are updated
WEIGHT_UPDATES = ("exact", "mirror")


def _reseat_empty_atoms(x: Tensor, support: Tensor, empty: Tensor, nearest: Tensor, a: Tensor) -> Tensor:
    """Move each atom that received no point onto a distinct point, among those that cost most
    (largest ``a_i c_i`` at the round's atoms)."""
    far = torch.topk(a * nearest, int(empty.sum())).indices
    support = support.clone()
    support[empty] = x[far]
    return support


def _assigned_sums(x: Tensor, a: Tensor, cols: Tensor, m: int, uniform: bool) -> Tensor:
    """``plan.T @ x`` for the nearest-atom plan (point ``i`` sends ``a_i`` to atom ``cols[i]``), ``(m, d)``.

    One ``index_add_`` of the rows of ``x``: no gather (every point is an arc) and, for uniform
    ``a``, no ``a * x`` product either (one pass over ``x``).
    """
    if uniform:
        return torch.zeros(m, x.shape[1], dtype=x.dtype, device=x.device).index_add_(0, cols, x).mul_(a[0])
    return torch.zeros(m, x.shape[1], dtype=x.dtype, device=x.device).index_add_(0, cols, a.unsqueeze(1) * x)


def _plan_t_matmul(arcs, x: Tensor, m: int) -> Tensor:
    """``plan.T @ x`` from the plan's arcs, ``(m, d)``: one ``index_add_`` of the arcs' weighted rows."""
    return torch.zeros(m, x.shape[1], dtype=x.dtype, device=x.device).index_add_(
        0, arcs.cols, arcs.mass.unsqueeze(1) * x[arcs.rows])


def _initial(x: Tensor, m: int, a: Tensor, seed: int, init) -> Tensor:
    if isinstance(init, Tensor):
        if init.shape != (m, x.shape[1]):
            raise ValueError(f"init must have shape ({m}, {x.shape[1]}), got {tuple(init.shape)}")
        return init.detach().to(dtype=x.dtype, device=x.device).clone()
    return init_support(x, m, a, seed=seed, method=init)


def gradient_flow_barycenter(
    loss: Callable[..., Tensor],
    x: Tensor,
    m: int,
    a: Optional[Tensor] = None,
    learn_weights: bool = True,
    iters: int = 200,
    seed: int = 0,
    init: Union[str, Tensor] = "kmeans++",
    lr: Optional[float] = None,
) -> Barycenter:
    r"""Barycenter under any loss by gradient flow.

    Minimises :math:`\mathcal{L}(\mu, \sum_j \mathrm{softmax}(\ell)_j \delta_{b_j})` over the
    support :math:`B` (and the logits :math:`\ell` when ``learn_weights``) with Adam for
    ``iters`` steps, from ``init`` (as in :func:`exact_barycenter`). ``lr`` defaults to
    0.05 × the standard deviation of ``x`` for the support (logits use 0.05).

    Parameters
    ----------
    loss : callable
        ``loss(x, y, a=..., b=...) -> Tensor``, differentiable in ``y`` and ``b``: any
        :class:`~ddmetrics.losses.DistributionLoss` (whose default ``barycenter`` this is).
    x, m, a, learn_weights, seed, init
        As in :func:`exact_barycenter`.
    iters : int
        Number of Adam steps.
    lr : float, optional
        Adam step size for the support.

    Returns
    -------
    Barycenter
        with ``objective`` the loss at the returned support and weights.
    """
    x, a = _check(x, m, a)
    x = x.detach()
    support = _initial(x, m, a, seed, init).requires_grad_(True)
    logits = torch.zeros(m, dtype=x.dtype, device=x.device, requires_grad=learn_weights)
    step = float(lr) if lr is not None else 0.05 * float(x.std(unbiased=False).clamp_min(1e-12))  # biased: defined for n = 1
    groups = [{"params": [support], "lr": step}]
    if learn_weights:
        groups.append({"params": [logits], "lr": 0.05})
    opt = torch.optim.Adam(groups)
    with torch.enable_grad():
        for _ in range(iters):
            opt.zero_grad(set_to_none=True)
            loss(x, support, a=a, b=torch.softmax(logits, 0)).backward()
            opt.step()
        w = torch.softmax(logits, 0).detach()
        value = float(loss(x, support.detach(), a=a, b=w))
    return Barycenter(support.detach(), w, value)
