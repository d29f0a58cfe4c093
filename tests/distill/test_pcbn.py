import pytest
import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from ddmetrics.distill.pcbn import BNStats, PCBNLoss, bn_inputs, bn_layers, per_class_bn_stats, weighted_mean_var


class _Net(nn.Module):
    """ConvNet-like: two conv/BN2d blocks, a BN1d on the flattened features."""

    def __init__(self):
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            self.features = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                                          nn.Conv2d(4, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(),
                                          nn.Flatten(), nn.Linear(3 * 36, 5), nn.BatchNorm1d(5))
            self.classifier = nn.Linear(5, 2)
            for bn in bn_layers(self):  # non-trivial running statistics
                bn.running_mean.uniform_(-0.5, 0.5)
                bn.running_var.uniform_(0.5, 2.0)

    def embed(self, x):
        return self.features(x)

    def forward(self, x):
        return self.classifier(self.embed(x))


class _Pairs(Dataset):
    """A plain map-style dataset yielding (image, int label)."""

    def __init__(self, images, labels):
        self.images, self.labels = images, labels

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.images[i], int(self.labels[i])


def _data(n0=12, n1=18):
    g = torch.Generator().manual_seed(1)
    images = torch.randn(n0 + n1, 1, 6, 6, generator=g)
    labels = torch.tensor([0] * n0 + [1] * n1)[torch.randperm(n0 + n1, generator=g)]
    images[labels == 1] = images[labels == 1] * 2 + 1.0
    return images, labels


def test_bn_inputs_captures_inputs_and_removes_hooks():
    model = _Net().eval()
    x = torch.randn(3, 1, 6, 6, generator=torch.Generator().manual_seed(0))
    with bn_inputs(model) as captured:
        model(x)
    assert [tuple(f.shape) for f in captured] == [(3, 4, 6, 6), (3, 3, 6, 6), (3, 5)]
    assert torch.allclose(captured[0], model.features[0](x))  # the input of the first BN: the conv output
    assert all(len(bn._forward_pre_hooks) == 0 and len(bn._forward_hooks) == 0 for bn in bn_layers(model))


@pytest.mark.parametrize("wrap", [TensorDataset, _Pairs])
def test_per_class_stats_equal_direct_computation(wrap, device):
    model = _Net().train().to(device)  # the pass must switch to eval mode and restore the flag
    images, labels = _data()  # CPU data, read batch by batch onto the model's device
    stats = per_class_bn_stats(model, wrap(images, labels), 2, batch_size=7)  # batches straddle the classes
    assert model.training and all(m.training for m in model.modules())
    fields = stats.mean + stats.var + stats.global_mean + stats.global_var + [stats.counts]
    assert all(t.device.type == device for t in fields)
    other = per_class_bn_stats(model, wrap(images, labels), 2, batch_size=30).to("cpu")
    stats = stats.to("cpu")
    assert stats.counts.tolist() == [12, 18]
    model = _Net().eval()  # the reference on the CPU (same seeded weights)
    for k in range(2):
        with torch.no_grad(), bn_inputs(model) as captured:
            model(images[labels == k])
        for layer, f in enumerate(captured):
            dims = (0, 2, 3) if f.dim() == 4 else (0,)
            assert stats.mean[layer].shape == (2, f.shape[1])
            assert torch.allclose(stats.mean[layer][k], f.mean(dims), atol=1e-5)
            assert torch.allclose(stats.var[layer][k], f.var(dims, unbiased=False), atol=1e-5)
    with torch.no_grad(), bn_inputs(model) as captured:
        model(images)
    for layer, f in enumerate(captured):
        dims = (0, 2, 3) if f.dim() == 4 else (0,)
        assert torch.allclose(stats.global_mean[layer], f.mean(dims), atol=1e-5)
        assert torch.allclose(stats.global_var[layer], f.var(dims, unbiased=False), atol=1e-5)
    # batch size does not change the result (exact sums, not averaged batch variances)
    for a, b in zip(stats.var, other.var):
        assert torch.allclose(a, b, atol=1e-6)


def _loop_eq14(F_, w):
    m, c, h, u = F_.shape
    mean, var = torch.zeros(c, dtype=F_.dtype), torch.zeros(c, dtype=F_.dtype)
    for ch in range(c):
        mean[ch] = sum(w[j] * F_[j, ch].sum() for j in range(m)) / (h * u * w.sum())
        var[ch] = sum(w[j] * ((F_[j, ch] - mean[ch]) ** 2).sum() for j in range(m)) / (h * u * w.sum())
    return mean, var


