import numpy as np
import ot
import pytest
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


def _critic_arrays(critic):
    return [p.detach().double().numpy().copy() for p in (critic.l1.weight, critic.l1.bias, critic.l2.weight,
                                                         critic.l2.bias)]


def test_one_sgd_step_is_plain_gradient_ascent_then_clipping():
    """critic_optimizer="sgd" (KR-dual's Algorithm 1): theta <- clip(theta + lr * grad of the dual
    gap a.f(x) - b.f(y)), the gradient written out by hand for f = w2 . leaky(W1 z + b1) + b2."""
    from ddmetrics.losses._krdual import Critic

    gen = torch.Generator().manual_seed(7)
    x = torch.randn(12, 3, generator=gen, dtype=torch.float64)
    y = torch.randn(7, 3, generator=gen, dtype=torch.float64) * 1.5 + 0.5
    a = torch.rand(12, generator=gen, dtype=torch.float64) + 0.2
    b = torch.rand(7, generator=gen, dtype=torch.float64) + 0.2
    a, b = a / a.sum(), b / b.sum()
    clip, lr = 0.05, 2.0
    loss = KRDual(hidden=5, clip=clip, steps=1, lr=lr, seed=4, critic_optimizer="sgd")
    value = loss(x, y, a, b)
    # the first fresh critic is the first draw of the stream seeded by `seed`
    W1, b1, w2, b2 = _critic_arrays(Critic(3, 5, torch.Generator().manual_seed(4), clip))
    w2 = w2[0]
    xn, yn, an, bn = x.numpy(), y.numpy(), a.numpy(), b.numpy()

    def leaky(h):
        return np.where(h > 0, h, 0.2 * h)

    hx, hy = xn @ W1.T + b1, yn @ W1.T + b1
    dx, dy = np.where(hx > 0, 1.0, 0.2) * w2, np.where(hy > 0, 1.0, 0.2) * w2  # d f / d h
    grads = [(an[:, None] * dx).T @ xn - (bn[:, None] * dy).T @ yn,  # d gap / d W1
             an @ dx - bn @ dy,  # d gap / d b1
             (an @ leaky(hx) - bn @ leaky(hy))[None],  # d gap / d w2
             np.array([an.sum() - bn.sum()])]  # d gap / d b2
    expected = [np.clip(p + lr * g, -clip, clip) for p, g in zip((W1, b1, w2[None], b2), grads)]
    stepped = np.concatenate([(p + lr * g).ravel() for p, g in zip((W1, b1, w2[None], b2), grads)])
    assert (np.abs(stepped) > clip).any() and (np.abs(stepped) < clip).any()  # the clip is exercised
    for got, want in zip(_critic_arrays(loss.critic), expected):
        np.testing.assert_allclose(got.reshape(want.shape), want, rtol=0, atol=1e-15)
    W1n, b1n, w2n, b2n = expected
    f = lambda z: leaky(z @ W1n.T + b1n) @ w2n[0] + b2n[0]
    assert float(value) == pytest.approx(an @ f(xn) - bn @ f(yn), rel=1e-12)
    # Adam's first step is lr * sign(grad): another update
    adam = KRDual(hidden=5, clip=clip, steps=1, lr=lr, seed=4)
    adam(x, y, a, b)
    assert not np.allclose(_critic_arrays(adam.critic)[0], expected[0])
    with pytest.raises(ValueError, match="critic_optimizer"):
        KRDual(critic_optimizer="rmsprop")


def test_cold_calls_start_from_fresh_seeded_critics():
    """warm_start=False: every call draws a new critic from the loss's stream seeded by `seed`
    (KR-dual's Algorithm 1 initialises f inside its loops): two calls start from different
    critics, the same seed gives the same sequence, and a checkpoint continues it."""
    import io

    from ddmetrics.losses._krdual import Critic

    x, y = _cloud(6, n=20), _cloud(7, n=9) + 1.0
    stream = torch.Generator().manual_seed(3)
    refs = [_critic_arrays(Critic(4, 8, stream, 0.01)) for _ in range(3)]  # consecutive draws

    def run(loss, calls):
        out = []
        for _ in range(calls):
            value = loss(x, y)
            out.append((float(value), _critic_arrays(loss.critic)))
        return out

    first = run(KRDual(hidden=8, steps=0, seed=3), 3)  # steps=0: the critic stays at its draw
    for (_, got), want in zip(first, refs):
        assert all(np.array_equal(g, w) for g, w in zip(got, want))
    assert not np.array_equal(first[0][1][0], first[1][1][0]) and first[0][0] != first[1][0]
    again = run(KRDual(hidden=8, steps=0, seed=3), 3)
    assert [v for v, _ in again] == [v for v, _ in first]
    # trained critics (sgd, 5 steps): reproducible, and resumable from a checkpoint after one call
    kw = dict(hidden=8, steps=5, lr=1e-2, seed=5, critic_optimizer="sgd")
    reference = run(KRDual(**kw), 3)
    assert [v for v, _ in run(KRDual(**kw), 3)] == [v for v, _ in reference]
    part = KRDual(**kw)
    run(part, 1)
    buf = io.BytesIO()
    torch.save(part.state_dict(), buf)
    buf.seek(0)
    resumed = KRDual(**kw)
    resumed.load_state_dict(torch.load(buf, weights_only=True))
    assert [v for v, _ in run(resumed, 2)] == [v for v, _ in reference[1:]]


def test_critics_leave_the_global_random_stream_alone():
    # every fresh critic is drawn from the loss's own stream only (nn.Linear's default init is skipped)
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    KRDual(hidden=8, steps=2)(_cloud(1, n=10), _cloud(2, n=6))
    assert torch.equal(torch.rand(3), expected)
