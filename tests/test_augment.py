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


# --------------------------------------------------------------------------- issue 24: released pipelines
import math  # noqa: E402

import torch.nn.functional as F  # noqa: E402

from ddmetrics.augment import NAMED, CropFlipRoll, CropParams, is_augment_spec, make_augment  # noqa: E402

SPECS = ["color", "crop", "cutout", "flip", "scale", "rotate", "auto", "color_crop_cutout_flip_scale_rotate",
         "idc:color_crop_cutout", "idc:color_crop_flip_scale_rotate", "idc:color_crop"] + list(NAMED)


@pytest.mark.parametrize("size", [28, 32])
def test_dsa_magnitudes_are_the_release_s(size):
    """ParamDiffAug (DatasetCondensation utils.py:474-484): scale U(1/1.2, 1.2), saturation U(0, 2),
    brightness U(-0.5, 0.5), contrast U(0.5, 1.5), rotation U(-15, 15) deg, a crop shift uniform on
    exactly {-s..s} with s = int(0.125 * size + 0.5) = 4, a cutout centre uniform on exactly {0..size}
    (the square's side int(0.5 * size + 0.5) is even). 20 000 draws: an end of a continuous range is
    approached within 1e-3 of its width with probability 1 - (1 - 1e-3)^20000 > 1 - 1e-8."""
    n = 20000
    p = DiffAugment(mode="all").sample(n, (3, size, size), _gen(size))
    for values, lo, hi in [(p.scale, 1 / 1.2, 1.2), (p.saturation, 0.0, 2.0), (p.brightness, -0.5, 0.5),
                           (p.contrast, 0.5, 1.5), (p.angle * 180 / math.pi, -15.0, 15.0)]:
        tol = 1e-3 * (hi - lo)
        assert lo - 1e-6 <= float(values.min()) < lo + tol and hi - tol < float(values.max()) <= hi + 1e-6
    shifts = p.shift.flatten()
    assert set(shifts.tolist()) == set(range(-4, 5))
    counts = torch.bincount(shifts + 4).double()  # uniform: 2 n / 9 each, sd ~ 44; 10 % is ~ 5 sd
    assert float((counts / (2 * n / 9) - 1).abs().max()) < 0.1
    centres = p.cutout.flatten()
    assert set(centres.tolist()) == set(range(size + 1))
    # an odd square's centre stays on {0..size - 1} (randint(0, size + (1 - side % 2)))
    odd = DiffAugment(strategy="cutout").sample(4000, (1, 10, 10), _gen(1))  # side int(5.5) = 5
    assert set(odd.cutout.flatten().tolist()) == set(range(10))


def test_cutout_side_rounds_half_up_as_the_release():
    # int(0.5 * 5 + 0.5) = 3 (Python's round(2.5) = 2): a 3x3 square
    x = torch.ones(1, 1, 5, 5)
    cut = DiffAugment(strategy="cutout").apply(x, AugParams(size=(5, 5), cutout=torch.tensor([[2, 2]])))
    assert int((cut == 0).sum()) == 9 and torch.equal(cut[0, 0, 1:4, 1:4], torch.zeros(3, 3))


def test_idc_applies_colour_flip_cutout_every_call_and_one_warp():
    """IDC's DiffAug (NCFM utils/diffaug.py:39-89): colour, flip and cutout, when listed, at every
    call; one of the listed crop / scale / rotate per call."""
    matching = make_augment("idc:color_crop_cutout", 3)
    evaluation = make_augment("idc:color_crop_flip_scale_rotate", 3)
    warps = set()
    for seed in range(40):
        p = matching.sample(4, (3, 16, 16), _gen(seed))
        assert {k for k, _ in p.tensors()} == {"brightness", "saturation", "contrast", "shift", "cutout"}
        q = evaluation.sample(4, (3, 16, 16), _gen(seed))
        fields_set = {k for k, _ in q.tensors()}
        assert {"brightness", "saturation", "contrast", "flip"} <= fields_set and "cutout" not in fields_set
        warp = fields_set & {"shift", "scale", "angle"}
        assert len(warp) == 1
        warps |= warp
    assert warps == {"shift", "scale", "angle"}
    # DSA's single mode applies one operation only
    assert len(DiffAugment(strategy="color_crop_cutout").sample(4, (3, 16, 16), _gen(0)).tensors()) in (1, 3)