def test_weighted_operators_equal_eq14_and_reduce_to_plain_stats():
    g = torch.Generator().manual_seed(2)
    F_ = torch.randn(5, 3, 4, 4, generator=g, dtype=torch.float64) + torch.arange(5.0, dtype=torch.float64).view(5, 1, 1, 1)
    w = torch.rand(5, generator=g, dtype=torch.float64) * 3  # not normalised
    mean, var = weighted_mean_var(F_, w)
    ref_mean, ref_var = _loop_eq14(F_, w)
    assert torch.allclose(mean, ref_mean, atol=1e-12) and torch.allclose(var, ref_var, atol=1e-12)
    # the weights matter
    assert not torch.allclose(mean, F_.mean((0, 2, 3)))
    um, uv = weighted_mean_var(F_, torch.full((5,), 7.0, dtype=torch.float64))
    assert torch.allclose(um, F_.mean((0, 2, 3))) and torch.allclose(uv, F_.var((0, 2, 3), unbiased=False))
    # (m, C) features: no spatial dimensions
    v2 = torch.randn(6, 4, generator=g)
    m2, s2 = weighted_mean_var(v2, torch.ones(6))
    assert torch.allclose(m2, v2.mean(0)) and torch.allclose(s2, v2.var(0, unbiased=False))
    with pytest.raises(ValueError, match="weights"):
        weighted_mean_var(F_, -w)
    with pytest.raises(ValueError, match="weights"):
        weighted_mean_var(F_, torch.zeros(5, dtype=torch.float64))
    with pytest.raises(ValueError, match="weights"):
        weighted_mean_var(F_, w[:4])


def test_pcbn_vanishes_on_the_real_class_data_and_has_gradient():
    model = _Net().eval()
    images, labels = _data()
    stats = per_class_bn_stats(model, TensorDataset(images, labels), 2)
    reg = PCBNLoss(model, stats)
    uniform = torch.where(labels == 0, 1 / 12, 1 / 18)
    value, out = reg(images, labels, uniform)
    assert float(value.detach()) < 1e-8 and out.shape == (30, 2)
    # the all-class variant vanishes too against all-class statistics
    value_bn, _ = PCBNLoss(model, stats, mode="bn")(images, labels, torch.full((30,), 1 / 30))
    assert float(value_bn) < 1e-8
    # ... but the per-class one does not vanish when the classes are swapped
    swapped, _ = reg(images, 1 - labels, uniform)
    assert float(swapped) > 1e-2
    # non-uniform weights move the synthetic statistics away from the real ones
    skew, _ = reg(images, labels, torch.linspace(0.1, 1.0, 30))
    assert float(skew) > 1e-4

    syn = torch.randn(4, 1, 6, 6, generator=torch.Generator().manual_seed(3), requires_grad=True)
    value, _ = reg(syn, torch.tensor([0, 0, 1, 1]), torch.tensor([0.2, 0.8, 0.5, 0.5]))
    assert float(value.detach()) > 1e-3
    value.backward()
    assert syn.grad is not None and float(syn.grad.abs().sum()) > 0


def test_pcbn_equals_explicit_sum_over_classes_and_layers(device):
    on_device = _Net().eval().to(device)
    images, labels = _data()
    stats = per_class_bn_stats(on_device, TensorDataset(images, labels), 2)
    g = torch.Generator().manual_seed(4)
    syn = torch.randn(5, 1, 6, 6, generator=g)
    lab = torch.tensor([1, 0, 1, 1, 0])
    w = torch.rand(5, generator=g) + 0.1
    value, out = PCBNLoss(on_device, stats)(syn.to(device), lab.to(device), w.to(device))
    assert value.device.type == device and out.device.type == device
    value, out, stats = value.cpu(), out.cpu(), stats.to("cpu")
    model = _Net().eval()  # the explicit sum on the CPU (same seeded weights)
    with torch.no_grad(), bn_inputs(model) as captured:
        logits = model(syn)
    ref = 0.0
    for k in (0, 1):
        for layer, f in enumerate(captured):
            m, v = weighted_mean_var(f[lab == k], w[lab == k])
            ref += float(((m - stats.mean[layer][k]) ** 2).sum() + ((v - stats.var[layer][k]) ** 2).sum())
    assert abs(float(value.detach()) - ref) < 1e-5 * max(1.0, ref)
    assert torch.allclose(out, logits, atol=1e-5)
    # a forward that stops before the classifier still reaches every BN layer here
    value_e, feats = PCBNLoss(model, stats)(syn, lab, w, forward=model.embed)
    assert feats.shape == (5, 5) and abs(float(value_e) - ref) < 1e-5 * max(1.0, ref)


