import pytest
import torch

from ddmetrics.augment import OPS, AugParams, DiffAugment


def _gen(seed):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("op", list(OPS) + ["all"])
def test_pair_applies_the_identical_transform(op, channels):
    real = torch.randn(6, channels, 12, 12, generator=_gen(0))
    syn = torch.cat([torch.randn(1, channels, 12, 12, generator=_gen(1)), real[2:3], real[4:5]])
    aug = DiffAugment(mode="all") if op == "all" else DiffAugment(strategy=op)
    for seed in range(4):
        r, s = aug.pair(real, syn, _gen(seed))
        assert r.shape == real.shape and s.shape == syn.shape
        assert torch.equal(r[2], s[1]) and torch.equal(r[4], s[2]), (op, seed)
        # one transform for the whole batch: equal inputs -> equal outputs inside a batch too
        r2, _ = aug.pair(real[[2, 2]], syn, _gen(seed))
        assert torch.equal(r2[0], r2[1])


@pytest.mark.parametrize("op", list(OPS) + ["all"])
def test_pair_equals_apply_of_one_draw_to_each_batch(op):
    """pair builds the grid and the mask once for both batches: the images and the gradient on
    the synthetic batch are those of ``apply`` with the same draw, bit for bit."""
    real = torch.randn(7, 3, 12, 12, generator=_gen(2))
    syn = torch.randn(3, 3, 12, 12, generator=_gen(3)).requires_grad_(True)
    aug = DiffAugment(mode="all") if op == "all" else DiffAugment(strategy=op)
    for seed in range(3):
        r, s = aug.pair(real, syn, _gen(seed))
        params = aug.sample(1, real.shape, _gen(seed))
        r_ref, s_ref = aug.apply(real, params), aug.apply(syn, params)
        assert torch.equal(r, r_ref) and torch.equal(s, s_ref), (op, seed)
        cot = torch.randn(s.shape, generator=_gen(seed + 10))
        g, = torch.autograd.grad((s * cot).sum(), syn)
        g_ref, = torch.autograd.grad((s_ref * cot).sum(), syn)
        assert torch.equal(g, g_ref)


def test_pair_differs_from_per_image_and_between_seeds():
    x = torch.randn(5, 3, 12, 12, generator=_gen(1))
    aug = DiffAugment(mode="all")
    a, _ = aug.pair(x, x, _gen(0))
    b, _ = aug.pair(x, x, _gen(1))
    assert not torch.allclose(a, b)
    assert torch.equal(a, aug.pair(x, x, _gen(0))[0])  # same seed, same output
    # per-image sampling: identical inputs get different transforms
    same = x[[0, 0, 0]]
    out = aug(same, _gen(0))
    assert not torch.allclose(out[0], out[1])


@pytest.mark.parametrize("channels", [1, 3])
def test_transforms_change_images_and_depend_on_seed(channels):
    x = torch.randn(4, channels, 8, 8, generator=_gen(1))
    aug = DiffAugment(mode="all")
    a = aug(x, _gen(0))
    b = aug(x, _gen(1))
    assert a.shape == x.shape
    assert not torch.allclose(a, x) and not torch.allclose(a, b)
    assert torch.equal(a, aug(x, _gen(0)))


def test_single_mode_applies_one_operation():
    x = torch.randn(4, 3, 8, 8, generator=_gen(1))
    aug = DiffAugment()  # single mode, six operations
    ops_seen = set()
    for seed in range(30):
        p = aug.sample(4, x.shape, _gen(seed))
        set_fields = {name for name, _ in p.tensors()}
        assert set_fields in ({"brightness", "saturation", "contrast"}, {"shift"}, {"cutout"}, {"flip"},
                              {"scale"}, {"angle"})
        ops_seen.add(frozenset(set_fields))
    assert len(ops_seen) == 6


@pytest.mark.parametrize("op", list(OPS) + ["all"])
def test_differentiable(op):
    x = torch.randn(3, 3, 8, 8, generator=_gen(3), requires_grad=True)
    aug = DiffAugment(mode="all") if op == "all" else DiffAugment(strategy=op)
    aug(x, _gen(2)).square().sum().backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0


def test_siamese_gradient_reaches_synthetic_images():
    real = torch.randn(4, 1, 8, 8, generator=_gen(0))
    syn = torch.randn(2, 1, 8, 8, generator=_gen(1), requires_grad=True)
    r, s = DiffAugment(mode="all").pair(real, syn, _gen(5))
    (s.mean(0) - r.mean(0)).square().sum().backward()
    assert syn.grad is not None and float(syn.grad.abs().sum()) > 0


def test_exact_flip_and_integer_crop():
    x = torch.arange(32.0).view(2, 1, 4, 4)
    aug = DiffAugment(strategy="flip")
    out = aug.apply(x, AugParams(size=(4, 4), flip=torch.tensor([True, False])))
    assert torch.equal(out[0], torch.flip(x[0], dims=[2])) and torch.equal(out[1], x[1])
    # a whole-pixel translation copies pixels (zero padding), as DSA's crop
    shifted = DiffAugment(strategy="crop").apply(x[:1], AugParams(size=(4, 4), shift=torch.tensor([[1, 0]])))
    assert torch.allclose(shifted[0, 0, :, 1:], x[0, 0, :, :3], atol=1e-5)
    assert torch.allclose(shifted[0, 0, :, 0], torch.zeros(4), atol=1e-6)


