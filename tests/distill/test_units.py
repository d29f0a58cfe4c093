"""Synthesis units (class / classes / slot batches), the image optimisers, the pixel clamp, and the
teacher-matching objective in its paper and released forms."""
import math

import pytest
import torch
import torch.nn.functional as F

import ddmetrics as ddm
from ddmetrics.distill._loop import Unit, make_optimizer, synthesis_units
from ddmetrics.distill.barycenter_matching import BarycenterMatching
from ddmetrics.distill.pcbn import PCBNLoss, bn_inputs, per_class_bn_stats
from ddmetrics.distill.presets import preset
from ddmetrics.models import get_model


@pytest.mark.parametrize("kind, classes, ipc, batch, sizes", [
    ("class", 10, 10, 100, [10] * 10),
    ("classes", 10, 10, 100, [100]),           # WMDD at IPC 10 on 10 classes: one batch of 100
    ("classes", 10, 50, 100, [100] * 5),       # IPC 50: two classes per batch
    ("classes", 10, 1, 100, [10]),             # IPC 1: all ten classes
    ("classes", 3, 200, 100, [200] * 3),       # IPC above the batch: one class per batch
    ("slot", 10, 10, 100, [10] * 10),          # SRe²L: image j of every class
    ("slot", 250, 2, 100, [100, 100, 50] * 2),  # more classes than a batch: chunks of 100 per slot
])
def test_units_cover_every_cell_once_in_the_released_batch_sizes(kind, classes, ipc, batch, sizes):
    units = synthesis_units(classes, ipc, kind, batch)
    assert [len(u) for u in units] == sizes
    cells = [c for u in units for c in u.cells]
    assert sorted(cells) == [(k, j) for k in range(classes) for j in range(ipc)]
    assert [u.index for u in units] == list(range(len(units)))
    if kind == "slot":
        assert all(len(u.slots) == 1 for u in units)


def test_unit_seeds_keep_one_class_units_on_their_class_stream_and_differ_between_units():
    from ddmetrics.distributed import class_seed

    assert Unit(3, (3,), (0, 1), "class").seed(7) == class_seed(7, 3)
    seeds = {u.seed(7) for kind in ("classes", "slot") for u in synthesis_units(10, 4, kind, 8)}
    assert len(seeds) == len(synthesis_units(10, 4, "classes", 8)) + len(synthesis_units(10, 4, "slot", 8))


def test_combined_set_is_class_major_whatever_the_units(small):
    # SRe²L-style slot units: the stored set must still be class 0's images, then class 1's, ...
    d = ddm.Distiller(method="sre2l", ipc=2, seed=0, iterations=2, teacher_epochs=1, teacher_arch="convnet_bn",
                      teacher_recipe="ours", augment="none", eval_protocol="ours_soft")
    syn = d.fit(small, progress=False)
    assert syn.labels.tolist() == [0, 0, 1, 1, 2, 2]
    # each image came from the unit of its (class, slot): re-run one slot unit alone and compare
    units = synthesis_units(3, 2, "slot", 100)
    runner = BarycenterMatching(small, 3, 2, d.loss, d.config, 0, teacher=d.teacher_)
    out = runner.run_unit(units[1])  # slot 1 of classes 0, 1, 2
    assert torch.equal(out["images"], syn.images[[1, 3, 5]])  # the same operations in the same order


def test_adamw_plateau_and_cosine_optimisers():
    p = torch.nn.Parameter(torch.zeros(3))
    opt, sched = make_optimizer([p], "adamw", 1e-3, 100, "plateau", weight_decay=5e-4)
    assert isinstance(opt, torch.optim.AdamW) and opt.defaults["weight_decay"] == 5e-4
    assert opt.defaults["betas"] == (0.9, 0.999)
    for _ in range(502):  # no improvement for more than 500 steps: halved (NCFM's patience 500)
        sched.step(1.0)
    assert opt.param_groups[0]["lr"] == pytest.approx(5e-4)
    opt, sched = make_optimizer([p], "adam", 0.25, 4, "cosine")
    assert opt.defaults["betas"] == (0.5, 0.9)
    lrs = []
    for _ in range(4):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([0.25 * 0.5 * (1 + math.cos(math.pi * t / 4)) for t in range(4)])
    opt, sched = make_optimizer([p], "sgd", 1.0, 4, "constant")
    assert sched is None and opt.defaults["momentum"] == 0.5


def test_pixel_clamp_keeps_every_image_in_the_datas_range(small):
    lo = small.images.amin(dim=(0, 2, 3))
    hi = small.images.amax(dim=(0, 2, 3))
    kw = dict(method="dm", ipc=2, seed=0, iterations=5, lr=100.0, augment="none")
    free = ddm.Distiller(clamp="none", **kw).fit(small, progress=False).images
    clamped = ddm.Distiller(clamp="pixel", **kw).fit(small, progress=False).images
    assert bool((free < lo.view(1, -1, 1, 1) - 1e-3).any() | (free > hi.view(1, -1, 1, 1) + 1e-3).any())
    assert bool(((clamped >= lo.view(1, -1, 1, 1)) & (clamped <= hi.view(1, -1, 1, 1))).all())


def _tiny_teacher(small, seed=0):
    torch.manual_seed(seed)
    model = get_model("convnet_bn", 1, 3, 8)
    return ddm.models.train_model(model, small, epochs=1, progress=False)


