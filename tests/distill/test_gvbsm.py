"""G-VBSM's statistic matching and data densification (ddmetrics.distill.gvbsm).

Tolerances: the hand computations below run in float64 with other summation orders (Python
loops, NumPy, SciPy) than the module's vectorised torch kernels, so results agree to a few
float64 roundings per summed value: relative 1e-10 leaves orders of magnitude of margin on these
tens-of-values sums while any formula slip (a wrong weight, order or normalisation) is O(1).
Outputs stored as float32 (reference statistics) are compared at float32's resolution (1e-6).
"""
import io
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.linalg import eigh
from scipy.special import rel_entr, softmax
from torch import nn

from ddmetrics.distill.gvbsm import (CONV_STATISTICS, StatisticMatching, conv_input_statistics, densification_loss,
                                     ema_statistic, reference_conv_statistics)

RTOL = 1e-10  # float64, different summation orders (see the module docstring)


def _gen(seed):
    return torch.Generator(device="cpu").manual_seed(seed)


# ---------------------------------------------------------------- hand computations (loops, NumPy)

def _bilinear(x, out_h, out_w):
    """Bilinear resize with half-pixel centres (align_corners=False), edge-clamped; explicit loops."""
    n, c, h, w = x.shape
    out = np.zeros((n, c, out_h, out_w))

    def source(i, size_in, size_out):
        s = max((i + 0.5) * size_in / size_out - 0.5, 0.0)
        i0 = int(math.floor(s))
        return i0, min(i0 + 1, size_in - 1), s - i0

    for i in range(out_h):
        y0, y1, ly = source(i, h, out_h)
        for j in range(out_w):
            x0, x1, lx = source(j, w, out_w)
            out[:, :, i, j] = ((1 - ly) * ((1 - lx) * x[:, :, y0, x0] + lx * x[:, :, y0, x1])
                               + ly * ((1 - lx) * x[:, :, y1, x0] + lx * x[:, :, y1, x1]))
    return out


def _loop_statistics(x, patch):
    """(channel_mean, channel_var, patch_mean, patch_var) by loops over values (biased variances)."""
    x = np.asarray(x.detach().double() if isinstance(x, torch.Tensor) else x, dtype=np.float64)
    n, c, h, w = x.shape

    def moments(values):
        m = sum(values) / len(values)
        return m, sum((v - m) ** 2 for v in values) / len(values)

    channel = [moments([x[b, k, i, j] for b in range(n) for i in range(h) for j in range(w)]) for k in range(c)]
    rows, cols = -(-h // patch), -(-w // patch)
    if (rows * patch, cols * patch) != (h, w):
        x = _bilinear(x, rows * patch, cols * patch)
    cells = []
    for u in range(rows):  # (u v) order: u major
        for v in range(cols):
            cells.append(moments([x[b, k, u * patch + i, v * patch + j] for b in range(n) for k in range(c)
                                  for i in range(patch) for j in range(patch)]))
    return tuple(np.array(a) for a in ([m for m, _ in channel], [s for _, s in channel],
                                       [m for m, _ in cells], [s for _, s in cells]))


def _close(actual, expected, rtol=RTOL, atol=0.0):
    actual = actual.detach().double().numpy() if isinstance(actual, torch.Tensor) else np.asarray(actual)
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol)


# ---------------------------------------------------------------- conv_input_statistics

@pytest.mark.parametrize("shape, patch", [((2, 3, 8, 8), 4), ((2, 3, 6, 6), 4), ((3, 2, 5, 7), 2),
                                          ((2, 2, 2, 2), 4), ((2, 2, 3, 4), 1)])
