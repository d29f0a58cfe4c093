"""gaussian_w2: the closed form for known Gaussians (scipy's sqrtm), exact OT on large Gaussian
samples, Gelbrich's bound, rank-deficient gradients, finite differences."""
import math

import numpy as np
import pytest
import scipy.linalg as sl
import torch

import ddmetrics as ddm
from ddmetrics.losses import GaussianW2
from ddmetrics.losses._gaussian import psd_sqrt


def closed_form(m1, s1, m2, s2) -> float:
    """Dowson–Landau, computed independently of the loss with scipy.linalg.sqrtm."""
    r = sl.sqrtm(s1)
    cross = sl.sqrtm(r @ s2 @ r)
    return float(((m1 - m2) ** 2).sum() + np.trace(s1 + s2) - 2 * np.trace(cross).real)


def cloud_with_moments(mean, cov, n, seed, weights=None):
    """``n`` points (weights ``weights``, uniform by default) whose weighted mean and covariance
    are exactly ``mean`` and ``cov``: a random cloud, weighted-whitened, then coloured."""
    g = np.random.default_rng(seed)
    w = np.full(n, 1.0 / n) if weights is None else weights
    z = g.normal(size=(n, len(mean)))
    z -= w @ z
    c = z.T @ (w[:, None] * z)
    z = z @ np.linalg.inv(np.linalg.cholesky(c)).T  # weighted covariance I
    return torch.tensor(mean + z @ np.linalg.cholesky(cov).T), torch.tensor(w)


def _rotation(d, seed):
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(d, d)))
    return q


