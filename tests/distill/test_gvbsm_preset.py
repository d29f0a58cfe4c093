"""The g_vbsm preset: G-VBSM's objective on one network per step (round-robin over the teacher and the
backbones), the densification term and its weight, the ensemble's soft labels and the MSE + CE student
loss, the refusals, and an exact resume (the EMA states travel in the checkpoint)."""
import os

import pytest
import torch
import torch.nn.functional as F

import ddmetrics as ddm
from ddmetrics.augment import CropFlipRoll, make_augment
from ddmetrics.distill import barycenter_matching as bm_mod
from ddmetrics.distill import gvbsm as gvbsm_mod
from ddmetrics.distill._loop import synthesis_units
from ddmetrics.distill.barycenter_matching import BarycenterMatching
from ddmetrics.distill.pool import EmbedderPool
from ddmetrics.distill.presets import SettingError, make_loss, preset
from ddmetrics.evaluate import LogitEnsemble, mse_ce_loss, train_student
from ddmetrics.models import get_model
from ddmetrics.protocols import TEACHER_RECIPES, get_protocol

#: a short teacher and backbones (one epoch of the "ours" recipe: two steps), so the tests stay fast
CHEAP = dict(teacher_recipe="ours", teacher_epochs=1)


def _teacher(seed: int = 0):
    """An untrained resnet18 in eval mode: running BN statistics (0, 1) and conv layers are all the
    objective needs (the statistics are matched, not learnt)."""
    torch.manual_seed(seed)
    return get_model("resnet18", 1, 3, 8).eval()


def _strategy(data, **overrides):
    cfg = preset("g_vbsm", **{**CHEAP, **overrides})
    return BarycenterMatching(data, 3, 2, make_loss(cfg.loss, **cfg.loss_kwargs), cfg, seed=0, teacher=_teacher())


@pytest.fixture(scope="module")
def strategy(tiny_digits):
    return _strategy(tiny_digits)


def _unit_ctx(strat, seed: int = 0):
    unit = synthesis_units(3, 2, strat.cfg.synthesis_batch, strat.cfg.batch_images)[0]
    gen = torch.Generator().manual_seed(seed)
    syn, fixed = strat.start(unit, gen)
    return strat.context(unit, fixed), syn, gen


def test_the_networks_are_the_teacher_then_one_trained_backbone_per_architecture(strategy):
    assert strategy.networks[0] is strategy.teacher
    kinds = [type(n).__name__ for n in strategy.backbones]
    assert kinds == ["ConvNet", "ConvNet", "ResNetAP10"]
    norms = [type(m).__name__ for m in strategy.backbones[1].modules() if "Norm" in type(m).__name__]
    assert set(norms) == {"BatchNorm2d"}  # convnet_bn; convnet is the release's instance-norm ConvNet-W128
    assert all(not n.training and not any(p.requires_grad for p in n.parameters()) for n in strategy.backbones)


def test_one_network_per_step_round_robin(strategy, monkeypatch):
    # the release's counter (ds.py:150-152): step t runs network t mod 4, each network's statistics matched
    seen = []
    original = gvbsm_mod.StatisticMatching.__call__

    def spy(self, images, generator):
        seen.append(self.model)
        return original(self, images, generator)

    monkeypatch.setattr(gvbsm_mod.StatisticMatching, "__call__", spy)
    ctx, syn, gen = _unit_ctx(strategy)
    syn.requires_grad_(True)
    for it in range(8):
        strategy.step(ctx, syn, it, gen)
    assert [strategy.networks.index(m) for m in seen] == [0, 1, 2, 3, 0, 1, 2, 3]
    # and each network's EMA states moved: every one of them was matched
    assert all(any(s is not None for s in m.state_dict()["states"]) for m in ctx["matching"])


def test_the_objective_is_ce_plus_weighted_statistics_plus_weighted_densification(tiny_digits, strategy):
    # recomputed by hand from the parts, with the same draws: the view (augmentation) and the conv drops
    for it in (0, 1):
        ctx, syn, gen = _unit_ctx(strategy, seed=3)
        state = gen.get_state()
        total, tracked = strategy.step(ctx, syn, it, gen)
        gen.set_state(state)
        view = strategy.augment(syn, gen)
        net = strategy.networks[it]
        match = gvbsm_mod.StatisticMatching(net, strategy._conv_references[it], momentum=0.8, drop_rate=0.4,
                                            first_multiplier=10.0)
        stat, logits = match(view, gen)
        ce = F.cross_entropy(logits, ctx["labels"])
        dd = gvbsm_mod.densification_loss(view, ctx["labels"], tau=4.0)
        expected = float(ce) + 0.01 * float(stat) + 1.0 * float(dd)
        # the same float32 operations in another association: 1e-6 relative
        assert float(total) == pytest.approx(expected, rel=1e-6)
        assert float(tracked) == pytest.approx(float(ce), rel=1e-6)
        assert float(dd) > 0  # two images per class: a non-trivial spectrum to flatten