def test_bn_mode_without_stats_uses_running_statistics():
    model = _Net().eval()
    x = torch.randn(8, 1, 6, 6, generator=torch.Generator().manual_seed(5))
    value, _ = PCBNLoss(model, None, mode="bn")(x, torch.zeros(8, dtype=torch.long), None)
    with torch.no_grad(), bn_inputs(model) as captured:
        model(x)
    ref = 0.0
    for f, bn in zip(captured, bn_layers(model)):
        m, v = weighted_mean_var(f, torch.ones(8))
        ref += float(((m - bn.running_mean) ** 2).sum() + ((v - bn.running_var) ** 2).sum())
    assert abs(float(value.detach()) - ref) < 1e-5 * max(1.0, ref)


def test_validation():
    model = _Net().eval()
    images, labels = _data()
    stats = per_class_bn_stats(model, TensorDataset(images, labels), 3)  # class 2 has no images
    assert isinstance(stats, BNStats) and stats.counts.tolist() == [12, 18, 0]
    with pytest.raises(ValueError, match="mode"):
        PCBNLoss(model, stats, mode="global")
    with pytest.raises(ValueError, match="stats"):
        PCBNLoss(model, None)
    with pytest.raises(ValueError, match="classes without real statistics"):
        PCBNLoss(model, stats)(images[:2], torch.tensor([2, 2]), torch.ones(2))
    with pytest.raises(ValueError, match="labels"):
        per_class_bn_stats(model, TensorDataset(images, labels), 1)
    with pytest.raises(ValueError, match="BatchNorm"):
        per_class_bn_stats(nn.Sequential(nn.Flatten(), nn.Linear(36, 2)), TensorDataset(images, labels), 2)


def test_one_class_fast_path_equals_the_grouped_path():
    """The matmul path for one class and the index_add path for several give the same statistics
    and gradients (float64), and a bound regulariser equals the one-shot call."""
    from ddmetrics.distill.pcbn import _group_weights, _grouped_mean_var

    g = torch.Generator().manual_seed(0)
    f = (torch.randn(6, 4, 5, 5, generator=g, dtype=torch.float64) * 2 + 1).requires_grad_(True)
    w = torch.rand(6, generator=g, dtype=torch.float64) + 0.1
    flat = f.reshape(6, 4, 25)
    one = torch.zeros(6, dtype=torch.long)
    wn = _group_weights(w, one, 1)
    m1, v1 = _grouped_mean_var(flat, wn, one, 1)
    # the same group, reached through the several-groups path (a second, empty-free group of one image)
    two = torch.tensor([0, 0, 0, 0, 0, 1])
    m2, v2 = _grouped_mean_var(flat[:5], _group_weights(w[:5], one[:5], 1), one[:5], 1)
    m3, v3 = _grouped_mean_var(flat, _group_weights(w, two, 2), two, 2)
    assert torch.allclose(m2[0], m3[0], atol=1e-12) and torch.allclose(v2[0], v3[0], atol=1e-12)
    ref_mean = (w[:, None, None, None] * f).sum(0).mean((1, 2)) / w.sum()
    ref_var = (w[:, None, None, None] * (f - ref_mean[None, :, None, None]) ** 2).sum(0).mean((1, 2)) / w.sum()
    assert torch.allclose(m1[0], ref_mean, atol=1e-12) and torch.allclose(v1[0], ref_var, atol=1e-12)
    g1, = torch.autograd.grad((m1.sum() + v1.sum()), f)
    g2, = torch.autograd.grad((ref_mean.sum() + ref_var.sum()), f)
    assert torch.allclose(g1, g2, atol=1e-12)


def test_hand_written_moments_backward_matches_autograd():
    from ddmetrics.distill.pcbn import _group_weights, _grouped_mean_var

    g = torch.Generator().manual_seed(1)
    flat = (torch.randn(5, 3, 7, generator=g, dtype=torch.float64) * 1.5 + 0.5).requires_grad_(True)
    w = torch.rand(5, generator=g, dtype=torch.float64) + 0.2
    one = torch.zeros(5, dtype=torch.long)
    fixed = _group_weights(w, one, 1)  # no grad: the hand-written path
    tracked = _group_weights(w.clone().requires_grad_(True), one, 1)  # in autograd: the plain path
    assert torch.autograd.gradcheck(lambda f: _grouped_mean_var(f, fixed, one, 1), (flat,))
    m1, v1 = _grouped_mean_var(flat, fixed, one, 1)
    m2, v2 = _grouped_mean_var(flat, tracked, one, 1)
    assert torch.allclose(m1, m2, atol=1e-13) and torch.allclose(v1, v2, atol=1e-13)
    cm, cv = torch.randn(2, 1, 3, generator=g, dtype=torch.float64)
    g1, = torch.autograd.grad((m1 * cm).sum() + (v1 * cv).sum(), flat)
    g2, = torch.autograd.grad((m2 * cm).sum() + (v2 * cv).sum(), flat)
    assert torch.allclose(g1, g2, atol=1e-13)


