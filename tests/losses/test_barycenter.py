import numpy as np
import ot
import pytest
import torch

import ddmetrics as ddm
from ddmetrics.losses import barycenter_objective, exact_barycenter, init_support


def _cloud(n, d, seed):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_m_equals_n_recovers_the_points():
    x = _cloud(30, 4, 0)
    bary = ddm.get_loss("wasserstein").barycenter(x, 30)
    assert bary.objective < 1e-10
    assert barycenter_objective(x, bary.support, bary.weights) < 1e-10


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_objective_not_above_pot_free_support_barycenter(seed, device):
    # class features are clustered: a mixture of 8 Gaussians with unequal masses in d=64
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(8, 64, generator=g, dtype=torch.float64) * 3
    mass = torch.rand(8, generator=g, dtype=torch.float64) + 0.2
    x = centers[torch.multinomial(mass / mass.sum(), 400, replacement=True, generator=g)]
    x = x + torch.randn(400, 64, generator=g, dtype=torch.float64)
    a = torch.full((400,), 1 / 400, dtype=torch.float64)
    # the initialisation and the barycenter run on the device; everything is checked on the CPU
    init = init_support(x.to(device), 12, a.to(device), seed=seed)
    ours = exact_barycenter(x.to(device), 12, iters=10, init=init)
    assert init.device.type == device and ours.support.device.type == device and ours.weights.device.type == device
    init, support, weights = init.cpu(), ours.support.cpu(), ours.weights.cpu()
    assert torch.equal(init, init_support(x, 12, a, seed=seed))  # the same CPU draws pick the same atoms
    pot = ot.lp.free_support_barycenter([x.numpy()], [a.numpy()], init.numpy(), numItermax=10)
    pot_obj = barycenter_objective(x, torch.tensor(pot), torch.full((12,), 1 / 12, dtype=torch.float64))
    assert ours.objective <= pot_obj + 1e-12
    assert abs(ours.objective - barycenter_objective(x, support, weights)) < 1e-9
    # the per-round history starts at the initial support, at its optimal weights (each point to
    # its nearest atom), and its best is what was returned
    uniform = torch.full((12,), 1 / 12, dtype=torch.float64)
    nearest = float((torch.cdist(x, init) ** 2).min(1).values.mean())
    assert abs(ours.history[0] - nearest) < 1e-9 and nearest < barycenter_objective(x, init, uniform)
    assert min(ours.history) == ours.objective and 2 <= len(ours.history) <= 11
    # weighted Lloyd: with full steps the objective never rises into a Lloyd round; only the
    # balanced round (the third, at uniform weights) may start higher
    assert all(b <= a + 1e-12 for k, (a, b) in enumerate(zip(ours.history, ours.history[1:])) if k + 1 != 2)
    lloyd = exact_barycenter(x, 12, iters=10, init=init, balanced_rounds=())
    assert abs(lloyd.history[0] - nearest) < 1e-9
    assert all(b <= a + 1e-12 for a, b in zip(lloyd.history, lloyd.history[1:]))
    # a balanced round's plan is the exact one at uniform weights
    first = exact_barycenter(x, 12, iters=10, init=init, balanced_rounds=(0,))
    assert abs(first.history[0] - barycenter_objective(x, init, uniform)) < 1e-9
    # the paper's mirror-descent rule also beats POT here, and the closed form beats it
    mirror = exact_barycenter(x, 12, iters=10, init=init, weight_update="mirror")
    assert ours.objective <= mirror.objective <= pot_obj + 1e-12
    # positions-only follows POT exactly
    fixed = exact_barycenter(x, 12, iters=10, init=init, learn_weights=False)
    assert torch.allclose(fixed.support, torch.tensor(pot), atol=1e-8) or fixed.objective <= pot_obj + 1e-12