def test_the_first_loss_moves_linearly_in_densify_weight(tiny_digits, strategy):
    values = {}
    for w in (0.0, 1.0, 2.5):
        strat = _strategy(tiny_digits, densify_weight=w) if w != 1.0 else strategy
        ctx, syn, gen = _unit_ctx(strat, seed=1)
        values[w] = float(strat.step(ctx, syn, 0, gen)[0])
    slope = values[1.0] - values[0.0]
    assert slope > 0
    # float32 sums of terms of order 1: 1e-5 relative to the slope
    assert values[2.5] - values[0.0] == pytest.approx(2.5 * slope, rel=1e-5)


def test_the_ensemble_labels_are_the_mean_of_the_networks_logits(strategy):
    x = torch.randn(5, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    ensemble = LogitEnsemble(strategy.networks)
    with torch.no_grad():
        expected = sum(n(x) for n in strategy.networks) / len(strategy.networks)
        got = ensemble(x)
    # float32 means of four logits in two orders: 1e-6 absolute on logits of order 1
    assert torch.allclose(got, expected, atol=1e-6, rtol=1e-6)
    assert got.shape == (5, 3)


def test_the_distiller_hands_the_ensemble_to_the_evaluation(tiny_digits):
    d = ddm.Distiller(method="g_vbsm", ipc=1, seed=0, iterations=2, **CHEAP)
    assert d.labelling_teacher() is None  # no teacher before fit
    d.fit(tiny_digits, progress=False)
    labeller = d.labelling_teacher()
    assert isinstance(labeller, LogitEnsemble)
    assert list(labeller.members) == [d.teacher_] + d.backbones_ and len(d.backbones_) == 3
    sre = ddm.Distiller(method="sre2l", ipc=1, seed=0, iterations=1, **CHEAP)
    sre.fit(tiny_digits, progress=False)
    assert sre.labelling_teacher() is sre.teacher_  # one teacher: itself


def test_mse_ce_is_the_releases_student_loss():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(6, 4, generator=g, dtype=torch.float64), torch.randn(6, 4, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 3, 0, 1])
    per = mse_ce_loss(s, t, y)
    assert per.shape == (6,)
    # train_FKD.py:307-308: F.mse_loss (mean over B x C) + 0.15 F.cross_entropy (mean over B)
    assert float(per.mean()) == pytest.approx(float(F.mse_loss(s, t) + 0.15 * F.cross_entropy(s, y)), rel=1e-12)
    # and by hand for one image
    i = 2
    ce = float(torch.logsumexp(s[i], 0) - s[i, y[i]])
    assert float(per[i]) == pytest.approx(float(((s[i] - t[i]) ** 2).mean()) + 0.15 * ce, rel=1e-12)


def test_the_g_vbsm_protocol_trains_a_student_on_the_ensemble(tiny_digits, strategy):
    proto = get_protocol("g_vbsm")
    assert proto.soft_loss == "mse_ce" and proto.temperature is None and proto.labels == "soft"
    assert (proto.recipe.optimizer, proto.recipe.lr, proto.recipe.weight_decay, proto.recipe.batch_size,
            proto.recipe.schedule, proto.recipe.mix, proto.recipe.epochs) == ("adamw", 1e-3, 0.0, 100, "cosine",
                                                                             "cutmix", 1000)
    syn = ddm.SyntheticSet(tiny_digits.images[:6], torch.tensor([0, 0, 1, 1, 2, 2]), torch.full((6,), 0.5),
                           meta={}, num_classes=3)
    student = train_student(syn, proto, teacher=LogitEnsemble(strategy.networks), seed=0, budget=0.002)
    assert not student.training


def test_the_release_recipes():
    r = TEACHER_RECIPES["g_vbsm"]
    assert (r.optimizer, r.lr, r.momentum, r.weight_decay, r.batch_size, r.schedule, r.augment, r.epochs) == \
        ("sgd", 0.05, 0.9, 0.0, 64, "constant", "crop_pad_flip", 5)
    aug = make_augment("crop_pad_flip_roll", 3, 32)
    assert isinstance(aug, CropFlipRoll) and aug.crop == "padded" and aug.shared
    assert aug.padding == 4 and aug.flip == 0.5


def test_a_loss_is_refused_in_one_line_naming_the_method():
    with pytest.raises(SettingError) as err:
        ddm.Distiller(method="g_vbsm", loss="sliced")
    message = str(err.value)
    assert "\n" not in message and "'g_vbsm'" in message and "G-VBSM" in message


@pytest.mark.parametrize("method, setting", [("sre2l", {"conv_drop": 0.2}), ("wmdd", {"backbones": ["convnet"]}),
                                             ("dm", {"densify_weight": 1.0}), ("cda", {"stat_momentum": 0.5})])
def test_g_vbsm_fields_are_refused_elsewhere_by_name(method, setting):
    name = next(iter(setting))
    with pytest.raises(SettingError, match=f"{name} does not apply to method '{method}'"):
        preset(method, **setting)