def test_saturation_is_a_noop_on_grayscale_and_cutout_zeroes_a_square():
    x = torch.rand(2, 1, 8, 8, generator=_gen(0)) + 1.0
    sat = AugParams(size=(8, 8), saturation=torch.tensor([0.1, 1.9]))
    assert torch.equal(DiffAugment(strategy="color").apply(x, sat), x)
    rgb = torch.rand(2, 3, 8, 8, generator=_gen(0))
    assert not torch.allclose(DiffAugment(strategy="color").apply(rgb, sat), rgb)
    cut = DiffAugment(strategy="cutout").apply(x, AugParams(size=(8, 8), cutout=torch.tensor([[4, 4], [0, 0]])))
    assert int((cut[0] == 0).sum()) == 16 and int((cut[1] == 0).sum()) == 4  # 4x4 square, clipped at a corner


def test_validation():
    with pytest.raises(ValueError, match="strategy"):
        DiffAugment(strategy="color_blur")
    with pytest.raises(ValueError, match="mode"):
        DiffAugment(mode="some")
    with pytest.raises(ValueError, match="scale"):
        DiffAugment(scale=(1.2, 0.8))
    aug = DiffAugment()
    with pytest.raises(TypeError, match="generator"):
        aug(torch.zeros(2, 1, 8, 8), 0)
    with pytest.raises(ValueError, match="real and syn"):
        aug.pair(torch.zeros(2, 1, 8, 8), torch.zeros(2, 3, 8, 8), _gen(0))
    with pytest.raises(ValueError, match="spatial size"):
        aug.apply(torch.zeros(2, 1, 8, 8), aug.sample(1, (6, 6), _gen(0)))


EPS32 = torch.finfo(torch.float32).eps


def _warp_atol(x, grid_diff, theta):
    r"""How far ``grid_sample`` of ``x`` (bilinear, zero padding) can move when its grid moves by
    ``grid_diff`` (normalised units) and is rounded on either side.

    A normalised coordinate maps to ``((g + 1) W - 1) / 2`` pixels: ``grid_diff`` is ``W/2``
    times as many pixels, and each side rounds that coordinate in three operations, each by at
    most ``u (S + 1) W`` (:math:`|g| \le S`, :math:`u = \epsilon/2`): ``3 eps (S + 1) W`` for both.
    Bilinear interpolation changes by at most the largest difference of two neighbouring pixels
    (``2 max|x|``; a padding zero against ``max|x|``) per pixel moved, along each of the two axes;
    its own weights and sums round to a few ulps of ``max|x|`` (8 allowed)."""
    size, peak = max(x.shape[-2:]), float(x.abs().max())
    s = float(theta.abs().sum(2).max())
    pixels = size / 2 * grid_diff + 3 * EPS32 * (s + 1) * size
    return 2 * peak * 2 * pixels + 8 * EPS32 * peak


@pytest.mark.parametrize("strategy", ["crop", "scale", "rotate", "crop_scale_rotate"])
@pytest.mark.parametrize("size", [(28, 28), (8, 12)])
def test_warp_equals_affine_grid_and_grid_sample(strategy, size):
    r"""The warp's grid, computed from the base grid's rows and columns, against
    ``F.affine_grid`` of the same matrices (a batched product) followed by ``F.grid_sample``,
    per image and shared (one parameter set), and the base grid kept for one size is not used
    for another.

    Equal only in exact arithmetic: the two grids are the same three-term sums
    :math:`x\theta_{j0} + y\theta_{j1} + \theta_{j2}` by different operations (two broadcast
    products and additions here, a matrix product there, which may sum in another order or with
    fused multiply-adds on other kernels: bit-equal on this machine's, not on an AVX-512 Xeon's).
    So each grid is checked against the bound that holds for any order: a three-term sum of
    float32 products is within :math:`\gamma_3 S` of its exact value (:math:`\gamma_3 \approx 3u`,
    :math:`u = \epsilon/2`, :math:`S = \max_j |\theta_{j0}| + |\theta_{j1}| + |\theta_{j2}|`, as
    :math:`|x|, |y| \le 1`); the images then differ by at most the bilinear interpolation's
    slope times the grids' distance in pixels (:func:`_warp_atol`). Measured here: the grid at most
    0.58 of the bound from exact, the images at most 2.5 % of their tolerance from those of the
    correctly rounded grid; a wrong matrix or a half-pixel offset moves them by O(1).
    """
    import torch.nn.functional as F

    aug = DiffAugment(strategy=strategy, mode="all")
    for n, images, shape in ((5, 5, size), (1, 5, size), (3, 3, (size[0] + 2, size[1] + 4))):
        x = torch.randn(images, 2, *shape, generator=_gen(n))
        params = aug.sample(n, x.shape, _gen(n + 10))
        theta = aug._theta(x, dict(params.tensors()))
        grid = aug._operands(x, params)["grid"]
        ref_grid = F.affine_grid(theta.expand(images, 2, 3), list(x.shape), align_corners=False)
        # the exact grid of these float32 numbers: affine_grid's base grid (pixel centres, exact
        # through the identity matrix) times theta in float64 (products of float32 numbers are
        # exact there, the sums round at 2^-53)
        base = F.affine_grid(torch.eye(2, 3).unsqueeze(0), [1, 1, *shape], align_corners=False)[0].double()
        exact = (torch.einsum("hwi,kji->khwj", base, theta[:, :, :2].double())
                 + theta[:, :, 2].double().view(-1, 1, 1, 2))
        gamma3_s = 3 * EPS32 / 2 * float(theta.abs().sum(2).max())
        assert float((grid.double() - exact).abs().max()) <= gamma3_s
        assert float((grid - ref_grid).abs().max()) <= 2 * gamma3_s  # each within gamma3_s of exact
        ref = F.grid_sample(x, ref_grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        assert torch.allclose(aug.apply(x, params), ref, rtol=0, atol=_warp_atol(x, 2 * gamma3_s, theta))
