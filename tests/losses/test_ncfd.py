"""NCFD: the paper's formula at known frequencies, invariances, zero on identical clouds, the
ascent, monotonicity in a shift, and a checkpoint that continues bit-identically."""
import io
import math

import numpy as np
import pytest
import torch

import ddmetrics as ddm
from ddmetrics.losses import NCFD
from ddmetrics.losses._ncfd import ncfd_value

SMALL = dict(n_frequencies=128, hidden=16)


def _cloud(seed, n=48, d=4, dtype=torch.float64):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _weights(seed, n, dtype=torch.float64):
    w = torch.rand(n, generator=torch.Generator().manual_seed(seed), dtype=dtype) + 0.1
    return w / w.sum()


def _paper_form(t, x, y, a, b, alpha):
    """The formula as written in the paper, with complex numbers and angles (numpy)."""
    phi_x = (a[:, None] * np.exp(1j * x @ t.T)).sum(0)
    phi_y = (b[:, None] * np.exp(1j * y @ t.T)).sum(0)
    amp = (np.abs(phi_x) - np.abs(phi_y)) ** 2
    pha = 2 * np.abs(phi_x) * np.abs(phi_y) * (1 - np.cos(np.angle(phi_x) - np.angle(phi_y)))
    return np.sqrt(alpha * amp + (1 - alpha) * pha).mean()