def test_other_refusals():
    with pytest.raises(SettingError, match="temperature does not apply"):
        preset("g_vbsm", temperature=4.0)  # MSE + CE on raw logits: no temperature
    with pytest.raises(SettingError, match="reg_norm does not apply"):
        preset("g_vbsm", reg_norm="squared")
    with pytest.raises(SettingError, match="needs feature_loss='none'"):
        preset("g_vbsm", feature_loss="barycenter")
    with pytest.raises(ValueError, match="backbones=\\['nope'\\] is not allowed"):
        preset("g_vbsm", backbones=["nope"])
    with pytest.raises(ValueError, match="lists 2 architectures for a pool of size 3"):
        EmbedderPool(3, ["convnet", "resnet18"], TEACHER_RECIPES["ours"], epochs=1, seed=0)


def test_an_interrupted_g_vbsm_run_resumes_exactly(tiny_digits, tmp_path, interrupt_at_save, pool_trainings):
    # the EMA states of every network travel in the checkpoint (loss_state); the backbones are read back from
    # it, not trained again; the drops and views come from the restored generator
    kw = dict(method="g_vbsm", ipc=2, seed=4, iterations=6, **CHEAP)
    reference = ddm.Distiller(**kw).fit(tiny_digits, progress=False)
    folder = tmp_path / "ckpt"
    with pytest.raises(interrupt_at_save(1)):  # after iteration 2 of 6: networks 0 and 1 have EMA states
        ddm.Distiller(**kw).fit(tiny_digits, progress=False, checkpoint=folder, checkpoint_every=2)
    interrupt_at_save(None)
    assert sorted(n for n in os.listdir(folder) if n.startswith("network_")) == \
        [f"network_{i:02d}.pt" for i in range(len(preset("g_vbsm").backbones))]
    assert len(pool_trainings) == 2 * len(preset("g_vbsm").backbones)  # the reference run's, the interrupted one's
    pool_trainings.clear()
    resumed = ddm.Distiller(**kw).fit(tiny_digits, progress=False, checkpoint=folder, checkpoint_every=2, resume=True)
    assert pool_trainings == []
    assert torch.equal(resumed.images, reference.images)


def test_the_saved_loss_state_holds_every_networks_ema(strategy):
    ctx, syn, gen = _unit_ctx(strategy)
    syn.requires_grad_(True)
    for it in range(2):
        strategy.step(ctx, syn, it, gen)
    state = strategy.loss_state(ctx)
    assert len(state["matching"]) == 4
    filled = [any(s is not None for s in m["states"]) for m in state["matching"]]
    assert filled == [True, True, False, False]
    fresh, _, _ = _unit_ctx(strategy)
    strategy.load_loss_state(fresh, state)
    for a, b in zip(fresh["matching"], ctx["matching"]):
        for sa, sb in zip(a.state_dict()["states"], b.state_dict()["states"]):
            assert (sa is None) == (sb is None)
            if sa is not None:
                assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_labelling_with_the_ensemble_leaves_its_members_in_eval_mode(strategy, tiny_digits):
    ensemble = LogitEnsemble(strategy.networks)
    assert not ensemble.training
    syn = ddm.SyntheticSet(tiny_digits.images[:3], torch.arange(3), torch.full((3,), 1.0), meta={}, num_classes=3)
    train_student(syn, "g_vbsm", teacher=ensemble, seed=0, budget=0.001)
    assert not any(m.training for n in strategy.networks for m in n.modules())


def test_without_backbones_the_teacher_runs_every_step(tiny_digits):
    strat = _strategy(tiny_digits, backbones=[])
    assert strat.networks == [strat.teacher] and strat.backbones == []
    ctx, syn, gen = _unit_ctx(strat)
    assert len(ctx["matching"]) == 1
    total, _ = strat.step(ctx, syn, 5, gen)
    assert torch.isfinite(total)


@pytest.mark.parametrize("ipc, units, classes_per_unit", [(10, 1, 10), (50, 5, 2)])
def test_batches_are_the_releases_class_grouped_slices_of_100(ipc, units, classes_per_unit):
    # ds.py:105-119 on CIFAR-10: IPC 10 -> one batch of all 100 images; IPC 50 -> batches of 2 classes x 50
    cfg = preset("g_vbsm")
    got = synthesis_units(10, ipc, cfg.synthesis_batch, cfg.batch_images)
    assert len(got) == units
    assert all(len(u.classes) == classes_per_unit and len(u.slots) == ipc for u in got)


def test_the_mse_ce_protocol_takes_no_temperature():
    from ddmetrics.evaluate import hard_label_variant, with_overrides

    with pytest.raises(ValueError, match="compares raw logits, it has no temperature"):
        with_overrides(get_protocol("g_vbsm"), temperature=4.0)
    hard = hard_label_variant(get_protocol("g_vbsm"))  # DD-Ranking's syn-hard student: plain cross-entropy
    assert hard.labels == "hard" and hard.soft_loss == "kl" and hard.recipe.mix == "none"