@pytest.mark.parametrize("seed", [0, 1])
def test_nearest_atom_weights_are_the_exact_minimiser_over_the_simplex(seed):
    # min_w W2²(mu, sum_j w_j delta_b_j) = sum_i a_i min_j c_ij, reached by the nearest-atom
    # masses: checked against the network simplex at those weights and at other weights
    g = torch.Generator().manual_seed(seed)
    x, b = _cloud(90, 3, seed), _cloud(6, 3, seed + 10)
    a = torch.rand(90, generator=g, dtype=torch.float64) + 0.1
    a = a / a.sum()
    from ddmetrics.losses._barycenter import _nearest_atom_plan

    cost = torch.cdist(x, b) ** 2
    cols, nearest, w = _nearest_atom_plan(a, cost)
    closed = float((a * cost.min(1).values).sum())
    assert abs(float((a * cost[torch.arange(90), cols]).sum()) - closed) < 1e-12
    assert torch.equal(nearest, cost[torch.arange(90), cols])
    assert abs(float(w.sum()) - 1) < 1e-12
    assert abs(ot.emd2(a.numpy(), w.numpy(), cost.numpy()) - closed) < 1e-10
    for _ in range(20):
        other = torch.rand(6, generator=g, dtype=torch.float64)
        assert ot.emd2(a.numpy(), (other / other.sum()).numpy(), cost.numpy()) >= closed - 1e-12
    # the Lloyd position step's sums are plan.T @ x of that plan, for these weights and for uniform ones
    from ddmetrics.losses._barycenter import _assigned_sums

    plan = torch.zeros(90, 6, dtype=torch.float64)
    plan[torch.arange(90), cols] = a
    assert torch.allclose(_assigned_sums(x, a, cols, 6, uniform=False), plan.T @ x, atol=1e-12)
    flat = torch.full((90,), 1 / 90, dtype=torch.float64)
    plan[torch.arange(90), cols] = flat
    assert torch.allclose(_assigned_sums(x, flat, cols, 6, uniform=True), plan.T @ x, atol=1e-12)


def test_an_atom_left_without_points_is_reseated():
    # two far clusters and a third atom started between them, farther from every point than the
    # cluster atoms: it gets no point, and moves onto the point that costs most
    x = torch.cat([_cloud(50, 2, 0) * 0.1, _cloud(50, 2, 1) * 0.1 + torch.tensor([10.0, 0.0], dtype=torch.float64)])
    init = torch.tensor([[0.0, 0.0], [10.0, 0.0], [5.0, 30.0]], dtype=torch.float64)
    bary = exact_barycenter(x, 3, init=init, iters=5)
    assert (bary.weights > 0).all()
    assert bary.objective < bary.history[0]
    assert bary.objective == pytest.approx(barycenter_objective(x, bary.support, bary.weights), abs=1e-12)


def test_weights_on_simplex():
    bary = exact_barycenter(_cloud(200, 5, 3), 10)
    assert (bary.weights >= 0).all() and abs(float(bary.weights.sum()) - 1) < 1e-9


def test_two_cluster_masses_are_recovered(device):
    g = torch.Generator().manual_seed(4)
    big = torch.randn(160, 2, generator=g, dtype=torch.float64) * 0.3
    small = torch.randn(40, 2, generator=g, dtype=torch.float64) * 0.3 + torch.tensor([6.0, 0.0], dtype=torch.float64)
    x = torch.cat([big, small]).to(device)
    bary = exact_barycenter(x, 2, iters=10, seed=0)
    assert bary.weights.device.type == device
    order = torch.argsort(bary.support[:, 0].cpu())
    assert torch.allclose(bary.weights.cpu()[order], torch.tensor([0.8, 0.2], dtype=torch.float64), atol=0.02)


def test_generic_gradient_flow_lowers_the_loss(device):
    x = _cloud(120, 3, 5).to(device)
    loss = ddm.get_loss("mmd", kernel="gaussian", bandwidth=1.0)
    init = init_support(x, 6, torch.full((120,), 1 / 120, dtype=torch.float64, device=device), seed=0, method="random")
    start = float(loss(x, init))
    bary = loss.barycenter(x, 6, iters=100, init="random")
    assert bary.support.device.type == device and bary.weights.device.type == device
    assert bary.objective < 0.5 * start
    # the objective reported is the loss at the returned support, evaluated on the CPU
    assert bary.objective == pytest.approx(float(loss(x.cpu(), bary.support.cpu(), b=bary.weights.cpu())), rel=1e-9)