@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.5, 1.0])
def test_untrained_value_is_the_paper_formula_at_gaussian_frequencies(alpha, device):
    # steps=0: the sampler is the identity at initialisation, so the frequencies are the first
    # standard normal draw of the seeded (CPU) generator divided by the bandwidth, on every device
    x, y = _cloud(0), _cloud(1, n=30) * 1.3 + 0.2
    a, b = _weights(2, 48), _weights(3, 30)
    loss = NCFD(steps=0, alpha=alpha, bandwidth=2.0, seed=5, n_frequencies=256)
    eps = torch.randn(256, 4, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    ref = _paper_form(eps.numpy() / 2.0, x.numpy(), y.numpy(), a.numpy(), b.numpy(), alpha)
    value = loss(*(t.to(device) for t in (x, y, a, b)))
    assert value.device.type == device
    assert float(value.cpu()) == pytest.approx(ref, rel=1e-10)
    # at alpha = 1/2 the radicand is |Phi_x - Phi_y|^2 / 2
    if alpha == 0.5:
        t = eps.numpy() / 2.0
        diff = (a.numpy()[:, None] * np.exp(1j * x.numpy() @ t.T)).sum(0) - (
            b.numpy()[:, None] * np.exp(1j * y.numpy() @ t.T)).sum(0)
        assert ref == pytest.approx(np.sqrt(np.abs(diff) ** 2 / 2).mean(), rel=1e-10)


def test_default_unit_is_the_median_distance_of_the_reference_cloud():
    # the unit follows x only: the optimised y does not change the frequencies' scale
    x, y = _cloud(8), _cloud(9, n=30) * 3 + 2
    dist = np.sqrt(((x.numpy()[:, None] - x.numpy()[None]) ** 2).sum(-1))
    off = np.sort(dist[~np.eye(48, dtype=bool)])
    unit = off[(len(off) - 1) // 2]  # torch.median's lower middle element
    assert float(NCFD(steps=0)(x, y)) == pytest.approx(float(NCFD(steps=0, bandwidth=float(unit))(x, y)), rel=1e-12)
    # with no spread in x the pooled median is used
    one = x[:1].expand(5, 4)
    pooled = np.sqrt(((np.concatenate([one.numpy(), y.numpy()])[:, None] - np.concatenate([one.numpy(), y.numpy()])[None]) ** 2).sum(-1))
    off = np.sort(pooled[~np.eye(35, dtype=bool)])
    assert float(NCFD(steps=0)(one, y)) == pytest.approx(
        float(NCFD(steps=0, bandwidth=float(off[(len(off) - 1) // 2]))(one, y)), rel=1e-12)


def test_invariant_to_translation_and_scale_with_the_median_unit():
    x, y = _cloud(4), _cloud(5, n=30) + 0.5
    loss = lambda p, q: float(NCFD(steps=3, **SMALL)(p, q))
    ref = loss(x, y)
    assert loss(x + 7.0, y + 7.0) == pytest.approx(ref, rel=1e-9)
    assert loss(1e3 * x, 1e3 * y) == pytest.approx(ref, rel=1e-9)


def test_zero_for_identical_clouds():
    # bit-identical inputs give exactly 0 (the stable phase term has no cancellation); the same
    # measure summed in another order is 0 up to rounding: below 1e-12 in float64, 1e-5 in float32
    x, a = _cloud(6), _weights(7, 48)
    assert float(NCFD(**SMALL)(x, x.clone(), a, a.clone())) == 0.0
    perm = torch.randperm(48, generator=torch.Generator().manual_seed(0))
    assert float(NCFD(**SMALL)(x, x[perm], a, a[perm])) < 1e-12
    assert float(NCFD(**SMALL)(x.float() + 50, x[perm].float() + 50, a.float(), a[perm].float())) < 1e-5


@pytest.mark.parametrize("seed", range(3))
def test_monotone_in_a_shift(seed):
    x = _cloud(10 + seed, n=64)
    direction = torch.tensor([1.0, 0.5, 0.0, -0.5], dtype=torch.float64)
    values = [float(NCFD(seed=seed, n_frequencies=256)(x, x + s * direction)) for s in (0.0, 0.5, 1.0, 2.0)]
    assert values[0] == 0.0 and all(u < v for u, v in zip(values, values[1:])), values
    other = _cloud(20 + seed, n=64)  # another sample of the same law: > 0, still increasing
    values = [float(NCFD(seed=seed, n_frequencies=256)(x, other + s * direction)) for s in (0.0, 0.5, 1.0, 2.0)]
    assert all(u < v for u, v in zip(values, values[1:])), values


def test_ascent_steps_do_not_decrease_the_value_on_average():
    # the sampler maximises: on a common set of probe frequencies the trained sampler sees a larger
    # discrepancy than the untrained one, and so do the returned values, on average over 6 pairs
    probe = torch.randn(4096, 4, generator=torch.Generator().manual_seed(99), dtype=torch.float64)
    gains, returned = [], []
    for seed in range(6):
        x, y = _cloud(30 + seed), _cloud(40 + seed, n=30) * 1.2 + 0.3
        a, b = torch.full((48,), 1 / 48, dtype=torch.float64), torch.full((30,), 1 / 30, dtype=torch.float64)
        cold = NCFD(steps=0, seed=seed, bandwidth=1.0, **SMALL)
        hot = NCFD(steps=20, seed=seed, bandwidth=1.0, **SMALL)
        returned.append(float(hot(x, y)) - float(cold(x, y)))
        with torch.no_grad():  # the untrained sampler is the identity
            before = ncfd_value(probe, x - x.mean(0), y - x.mean(0), a, b, 0.5)
            after = ncfd_value(hot.sampler(probe), x - x.mean(0), y - x.mean(0), a, b, 0.5)
        gains.append(float(after - before))
    assert np.mean(gains) > 0 and np.mean(returned) > 0, (gains, returned)
    assert sum(g > 0 for g in gains) >= 5, gains


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gradients_finite_and_match_finite_differences(dtype, device):
    x, y = _cloud(50, dtype=dtype).to(device), (_cloud(51, n=20, dtype=dtype) + 0.3).to(device).requires_grad_(True)
    b = _weights(52, 20, dtype).to(device).requires_grad_(True)
    loss = NCFD(steps=2, bandwidth=1.5, **SMALL)  # a fixed unit: the median is piecewise constant anyway
    gy, gb = torch.autograd.grad(loss(x, y, b=b), [y, b])
    assert gy.device.type == device and gb.device.type == device
    assert torch.isfinite(gy).all() and torch.isfinite(gb).all() and float(gy.abs().sum()) > 0
    # coincident points, duplicates and identical clouds keep finite gradients
    same = x.clone().requires_grad_(True)
    g_same, = torch.autograd.grad(loss(x, same), [same])
    dup = torch.cat([x[:5], x[:5]]).requires_grad_(True)
    g_dup, = torch.autograd.grad(loss(x, dup), [dup])
    assert torch.isfinite(g_same).all() and torch.isfinite(g_dup).all()
    if dtype == torch.float64:
        # the gradient is the one with the sampler frozen (like KRDual's critic); finite differences
        # would also see the ascent's dependence on y, so they check the untrained (steps=0) value,
        # each at the first draw of a fresh instance (every call of one instance draws afresh)
        loss = lambda *args, **kw: NCFD(steps=0, bandwidth=1.5, **SMALL)(*args, **kw)
        gy, = torch.autograd.grad(loss(x, y, b=b), [y])
        gy = gy.cpu()
        eps = 1e-6
        for i, j in [(0, 0), (7, 3), (19, 1)]:
            yp, ym = y.detach().clone(), y.detach().clone()
            yp[i, j] += eps
            ym[i, j] -= eps
            fd = float(loss(x, yp, b=b.detach()) - loss(x, ym, b=b.detach())) / (2 * eps)
            assert float(gy[i, j]) == pytest.approx(fd, rel=1e-5, abs=1e-9)


def _sequence(loss, x, ys, start, stop):
    out = []
    for k in range(start, stop):
        y = ys[k].clone().requires_grad_(True)
        value = loss(x, y)
        out.append((value.detach(), torch.autograd.grad(value, [y])[0]))
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_checkpoint_mid_sequence_continues_bit_identically(dtype):
    x = _cloud(60, dtype=dtype)
    ys = [_cloud(61 + k, n=20, dtype=dtype) * 0.8 + 0.1 * k for k in range(6)]
    kw = dict(warm_start=True, steps=3, seed=3, **SMALL)
    reference = _sequence(NCFD(**kw), x, ys, 0, 6)
    first = NCFD(**kw)
    _sequence(first, x, ys, 0, 3)
    buf = io.BytesIO()
    torch.save(first.state_dict(), buf)
    buf.seek(0)
    resumed = NCFD(**kw)
    resumed.load_state_dict(torch.load(buf, weights_only=True))
    assert resumed.sampler is not None and resumed._opt.state_dict()["state"]
    for (v_ref, g_ref), (v, g) in zip(reference[3:], _sequence(resumed, x, ys, 3, 6)):
        assert torch.equal(v, v_ref) and torch.equal(g, g_ref)
    # without the sampler's and the generator's state it would not continue identically
    fresh = _sequence(NCFD(**kw), x, ys, 3, 4)
    assert not torch.equal(fresh[0][0], reference[3][0])


def test_warm_start_keeps_the_sampler_and_cold_start_restarts_it_on_fresh_draws():
    x, y = _cloud(70), _cloud(71, n=20) + 0.5
    cold = NCFD(steps=3, **SMALL)
    c1 = cold(x, y)
    s1 = cold.sampler
    c2 = cold(x, y)
    assert cold.sampler is not s1 and not torch.equal(c1, c2)  # a new sampler, new draws
    again = NCFD(steps=3, **SMALL)
    assert torch.equal(again(x, y), c1) and torch.equal(again(x, y), c2)  # the seed fixes the sequence
    warm = NCFD(steps=3, warm_start=True, **SMALL)
    first = warm(x, y)
    sampler = warm.sampler
    assert not torch.equal(first, warm(x, y)) and warm.sampler is sampler
    assert torch.equal(first, c1)  # the first warm call is the cold one


def test_settings_validation_and_config():
    loss = ddm.get_loss("ncfd", n_frequencies=64, alpha=0.25)
    assert isinstance(loss, NCFD)
    assert loss.config() == {"name": "ncfd", "class": "NCFD", "n_frequencies": 64, "alpha": 0.25, "steps": 10,
                             "lr": 1e-2, "hidden": 128, "warm_start": False, "seed": 0, "bandwidth": "median",
                             "scale": 1.0}
    assert "n_frequencies=64" in repr(loss)
    for bad in [dict(alpha=1.5), dict(n_frequencies=0), dict(steps=-1), dict(lr=0.0), dict(hidden=0),
                dict(bandwidth="mean"), dict(bandwidth=-1.0), dict(warm_start="yes"), dict(scale=0.0),
                dict(scale=float("inf")), dict(scale=True)]:
        with pytest.raises(ValueError, match=next(iter(bad))):
            NCFD(**bad)
    v = NCFD(**SMALL)(_cloud(80).half(), _cloud(81).half() + 1)
    assert v.dtype == torch.float16 and math.isfinite(float(v))


def test_both_matching_strategies_run(distil_both):
    distil_both("ncfd", n_frequencies=64, hidden=16)


def _release_cf_loss(t, feat_real, feat_syn, alpha=0.5, beta=0.5):
    """NCFM's released CFLossFunc.forward (NCFM/NCFM.py:31-64) at the frequencies ``t``, written
    out from ncfm.md section 1: per frequency sqrt(alpha * amplitude + beta * phase), the phase term
    clamped at 1e-12, the mean over frequencies (numpy, float64)."""
    pr, ps = feat_real @ t.T, feat_syn @ t.T
    re_r, im_r = np.cos(pr).mean(0), np.sin(pr).mean(0)
    re_s, im_s = np.cos(ps).mean(0), np.sin(ps).mean(0)
    mod_r, mod_s = np.sqrt(re_r ** 2 + im_r ** 2), np.sqrt(re_s ** 2 + im_s ** 2)
    amplitude = (mod_r - mod_s) ** 2
    phase = np.maximum(2 * (mod_r * mod_s - re_s * re_r - im_s * im_r), 1e-12)
    return np.mean(np.sqrt(alpha * amplitude + beta * phase))


def test_ncfm_release_loss_at_the_preset_settings_redraws_gaussian_frequencies():
    """The ncfm preset's loss_kwargs (scale=300 among them) give NCFM's match_loss (NCFM.py:67-79): 300 x
    CFLossFunc at t ~ N(0, I) (4096 x d, no sampler), on unit-norm features, the frequencies
    redrawn at every call: call k uses the k-th standard normal block of the seeded stream."""
    from ddmetrics.distill.presets import PRESETS

    kwargs = dict(PRESETS["ncfm"]["loss_kwargs"])
    assert kwargs == {"n_frequencies": 4096, "alpha": 0.5, "steps": 0, "bandwidth": 1.0, "scale": 300.0}
    loss = ddm.get_loss("ncfd", **kwargs, seed=11)
    stream = torch.Generator().manual_seed(11)
    d = 6
    for call in range(3):
        real = torch.nn.functional.normalize(_cloud(90 + call, n=64, d=d), dim=1)
        syn = torch.nn.functional.normalize(_cloud(95 + call, n=5, d=d) + 0.3, dim=1)
        t = torch.randn(4096, d, generator=stream, dtype=torch.float64).numpy()
        ref = 300.0 * _release_cf_loss(t, real.numpy(), syn.numpy())
        # the same formula up to rounding (ours centres the features, a common rotation of both
        # phases, and has no 1e-12 floor): 1e-9 relative covers float64 sums of 4096 terms
        assert float(loss(real, syn)) == pytest.approx(ref, rel=1e-9)
    assert loss.sampler is None  # steps=0: nothing trained, nothing built
    # unscaled it is 1/300 of that, and the default scale is 1
    del kwargs["scale"]
    again = ddm.get_loss("ncfd", **kwargs, seed=11)
    first_t = torch.randn(4096, d, generator=torch.Generator().manual_seed(11), dtype=torch.float64).numpy()
    real = torch.nn.functional.normalize(_cloud(90, n=64, d=d), dim=1)
    syn = torch.nn.functional.normalize(_cloud(95, n=5, d=d) + 0.3, dim=1)
    assert float(again(real, syn)) == pytest.approx(_release_cf_loss(first_t, real.numpy(), syn.numpy()), rel=1e-9)


def test_steps_0_without_a_sampler_is_the_untrained_sampler_bit_for_bit():
    # steps=0 builds no sampler: t = eps, which is what the untrained sampler returns exactly
    x, y = _cloud(72), _cloud(73, n=20) + 0.5
    fast = NCFD(steps=0, bandwidth=1.0, **SMALL)
    v = fast(x, y)
    assert fast.sampler is None
    slow = NCFD(steps=0, bandwidth=1.0, **SMALL)
    slow._make_sampler(4, x)
    eps = torch.randn(128, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with torch.no_grad():
        assert torch.equal(slow.sampler(eps), eps)
    centre = torch.cat([x, y]).mean(0)
    assert torch.equal(v, ncfd_value(eps, x - centre, y - centre, torch.full((48,), 1 / 48, dtype=torch.float64),
                                     torch.full((20,), 1 / 20, dtype=torch.float64), 0.5))


def test_ncfm_preset_builds_the_release_loss():
    from ddmetrics.distill.presets import preset

    cfg = preset("ncfm")
    assert cfg.strategy == "distribution" and cfg.loss == "ncfd" and cfg.loss_kwargs["n_frequencies"] == 4096
    loss = ddm.Distiller(method="ncfm", ipc=1).loss
    assert isinstance(loss, NCFD) and not loss.warm_start and loss.steps == 0 and loss.bandwidth == 1.0
    assert loss.n_frequencies == 4096 and loss.alpha == 0.5


def test_interrupted_ncfm_run_resumes_exactly(tiny_digits, tmp_path, interrupt_at_save):
    # the warm sampler, its Adam moments and the frequency stream go through the run's checkpoints;
    # a pool of one network trained one epoch (the preset's 20 x 60 epochs are the cost, not the point)
    kw = dict(method="ncfm", ipc=1, iterations=12, seed=4, loss_kwargs={"n_frequencies": 64, "hidden": 16},
              embedder_pool=1, pool_epochs=1)
    reference = ddm.Distiller(**kw).fit(tiny_digits, progress=False)
    with pytest.raises(interrupt_at_save(4)):  # unit 1 (class 1), mid-way (a save every 5 of 12 steps: 2 per unit)
        ddm.Distiller(**kw).fit(tiny_digits, progress=False, checkpoint=tmp_path, checkpoint_every=5)
    interrupt_at_save(None)
    resumed = ddm.Distiller(**kw).fit(tiny_digits, progress=False, checkpoint=tmp_path, checkpoint_every=5, resume=True)
    assert torch.equal(resumed.images, reference.images)
