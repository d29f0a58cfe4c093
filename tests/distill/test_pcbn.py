import torch
from torch import nn

from ddmetrics.data import ArrayDataset
from ddmetrics.distill.pcbn import PCBNLoss, bn_inputs, per_class_bn_stats, weighted_mean_var


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.Conv2d(4, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(),
                         nn.Flatten(), nn.Linear(3 * 36, 2)).eval()


def _data():
    g = torch.Generator().manual_seed(1)
    images = torch.randn(30, 1, 6, 6, generator=g)
    labels = torch.tensor([0] * 12 + [1] * 18)
    images[labels == 1] += 1.0
    return ArrayDataset(images, labels, 2)


def test_per_class_stats_equal_direct_computation():
    model, data = _model(), _data()
    stats = per_class_bn_stats(model, data, 2, batch_size=7)  # batches straddle the classes
    for k in range(2):
        with torch.no_grad(), bn_inputs(model) as captured:
            model(data.images[data.labels == k])
        for layer, f in enumerate(captured):
            assert torch.allclose(stats.mean[layer][k], f.mean((0, 2, 3)), atol=1e-5)
            assert torch.allclose(stats.var[layer][k], f.var((0, 2, 3), unbiased=False), atol=1e-5)


def test_weighted_operators_equal_eq14_and_reduce_to_plain_stats():
    g = torch.Generator().manual_seed(2)
    F_ = torch.randn(5, 3, 4, 4, generator=g, dtype=torch.float64)
    w = torch.rand(5, generator=g, dtype=torch.float64)
    mean, var = weighted_mean_var(F_, w)
    m, c, h, u = F_.shape
    for ch in range(c):
        num = sum(w[j] * F_[j, ch].sum() for j in range(m))
        ref_mean = num / (h * u * w.sum())
        ref_var = sum(w[j] * ((F_[j, ch] - ref_mean) ** 2).sum() for j in range(m)) / (h * u * w.sum())
        assert abs(float(mean[ch] - ref_mean)) < 1e-12 and abs(float(var[ch] - ref_var)) < 1e-12
    um, uv = weighted_mean_var(F_, torch.ones(5, dtype=torch.float64))
    assert torch.allclose(um, F_.mean((0, 2, 3))) and torch.allclose(uv, F_.var((0, 2, 3), unbiased=False))


def test_pcbn_vanishes_on_the_real_class_data_and_has_gradient():
    model, data = _model(), _data()
    stats = per_class_bn_stats(model, data, 2)
    reg = PCBNLoss(model, stats)
    uniform = torch.cat([torch.full((12,), 1 / 12), torch.full((18,), 1 / 18)])
    value, out = reg(data.images, data.labels, uniform)
    assert float(value) < 1e-8 and out.shape == (30, 2)
    syn = torch.randn(4, 1, 6, 6, generator=torch.Generator().manual_seed(3), requires_grad=True)
    value, _ = reg(syn, torch.tensor([0, 0, 1, 1]), torch.full((4,), 0.5))
    assert float(value) > 1e-3
    value.backward()
    assert syn.grad is not None and float(syn.grad.abs().sum()) > 0
    # the all-class variant compares against all-class statistics instead
    value_bn, _ = PCBNLoss(model, stats, mode="bn")(data.images, data.labels, torch.full((30,), 1 / 30))
    assert float(value_bn) < 1e-8