def test_released_objective_is_frobenius_feature_term_plus_mean_ce_plus_l2_pcbn(small):
    teacher = _tiny_teacher(small)
    cfg = preset("wmdd", iterations=1, augment="none", teacher_arch="convnet_bn", synthesis_batch="classes",
                 bary_iters=3)
    runner = BarycenterMatching(small, 3, 2, ddm.get_loss("wasserstein"), cfg, 0, teacher=teacher)
    unit = synthesis_units(3, 2, "classes", 100)[0]
    gen = torch.Generator().manual_seed(0)
    images, fixed = runner.start(unit, gen)
    ctx = runner.context(unit, fixed)
    total, _ = runner.step(ctx, images.clone(), 0, gen)
    # by hand: one teacher pass, the terms as data_synthesis_new.py / recover/utils.py compute them
    stats = per_class_bn_stats(teacher, small, 3, variance="batch_mean")
    with bn_inputs(teacher) as captured:
        feats = teacher.embed(images)
    logits = teacher.classifier(feats)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    reg = 0.0
    for layer, f in enumerate(captured):
        flat = f.reshape(f.shape[0], f.shape[1], -1).double()
        per_class = []
        for k in range(3):
            g = flat[labels == k]
            mean, var = g.mean((0, 2)), g.var((0, 2), unbiased=False)
            per_class.append(torch.linalg.vector_norm(mean - stats.mean[layer][k].double())
                             + torch.linalg.vector_norm(var - stats.var[layer][k].double()))
        reg += torch.stack(per_class).mean()
    expected = (torch.linalg.vector_norm(feats.double() - fixed["targets"].double())
                + F.cross_entropy(logits.double(), labels) + cfg.reg_weight * reg)
    # float32 forward vs the float64 recomputation of the same sums: a few ulps of terms of order 1-100
    assert float(total) == pytest.approx(float(expected), rel=1e-5)


def test_paper_objective_is_squared_sum_without_ce(small):
    teacher = _tiny_teacher(small)
    cfg = preset("wmdd", iterations=1, augment="none", teacher_arch="convnet_bn", synthesis_batch="class",
                 ce_weight=0.0, feature_norm="squared", reg="none", bary_iters=3)
    runner = BarycenterMatching(small, 3, 2, ddm.get_loss("wasserstein"), cfg, 0, teacher=teacher)
    unit = synthesis_units(3, 2, "class")[1]
    gen = torch.Generator().manual_seed(0)
    images, fixed = runner.start(unit, gen)
    total, tracked = runner.step(runner.context(unit, fixed), images.clone(), 0, gen)
    expected = ((teacher.embed(images) - fixed["targets"]) ** 2).sum()
    assert float(total) == pytest.approx(float(expected), rel=1e-6) and float(tracked) == float(total)


def test_pcbn_first_layer_weight_multiplies_only_the_first_term(small):
    teacher = _tiny_teacher(small)
    stats = per_class_bn_stats(teacher, small, 3)
    x = torch.randn(6, 1, 8, 8)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    parts = []
    for first in (1.0, 10.0):
        reg, _ = PCBNLoss(teacher, stats, norm="l2", first_weight=first)(x, labels)
        parts.append(float(reg.detach()))
    # the terms of the other layers: weight 1 in both, so the difference is 9 x the first layer's term
    single = PCBNLoss(teacher, stats, norm="l2", first_weight=0.0)(x, labels)[0].detach()
    assert parts[1] - parts[0] == pytest.approx(9 * (parts[0] - float(single)), rel=1e-5)


def test_batch_mean_variance_is_the_size_weighted_mean_of_within_batch_variances(small):
    teacher = _tiny_teacher(small)
    exact = per_class_bn_stats(teacher, small, 3)
    batched = per_class_bn_stats(teacher, small, 3, variance="batch_mean", variance_batch=100)
    layer = 0
    with bn_inputs(teacher) as captured, torch.no_grad():
        teacher.eval()
        k = 1
        idx = small.class_indices(k)
        sums, n = 0.0, 0
        for s in range(0, len(idx), 100):
            teacher(small.load(idx[s:s + 100]))
            f = captured[layer].double()
            sums = sums + len(idx[s:s + 100]) * f.var((0, 2, 3), unbiased=False)
            n += len(idx[s:s + 100])
    assert torch.allclose(batched.var[layer][k].double(), sums / n, rtol=1e-5)
    assert torch.allclose(batched.mean[layer], exact.mean[layer], rtol=1e-4, atol=1e-5)  # the mean is exact both ways
    # the batch-mean variance leaves out the spread between batch means: never above the exact one
    assert bool((batched.var[layer] <= exact.var[layer] * (1 + 1e-5) + 1e-6).all())


def test_gaussian_barycenter_start_is_seeded_standard_normal(small):
    teacher = _tiny_teacher(small)
    cfg = preset("wmdd", iterations=1, augment="none", teacher_arch="convnet_bn", reg="none", bary_iters=1)
    a = BarycenterMatching(small, 3, 2, ddm.get_loss("wasserstein"), cfg, 0, teacher=teacher).targets(0)
    b = BarycenterMatching(small, 3, 2, ddm.get_loss("wasserstein"), cfg, 0, teacher=teacher).targets(0)
    c = BarycenterMatching(small, 3, 2, ddm.get_loss("wasserstein"), cfg, 1, teacher=teacher).targets(0)
    assert torch.equal(a[0], b[0]) and not torch.equal(a[0], c[0])
    assert torch.equal(a[1], torch.full((2,), 0.5))  # learn_weights=False: uniform, as the scripted release
