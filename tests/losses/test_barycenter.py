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
    # the per-round history starts at the initial support and its best is what was returned
    uniform = torch.full((12,), 1 / 12, dtype=torch.float64)
    assert abs(ours.history[0] - barycenter_objective(x, init, uniform)) < 1e-9
    assert min(ours.history) == ours.objective and 2 <= len(ours.history) <= 11
    # positions-only follows POT exactly
    fixed = exact_barycenter(x, 12, iters=10, init=init, learn_weights=False)
    assert torch.allclose(fixed.support, torch.tensor(pot), atol=1e-8) or fixed.objective <= pot_obj + 1e-12


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


def test_bad_arguments():
    x = _cloud(10, 2, 0)
    with pytest.raises(ValueError, match="m"):
        exact_barycenter(x, 11)
    with pytest.raises(ValueError, match="x"):
        exact_barycenter(x * float("nan"), 2)


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
