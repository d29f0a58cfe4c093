import ot
import pytest
import torch

from ddmetrics.losses import ExactOT, SlicedWasserstein
from ddmetrics.losses._sliced import random_directions


def _data(n, m, d, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=dtype), torch.randn(m, d, generator=g, dtype=dtype) * 1.5 + 0.3


@pytest.mark.parametrize("n,m,p", [(50, 50, 2), (70, 30, 2), (40, 25, 1)])
def test_matches_pot_with_same_projections(n, m, p, device):
    x, y = _data(n, m, 6, seed=n + m)
    P = random_directions(6, 32, torch.Generator().manual_seed(0), torch.float64)
    ours = SlicedWasserstein(projections=P.to(device), p=p)(x.to(device), y.to(device))
    assert ours.device.type == device
    ref = ot.sliced_wasserstein_distance(x.numpy(), y.numpy(), n_projections=32, p=p, projections=P.numpy())
    assert abs(float(ours.cpu()) - ref**p) < 1e-8  # POT returns the p-th root


def test_weighted_matches_pot():
    x, y = _data(40, 25, 4, seed=1)
    g = torch.Generator().manual_seed(2)
    a, b = torch.rand(40, generator=g, dtype=torch.float64), torch.rand(25, generator=g, dtype=torch.float64)
    a, b = a / a.sum(), b / b.sum()
    P = random_directions(4, 16, torch.Generator().manual_seed(3), torch.float64)
    ours = SlicedWasserstein(projections=P)(x, y, a, b)
    ref = ot.sliced_wasserstein_distance(x.numpy(), y.numpy(), a.numpy(), b.numpy(), n_projections=16, projections=P.numpy())
    assert abs(float(ours) - ref**2) < 1e-8


@pytest.mark.parametrize("p", [1, 2])
def test_1d_equals_exact_weighted(p):
    g = torch.Generator().manual_seed(p)
    u, v = torch.randn(33, 1, generator=g, dtype=torch.float64), torch.rand(21, 1, generator=g, dtype=torch.float64)
    a, b = torch.rand(33, generator=g, dtype=torch.float64), torch.rand(21, generator=g, dtype=torch.float64)
    a, b = a / a.sum(), b / b.sum()
    sw = SlicedWasserstein(n_projections=3, p=p)  # in 1-D every direction is ±1
    assert abs(float(sw(u, v, a, b)) - float(ExactOT(p=p)(u, v, a, b))) < 1e-10
    assert abs(float(sw(u, v)) - float(ExactOT(p=p)(u, v))) < 1e-10


def test_gradient_matches_finite_differences_and_weights(device):
    x, y = (t.to(device) for t in _data(20, 15, 3, seed=7))
    g = torch.Generator().manual_seed(8)
    b = torch.rand(15, generator=g, dtype=torch.float64)
    b = (b / b.sum()).to(device)
    P = random_directions(3, 8, torch.Generator().manual_seed(1), torch.float64)
    sw = SlicedWasserstein(projections=P.to(device))
    y.requires_grad_(True)
    sw(x, y, b=b).backward()
    assert y.grad.device.type == device
    grad = y.grad.cpu()
    eps = 1e-6
    for idx in [(0, 0), (3, 1), (14, 2)]:
        yp, ym = y.detach().clone(), y.detach().clone()
        yp[idx] += eps
        ym[idx] -= eps
        fd = (sw(x, yp, b=b) - sw(x, ym, b=b)) / (2 * eps)
        assert abs(float(grad[idx]) - float(fd.cpu())) < 1e-6


def test_seeded_directions_are_reproducible_and_fresh():
    x, y = _data(30, 30, 5, seed=0)
    s1, s2 = SlicedWasserstein(n_projections=8, seed=3), SlicedWasserstein(n_projections=8, seed=3)
    first = [float(s1(x, y)) for _ in range(2)]
    assert first == [float(s2(x, y)) for _ in range(2)]
    assert first[0] != first[1]  # each call draws new directions


def test_float32_and_validation():
    x, y = _data(10, 10, 3, seed=0, dtype=torch.float32)
    assert SlicedWasserstein()(x, y).dtype == torch.float32
    with pytest.raises(ValueError, match="n_projections"):
        SlicedWasserstein(n_projections=0)


@pytest.mark.parametrize("n,m", [(97, 13), (13, 97), (120, 40), (1, 5), (5, 1)])
def test_uniform_w2_paths_agree_with_exact_1d(n, m):
    """The prefix-sum path (x outside autograd), the grouped path (x in autograd) and the weighted
    quantile path give the exact 1-D W2² per direction, with the same gradients."""
    x, y = _data(n, m, 3, seed=7 * n + m)
    P = random_directions(3, 8, torch.Generator().manual_seed(1), torch.float64)
    exact = ExactOT(p=2)
    ref = torch.stack([exact(x @ P[:, l], y @ P[:, l]) for l in range(8)]).mean()
    sw = SlicedWasserstein(projections=P)
    values, grads = [], []
    for x_grad, weighted in ((False, False), (True, False), (False, True)):
        xx, yy = x.clone().requires_grad_(x_grad), y.clone().requires_grad_(True)
        # weights that require grad force the general weighted path
        b = torch.full((m,), 1.0 / m, dtype=torch.float64, requires_grad=weighted) if weighted else None
        v = sw(xx, yy, b=b)
        v.backward()
        values.append(float(v))
        grads.append(yy.grad)
    for v, g in zip(values, grads):
        assert abs(v - float(ref)) < 1e-10
        assert torch.allclose(g, grads[2], atol=1e-12)