def test_conv_input_statistics_match_loops(shape, patch):
    x = torch.randn(*shape, generator=_gen(sum(shape)), dtype=torch.float64) * 2 + 0.5
    got = conv_input_statistics(x, patch)
    expected = _loop_statistics(x, patch)
    rows, cols = -(-shape[2] // patch), -(-shape[3] // patch)
    assert [tuple(t.shape) for t in got] == [(shape[1],), (shape[1],), (rows * cols,), (rows * cols,)]
    for g, e in zip(got, expected):
        _close(g, e, atol=1e-14)  # the atol only for cells whose variance is ~0 after upsampling


def test_resize_is_torch_bilinear_without_align_corners():
    """6x6 -> 8x8 as F.interpolate(mode="bilinear") with its defaults (the release's call), which the
    hand resize above reproduces; align_corners=True gives other patch statistics."""
    x = torch.randn(2, 3, 6, 6, generator=_gen(3), dtype=torch.float64)
    up = F.interpolate(x, size=(8, 8), mode="bilinear")
    _close(up, _bilinear(x.numpy(), 8, 8))
    _, _, pm, pv = conv_input_statistics(x, 4)
    other = F.interpolate(x, size=(8, 8), mode="bilinear", align_corners=True)
    _, _, pm_other, pv_other = conv_input_statistics(other, 4)
    assert not torch.allclose(pv, pv_other, rtol=1e-3)


def test_patch_groups_follow_the_einops_order():
    """Cell (u, v) is entry u*V + v: "b c (u h) (v w) -> (u v) (b c h w)", here non-square (U=2, V=3)."""
    h, w = torch.meshgrid(torch.arange(8), torch.arange(12), indexing="ij")
    x = ((h // 4) * 10 + (w // 4)).double().expand(2, 3, 8, 12).contiguous()
    x = x + torch.randn(2, 3, 8, 12, generator=_gen(0), dtype=torch.float64) * 0.01
    _, _, pm, pv = conv_input_statistics(x, 4)
    _close(pm, [0, 1, 2, 10, 11, 12], rtol=0, atol=0.01)
    # the pattern written as its reshape/permute: groups (u v), values (b c h w)
    groups = x.reshape(2, 3, 2, 4, 3, 4).permute(2, 4, 0, 1, 3, 5).reshape(6, -1)
    _close(pm, groups.mean(1).numpy())
    _close(pv, groups.var(1, unbiased=False).numpy())


# ---------------------------------------------------------------- ema_statistic

def test_ema_statistic_value_and_gradient():
    p = torch.randn(5, generator=_gen(1), dtype=torch.float64, requires_grad=True)
    stat = p.square() * 3 + p  # some differentiable statistic
    state = torch.randn(5, generator=_gen(2), dtype=torch.float64)
    value, new_state = ema_statistic(stat, state, 0.8)
    _close(value, (0.8 * state + 0.2 * stat.detach()).numpy())
    _close(new_state, value.detach().numpy())
    assert not new_state.requires_grad
    c = torch.randn(5, generator=_gen(3), dtype=torch.float64)
    (g_value,) = torch.autograd.grad((value * c).sum(), p, retain_graph=True)
    (g_stat,) = torch.autograd.grad((stat * c).sum(), p)
    _close(g_value, g_stat.numpy())  # coefficient 1: the current statistic's gradient
    assert g_stat.abs().min() > 0
    first, first_state = ema_statistic(stat, None, 0.8)  # no state yet: the statistic itself
    _close(first, stat.detach().numpy())
    _close(first_state, stat.detach().numpy())
    plain, _ = ema_statistic(stat, state, 0.0)
    _close(plain, stat.detach().numpy())


# ---------------------------------------------------------------- a tiny teacher

class _Net(nn.Module):
    """conv0 (stem, 6x6 input: resized to 8x8) -> bn0 -> conv1 (stride 2, 6x6 input) -> bn1 ->
    conv2 (1x1, 3x3 input: resized to 4x4, one cell) -> pool -> fc. Hooks: conv0, bn0, conv1, bn1, conv2."""

    def __init__(self):
        super().__init__()
        g = _gen(0)
        self.conv0 = nn.Conv2d(2, 3, 3, padding=1)
        self.bn0 = nn.BatchNorm2d(3)
        self.conv1 = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.bn1 = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 4, 1)
        self.fc = nn.Linear(4, 3)
        with torch.no_grad():
            for prm in self.parameters():
                prm.copy_(torch.randn(prm.shape, generator=g) * 0.5)
            for bn in (self.bn0, self.bn1):
                bn.running_mean.copy_(torch.randn(bn.num_features, generator=g) * 0.3)
                bn.running_var.copy_(torch.rand(bn.num_features, generator=g) + 0.5)
        self.double().eval()

    def layer_inputs(self, x):
        """The inputs of conv0, bn0, conv1, bn1, conv2 (the hook order), computed directly."""
        z0 = self.conv0(x)
        a1 = F.relu(self.bn0(z0))
        z1 = self.conv1(a1)
        a2 = F.relu(self.bn1(z1))
        return [x, z0, a1, z1, a2]

    def forward(self, x):
        a2 = self.layer_inputs(x)[-1]
        return self.fc(F.adaptive_avg_pool2d(F.relu(self.conv2(a2)), 1).flatten(1))


_KINDS = ["conv", "bn", "conv", "bn", "conv"]


def _reference(net, seed=5):
    """Arbitrary reference statistics of the right sizes (cells: 4, 4, 1 at 6x6 images)."""
    g = _gen(seed)
    out = []
    for conv, cells in ((net.conv0, 4), (net.conv1, 4), (net.conv2, 1)):
        c = conv.in_channels
        out.append({"channel_mean": torch.randn(c, generator=g, dtype=torch.float64),
                    "channel_var": torch.rand(c, generator=g, dtype=torch.float64) + 0.5,
                    "patch_mean": torch.randn(cells, generator=g, dtype=torch.float64),
                    "patch_var": torch.rand(cells, generator=g, dtype=torch.float64) + 0.5})
    return out


def _images(seed, n=4):
    return torch.randn(n, 2, 6, 6, generator=_gen(seed), dtype=torch.float64)


def _hand_targets_and_stats(net, x, reference):
    """Per hook: (list of targets, list of statistics as NumPy) in the module's statistic order."""
    out = []
    conv = 0
    with torch.no_grad():
        inputs = net.layer_inputs(x)
    for kind, inp, layer in zip(_KINDS, inputs, [net.conv0, net.bn0, net.conv1, net.bn1, net.conv2]):
        stats = _loop_statistics(inp, 4)
        if kind == "bn":
            out.append(([layer.running_mean.numpy(), layer.running_var.numpy()], list(stats[:2])))
        else:
            out.append(([reference[conv][k].numpy() for k in CONV_STATISTICS], list(stats)))
            conv += 1
    return out


# ---------------------------------------------------------------- reference_conv_statistics

def test_reference_statistics_are_the_batch_weighted_mean():
    net = _Net()
    net.train()  # borrowed: put in eval for the pass and given back in training mode
    running = net.bn0.running_mean.clone()
    b1, b2 = _images(1, n=3), _images(2, n=5)
    ref = reference_conv_statistics(net, [b1, (b2, torch.zeros(5))], total=8)
    assert net.training and net.bn0.training and torch.equal(net.bn0.running_mean, running)
    assert all(p.requires_grad for p in net.parameters())
    net.eval()
    for layer, index in enumerate((0, 2, 4)):  # conv0, conv1, conv2 inputs
        s1 = _loop_statistics(net.layer_inputs(b1)[index].detach(), 4)
        s2 = _loop_statistics(net.layer_inputs(b2)[index].detach(), 4)
        assert set(ref[layer]) == set(CONV_STATISTICS)
        for k, a, b in zip(CONV_STATISTICS, s1, s2):
            assert ref[layer][k].dtype == torch.float32
            _close(ref[layer][k], (3 * a + 5 * b) / 8, rtol=1e-6, atol=1e-7)  # float32 storage
    whole = _loop_statistics(torch.cat([b1, b2]), 4)
    assert not np.allclose(ref[0]["channel_var"].numpy(), whole[1], rtol=1e-3)  # per-batch variances, not global
    with pytest.raises(ValueError, match="total"):
        reference_conv_statistics(net, [b1, b2], total=9)


# ---------------------------------------------------------------- StatisticMatching

def _hand_loss(hand, states, momentum, weights, init):
    """Σ_h w_h Σ_s ‖target − EMA‖₂ with the EMA advanced in place in ``states``; returns the loss,
    the per-hook terms and the surrogate coefficients −(target − EMA)/‖·‖ of each statistic."""
    total, terms, coefs = 0.0, [], []
    for h, (targets, stats) in enumerate(hand):
        r, c = 0.0, []
        for s_i, (target, stat) in enumerate(zip(targets, stats)):
            prev = states.get((h, s_i), np.zeros_like(stat) if init == "zero" else None)
            ema = stat if prev is None else momentum * prev + (1 - momentum) * stat
            states[(h, s_i)] = ema
            d = target - ema
            r += np.linalg.norm(d)
            c.append(-d / np.linalg.norm(d))
        terms.append(r)
        coefs.append(c)
        total += weights[h] * r
    return total, terms, coefs


def _torch_statistics(x, patch=4):
    """The four statistics as plain differentiable torch ops (resize, the einops reshape, means)."""
    n, c, h, w = x.shape
    mean = x.mean((0, 2, 3))
    var = ((x - mean[None, :, None, None]) ** 2).mean((0, 2, 3))
    rows, cols = -(-h // patch), -(-w // patch)
    if (rows * patch, cols * patch) != (h, w):
        x = F.interpolate(x, size=(rows * patch, cols * patch), mode="bilinear")
    groups = x.reshape(n, c, rows, patch, cols, patch).permute(2, 4, 0, 1, 3, 5).reshape(rows * cols, -1)
    pm = groups.mean(1)
    return [mean, var, pm, ((groups - pm[:, None]) ** 2).mean(1)]


@pytest.mark.parametrize("init", ["zero", "first"])
def test_statistic_matching_against_hand_computation(init):
    net = _Net()
    reference = _reference(net)
    match = StatisticMatching(net, reference, momentum=0.8, drop_rate=0.0, first_multiplier=10.0, ema_init=init)
    assert [name for name, _ in match.layers] == ["conv0", "bn0", "conv1", "bn1", "conv2"]
    weights = [10.0, 1, 1, 1, 1]
    states = {}
    for step, seed in enumerate((11, 12)):
        x = _images(seed).requires_grad_()
        loss, logits = match(x, _gen(step))
        _close(logits, net(x).detach().numpy())
        expected, terms, coefs = _hand_loss(_hand_targets_and_stats(net, x, reference), states, 0.8, weights, init)
        _close(loss, expected)
        _close(match.last_terms, terms)
    # the gradient: that of Σ_h w_h Σ_s coef·s(x), the coefficients held constant (the EMA trick
    # gives each statistic the gradient of ‖target − s‖ at the EMA's value)
    (grad,) = torch.autograd.grad(loss, x)
    inputs = net.layer_inputs(x)
    surrogate = 0.0
    for h, (kind, inp) in enumerate(zip(_KINDS, inputs)):
        stats = _torch_statistics(inp)[:2] if kind == "bn" else _torch_statistics(inp)
        surrogate = surrogate + weights[h] * sum((torch.from_numpy(c) * s).sum() for c, s in zip(coefs[h], stats))
    (expected_grad,) = torch.autograd.grad(surrogate, x)
    _close(grad, expected_grad.numpy(), atol=1e-13)
    assert grad.abs().max() > 1e-3


def test_release_ema_starts_from_zero():
    """ema_init="zero": the first call compares 0.2·s (the release's float-0 start); "first": s."""
    net = _Net()
    x = _images(11)
    zero = StatisticMatching(net, _reference(net), drop_rate=0.0)
    first = StatisticMatching(net, _reference(net), drop_rate=0.0, ema_init="first")
    zero(x, _gen(0))
    first(x, _gen(0))
    s = zero.state_dict()["states"][1]["channel_var"]
    _close(s, 0.2 * first.state_dict()["states"][1]["channel_var"].numpy())


def test_drop_rate_one_keeps_only_batchnorm_terms():
    net = _Net()
    reference = _reference(net)
    match = StatisticMatching(net, reference, drop_rate=1.0, ema_init="first")
    x = _images(11)
    loss, _ = match(x, _gen(0))
    hand = _hand_targets_and_stats(net, x, reference)
    _, terms, _ = _hand_loss(hand, {}, 0.8, [1] * 5, "first")
    _close(loss, terms[1] + terms[3])  # bn0 + bn1; the ×10 sat on the (dropped) stem conv
    assert [float(t) == 0.0 for t in match.last_terms] == [True, False, True, False, True]
    states = match.state_dict()["states"]
    assert [s is None for s in states] == [True, False, True, False, True]  # dropped: no EMA update
    kept = StatisticMatching(net, reference, drop_rate=0.0)
    kept(x, _gen(0))
    assert bool((kept.last_terms > 0).all())


def test_drops_are_drawn_from_the_generator_in_layer_order():
    net = _Net()
    match = StatisticMatching(net, _reference(net), drop_rate=0.5, ema_init="first")
    draws, seen = _gen(7), []
    replay = _gen(7)
    before = None
    for step in range(6):
        match(_images(20 + step), draws)
        dropped = (torch.rand(3, generator=replay, dtype=torch.float64) < 0.5).tolist()
        seen += dropped
        conv_terms = match.last_terms[[0, 2, 4]]
        assert [float(t) == 0.0 for t in conv_terms] == dropped
        after = match.state_dict()["states"]
        if before is not None:
            for conv_hook, d in zip((0, 2, 4), dropped):
                if d and before[conv_hook] is not None:  # a dropped layer's EMA stays where it was
                    assert torch.equal(after[conv_hook]["patch_mean"], before[conv_hook]["patch_mean"])
        before = after
    assert any(seen) and not all(seen)


def test_first_multiplier_scales_exactly_the_first_hook():
    net = _Net()
    x = _images(11)
    ten = StatisticMatching(net, _reference(net), drop_rate=0.0, first_multiplier=10.0)
    one = StatisticMatching(net, _reference(net), drop_rate=0.0, first_multiplier=1.0)
    l10, _ = ten(x, _gen(0))
    l1, _ = one(x, _gen(0))
    _close(ten.last_terms, one.last_terms.numpy())
    _close(l10 - l1, 9 * float(one.last_terms[0]), rtol=1e-9)  # a difference of two ~same-size sums


class _BatchNormFirst(nn.Module):
    """The BN is registered before the conv it follows: registration order, not run order, picks the first hook."""

    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm2d(3)
        self.conv = nn.Conv2d(2, 3, 3, padding=1)

    def forward(self, x):
        return self.bn(self.conv(x)).mean((2, 3))


def test_first_hook_is_in_registration_order():
    net = _BatchNormFirst().double().eval()
    ref = [{"channel_mean": torch.zeros(2), "channel_var": torch.ones(2), "patch_mean": torch.zeros(4),
            "patch_var": torch.ones(4)}]
    match = StatisticMatching(net, ref, drop_rate=0.0, first_multiplier=3.0)
    assert [name for name, _ in match.layers] == ["bn", "conv"]
    loss, _ = match(_images(11), _gen(0))
    _close(loss, 3 * float(match.last_terms[0]) + float(match.last_terms[1]))


def test_state_dict_round_trip_gives_the_same_next_value():
    net = _Net()
    match = StatisticMatching(net, _reference(net), drop_rate=0.4)
    for step in range(3):
        match(_images(30 + step), _gen(step))
    buffer = io.BytesIO()
    torch.save(match.state_dict(), buffer)
    buffer.seek(0)
    restored = StatisticMatching(net, _reference(net), drop_rate=0.4)
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    fresh = StatisticMatching(net, _reference(net), drop_rate=0.4)
    x = _images(40)
    expected, _ = match(x, _gen(9))
    got, _ = restored(x, _gen(9))
    other, _ = fresh(x, _gen(9))
    _close(got, float(expected.detach()), rtol=1e-12)  # the same operations on the same values
    assert not math.isclose(float(other.detach()), float(expected.detach()), rel_tol=1e-3)  # the states matter
    with pytest.raises(ValueError, match="architecture"):
        StatisticMatching(_BatchNormFirst(), [dict(
            channel_mean=torch.zeros(2), channel_var=torch.ones(2), patch_mean=torch.zeros(4),
            patch_var=torch.ones(4))]).load_state_dict(match.state_dict())


def test_statistic_matching_needs_eval_mode_and_matching_references():
    net = _Net()
    match = StatisticMatching(net, _reference(net))
    net.train()
    with pytest.raises(ValueError, match="eval"):
        match(_images(1), _gen(0))
    net.eval()
    with pytest.raises(ValueError, match="image size"):  # 8x8 images: 4 cells at conv1 were 6x6 ones
        match(torch.randn(2, 2, 12, 12, dtype=torch.float64), _gen(0))


# ---------------------------------------------------------------- densification_loss

def _scipy_densification(images, labels, tau):
    flat = images.detach().double().numpy().reshape(len(images), -1)
    labels = labels.numpy()
    total = 0.0
    for k in np.unique(labels):
        x = flat[labels == k]
        lam = eigh(x @ x.T, eigvals_only=True)
        total += rel_entr(softmax(lam / tau), softmax(lam)).sum()
    return total


def _dd_data(seed=0):
    images = torch.randn(9, 2, 3, 3, generator=_gen(seed), dtype=torch.float64) * 0.4
    labels = torch.tensor([0, 1, 0, 2, 1, 0, 2, 0, 3])  # class 3: one image
    return images, labels


def test_densification_loss_matches_scipy():
    images, labels = _dd_data()
    for tau in (4.0, 1.5):
        got = densification_loss(images, labels, tau=tau)
        expected = _scipy_densification(images, labels, tau)
        assert expected > 1e-3
        _close(got, expected)


def test_eigvalsh_agrees_with_the_release_eigvals():
    """Values and gradient of the release's form (eigvals(...).real) equal eigvalsh's on a Gram matrix."""
    images, labels = _dd_data(1)
    images.requires_grad_()
    ours = densification_loss(images, labels)
    flat = images.reshape(9, -1)
    release = 0.0
    for k in labels.unique():
        x = flat[labels == k]
        gram = x @ x.t()
        general = torch.linalg.eigvals(gram)
        assert general.imag.abs().max() < 1e-10 * gram.abs().max()
        _close(general.real.sort().values, torch.linalg.eigvalsh(gram).detach().numpy(), atol=1e-12)
        lam = general.real
        release = release + F.kl_div(lam.log_softmax(-1), (lam / 4.0).softmax(-1).detach(), reduction="sum")
    _close(ours, float(release.detach()))
    g_ours = torch.autograd.grad(ours, images)[0]
    g_release = torch.autograd.grad(release, images)[0]
    _close(g_ours, g_release.numpy(), rtol=1e-8, atol=1e-12)  # distinct eigenvalues: both well conditioned


def _frozen_target_loss(flat, labels, targets):
    """Σ_k KL(q_k ‖ softmax(λ_k(flat))) with the target spectra q_k held fixed (NumPy/SciPy)."""
    return sum(rel_entr(targets[k], softmax(eigh(flat[labels == k] @ flat[labels == k].T, eigvals_only=True))).sum()
               for k in targets)


def test_densification_gradient_against_finite_differences():
    """The gradient is that of the student side only (the target softmax(λ/τ) is detached): central
    differences of the loss with the target spectra frozen at the point, in float64. eps = 1e-6:
    truncation O(eps²) and rounding O(1e-16/eps) both far below the atol of 1e-7 on O(0.1) entries."""
    images, labels = _dd_data(2)
    images.requires_grad_()
    (grad,) = torch.autograd.grad(densification_loss(images, labels, tau=2.0), images)
    flat0 = images.detach().numpy().reshape(9, -1)
    lab = labels.numpy()
    targets = {k: softmax(eigh(flat0[lab == k] @ flat0[lab == k].T, eigvals_only=True) / 2.0) for k in np.unique(lab)}
    eps, numeric = 1e-6, np.zeros_like(flat0)
    for index in np.ndindex(*flat0.shape):
        up, down = flat0.copy(), flat0.copy()
        up[index] += eps
        down[index] -= eps
        numeric[index] = (_frozen_target_loss(up, lab, targets) - _frozen_target_loss(down, lab, targets)) / (2 * eps)
    assert np.abs(numeric).max() > 1e-2
    _close(grad.reshape(9, -1), numeric, rtol=1e-6, atol=1e-7)
    # and autograd's own finite-difference check of the module's function where the target is a
    # constant: tau -> infinity makes it uniform (no dependence on the images)
    assert torch.autograd.gradcheck(lambda im: densification_loss(im, labels, tau=1e300), (images,), eps=1e-6,
                                    atol=1e-7, rtol=1e-5)


def test_densification_single_image_class_and_pooling():
    one = torch.randn(1, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    loss = densification_loss(one, torch.tensor([5]))
    assert float(loss.detach()) == 0.0
    (grad,) = torch.autograd.grad(loss, one)  # attached, with a zero gradient (the release's 1-element KL too)
    assert float(grad.abs().max()) == 0.0
    images = torch.randn(6, 2, 8, 8, generator=_gen(3), dtype=torch.float64)
    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    pooled = densification_loss(images, labels, size=4)
    _close(pooled, float(densification_loss(F.avg_pool2d(images, 2), labels)))
    assert not math.isclose(float(pooled), float(densification_loss(images, labels)), rel_tol=1e-3)


# ---------------------------------------------------------------- bad input

def _bad_calls():
    net = _Net()
    ref = _reference(net)
    x = _images(0)
    labels = torch.tensor([0, 1, 0, 1])
    match = StatisticMatching(net, ref)
    return [
        (lambda: conv_input_statistics(x, 0), ValueError, "patch"),
        (lambda: conv_input_statistics(x[0], 4), ValueError, "x must be 4-D"),
        (lambda: ema_statistic(x, None, 1.0), ValueError, "momentum"),
        (lambda: ema_statistic(x, x[0], 0.5), ValueError, "state"),
        (lambda: StatisticMatching(net, ref, drop_rate=1.5), ValueError, "drop_rate"),
        (lambda: StatisticMatching(net, ref, momentum=1.0), ValueError, "momentum"),
        (lambda: StatisticMatching(net, ref, patch=0), ValueError, "patch"),
        (lambda: StatisticMatching(net, ref, first_multiplier=-1.0), ValueError, "first_multiplier"),
        (lambda: StatisticMatching(net, ref, ema_init="ones"), ValueError, "ema_init"),
        (lambda: StatisticMatching(net, ref[:2]), ValueError, "conv_reference"),
        (lambda: StatisticMatching(nn.Sequential(nn.Linear(2, 2)), []), ValueError, "model has no"),
        (lambda: match(x[0], _gen(0)), ValueError, "images must be 4-D"),
        (lambda: match(x, 0), TypeError, "generator"),
        (lambda: reference_conv_statistics(nn.Linear(2, 2), [x], 4), ValueError, "model has no"),
        (lambda: reference_conv_statistics(net, [x], 0), ValueError, "total"),
        (lambda: densification_loss(x, labels[:3]), ValueError, "labels"),
        (lambda: densification_loss(x, labels.float()), ValueError, "labels"),
        (lambda: densification_loss(x[0], labels), ValueError, "images must be 4-D"),
        (lambda: densification_loss(x, labels, tau=0.0), ValueError, "tau"),
        (lambda: densification_loss(x, labels, size=0), ValueError, "size"),
    ]


@pytest.mark.parametrize("case", range(20))
def test_bad_input_names_the_argument(case):
    call, error, message = _bad_calls()[case]
    with pytest.raises(error, match=message):
        call()
