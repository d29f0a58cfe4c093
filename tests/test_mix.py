"""CutMix and Mixup (ddmetrics.mix): the pasted box against lambda, the mixed labels' loss by
hand, Mixup's convex combination and the Beta(alpha, alpha) draws."""
import numpy as np
import pytest
import torch

from ddmetrics.mix import Mixed, beta_sample, cutmix, cutmix_box, mixed_cross_entropy, mixup


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_cutmix_pastes_a_box_whose_area_is_one_minus_lambda():
    n, h, w = 6, 12, 10
    images = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 2, h, w).contiguous()  # image i = i
    lams = []
    for seed in range(40):
        mixed = cutmix(images, 1.0, _gen(seed))
        pasted = (mixed.images != images).all(1)  # (n, H, W): pixels taken from the partner
        partner = mixed.partner
        for i in range(n):
            if partner[i] == i:
                continue
            frac = float(pasted[i].double().mean())
            assert frac == pytest.approx(1 - mixed.lam, abs=1e-12)  # lambda recomputed from the box
            rows, cols = pasted[i].any(1).nonzero(), pasted[i].any(0).nonzero()
            if len(rows):  # one rectangle, filled with the partner's value
                box = pasted[i, int(rows.min()):int(rows.max()) + 1, int(cols.min()):int(cols.max()) + 1]
                assert bool(box.all()) and int(box.sum()) == int(pasted[i].sum())
                assert torch.equal(mixed.images[i][:, pasted[i]], torch.full_like(mixed.images[i][:, pasted[i]],
                                                                                  float(partner[i])))
        lams.append(mixed.lam)
    assert min(lams) < 0.5 < max(lams)  # boxes of many sizes


def test_cutmix_box_by_hand():
    # lam = 0.75: side sqrt(0.25) x 8 = 4 -> rows and columns centre +- 2; centre 9 = (row 1, col 1) -> clipped
    gen = _gen(0)
    centre = int(torch.randint(64, (1,), generator=_gen(0)))
    row, col = divmod(centre, 8)
    box = cutmix_box(0.75, 8, 8, gen)
    assert box == (max(row - 2, 0), min(row + 2, 8), max(col - 2, 0), min(col + 2, 8))
    assert cutmix_box(1.0, 8, 8, _gen(0))[0:2] == (row, row)  # an empty box for lambda = 1


def test_mixed_cross_entropy_by_hand():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 0.0], [-1.0, 3.0, 0.0]], dtype=torch.float64)
    labels = torch.tensor([0, 2, 1])
    mixed = Mixed(images=torch.zeros(3), partner=torch.tensor([1, 2, 0]), lam=0.3)
    logp = logits - torch.logsumexp(logits, 1, keepdim=True)
    hand = [-(0.3 * logp[i, labels[i]] + 0.7 * logp[i, labels[[1, 2, 0][i]]]) for i in range(3)]
    assert torch.allclose(mixed_cross_entropy(logits, labels, mixed), torch.stack(hand), rtol=1e-12, atol=0)
    assert torch.allclose(mixed_cross_entropy(logits, labels, None), -logp[torch.arange(3), labels], rtol=1e-12)


def test_mixup_is_the_convex_combination_and_commutes_with_affine_maps():
    x = torch.randn(5, 1, 4, 4, generator=_gen(1), dtype=torch.float64)
    m = mixup(x, 0.8, _gen(7))
    assert torch.allclose(m.images, m.lam * x + (1 - m.lam) * x[m.partner], rtol=0, atol=1e-15)
    m2 = mixup(3.0 * x - 2.0, 0.8, _gen(7))  # same draws
    assert m2.lam == m.lam and torch.equal(m2.partner, m.partner)
    assert torch.allclose(m2.images, 3.0 * m.images - 2.0, atol=1e-12)  # float64 rounding only


def test_mixing_weights_follow_beta_alpha_alpha():
    gen = _gen(0)
    lams = np.array([beta_sample(0.8, gen) for _ in range(4000)])
    # Beta(a, a): mean 1/2, variance 1 / (4 (2a + 1)); 4000 draws: standard errors ~0.005 and ~0.001
    assert lams.mean() == pytest.approx(0.5, abs=0.025)
    assert lams.var() == pytest.approx(1 / (4 * 2.6), abs=0.006)
