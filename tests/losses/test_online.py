"""The online (KeOps) kernel sums of mmd and energy against their tensorized values and gradients."""
import pytest
import torch

import ddmetrics as ddm
from ddmetrics.losses._online import resolve_kernel_backend

pytest.importorskip("pykeops")

# each KeOps formula (and its gradient) is compiled once per machine, ~10 s each: the cases share
# formulas (the unbiased MMD reuses the gaussian's) and the laplacian's gradient is left out
CASES = [("mmd", {}, True), ("mmd", {"unbiased": True}, True), ("mmd", {"kernel": "laplacian"}, False),
         ("energy", {}, True)]


@pytest.mark.parametrize("name,kw,grad", CASES)
def test_online_equals_tensorized_value_and_gradient(name, kw, grad):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(300, 5, generator=gen, dtype=torch.float64)
    y = (torch.randn(200, 5, generator=gen, dtype=torch.float64) + 0.3).requires_grad_(grad)
    b = torch.rand(200, generator=gen, dtype=torch.float64)
    b = b / b.sum()
    dense = ddm.get_loss(name, backend="tensorized", **kw)(x, y, b=b)
    online = ddm.get_loss(name, backend="online", **kw)(x, y, b=b)
    g_dense = torch.autograd.grad(dense, (y,)) if grad else ()
    g_online = torch.autograd.grad(online, (y,)) if grad else ()
    # float64 sums of the same ~10^5 terms in another order (KeOps' tiles): round-off ~1e-16 * 10^5 relative
    assert float(online.detach()) == pytest.approx(float(dense.detach()), rel=1e-10, abs=1e-14)
    for gd, go in zip(g_dense, g_online):
        assert torch.allclose(go, gd, rtol=1e-8, atol=1e-14)


def test_auto_goes_online_above_5000_squared_entries_and_records_only_a_set_backend():
    assert resolve_kernel_backend("auto", 5000, 100, "mmd") == "tensorized"
    assert resolve_kernel_backend("auto", 5001, 100, "mmd") == "online"
    assert resolve_kernel_backend("tensorized", 10 ** 6, 10, "mmd") == "tensorized"
    assert "backend" not in ddm.get_loss("mmd").config() and ddm.get_loss("energy").config() == {
        "name": "energy", "class": "EnergyDistance"}
    assert ddm.get_loss("energy", backend="online").config()["backend"] == "online"


def test_bad_backend_settings_are_refused_by_name():
    with pytest.raises(ValueError, match="backend must be one of"):
        ddm.get_loss("energy", backend="keops")
    with pytest.raises(ValueError, match="backend='online' needs a kernel"):
        ddm.get_loss("mmd", kernel="polynomial", backend="online")
