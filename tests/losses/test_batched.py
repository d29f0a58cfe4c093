"""loss.batched: B problems at once equal B separate calls, for every registered backend; bad
shapes refused naming the argument."""
import pytest
import torch

import ddmetrics as ddm
from ddmetrics.losses import base

FAST = {"krdual": {"steps": 3}, "ncfd": {"n_frequencies": 64}}


@pytest.mark.parametrize("name", sorted(set(ddm.available_losses()) - set(base.missing_losses())))
def test_batched_equals_separate_calls(name):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 12, 4, generator=gen, dtype=torch.float64)
    y = torch.randn(3, 7, 4, generator=gen, dtype=torch.float64) + 0.5
    b = torch.rand(3, 7, generator=gen, dtype=torch.float64)
    b = b / b.sum(1, keepdim=True)
    # a seeded loss (sliced, krdual, ncfd) draws as it goes: each side gets a fresh instance
    out = ddm.get_loss(name, **FAST.get(name, {})).batched(x, y, b=b)
    loss = ddm.get_loss(name, **FAST.get(name, {}))
    expected = torch.stack([loss(x[i], y[i], b=b[i]) for i in range(3)])
    assert out.shape == (3,)
    # the same operations in the same order: bit-equal
    assert torch.equal(out, expected)


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