def test_idc_call_against_a_hand_computation():
    """One draw of idc:color_crop_cutout on a 3x8x8 image, computed by hand: brightness, saturation
    about the channel mean, contrast about the image mean, a whole-pixel shift with zero fill,
    then the cutout square zeroed. The shift goes through grid_sample: 1e-6 is float32 rounding."""
    x = torch.rand(1, 3, 8, 8, generator=_gen(5))
    aug = make_augment("idc:color_crop_cutout", 3)
    p = aug.sample(1, x.shape, _gen(6))
    out = aug.apply(x, p)
    assert torch.equal(out, aug(x, _gen(6)))  # __call__ is that draw
    y = x[0].double() + float(p.brightness)
    gray = y.mean(0, keepdim=True)
    y = gray + (y - gray) * float(p.saturation)
    y = y.mean() + (y - y.mean()) * float(p.contrast)
    tx, ty = p.shift[0].tolist()
    shifted = torch.zeros_like(y)
    for r in range(8):
        for c in range(8):
            if 0 <= r - ty < 8 and 0 <= c - tx < 8:
                shifted[:, r, c] = y[:, r - ty, c - tx]
    cr, cc = p.cutout[0].tolist()  # side 4: rows cr - 2 .. cr + 1
    shifted[:, max(cr - 2, 0):max(cr + 2, 0), max(cc - 2, 0):max(cc + 2, 0)] = 0
    assert torch.allclose(out[0].double(), shifted, atol=1e-6)


@pytest.mark.parametrize("spec, frac", [("roll", 4 / 32), ("rrc_flip_roll", 32 / 224)])
def test_roll_is_torch_roll_of_one_draw_for_the_batch(spec, frac):
    x = torch.randn(4, 2, 28, 28, generator=_gen(0))
    aug = make_augment(spec, 2) if spec == "roll" else CropFlipRoll(roll=frac, shared=True)
    for seed in range(5):
        p = aug.sample(1, x.shape, _gen(seed))
        rows, cols = p.roll[0].tolist()
        out = aug(x, _gen(seed))
        assert torch.equal(out, torch.roll(x, shifts=(rows, cols), dims=(2, 3)))  # every image alike
        r, s = aug.pair(x, x[1:3], _gen(seed))
        assert torch.equal(r, out) and torch.equal(s, out[1:3])
    # J = int(frac * side + 0.5): 4 at 28 px for both (32 at 224 px for WMDD's), uniform on {0..J}
    drawn = torch.cat([aug.sample(1, x.shape, _gen(s)).roll for s in range(400)]).flatten()
    assert set(drawn.tolist()) == set(range(5))
    assert make_augment(spec, 3).roll_range(224, 224) == ((28, 28) if spec == "roll" else (32, 32))
    assert make_augment(spec, 3, size=224).roll_range(28, 28) == make_augment(spec, 3).roll_range(224, 224)
    assert make_augment(spec, 3).roll_range(32, 32) == ((4, 4) if spec == "roll" else (5, 5))


def test_rrc_flip_roll_is_one_crop_flip_and_roll_for_the_whole_batch():
    """WMDD's synthesis augmentation (data_synthesis_new.py:139-149): RandomResizedCrop, flip and
    roll drawn once, applied to every image: each output image is F.interpolate of the window,
    flipped, rolled (float64; 1e-12 covers the matrix products' summation order)."""
    x = torch.randn(3, 3, 20, 20, generator=_gen(1), dtype=torch.float64)
    aug = make_augment("rrc_flip_roll", 3)
    flips = set()
    for seed in range(12):
        p = aug.sample(1, x.shape, _gen(seed))
        t, l, h, w = p.window[0].tolist()
        ref = F.interpolate(x[:, :, t:t + h, l:l + w], size=(20, 20), mode="bilinear", align_corners=False)
        if bool(p.flip[0]):
            ref = ref.flip(3)
        ref = torch.roll(ref, shifts=tuple(p.roll[0].tolist()), dims=(2, 3))
        assert torch.allclose(aug(x, _gen(seed)), ref, rtol=0, atol=1e-12)
        flips.add(bool(p.flip[0]))
    assert flips == {True, False}


