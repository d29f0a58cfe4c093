import numpy as np
import pytest
import torch

from ddmetrics.losses import MMD


def _np_kernel(kernel, X, Y, bws, degree=3, coef0=1.0):
    d2 = ((X[:, None, :] - Y[None, :, :]) ** 2).sum(-1)
    if kernel == "gaussian":
        return sum(np.exp(-d2 / (2 * s**2)) for s in bws)
    if kernel == "laplacian":
        return sum(np.exp(-np.sqrt(d2) / s) for s in bws)
    if kernel == "linear":
        return X @ Y.T
    return (X @ Y.T / X.shape[1] + coef0) ** degree


def _np_mmd(kernel, X, Y, a, b, bws, unbiased=False):
    kxx, kyy, kxy = (_np_kernel(kernel, P, Q, bws) for P, Q in ((X, X), (Y, Y), (X, Y)))
    if not unbiased:
        return a @ kxx @ a + b @ kyy @ b - 2 * a @ kxy @ b
    n, m = len(X), len(Y)
    xx = (kxx.sum() - np.trace(kxx)) / (n * (n - 1))
    yy = (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
    return xx + yy - 2 * kxy.mean()


def _data(seed):
    g = np.random.default_rng(seed)
    X, Y = g.normal(size=(30, 4)), g.normal(size=(20, 4)) * 1.3 + 0.4
    a, b = g.random(30) + 0.1, g.random(20) + 0.1
    return X, Y, a / a.sum(), b / b.sum()


@pytest.mark.parametrize("kernel", ["gaussian", "laplacian", "linear", "polynomial"])
def test_weighted_v_statistic_equals_numpy(kernel, device):
    X, Y, a, b = _data(1)
    bws = [0.7, 2.0]
    ours = MMD(kernel=kernel, bandwidth=bws)(*(torch.tensor(t, device=device) for t in (X, Y, a, b)))
    assert ours.device.type == device
    assert abs(float(ours.cpu()) - _np_mmd(kernel, X, Y, a, b, bws)) < 1e-8


@pytest.mark.parametrize("kernel", ["gaussian", "laplacian", "linear", "polynomial"])
def test_unbiased_u_statistic_equals_numpy(kernel):
    X, Y, _, _ = _data(2)
    ours = MMD(kernel=kernel, bandwidth=1.5, unbiased=True)(torch.tensor(X), torch.tensor(Y))
    assert abs(float(ours) - _np_mmd(kernel, X, Y, None, None, [1.5], unbiased=True)) < 1e-8


def test_median_bandwidth_equals_numpy():
    X, Y, a, b = _data(3)
    Z = np.concatenate([X, Y])
    d = np.sqrt(((Z[:, None] - Z[None]) ** 2).sum(-1))
    med = np.median(d[~np.eye(len(Z), dtype=bool)])
    # torch.median takes the lower middle element of an even count
    off = np.sort(d[~np.eye(len(Z), dtype=bool)])
    med = off[(len(off) - 1) // 2]
    ours = MMD()(torch.tensor(X), torch.tensor(Y), torch.tensor(a), torch.tensor(b))
    assert abs(float(ours) - _np_mmd("gaussian", X, Y, a, b, [0.5 * med, med, 2 * med])) < 1e-10


def test_linear_is_squared_mean_difference_and_zero_for_identical():
    X, Y, _, _ = _data(4)
    x, y = torch.tensor(X), torch.tensor(Y)
    assert abs(float(MMD(kernel="linear")(x, y)) - float(((x.mean(0) - y.mean(0)) ** 2).sum())) < 1e-12
    for kernel in ["gaussian", "laplacian", "linear", "polynomial"]:
        assert abs(float(MMD(kernel=kernel)(x, x.clone()))) < 1e-12


def test_gradient_matches_finite_differences(device):
    X, Y, a, b = _data(5)
    x, y = torch.tensor(X, device=device), torch.tensor(Y, device=device, requires_grad=True)
    loss = MMD(kernel="gaussian", bandwidth=1.0)
    loss(x, y).backward()
    assert y.grad.device.type == device
    eps = 1e-6
    yp, ym = y.detach().clone(), y.detach().clone()
    yp[2, 1] += eps
    ym[2, 1] -= eps
    assert abs(float(y.grad[2, 1].cpu()) - float(((loss(x, yp) - loss(x, ym)) / (2 * eps)).cpu())) < 1e-7


def test_bad_configuration():
    with pytest.raises(ValueError, match="kernel"):
        MMD(kernel="cosine")
    with pytest.raises(ValueError, match="bandwidth"):
        MMD(bandwidth=-1.0)
