"""Energy distance: scipy's and GeomLoss's conventions, zero on identical clouds, gradients."""
import math

import numpy as np
import pytest
import torch
from scipy.stats import energy_distance

import ddmetrics as ddm
from ddmetrics.losses import EnergyDistance


def _data(seed, n=30, m=20, d=3, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=dtype)
    y = torch.randn(m, d, generator=g, dtype=dtype) * 1.3 + 0.4
    a = torch.rand(n, generator=g, dtype=dtype) + 0.1
    b = torch.rand(m, generator=g, dtype=dtype) + 0.1
    return x, y, a / a.sum(), b / b.sum()


@pytest.mark.parametrize("weighted", [False, True])
def test_is_the_square_of_scipy_energy_distance_in_1d(weighted, device):
    # scipy returns sqrt(2 E|X-Y| - E|X-X'| - E|Y-Y'|) (= sqrt(2) * l2 of the CDFs); ours is the square
    x, y, a, b = _data(0, d=1)
    a, b = (a, b) if weighted else (None, None)
    on = [None if t is None else t.to(device) for t in (x, y, a, b)]
    value = EnergyDistance()(*on)
    assert value.device.type == device
    ours = float(value.cpu())
    ref = energy_distance(x[:, 0].numpy(), y[:, 0].numpy(), None if a is None else a.numpy(),
                          None if b is None else b.numpy())
    assert ours == pytest.approx(ref**2, rel=1e-12)
    # scipy's documented examples, squared
    assert float(EnergyDistance()(torch.tensor([0.0]), torch.tensor([2.0]))) == pytest.approx(4.0, rel=1e-12)
    u, v = torch.tensor([0.0, 8.0], dtype=torch.float64), torch.tensor([0.0, 8.0], dtype=torch.float64)
    uw, vw = torch.tensor([0.75, 0.25], dtype=torch.float64), torch.tensor([0.5, 0.5], dtype=torch.float64)
    assert float(EnergyDistance()(u, v, uw, vw)) == pytest.approx(1.0, rel=1e-12)


def test_is_twice_geomloss_energy_up_to_its_distance_floor():
    # GeomLoss: 1/2 ||alpha - beta||_k^2 with k = -|x - y|, and (tensorized) distances floored at
    # sqrt(1e-8) = 1e-4: the diagonals of the self terms count 1e-4 instead of 0. All other distances
    # here exceed 1e-4, so the relation is exact.
    SamplesLoss = pytest.importorskip("geomloss").SamplesLoss
    x, y, a, b = _data(1, d=4)
    assert float(torch.cdist(torch.cat([x, y]), torch.cat([x, y])).add(torch.eye(50)).min()) > 1e-3
    ours = float(EnergyDistance()(x, y, a, b))
    geom = float(SamplesLoss("energy", backend="tensorized")(a, x, b, y))
    floor = 1e-4 * float((a * a).sum() + (b * b).sum())
    assert geom == pytest.approx(ours / 2 - floor / 2, rel=1e-12, abs=1e-14)


def test_equals_the_pairwise_formula_in_float32_and_float64():
    x, y, a, b = _data(2, d=5)
    dist = lambda p, q: (p[:, None, :] - q[None, :, :]).norm(dim=-1)  # exact differences, no expansion
    dx = dist(x, x), dist(y, y), dist(x, y)
    ref = float(2 * a @ dx[2] @ b - a @ dx[0] @ a - b @ dx[1] @ b)
    assert float(EnergyDistance()(x, y, a, b)) == pytest.approx(ref, rel=1e-12)
    v32 = EnergyDistance()(x.float(), y.float(), a.float(), b.float())
    assert v32.dtype == torch.float32 and float(v32) == pytest.approx(ref, rel=1e-5)


def test_zero_for_identical_clouds_positive_otherwise():
    x, _, a, _ = _data(3)
    loss = EnergyDistance()
    # the cross term and the self terms round the same distances by different operations (a matrix
    # product then a subtraction; one addmm), so they agree to rounding, not to the bit: each
    # distance within (d + 2)u(|x|² + |x'|²) / 2|x - x'| <= 4e-15 of exact here, each weighted
    # double sum within ~n²u * 2 <= 2e-13, so |value| <= 2 * 2 * (2e-13 + 4e-15) < 1e-12. Without
    # the noise mask on the diagonal (_NOISE_EPS = 0) the value is -1.6e-10.
    assert abs(float(loss(x, x.clone(), a, a.clone()))) < 1e-12
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    assert abs(float(loss(x, x[perm], a, a[perm]))) < 1e-12  # same measure, other summation order
    far = (x + 100.0).float()  # far from the origin: the pooled centring keeps float32 exact enough
    assert abs(float(loss(far, far[perm], a.float(), a[perm].float()))) < 1e-4
    assert float(loss(x, x + 0.1, a, a)) > 0


def test_gradient_matches_finite_differences(device):
    x, y, a, b = (t.to(device) for t in _data(4))
    y = y.clone().requires_grad_(True)
    b = b.clone().requires_grad_(True)
    loss = EnergyDistance()
    gy, gb = torch.autograd.grad(loss(x, y, a, b), [y, b])
    assert gy.device.type == device and gb.device.type == device
    gy, gb = gy.cpu(), gb.cpu()
    eps = 1e-6
    for i, j in [(0, 0), (3, 2), (19, 1)]:
        yp, ym = y.detach().clone(), y.detach().clone()
        yp[i, j] += eps
        ym[i, j] -= eps
        fd = float(loss(x, yp, a, b.detach()) - loss(x, ym, a, b.detach())) / (2 * eps)
        assert float(gy[i, j]) == pytest.approx(fd, abs=1e-8)
    # along a direction of the simplex (the value is defined for weights off it only up to validation)
    delta = torch.zeros_like(b)
    delta[0], delta[5] = 1.0, -1.0
    fd = float(loss(x, y.detach(), a, b.detach() + eps * delta) - loss(x, y.detach(), a, b.detach() - eps * delta)) / (2 * eps)
    assert float(gb @ delta.cpu()) == pytest.approx(fd, abs=1e-8)


def test_gradient_finite_at_coincident_points():
    x, y, a, b = _data(5, n=6, m=6)
    y = torch.cat([x[:3], y[:3]]).requires_grad_(True)  # three points of y sit on points of x
    x = torch.cat([x[:5], x[:1]]).requires_grad_(True)  # and x repeats one of its own
    value = EnergyDistance()(x, y, a, b)
    gx, gy = torch.autograd.grad(value, [x, y])
    assert math.isfinite(float(value.detach())) and torch.isfinite(gx).all() and torch.isfinite(gy).all()


def test_registered_with_its_settings_and_half_precision_computes_in_float32():
    loss = ddm.get_loss("energy")
    assert isinstance(loss, EnergyDistance) and loss.config() == {"name": "energy", "class": "EnergyDistance"}
    x, y, _, _ = _data(6, d=2)
    v16 = loss(x.half(), y.half())
    assert v16.dtype == torch.float16
    assert float(v16) == pytest.approx(float(loss(x.half().double(), y.half().double())), rel=1e-2)


def test_both_matching_strategies_run(distil_both):
    distil_both("energy")
