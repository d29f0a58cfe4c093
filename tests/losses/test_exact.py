import numpy as np
import ot
import pytest
import scipy.stats
import torch

import ddmetrics as ddm
from ddmetrics.losses import ExactOT


def _weighted(n, m, d, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = torch.randn(m, d, generator=g, dtype=torch.float64) + 0.5
    a = torch.rand(n, generator=g, dtype=torch.float64) + 0.1
    b = torch.rand(m, generator=g, dtype=torch.float64) + 0.1
    return x, y, a / a.sum(), b / b.sum()


@pytest.mark.parametrize("p,metric", [(2, "sqeuclidean"), (1, "euclidean")])
def test_matches_pot_emd2(p, metric, device):
    x, y, a, b = _weighted(60, 45, 5, seed=p)
    ours = ExactOT(p=p)(*(t.to(device) for t in (x, y, a, b)))
    assert ours.device.type == device  # the plan is solved on the CPU, the value comes back
    ref = ot.emd2(a.numpy(), b.numpy(), ot.dist(x.numpy(), y.numpy(), metric=metric))
    assert abs(float(ours.cpu()) - ref) < 1e-5


@pytest.mark.parametrize("p", [1, 2])
def test_gradient_matches_finite_differences(p, device):
    x, y, a, b = (t.to(device) for t in _weighted(12, 9, 3, seed=10 + p))
    y.requires_grad_(True)
    loss = ExactOT(p=p)
    loss(x, y, a, b).backward()
    assert y.grad.device.type == device
    eps = 1e-6
    num = torch.zeros(y.shape, dtype=y.dtype, device="cpu")
    for idx in np.ndindex(*y.shape):
        yp, ym = y.detach().clone(), y.detach().clone()
        yp[idx] += eps
        ym[idx] -= eps
        num[idx] = float(loss(x, yp, a, b) - loss(x, ym, a, b)) / (2 * eps)
    assert torch.allclose(y.grad.cpu(), num, atol=1e-6)


def test_weight_gradient_is_centred_dual():
    x, y, a, b = _weighted(10, 8, 2, seed=3)
    b = b.clone().requires_grad_(True)
    ExactOT()(x, y, a, b).backward()
    # a direction tangent to the simplex: the directional derivative matches finite differences
    g = torch.Generator().manual_seed(0)
    t = torch.randn(8, generator=g, dtype=torch.float64)
    t -= t.mean()
    eps = 1e-7
    fd = (ExactOT()(x, y, a, b.detach() + eps * t) - ExactOT()(x, y, a, b.detach() - eps * t)) / (2 * eps)
    assert abs(float(b.grad @ t) - float(fd)) < 1e-5


def test_1d_matches_scipy_and_sorted_closed_form():
    g = torch.Generator().manual_seed(1)
    u = torch.randn(80, generator=g, dtype=torch.float64)
    v = 2 * torch.rand(80, generator=g, dtype=torch.float64)
    w1 = ExactOT(p=1)(u, v)
    assert abs(float(w1) - scipy.stats.wasserstein_distance(u.numpy(), v.numpy())) < 1e-8
    w2 = ExactOT(p=2)(u, v)
    closed = ((torch.sort(u).values - torch.sort(v).values) ** 2).mean()
    assert abs(float(w2) - float(closed)) < 1e-8


def test_weighted_1d_matches_scipy():
    g = torch.Generator().manual_seed(2)
    u, v = torch.randn(30, generator=g, dtype=torch.float64), torch.randn(20, generator=g, dtype=torch.float64)
    a, b = torch.rand(30, generator=g, dtype=torch.float64), torch.rand(20, generator=g, dtype=torch.float64)
    a, b = a / a.sum(), b / b.sum()
    ref = scipy.stats.wasserstein_distance(u.numpy(), v.numpy(), a.numpy(), b.numpy())
    assert abs(float(ExactOT(p=1)(u, v, a, b)) - ref) < 1e-8


def test_gaussian_samples_approach_bures():
    # W_2^2 between N(m1, S1) and N(m2, S2): |m1-m2|^2 + tr(S1 + S2 - 2 (S1^1/2 S2 S1^1/2)^1/2)
    g = torch.Generator().manual_seed(4)
    d, n = 2, 1500
    m1, m2 = torch.zeros(d, dtype=torch.float64), torch.tensor([1.0, -0.5], dtype=torch.float64)
    L1 = torch.tensor([[1.0, 0.0], [0.3, 0.5]], dtype=torch.float64)
    L2 = torch.tensor([[0.7, 0.0], [-0.2, 1.2]], dtype=torch.float64)
    S1, S2 = L1 @ L1.T, L2 @ L2.T
    x = m1 + torch.randn(n, d, generator=g, dtype=torch.float64) @ L1.T
    y = m2 + torch.randn(n, d, generator=g, dtype=torch.float64) @ L2.T
    import scipy.linalg

    r1 = scipy.linalg.sqrtm(S1.numpy())
    cross = np.real(scipy.linalg.sqrtm(r1 @ S2.numpy() @ r1))
    bures = float(((m1 - m2) ** 2).sum()) + float(np.trace(S1.numpy() + S2.numpy() - 2 * cross))
    # empirical W2^2 of n samples is biased upward by O(n^{-1/2}) in 2-D: allow 10 %
    assert abs(float(ExactOT()(x, y)) - bures) < 0.1 * bures


def test_float64_in_float64_out_and_float32():
    x, y, a, b = _weighted(10, 7, 3, seed=5)
    assert ExactOT()(x, y).dtype == torch.float64
    assert ExactOT()(x.float(), y.float()).dtype == torch.float32


def test_registry_name():
    assert isinstance(ddm.get_loss("wasserstein", p=1), ExactOT)
    with pytest.raises(ValueError, match="p"):
        ExactOT(p=3)