def test_fused_one_class_regulariser_equals_the_per_layer_sum():
    """The one-node regulariser of a synthesis loop (every layer in one autograd Function) has the
    value and the gradients of the per-layer terms through the plain autograd path (float64),
    and passes gradcheck."""
    from ddmetrics.distill.pcbn import _group_weights, _grouped_mean_var, _OneGroupPCBN

    g = torch.Generator().manual_seed(2)
    flats = [(torch.randn(5, 3, 7, generator=g, dtype=torch.float64) * 1.5 + 0.5).requires_grad_(True),
             (torch.randn(5, 4, 1, generator=g, dtype=torch.float64) * 2 - 1).requires_grad_(True)]
    w = torch.rand(5, generator=g, dtype=torch.float64) + 0.2
    one = torch.zeros(5, dtype=torch.long)
    refs = [(torch.randn(c, generator=g, dtype=torch.float64), torch.rand(c, generator=g, dtype=torch.float64))
            for c in (3, 4)]
    wn = _group_weights(w, one, 1).view(-1)
    fused = _OneGroupPCBN.apply(wn, refs, *flats)
    tracked = _group_weights(w.clone().requires_grad_(True), one, 1)  # weights in autograd: the plain path
    plain = 0
    for f, (ref_mean, ref_var) in zip(flats, refs):
        mean, var = _grouped_mean_var(f, tracked, one, 1)
        plain = plain + ((mean - ref_mean) ** 2).sum() + ((var - ref_var) ** 2).sum()
    assert abs(float(fused) - float(plain)) < 1e-12 * float(plain)
    for a, b in zip(torch.autograd.grad(fused, flats), torch.autograd.grad(plain, flats)):
        assert torch.allclose(a, b, atol=1e-12)
    assert torch.autograd.gradcheck(lambda *fs: _OneGroupPCBN.apply(wn, refs, *fs), tuple(flats))


def test_one_class_moments_stay_accurate_in_float32_far_from_zero():
    """Channel means of 100 and spreads of 0.5 (a badly centred BN input): the float32 variance
    and gradient stay within 1e-4 (relative) of the float64 ones (E[f²] − μ² would lose the variance
    entirely: 1e4 against 0.25 at 7 significant digits)."""
    from ddmetrics.distill.pcbn import _group_weights, _grouped_mean_var

    g = torch.Generator().manual_seed(3)
    f64 = torch.randn(6, 4, 49, generator=g, dtype=torch.float64) * 0.5 + 100
    w = torch.rand(6, generator=g, dtype=torch.float64) + 0.1
    one = torch.zeros(6, dtype=torch.long)
    cm, cv = torch.randn(2, 1, 4, generator=g, dtype=torch.float64)
    out = {}
    for dtype in (torch.float64, torch.float32):
        f = f64.to(dtype).requires_grad_(True)
        mean, var = _grouped_mean_var(f, _group_weights(w.to(dtype), one, 1), one, 1)
        grad, = torch.autograd.grad((mean * cm.to(dtype)).sum() + (var * cv.to(dtype)).sum(), f)
        out[dtype] = (var.double(), grad.double())
    (v64, g64), (v32, g32) = out[torch.float64], out[torch.float32]
    assert float(((v32 - v64) / v64).abs().max()) < 1e-4
    assert float((g32 - g64).abs().max()) < 1e-4 * float(g64.abs().max())


@pytest.mark.parametrize("ratio", [90.0, 1e4])
def test_moments_in_float32_within_1e4_of_float64_for_channels_far_from_zero(ratio):
    """Channels with μ²/σ² = ``ratio``, on 28×28 maps: the float32 variance (from centred values)
    is within 1e-4 (relative) of the float64 variance of the same numbers; E[f²] − μ² would lose
    about log10(ratio) digits of float32's 7 to cancellation."""
    from ddmetrics.distill import pcbn

    g = torch.Generator().manual_seed(5)
    signs = torch.randint(0, 2, (1, 16, 1), generator=g) * 2 - 1
    f = torch.randn(10, 16, 784, generator=g) + ratio ** 0.5 * signs
    w = torch.rand(10, generator=g) + 0.1
    w = w / w.sum()
    _, v64 = pcbn._moments(f.double(), w.double())
    _, v32 = pcbn._moments(f, w)
    assert float(((v32.double() - v64) / v64).abs().max()) < 1e-4