def test_the_loss_setting_chooses_the_weight_rule():
    # ExactOT(weight_update=...) is what a distiller's loss_kwargs set: it must reach the solver
    x = _cloud(150, 4, 6)
    for rule in ("exact", "mirror"):
        via_loss = ddm.get_loss("wasserstein", weight_update=rule).barycenter(x, 5, seed=1)
        direct = exact_barycenter(x, 5, iters=10, seed=1, weight_update=rule)
        assert torch.equal(via_loss.weights, direct.weights) and via_loss.objective == direct.objective
    assert ddm.get_loss("wasserstein").barycenter(x, 5, seed=1).objective < via_loss.objective
    with pytest.raises(ValueError, match="weight_update"):
        ddm.get_loss("wasserstein", weight_update="newton")


def test_bad_arguments():
    x = _cloud(10, 2, 0)
    with pytest.raises(ValueError, match="m"):
        exact_barycenter(x, 11)
    with pytest.raises(ValueError, match="x"):
        exact_barycenter(x * float("nan"), 2)
    with pytest.raises(ValueError, match="weight_update"):
        exact_barycenter(x, 2, weight_update="newton")
    with pytest.raises(ValueError, match="balanced_rounds"):
        exact_barycenter(x, 2, balanced_rounds=(1, -1))
    with pytest.raises(TypeError, match="balanced_rounds"):
        exact_barycenter(x, 2, balanced_rounds=2)


def test_early_stop_waits_for_the_balanced_round():
    # two far clusters, two atoms: Lloyd is at its fixed point after one round, so without a
    # balanced round ahead the rounds stop at once; with one ahead they run up to it and stop after
    x = torch.cat([_cloud(40, 2, 0) * 0.1, _cloud(40, 2, 1) * 0.1 + 10.0])
    init = x[[0, 40]].clone()
    assert len(exact_barycenter(x, 2, init=init, balanced_rounds=()).history) == 3
    # rounds 0-4 Lloyd, 5 balanced (moves nothing: its plan is the same assignment), 6 evaluates
    # that last iterate and stops
    assert len(exact_barycenter(x, 2, init=init, balanced_rounds=(5,)).history) == 7
    # a balanced round at or beyond iters is never reached
    assert len(exact_barycenter(x, 2, init=init, iters=5, balanced_rounds=(5,)).history) == 3


def test_kmeans_pp_draws_follow_the_weights():
    # the first pick is a_i-weighted: over 4000 seeds its frequencies match a (a zero weight is
    # never picked); a mistaken CDF inversion (off by one, unnormalised) moves them by > 0.1
    x = torch.arange(5, dtype=torch.float64).unsqueeze(1)
    a = torch.tensor([0.1, 0.0, 0.2, 0.3, 0.4], dtype=torch.float64)
    picks = torch.tensor([int(init_support(x, 1, a, seed=s)[0, 0]) for s in range(4000)])
    freq = torch.bincount(picks, minlength=5).double() / 4000
    assert freq[1] == 0 and torch.allclose(freq, a, atol=0.03)
    # D² sampling: after the first atom, a point at distance 0 is never picked again, and m = n
    # picks every point once
    assert sorted(init_support(x, 5, torch.full((5,), 0.2, dtype=torch.float64), seed=3)[:, 0].tolist()) == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_plan_arcs_rebuild_the_plan_and_its_duals(dtype):
    from ddmetrics.losses._emd import emd_arcs, emd_plan

    x, y = _cloud(60, 3, 4).to(dtype), _cloud(7, 3, 5).to(dtype)
    a = torch.full((60,), 1 / 60, dtype=dtype)
    b = torch.rand(7, generator=torch.Generator().manual_seed(6), dtype=torch.float64).to(dtype)
    b = b / b.sum()
    cost = torch.cdist(x, y) ** 2
    plan, u, v = emd_plan(a, b, cost, log=True)
    arcs = emd_arcs(a, b, cost, log=True)
    rebuilt = torch.zeros_like(plan)
    rebuilt[arcs.rows, arcs.cols] = arcs.mass
    assert torch.equal(rebuilt, plan) and len(arcs.mass) <= 60 + 7 - 1
    assert torch.equal(arcs.u, u) and torch.equal(arcs.v, v)
    # the sparse position step is the dense one: plan.T @ x
    from ddmetrics.losses._barycenter import _plan_t_matmul

    tol = 1e-12 if dtype == torch.float64 else 1e-5
    assert torch.allclose(_plan_t_matmul(arcs, x, 7), plan.T @ x, atol=tol)
