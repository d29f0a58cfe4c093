import torch

from ddmetrics.distill.augment import DiffAugment


def test_pair_applies_the_identical_transform():
    g = torch.Generator().manual_seed(0)
    real = torch.randn(6, 3, 8, 8, generator=g)
    syn = torch.cat([real[2:3], torch.randn(2, 3, 8, 8, generator=g)])
    for op in ["color", "crop", "cutout", "flip", "scale", "rotate"]:
        aug = DiffAugment(strategy=op)
        for seed in range(3):
            r, s = aug.pair(real, syn, torch.Generator().manual_seed(seed))
            assert torch.equal(r[2], s[0]), op
            assert r.shape == real.shape and s.shape == syn.shape


def test_transforms_change_images_and_depend_on_seed():
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    aug = DiffAugment(mode="all")
    a = aug(x, torch.Generator().manual_seed(0))
    b = aug(x, torch.Generator().manual_seed(1))
    assert not torch.allclose(a, x) and not torch.allclose(a, b)
    assert torch.equal(a, aug(x, torch.Generator().manual_seed(0)))


def test_differentiable():
    x = torch.randn(3, 3, 8, 8, requires_grad=True)
    DiffAugment(mode="all")(x, torch.Generator().manual_seed(2)).square().sum().backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0


def test_flip_is_a_mirror():
    x = torch.arange(16.0).view(1, 1, 4, 4)
    aug = DiffAugment(strategy="flip")
    out = aug.apply(x, {"flip": torch.ones(1)})
    assert torch.allclose(out, torch.flip(x, dims=[3]), atol=1e-5)
