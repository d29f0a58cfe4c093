import pytest
import torch
from geomloss import SamplesLoss

import ddmetrics as ddm
from ddmetrics.losses import ExactOT, Sinkhorn
from ddmetrics.losses._sinkhorn import resolve_backend


def _data(seed, n=40, m=30, d=3):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = torch.randn(m, d, generator=g, dtype=torch.float64) + 1.0
    a = torch.rand(n, generator=g, dtype=torch.float64) + 0.2
    b = torch.rand(m, generator=g, dtype=torch.float64) + 0.2
    return x, y, a / a.sum(), b / b.sum()


@pytest.mark.parametrize("p,debias", [(2, True), (1, True), (2, False)])
def test_equals_geomloss(p, debias, device):
    x, y, a, b = _data(p)
    ours = Sinkhorn(blur=0.1, scaling=0.7, p=p, debias=debias, backend="tensorized")(
        *(t.to(device) for t in (x, y, a, b)))
    assert ours.device.type == device
    ref = SamplesLoss("sinkhorn", p=p, blur=0.1, scaling=0.7, debias=debias, backend="tensorized")(a, x, b, y)
    assert abs(float(ours.cpu()) - float(ref)) < 1e-10


def test_gradient_equals_geomloss(device):
    x, y, a, b = _data(3)
    y1, y2 = y.clone().to(device).requires_grad_(True), y.clone().requires_grad_(True)
    Sinkhorn(blur=0.1, backend="tensorized")(x.to(device), y1, a.to(device), b.to(device)).backward()
    SamplesLoss("sinkhorn", p=2, blur=0.1, scaling=0.5, backend="tensorized")(a, x, b, y2).backward()
    assert y1.grad.device.type == device
    assert torch.allclose(y1.grad.cpu(), y2.grad, atol=1e-10)


def test_geomloss_gets_its_own_diameter_estimate():
    # ours computes the bounding box's diagonal once and hands it to GeomLoss (which would
    # otherwise compute it again): the value must be the one GeomLoss estimates itself
    x, y, a, b = _data(4, d=5)
    loss = Sinkhorn(blur=0.1, backend="tensorized")
    seen = []
    build = loss.samples_loss
    loss.samples_loss = lambda backend, diameter=None: seen.append(diameter) or build(backend, diameter)
    value = loss(x, y, a, b)
    both = torch.cat([x, y]).numpy()
    assert seen == [pytest.approx(float(((both.max(0) - both.min(0)) ** 2).sum() ** 0.5), rel=1e-12)]
    # bit for bit on any CPU: min and max are exact, so both diameters are the norm of the same
    # vector, and the rest is GeomLoss's computation either way
    assert float(value) == float(SamplesLoss("sinkhorn", p=2, blur=0.1, scaling=0.5, backend="tensorized")(a, x, b, y))


def test_small_blur_approaches_half_w2():
    # GeomLoss's cost for p=2 is |x-y|^2 / 2, so S_eps -> W_2^2 / 2 as blur -> 0
    x, y, a, b = _data(5, n=25, m=20, d=2)
    exact = float(ExactOT(p=2)(x, y, a, b))
    errors = [abs(float(Sinkhorn(blur=blur, scaling=0.95)(x, y, a, b)) - exact / 2) for blur in (0.3, 0.1, 0.01)]
    assert errors[-1] < 0.01 * exact
    assert errors[0] > errors[-1]


def test_auto_backend_chooses_by_size_like_geomloss(monkeypatch):
    import ddmetrics.losses._sinkhorn as sk

    monkeypatch.setattr(sk, "keops_available", lambda: True)
    assert resolve_backend("auto", 5000, 5000, 512) == "tensorized"  # n·m = 5000², GeomLoss's limit
    assert resolve_backend("auto", 10_000, 100, 512) == "tensorized"
    assert resolve_backend("auto", 5001, 5000, 512) == "online"
    assert resolve_backend("auto", 20_000, 20_000, 3) == "multiscale"
    assert resolve_backend("auto", 20_000, 20_000, 3, p=1) == "online"
    assert resolve_backend("auto", 20_000, 20_000, 4) == "online"
    assert resolve_backend("auto", 10_000, 10_000, 3) == "online"  # multiscale only above 10000²
    assert resolve_backend("online", 10, 10, 2) == "online"
    monkeypatch.setattr(sk, "keops_available", lambda: False)
    assert resolve_backend("auto", 20_000, 20_000, 512) == "tensorized"
    assert isinstance(ddm.get_loss("sinkhorn"), Sinkhorn)
    with pytest.raises(ValueError, match="backend"):
        Sinkhorn(backend="gpu")
    with pytest.raises(ValueError, match="blur"):
        Sinkhorn(blur=0)


def test_keops_online_equals_tensorized_on_cpu():
    # the KeOps path "auto" picks on CUDA, exercised here on CPU with small inputs (compiles once, cached in build/)
    pytest.importorskip("pykeops")
    x, y, a, b = _data(7, n=30, m=20, d=3)
    y1, y2 = y.clone().requires_grad_(True), y.clone().requires_grad_(True)
    online = Sinkhorn(blur=0.1, backend="online")(x, y1, a, b)
    dense = Sinkhorn(blur=0.1, backend="tensorized")(x, y2, a, b)
    assert abs(float(online) - float(dense)) < 1e-6
    online.backward()
    dense.backward()
    assert torch.allclose(y1.grad, y2.grad, atol=1e-6)


@pytest.mark.parametrize("reach", [0.5, 3.0])
def test_unbalanced_equals_geomloss_reach(reach, device):
    x, y, a, b = _data(11)
    ours = Sinkhorn(blur=0.1, scaling=0.7, backend="tensorized", reach=reach)(*(t.to(device) for t in (x, y, a, b)))
    ref = SamplesLoss("sinkhorn", p=2, blur=0.1, scaling=0.7, backend="tensorized", reach=reach)(a, x, b, y)
    assert abs(float(ours.cpu()) - float(ref)) < 1e-10
    assert Sinkhorn(reach=reach).config()["reach"] == reach and "reach" not in Sinkhorn().config()


def test_unbalanced_caps_what_a_far_outlier_costs():
    # 5 % of y's mass moved 100 units away: balanced OT must carry it there (cost ~ 0.05 * 100^2 / 2 = 250);
    # with reach 1 the mass is destroyed instead, at a cost bounded by rho = reach^2 per unit (KL penalties)
    x, y, a, b = _data(5, n=40, m=40)
    y_out = y.clone()
    y_out[:2] += 100.0
    u = torch.full((40,), 1 / 40, dtype=torch.float64)
    balanced = float(Sinkhorn(blur=0.1, backend="tensorized")(x, y_out, u, u))
    unbalanced = float(Sinkhorn(blur=0.1, backend="tensorized", reach=1.0)(x, y_out, u, u))
    assert balanced > 200.0 and unbalanced < 5.0


def test_bad_reach_is_refused_by_name():
    for bad in (0, -1.0, "far", True):
        with pytest.raises(ValueError, match="reach must be a positive number or None"):
            Sinkhorn(reach=bad)
