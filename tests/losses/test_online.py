"""The online (KeOps) kernel sums of mmd and energy against their tensorized values and gradients."""
import pytest
import torch

import ddmetrics as ddm
from ddmetrics.losses._online import resolve_kernel_backend

pytest.importorskip("pykeops")

# each KeOps formula (and its gradient) is compiled once per machine, ~10 s each, per dtype and dimension:
# the cases share formulas (the unbiased MMD reuses the gaussian's), the laplacian's gradient is left out,
# and float32 at d = 16 are the formulas tests/test_gpu_speed.py's smoke run compiles too
CASES = [("mmd", {}, True), ("mmd", {"unbiased": True}, True), ("mmd", {"kernel": "laplacian"}, False),
         ("energy", {}, True)]


@pytest.mark.parametrize("name,kw,grad", CASES)
def test_online_equals_tensorized_value_and_gradient(name, kw, grad):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(300, 16, generator=gen)
    y = (torch.randn(200, 16, generator=gen) + 0.3).requires_grad_(grad)
    b = torch.rand(200, generator=gen)
    b = b / b.sum()
    dense = ddm.get_loss(name, backend="tensorized", **kw)(x, y, b=b)
    online = ddm.get_loss(name, backend="online", **kw)(x, y, b=b)
    g_dense = torch.autograd.grad(dense, (y,)) if grad else ()
    g_online = torch.autograd.grad(online, (y,)) if grad else ()
    # float32 sums of the same ~10^5 terms in another order (KeOps' tiles against one matmul): the value
    # is a difference of three such sums, so its error is ~1e-7 of the sums (~1), not of the value
    # the size of the sums: each kernel term of the median MMD is at most 3 (three bandwidths); the
    # energy distance's are mean distances
    scale = 3.0 if name == "mmd" else 2.0 * float(torch.cdist(x, y.detach()).mean())
    assert abs(float(online.detach()) - float(dense.detach())) <= 1e-5 * scale
    for gd, go in zip(g_dense, g_online):
        assert torch.allclose(go, gd, rtol=1e-3, atol=1e-5 * float(gd.abs().max()))


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
