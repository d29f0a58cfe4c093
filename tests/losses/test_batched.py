"""loss.batched: B problems at once equal B separate calls, for every registered backend; bad
shapes refused naming the argument."""
import pytest
import torch

import ddmetrics as ddm
from ddmetrics.losses import base

FAST = {"krdual": {"steps": 3}, "ncfd": {"n_frequencies": 64}}


#: backends with a vectorised ``_batched_loss``: one computation for all problems, which may sum in
#: another order than one problem's (batched matmuls, eigh / svd of a stack). Their values agree
#: with separate calls to float64 round-off: 1e-12 relative is ~5000 ulps, room for a d-term
#: sum reordered, far below any difference a wrong batch index would make (order 1)
VECTORISED = {"mmd", "energy", "gaussian_w2", "sliced"}


@pytest.mark.parametrize("name", sorted(set(ddm.available_losses()) - set(base.missing_losses()) - {"sinkhorn"}))
@pytest.mark.parametrize("weighted", [True, False], ids=["weighted", "uniform"])
def test_batched_equals_separate_calls(name, weighted):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 12, 4, generator=gen, dtype=torch.float64)
    y = torch.randn(3, 7, 4, generator=gen, dtype=torch.float64) + 0.5
    y[1] *= 3  # problems of different scales: a per-problem bandwidth / centre mixed up would show
    b = torch.rand(3, 7, generator=gen, dtype=torch.float64)
    b = b / b.sum(1, keepdim=True) if weighted else None
    # a seeded loss (sliced, krdual, ncfd) draws as it goes: each side gets a fresh instance
    out = ddm.get_loss(name, **FAST.get(name, {})).batched(x, y, b=b)
    loss = ddm.get_loss(name, **FAST.get(name, {}))
    expected = torch.stack([loss(x[i], y[i], b=None if b is None else b[i]) for i in range(3)])
    assert out.shape == (3,)
    if name in VECTORISED:
        assert torch.allclose(out, expected, rtol=1e-12, atol=0)
        assert type(loss)._batched_loss is not base.DistributionLoss._batched_loss
    else:  # the default loop: the same operations in the same order, bit-equal
        assert torch.equal(out, expected)


@pytest.mark.parametrize("kw", [dict(kernel="laplacian", unbiased=True), dict(kernel="polynomial", unbiased=True),
                                dict(kernel="linear"), dict(bandwidth=[0.5, 2.0])], ids=lambda kw: str(kw))
def test_batched_mmd_kernels_equal_separate_calls(kw):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(4, 9, 3, generator=gen, dtype=torch.float64)
    y = torch.randn(4, 1, 3, generator=gen, dtype=torch.float64)  # one point: the U-statistic's empty sum is 0
    loss = ddm.get_loss("mmd", **kw)
    expected = torch.stack([loss(x[i], y[i]) for i in range(4)])
    assert torch.allclose(loss.batched(x, y), expected, rtol=1e-12, atol=1e-15)


def test_batched_gradient_is_each_problems_gradient():
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(2, 10, 3, generator=gen, dtype=torch.float64)
    y = torch.randn(2, 5, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    for name in ("mmd", "energy", "gaussian_w2"):
        loss = ddm.get_loss(name)
        (g_batched,) = torch.autograd.grad(loss.batched(x, y).sum(), y)
        for i in range(2):
            (g_one,) = torch.autograd.grad(loss(x[i], y[i]), y)
            assert torch.allclose(g_batched[i], g_one[i], rtol=1e-10, atol=1e-12), name


def test_batched_sinkhorn_is_one_geomloss_call_with_the_largest_diameter():
    pytest.importorskip("geomloss")
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(3, 12, 4, generator=gen, dtype=torch.float64)
    y = torch.randn(3, 7, 4, generator=gen, dtype=torch.float64) + 0.5
    y[1] *= 3
    loss = ddm.get_loss("sinkhorn", backend="tensorized")
    out = loss.batched(x, y)
    from ddmetrics.losses._sinkhorn import _spread

    # GeomLoss anneals every problem of a batch from one diameter, the largest: with that diameter
    # given to separate calls, the same computation problem by problem
    diameter = max(_spread(x[i], y[i]) for i in range(3))
    u = torch.full((12,), 1 / 12, dtype=torch.float64)
    v = torch.full((7,), 1 / 7, dtype=torch.float64)
    same_schedule = torch.stack([loss.samples_loss("tensorized", diameter)(u, x[i], v, y[i]) for i in range(3)])
    assert torch.allclose(out, same_schedule, rtol=1e-12, atol=0)
    # against separate calls, each annealed from its own diameter: the ε-scaling's convergence error
    # (scaling 0.5: 7e-4 relative measured here), not a difference of target ε
    separate = torch.stack([loss(x[i], y[i]) for i in range(3)])
    assert torch.allclose(out, separate, rtol=3e-3, atol=0)


def test_bad_batched_input_is_refused_naming_the_argument():
    loss = ddm.get_loss("mmd")
    x, y = torch.randn(2, 5, 3), torch.randn(2, 4, 3)
    with pytest.raises(ValueError, match="same number of problems B, got x: 2, y: 3"):
        loss.batched(x, torch.randn(3, 4, 3))
    with pytest.raises(ValueError, match=r"b must have shape \(B, m\) = \(2, 4\), got \(2, 5\)"):
        loss.batched(x, y, b=torch.full((2, 5), 0.2))
    with pytest.raises(ValueError, match=r"x must be batched as \(B, points"):
        loss.batched(torch.randn(5, 3), y)
    with pytest.raises(ValueError, match="problem 1: a"):
        loss.batched(x, y, a=torch.tensor([[0.2] * 5, [0.5] * 5]))


def test_batched_online_mmd_with_fixed_bandwidths_equals_separate_calls():
    pytest.importorskip("pykeops")
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(2, 30, 3, generator=gen)
    y = torch.randn(2, 20, 3, generator=gen)
    for bandwidth in ("median", [0.5, 2.0]):  # per-problem tensors, or the same floats for every problem
        loss = ddm.get_loss("mmd", backend="online", bandwidth=bandwidth)
        expected = torch.stack([loss(x[i], y[i]) for i in range(2)])
        # the same KeOps reduction per problem: float32 round-off of sums over 50 points
        assert torch.allclose(loss.batched(x, y), expected, rtol=1e-5, atol=1e-7)