def _fusable_net(dtype=torch.float64):
    """_Net in eval mode, frozen, in ``dtype``, with non-trivial BN weights and biases."""
    net = _Net().to(dtype).eval()
    with torch.no_grad():
        for bn in bn_layers(net):
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.5, 0.5)
    for prm in net.parameters():
        prm.requires_grad_(False)
    return net


def test_eval_batchnorm_node_gradcheck_and_output_equal_the_layer():
    """The fused node's output is the layer's, bit for bit; its gradient (output, mean and variance
    together) passes gradcheck in float64."""
    from ddmetrics.distill.pcbn import _EvalBatchNormMoments

    layer = bn_layers(_fusable_net())[0]
    g = torch.Generator().manual_seed(4)
    x = (torch.randn(3, 4, 5, 5, generator=g, dtype=torch.float64) * 1.5 + 0.7).requires_grad_(True)
    w = torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64)
    y, mean, var = _EvalBatchNormMoments.apply(x, w, layer)
    assert torch.equal(y, layer(x))
    ref_mean = (w[:, None, None, None] * x).sum(0).mean((1, 2))
    ref_var = (w[:, None, None, None] * (x - ref_mean[None, :, None, None]) ** 2).sum(0).mean((1, 2))
    assert torch.allclose(mean, ref_mean, atol=1e-13) and torch.allclose(var, ref_var, atol=1e-13)
    assert torch.autograd.gradcheck(lambda t: _EvalBatchNormMoments.apply(t, w, layer), (x,))


@pytest.mark.parametrize("min_elements", [0, 100, 10 ** 9])  # every layer fused, some, none
def test_fused_eval_path_equals_the_hooked_path(monkeypatch, min_elements):
    """A frozen eval-mode teacher: the regulariser, the forward's output and the gradient on the
    images equal those of the capture-and-one-node path (reached with a BN layer in autograd), and
    every layer's forward is restored after the call."""
    import ddmetrics.distill.pcbn as pcbn

    net = _fusable_net()
    images, labels = _data()
    stats = per_class_bn_stats(net, _Pairs(images.double(), labels), num_classes=2).to(dtype=torch.float64)
    g = torch.Generator().manual_seed(5)
    syn = torch.randn(4, 1, 6, 6, generator=g, dtype=torch.float64)
    labels = torch.zeros(4, dtype=torch.long)
    weights = torch.tensor([0.1, 0.4, 0.3, 0.2], dtype=torch.float64)
    monkeypatch.setattr(pcbn, "FUSE_MIN_ELEMENTS", min_elements)
    bound = PCBNLoss(net, stats).bind(labels, weights, syn)
    out = {}
    for path in ("fused", "hooked"):
        x = syn.clone().requires_grad_(True)
        if path == "hooked":  # a parameter in autograd: the layers are not fusable
            bn_layers(net)[0].weight.requires_grad_(True)
        reg, feats = bound(x, forward=net.embed)
        grad, = torch.autograd.grad(reg + feats.square().sum(), x)
        out[path] = (reg.detach(), feats.detach(), grad)
        assert all("forward" not in layer.__dict__ for layer in bn_layers(net))
    (r1, f1, g1), (r2, f2, g2) = out["fused"], out["hooked"]
    assert torch.equal(f1, f2) and torch.equal(f1, net.embed(syn))
    assert abs(float(r1) - float(r2)) < 1e-12 * float(r2) and float(r2) > 0
    assert torch.allclose(g1, g2, rtol=0, atol=1e-12 * float(g2.abs().max()))


def test_fused_path_restores_the_layers_after_an_error(monkeypatch):
    import ddmetrics.distill.pcbn as pcbn

    net = _fusable_net(torch.float32)
    stats = per_class_bn_stats(net, _Pairs(*_data()), num_classes=2)
    monkeypatch.setattr(pcbn, "FUSE_MIN_ELEMENTS", 0)
    bound = PCBNLoss(net, stats).bind(torch.zeros(2, dtype=torch.long), None, torch.zeros(2, 1, 6, 6))

    def failing(x):
        net.embed(x)
        raise RuntimeError("after the BatchNorm layers ran")

    with pytest.raises(RuntimeError, match="after the BatchNorm"):
        bound(torch.zeros(2, 1, 6, 6), forward=failing)
    assert all("forward" not in layer.__dict__ for layer in bn_layers(net))