def test_resized_crop_per_image_matches_interpolate_and_scale_1_ratio_1_is_the_identity():
    x = torch.randn(6, 2, 16, 16, generator=_gen(2), dtype=torch.float64)
    aug = make_augment("rrc_flip", 2)
    p = aug.sample(6, x.shape, _gen(3))
    assert len({tuple(row) for row in p.window.tolist()}) > 1  # a window per image
    out = aug(x, _gen(3))
    for i in range(6):
        t, l, h, w = p.window[i].tolist()
        crop = x[i:i + 1, :, t:t + h, l:l + w]
        ref = F.interpolate(crop, size=(16, 16), mode="bilinear", align_corners=False)
        # torchvision's tensor resize antialiases; upsampling makes that the same (1e-12: rounding)
        ref_aa = F.interpolate(crop, size=(16, 16), mode="bilinear", align_corners=False, antialias=True)
        ref = ref.flip(3) if bool(p.flip[i]) else ref
        ref_aa = ref_aa.flip(3) if bool(p.flip[i]) else ref_aa
        assert torch.allclose(out[i:i + 1], ref, rtol=0, atol=1e-12)
        assert torch.allclose(out[i:i + 1], ref_aa, rtol=0, atol=1e-12)
    whole = CropFlipRoll(crop="resized", scale=(1.0, 1.0), ratio=(1.0, 1.0))
    q = whole.sample(6, x.shape, _gen(4))
    assert q.window.tolist() == [[0, 0, 16, 16]] * 6
    assert torch.equal(whole(x, _gen(4)), x) and torch.equal(whole(x.float(), _gen(4)), x.float())
    # torchvision's distribution at 224 px: area fraction in (0.08, 1) and aspect in (3/4, 4/3)
    # up to the rounding of the sides to whole pixels
    big = aug.sample(3000, (3, 224, 224), _gen(5)).window.double()
    area, aspect = big[:, 2] * big[:, 3] / 224 ** 2, big[:, 3] / big[:, 2]
    assert 0.08 * 0.97 < float(area.min()) < 0.1 and float(area.max()) <= 1.0 and float(area.max()) > 0.95
    assert 0.75 * 0.98 < float(aspect.min()) < 0.8 and 1.3 < float(aspect.max()) < 4 / 3 * 1.02
    assert bool((big[:, :2] >= 0).all() and (big[:, 0] + big[:, 2] <= 224).all())


def test_crop_pad_flip_per_image_is_a_zero_padded_crop_and_an_exact_flip():
    """RandomCrop(size, padding=4) + flip per image: pad by 4 zeros, take the window, mirror;
    bit for bit (the flip and the shift are permutations)."""
    x = torch.randn(8, 3, 12, 12, generator=_gen(3))
    aug = make_augment("crop_pad_flip", 3)
    p = aug.sample(8, x.shape, _gen(4))
    out = aug(x, _gen(4))
    padded = F.pad(x, (4, 4, 4, 4))
    for i in range(8):
        t, l, h, w = p.window[i].tolist()
        ref = padded[i, :, t + 4:t + 4 + 12, l + 4:l + 4 + 12]
        assert torch.equal(out[i], ref.flip(2) if bool(p.flip[i]) else ref)
    shifts = aug.sample(4000, x.shape, _gen(5)).window[:, :2].flatten()
    assert set(shifts.tolist()) == set(range(-4, 5))


@pytest.mark.parametrize("size, padding", [(8, 1), (12, 2), (28, 4), (32, 4), (64, 8)])
def test_crop_pad_flip_padding_is_4_px_at_32_scaled_to_the_side(size, padding):
    """SRe²L's RandomCrop(32, padding=4) as a fraction of the side, as the synthesis rolls are: 4 px
    unscaled would shift 8-px digits by up to half their side."""
    aug = make_augment("crop_pad_flip", 1, size)
    assert aug.padding == padding
    shifts = aug.sample(2000, (1, size, size), _gen(6)).window[:, :2].flatten()
    assert set(shifts.tolist()) == set(range(-padding, padding + 1))


@pytest.mark.parametrize("spec", SPECS)
def test_every_spec_is_differentiable_and_a_function_of_the_generator_state(spec):
    """gradcheck (float64) of aug(x, generator) and of pair's synthetic batch, the generator
    re-seeded at every evaluation (the same draw); the same state gives the same output."""
    aug = make_augment(spec, 2)
    x = torch.randn(2, 2, 6, 6, generator=_gen(7), dtype=torch.float64, requires_grad=True)
    real = torch.randn(3, 2, 6, 6, generator=_gen(8), dtype=torch.float64)
    for seed in range(3):
        assert torch.autograd.gradcheck(lambda t: aug(t, _gen(seed)), (x,))
        assert torch.autograd.gradcheck(lambda t: aug.pair(real, t, _gen(seed))[1], (x,))
        assert torch.equal(aug(x, _gen(seed)), aug(x, _gen(seed)))
        r1, s1 = aug.pair(real, x, _gen(seed))
        r2, s2 = aug.pair(real, x, _gen(seed))
        assert torch.equal(r1, r2) and torch.equal(s1, s2)
    # one transform in pair: an image of syn equal to one of real comes out equal
    syn = torch.cat([x.detach(), real[1:2]])
    r, s = aug.pair(real, syn, _gen(9))
    assert torch.equal(r[1], s[2])
    # the draws are used: some generator state changes the output
    outs = [aug(x.detach(), _gen(seed)) for seed in range(8)]
    assert any(not torch.equal(outs[0], o) for o in outs[1:])