D = 4
M1, M2 = np.array([0.0, 1.0, -2.0, 0.5]), np.array([1.0, 1.0, 0.0, -0.5])
Q = _rotation(D, 0)
CASES = {
    "diagonal": (np.diag([1.0, 2.0, 0.5, 3.0]), np.diag([0.3, 2.0, 1.5, 0.1])),
    "commuting": (Q @ np.diag([1.0, 2.0, 0.5, 3.0]) @ Q.T, Q @ np.diag([4.0, 0.2, 0.5, 1.0]) @ Q.T),
    "non-commuting": (Q @ np.diag([1.0, 2.0, 0.5, 3.0]) @ Q.T,
                      _rotation(D, 1) @ np.diag([4.0, 0.2, 0.5, 1.0]) @ _rotation(D, 1).T),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("n,m", [(50, 40), (3, 30)])  # 3 points: the covariance has rank 2 < d
def test_equals_the_closed_form_for_known_gaussians(case, n, m, device):
    s1, s2 = CASES[case]
    if n <= D:  # a rank-deficient x: compare with the closed form of its own (singular) moments
        x = torch.tensor(np.random.default_rng(5).normal(size=(n, D)))
        w = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
        mx = w.numpy() @ x.numpy()
        s1 = (x.numpy() - mx).T @ (w.numpy()[:, None] * (x.numpy() - mx))
        m1, a = mx, w
    else:
        g = np.random.default_rng(7).random(n) + 0.1
        x, a = cloud_with_moments(M1, s1, n, seed=2, weights=g / g.sum())
        m1 = M1
    y, b = cloud_with_moments(M2, s2, m, seed=3)
    value = GaussianW2()(*(t.to(device) for t in (x, y, a, b)))
    assert value.device.type == device
    ours = float(value.cpu())
    # scipy's sqrtm of a singular matrix turns its rounding-level zero eigenvalues (~1e-16) into
    # ~1e-8: the reference itself is only that accurate for the rank-deficient x
    assert ours == pytest.approx(closed_form(m1, s1, M2, s2), rel=1e-9 if n > D else 1e-7)
    if case == "diagonal" and n > D:  # the textbook special case, by hand
        sd1, sd2 = np.sqrt(np.diag(s1)), np.sqrt(np.diag(s2))
        assert ours == pytest.approx(((M1 - M2) ** 2).sum() + ((sd1 - sd2) ** 2).sum(), rel=1e-9)
    if case == "commuting" and n > D:  # commuting: ||S1^(1/2) - S2^(1/2)||_F^2
        assert ours == pytest.approx(((M1 - M2) ** 2).sum() + ((sl.sqrtm(s1) - sl.sqrtm(s2)) ** 2).sum(), rel=1e-9)


def test_close_to_exact_ot_on_large_gaussian_samples():
    # on the *same* samples: Gelbrich's bound gives gaussian_w2 <= W2^2 always, and for Gaussian
    # samples the gap shrinks with n (0.7-1.4 % at n = 2000 in d = 2 over seeds 0-2; 2 % is the
    # stated tolerance); against the population closed form the sampling error is ~2 % at this n
    torch.set_num_threads(1)
    s1, s2 = np.array([[2.0, 0.6], [0.6, 0.5]]), np.array([[0.7, -0.3], [-0.3, 1.5]])
    g = np.random.default_rng(0)
    x = torch.tensor(g.multivariate_normal([0.0, 0.0], s1, 2000))
    y = torch.tensor(g.multivariate_normal([1.0, -0.5], s2, 2000))
    ours = float(ddm.get_loss("gaussian_w2")(x, y))
    exact = float(ddm.get_loss("wasserstein")(x, y))
    assert 0.0 <= exact - ours <= 0.02 * exact, (ours, exact)
    assert ours == pytest.approx(closed_form(np.array([0.0, 0.0]), s1, np.array([1.0, -0.5]), s2), rel=0.05)


@pytest.mark.parametrize("seed", range(3))
def test_is_a_lower_bound_of_exact_w2_for_any_clouds(seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(40, 3, generator=g, dtype=torch.float64) ** 3  # skewed, not Gaussian
    y = torch.randn(30, 3, generator=g, dtype=torch.float64).sign() + 0.1 * torch.randn(30, 3, generator=g, dtype=torch.float64)
    b = torch.rand(30, generator=g, dtype=torch.float64) + 0.1
    b = b / b.sum()
    assert float(GaussianW2()(x, y, b=b)) <= float(ddm.get_loss("wasserstein")(x, y, b=b)) + 1e-12


def test_zero_for_identical_clouds():
    x, a = cloud_with_moments(M1, CASES["non-commuting"][0], 30, seed=4, weights=np.full(30, 1 / 30))
    assert abs(float(GaussianW2()(x, x.clone(), a, a.clone()))) < 1e-12
    far = (x + 1e3).float()
    assert abs(float(GaussianW2()(far, far[torch.randperm(30)], a.float(), a.float()))) < 1e-4
    x2 = torch.randn(3, 64, dtype=torch.float64)  # rank 2 in d = 64
    assert abs(float(GaussianW2()(x2, x2.clone()))) < 1e-12


@pytest.mark.parametrize("n", [2, 100])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gradients_finite_for_rank_deficient_inputs(n, dtype):
    # y: m = 2 points in d = 64 (rank 1); x: 2 points, or 100 points of which 3 are distinct (rank 2
    # covariance with n > d: the eigendecomposition path with 62 zero eigenvalues)
    g = torch.Generator().manual_seed(n)
    x = torch.randn(min(n, 3), 64, generator=g, dtype=dtype)
    x = x[torch.arange(n) % len(x)].clone().requires_grad_(True)
    y = torch.randn(2, 64, generator=g, dtype=dtype).requires_grad_(True)
    b = torch.tensor([0.3, 0.7], dtype=dtype, requires_grad=True)
    value = GaussianW2()(x, y, b=b)
    grads = torch.autograd.grad(value, [x, y, b])
    assert math.isfinite(float(value.detach())) and all(torch.isfinite(t).all() for t in grads)
    # duplicated points in y, and a single point (zero covariance)
    for yy in (y.detach()[[0, 0, 1, 1]].requires_grad_(True), y.detach()[:1].requires_grad_(True)):
        gy, = torch.autograd.grad(GaussianW2()(x, yy), [yy])
        assert torch.isfinite(gy).all()


@pytest.mark.parametrize("n", [5, 40])  # the data-factor path (n <= d) and the eigendecomposition path
def test_gradient_matches_finite_differences(n, device):
    g = torch.Generator().manual_seed(n)
    d = 6
    x = torch.randn(n, d, generator=g, dtype=torch.float64) @ torch.randn(d, d, generator=g, dtype=torch.float64)
    y = torch.randn(30, d, generator=g, dtype=torch.float64)
    a = torch.rand(n, generator=g, dtype=torch.float64) + 0.2
    x, y, a = x.to(device), y.to(device).requires_grad_(True), (a / a.sum()).to(device).requires_grad_(True)
    loss = GaussianW2()
    gx_y, ga = torch.autograd.grad(loss(x, y, a), [y, a])
    assert gx_y.device.type == device and ga.device.type == device
    gx_y, ga = gx_y.cpu(), ga.cpu()
    eps = 1e-6
    for i, j in [(0, 0), (7, 3), (29, 5)]:
        yp, ym = y.detach().clone(), y.detach().clone()
        yp[i, j] += eps
        ym[i, j] -= eps
        fd = float(loss(x, yp, a.detach()) - loss(x, ym, a.detach())) / (2 * eps)
        assert float(gx_y[i, j]) == pytest.approx(fd, rel=1e-6, abs=1e-8)
    delta = torch.zeros(n, dtype=torch.float64)
    delta[0], delta[-1] = 1.0, -1.0  # a direction in the simplex
    ad = a.detach()
    step = eps * delta.to(device)
    fd = float(loss(x, y.detach(), ad + step) - loss(x, y.detach(), ad - step)) / (2 * eps)
    assert float(ga @ delta) == pytest.approx(fd, rel=1e-6, abs=1e-8)


def test_psd_sqrt_forward_and_backward():
    g = torch.Generator().manual_seed(0)
    b = torch.randn(5, 5, generator=g, dtype=torch.float64)
    spd = b @ b.T + 0.5 * torch.eye(5, dtype=torch.float64)
    assert np.allclose(psd_sqrt(spd).numpy(), sl.sqrtm(spd.numpy()).real, atol=1e-12)
    # repeated eigenvalues (the identity block) are fine for the divided-difference backward
    assert torch.autograd.gradcheck(lambda m: psd_sqrt(m @ m.T + torch.eye(5, dtype=torch.float64)),
                                    (b.clone().requires_grad_(True),))
    v = torch.linalg.qr(b)[0]
    rep = (v * torch.tensor([2.0, 2.0, 2.0, 1.0, 0.0], dtype=torch.float64)) @ v.T
    rep = rep.requires_grad_(True)
    (psd_sqrt(rep) ** 2).sum().backward()
    assert torch.isfinite(rep.grad).all()


def test_registered_with_its_settings():
    loss = ddm.get_loss("gaussian_w2")
    assert isinstance(loss, GaussianW2) and loss.config() == {"name": "gaussian_w2", "class": "GaussianW2"}
    x = torch.randn(10, 3)
    assert ddm.get_loss("gaussian_w2")(x.half(), (x + 1).half()).dtype == torch.float16


def test_both_matching_strategies_run(distil_both):
    distil_both("gaussian_w2")
