import numpy as np
import ot
import torch

from ddmetrics.losses import KRDual


def _cloud(seed, n=64, d=4):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


def test_monotone_in_shift_and_correlates_with_exact_w1(device):
    x = _cloud(0)
    base = _cloud(1)
    direction = torch.tensor([1.0, 0.5, 0.0, -0.5])
    shifts = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0]
    ours, exact = [], []
    for s in shifts:
        y = base + s * direction
        value = KRDual(steps=200, lr=2e-3, seed=0)(x.to(device), y.to(device))
        assert value.device.type == device
        ours.append(float(value.cpu()))
        exact.append(ot.emd2([], [], ot.dist(x.numpy(), y.numpy(), metric="euclidean")))
    assert all(u < v for u, v in zip(ours, ours[1:])), ours
    assert np.corrcoef(ours, exact)[0, 1] >= 0.95


def test_gradient_moves_y_toward_x(device):
    x = _cloud(2)
    y = (_cloud(3) + 3.0).to(device).requires_grad_(True)
    loss = KRDual(steps=100, seed=0)
    before = float(ot.emd2([], [], ot.dist(x.numpy(), y.detach().cpu().numpy(), metric="euclidean")))
    opt = torch.optim.Adam([y], lr=0.1)
    for _ in range(20):
        opt.zero_grad()
        loss(x.to(device), y).backward()
        assert y.grad.device.type == device
        opt.step()
    after = float(ot.emd2([], [], ot.dist(x.numpy(), y.detach().cpu().numpy(), metric="euclidean")))
    assert after < 0.7 * before


def test_critic_weights_never_leave_the_clip_box():
    x, y = _cloud(4) * 5, _cloud(5) * 5 + 2
    loss = KRDual(clip=0.05, steps=1, lr=0.5, warm_start=True)  # big steps try hard to escape
    for _ in range(30):
        loss(x, y)
        for prm in loss.critic.parameters():
            assert float(prm.abs().max()) <= 0.05 + 1e-7