@pytest.mark.parametrize("spec", ["rrc_flip_roll", "roll", "crop_pad_flip_roll"])
def test_batch_shared_specs_apply_one_draw_to_every_image(spec):
    x = torch.randn(1, 3, 16, 16, generator=_gen(0)).expand(5, 3, 16, 16)
    for seed in range(5):
        out = make_augment(spec, 3)(x, _gen(seed))
        assert all(torch.equal(out[0], out[i]) for i in range(1, 5))


def test_make_augment_specs_and_validation():
    assert make_augment(None, 1) is None and make_augment("none", 3) is None
    assert make_augment("auto", 1).ops == ("color", "crop", "cutout", "scale", "rotate")
    assert make_augment("auto", 3).ops == OPS[:0] + ("color", "crop", "cutout", "flip", "scale", "rotate")
    dsa = make_augment("color_crop_cutout_flip_scale_rotate", 1)
    assert dsa.mode == "single" and "flip" in dsa.ops  # an explicit strategy keeps the flip on digits
    idc = make_augment("idc:color_crop_cutout", 3)
    assert isinstance(idc, DiffAugment) and idc.mode == "idc" and idc.drawn == ("crop",)
    shared = {name: make_augment(name, 3).shared for name in NAMED}
    assert shared == {"rrc_flip_roll": True, "rrc_flip_roll_small": True, "roll": True, "rrc_flip": False,
                      "crop_pad_flip": False, "crop_pad_flip_roll": True}
    for bad in ["idc:", "idc:blur", "color_blur", "", 3]:
        assert not is_augment_spec(bad)
        with pytest.raises(ValueError, match="spec"):
            make_augment(bad, 3)
    with pytest.raises(ValueError, match="channels"):
        make_augment("roll", 0)
    with pytest.raises(ValueError, match="size"):
        make_augment("roll", 1, size=0)
    with pytest.raises(ValueError, match="mode"):
        DiffAugment(mode="some")
    with pytest.raises(ValueError, match="crop"):
        CropFlipRoll(crop="centre")
    with pytest.raises(ValueError, match="scale"):
        CropFlipRoll(crop="resized", scale=(0.5, 0.1))
    with pytest.raises(TypeError, match="params"):
        make_augment("roll", 1).apply(torch.zeros(2, 1, 8, 8), AugParams(size=(8, 8)))
    with pytest.raises(ValueError, match="spatial size"):
        aug = make_augment("rrc_flip", 1)
        aug.apply(torch.zeros(2, 1, 8, 8), aug.sample(2, (6, 6), _gen(0)))
    assert isinstance(make_augment("rrc_flip", 1).sample(1, (8, 8), _gen(0)), CropParams)


def test_resized_crop_falls_back_to_torchvision_s_central_crop():
    # an 8x12 image, area fraction 1 at ratio 1: no 10x10 window fits, so torchvision takes the
    # central crop of the allowed ratio closest to 12/8, i.e. 8x8 at column (12 - 8) // 2 = 2
    aug = CropFlipRoll(crop="resized", scale=(1.0, 1.0), ratio=(1.0, 1.0))
    p = aug.sample(3, (1, 8, 12), _gen(0))
    assert p.window.tolist() == [[0, 2, 8, 8]] * 3
    x = torch.randn(3, 1, 8, 12, generator=_gen(1), dtype=torch.float64)
    ref = F.interpolate(x[:, :, :, 2:10], size=(8, 12), mode="bilinear", align_corners=False)
    assert torch.allclose(aug.apply(x, p), ref, rtol=0, atol=1e-12)
    tall = CropFlipRoll(crop="resized", scale=(1.0, 1.0), ratio=(1.0, 1.0)).sample(1, (1, 12, 8), _gen(0))
    assert tall.window.tolist() == [[2, 0, 8, 8]]


def test_g_vbsm_synthesis_rolls_over_the_whole_side():
    # G-VBSM's --jitter 32 at 32 px: shifts U{0..32} per axis (32 = 0: a circular roll), after one padded crop
    aug = make_augment("crop_pad_flip_roll", 3, 32)
    assert aug.crop == "padded" and aug.padding == 4 and aug.flip == 0.5 and aug.shared
    assert aug.roll_range(32, 32) == (32, 32)
