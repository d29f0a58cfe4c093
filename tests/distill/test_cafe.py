"""CAFE: the class means of every activation and of the embedding matched with the release's weights,
the discrimination term through the synthetic class centres, and the bi-level rounds whose length
the accuracy watchers decide."""
import math

import pytest
import torch
import torch.nn.functional as F

import ddmetrics as ddm
from ddmetrics.distill import distribution_matching as dm_mod
from ddmetrics.distill._loop import make_optimizer, step_factor, synthesis_units
from ddmetrics.distill.distribution_matching import (DistributionMatching, attention_layers, discrimination_loss,
                                                     embedder_at)
from ddmetrics.distill.presets import make_loss, preset
from ddmetrics.losses import base
from ddmetrics.models import capture


def test_discrimination_is_the_summed_cross_entropy_of_real_images_among_the_synthetic_centres():
    gen = torch.Generator().manual_seed(0)
    f_real, f_syn = torch.randn(7, 5, generator=gen, dtype=torch.float64), torch.randn(5, 5, generator=gen,
                                                                                        dtype=torch.float64)
    n_real, n_syn = [3, 4], [2, 3]
    centres = [f_syn[:2].mean(0), f_syn[2:].mean(0)]
    expected = 0.0
    for i in range(7):  # distill.py:283-289 written out: raw inner products, no temperature, summed
        y = 0 if i < 3 else 1
        logits = [float(f_real[i] @ c) for c in centres]
        expected += math.log(sum(math.exp(v) for v in logits)) - logits[y]
    assert float(discrimination_loss(f_real, f_syn, n_real, n_syn)) == pytest.approx(expected, rel=1e-12)


def _strategy(small, **overrides):
    cfg = preset("cafe", **overrides)
    return DistributionMatching(small, 3, 2, make_loss(cfg.loss, **cfg.loss_kwargs), cfg, seed=0)


def test_the_objective_is_the_releases(small):
    # all of each class's real images (batch_real above the class size, no augmentation: the means do not depend
    # on the draw's order), and the release's criterion written out: summed squared differences of the class means
    # of relu1..3 (x 0.1, 0.1, 1) and of the embedding (x 1 for pool3 + 1 for its own term), + 0.01 x the CE sum
    strat = _strategy(small, batch_real=10_000)
    unit = synthesis_units(3, 2, "all")[0]
    gen = torch.Generator().manual_seed(0)
    syn, fixed = strat.start(unit, gen)
    ctx = strat.context(unit, fixed)
    ctx["embedder"] = embedder_at(strat.cfg, 0, 0, 1, 3, 8)
    value = strat._objective(ctx, syn, gen)
    net = ctx["embedder"]
    reals = [small.load(small.class_indices(k)) for k in range(3)]
    f_real, maps_real = [], []
    for r in reals:
        with capture(attention_layers(net)) as acts:
            f_real.append(net.embed(r))
        maps_real.append([a.flatten(1) for a in acts])
    with capture(attention_layers(net)) as acts:
        f_syn = net.embed(syn)
    maps_syn = [a.flatten(1) for a in acts]
    expected = 0.0
    for k in range(3):
        for w, a_r, a_s in zip((0.1, 0.1, 1.0), maps_real[k], maps_syn):
            expected += w * float(((a_r.mean(0) - a_s[2 * k:2 * k + 2].mean(0)) ** 2).sum())
        expected += 2.0 * float(((f_real[k].mean(0) - f_syn[2 * k:2 * k + 2].mean(0)) ** 2).sum())
    expected += 0.01 * float(discrimination_loss(torch.cat(f_real), f_syn, [len(r) for r in reals], [2, 2, 2]))
    # float32 features summed in two orders (means of up to 59 rows, sums over 8192 map entries): 1e-5 relative
    assert float(value) == pytest.approx(expected, rel=1e-5)


def test_layer_weights_need_one_entry_per_activation_and_one_for_the_embedding(small):
    with pytest.raises(ValueError, match="layer_weights has 3 entries; the embedder 'convnet' has 3 activations"):
        _strategy(small, layer_weights=[1.0, 1.0, 1.0])


@pytest.mark.parametrize("accuracy, cap, steps, epochs_each, bounds", [
    # constant accuracy a, 3 classes: the watched value v_t = v_{t-1}/3 + a climbs from a to 1.5a; a round ends at
    # the first window of 10 spanning less than 0.04 (v_3..v_12 at a = 0.5: 12 image steps), a training phase at
    # the first spanning more than 0.03 (v_1..v_10 already: 10 epochs)
    (0.5, 12, 12, 10, 0),
    # accuracy 0: the round ends after its first 10 probes; a phase never moves, so each reaches the bound
    (0.0, 4, 10, 4, 9),
])
def test_the_watchers_decide_the_rounds(small, monkeypatch, accuracy, cap, steps, epochs_each, bounds):
    monkeypatch.setattr(dm_mod, "MAX_INNER_EPOCHS", cap)
    monkeypatch.setattr(DistributionMatching, "_real_accuracy", lambda self, ctx, net, gen: accuracy)
    syn = ddm.Distiller(method="cafe", ipc=1, iterations=2, seed=0, batch_real=8).fit(small, progress=False)
    info = syn.meta["info"]
    assert info["image_steps"] == 2 * steps
    assert info["inner_epochs"] == 2 * (steps - 1) * epochs_each
    assert info["bounds_reached"] == 2 * bounds


def test_the_network_trains_on_the_synthetic_set_between_image_steps(small, monkeypatch):
    seen = []
    original = DistributionMatching._train_on_synthetic

    def recording(self, ctx, net, opt, syn, gen):
        before = [p.detach().clone() for p in net.parameters()]
        original(self, ctx, net, opt, syn, gen)
        seen.append(max(float((p.detach() - b).abs().max()) for p, b in zip(net.parameters(), before)))
        # the images' steps take no gradient in the network
        assert all(not p.requires_grad for p in net.parameters())

    monkeypatch.setattr(DistributionMatching, "_train_on_synthetic", recording)
    monkeypatch.setattr(dm_mod, "MAX_ROUND_STEPS", 3)
    monkeypatch.setattr(dm_mod, "MAX_INNER_EPOCHS", 2)
    ddm.Distiller(method="cafe", ipc=1, iterations=1, seed=0, batch_real=8).fit(small, progress=False)
    assert len(seen) == 2 and min(seen) > 0  # two phases between three image steps, each moved the network


def test_the_step_schedule_halves_at_60_80_and_90_percent():
    assert [step_factor(t, 2000) for t in (0, 1199, 1200, 1599, 1600, 1799, 1800, 1999)] == \
        [1, 1, 0.5, 0.5, 0.25, 0.25, 0.125, 0.125]
    x = torch.zeros(1, requires_grad=True)
    opt, sched = make_optimizer([x], "sgd", 0.1, 10, "step")
    rates = []
    for _ in range(10):
        rates.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert rates == pytest.approx([0.1] * 6 + [0.05] * 2 + [0.025, 0.0125], rel=1e-12)


def test_all_puts_every_image_in_one_unit():
    units = synthesis_units(4, 3, "all")
    assert len(units) == 1 and units[0].cells == [(k, j) for k in range(4) for j in range(3)]
    # its own stream: not a class's, not the barycenter start's (stream 3) of class 0
    from ddmetrics.distributed import class_seed
    assert units[0].seed(5) not in {class_seed(5, 0), class_seed(5, 0, stream=3)}


@pytest.mark.parametrize("loss", sorted(set(ddm.available_losses()) - set(base.missing_losses())))
def test_cafe_takes_any_registered_loss_in_the_layers_slot(small, monkeypatch, loss):
    monkeypatch.setattr(dm_mod, "MAX_ROUND_STEPS", 2)
    monkeypatch.setattr(dm_mod, "MAX_INNER_EPOCHS", 2)
    kwargs = {"krdual": {"steps": 2}, "ncfd": {"n_frequencies": 16}}.get(loss, {})
    syn = ddm.Distiller(method="cafe", loss=loss, loss_kwargs=kwargs, ipc=1, iterations=1, seed=0,
                        batch_real=8).fit(small, progress=False)
    assert syn.meta["info"]["matching_loss_first"] is not None and torch.isfinite(syn.images).all()


@pytest.mark.parametrize("method, settings, needle", [
    ("dm", {"discrimination_weight": 0.01}, "discrimination_weight > 0 classifies"),
    ("cafe", {"synthesis_batch": "class"}, "discrimination_weight > 0 classifies"),
    ("ncfm", {"bilevel": True}, "bilevel trains each round's new random network"),
    ("cafe", {"iters_per_model": 2}, "iters_per_model must be 1"),
    ("wmdd", {"layer_weights": [1.0]}, "layer_weights does not apply to method 'wmdd'"),
    ("wmdd", {"bilevel": True}, "bilevel does not apply to method 'wmdd'"),
    ("cafe", {"layer_weights": [1.0, -1.0]}, "layer_weights"),
    ("cafe", {"batch_images": 50}, "batch_images does not apply to method 'cafe'"),
])
def test_cafe_settings_are_refused_where_they_do_not_apply(method, settings, needle):
    with pytest.raises(ValueError, match=needle):
        ddm.Distiller(method=method, **settings)


def test_dm_takes_the_layers_and_the_discrimination_of_cafe():
    cfg = ddm.Distiller(method="dm", layer_weights=[0, 0, 1, 1], synthesis_batch="all",
                        discrimination_weight=0.1).config
    assert cfg.layer_weights == [0.0, 0.0, 1.0, 1.0] and cfg.discrimination_weight == 0.1


def test_an_interrupted_cafe_run_resumes_exactly(small, tmp_path, interrupt_at_save, monkeypatch):
    # the rounds' counts travel in the checkpoint; each round's network is drawn anew from (seed, round)
    monkeypatch.setattr(dm_mod, "MAX_ROUND_STEPS", 3)
    monkeypatch.setattr(dm_mod, "MAX_INNER_EPOCHS", 4)
    kw = dict(method="cafe", ipc=1, iterations=4, seed=4, batch_real=16)
    reference = ddm.Distiller(**kw).fit(small, progress=False)
    folder = tmp_path / "ckpt"
    with pytest.raises(interrupt_at_save(1)):  # after round 2 of 4
        ddm.Distiller(**kw).fit(small, progress=False, checkpoint=folder, checkpoint_every=2)
    interrupt_at_save(None)
    resumed = ddm.Distiller(**kw).fit(small, progress=False, checkpoint=folder, checkpoint_every=2, resume=True)
    assert torch.equal(resumed.images, reference.images)
    assert {k: resumed.meta["info"][k] for k in ("image_steps", "inner_epochs", "bounds_reached")} == \
        {k: reference.meta["info"][k] for k in ("image_steps", "inner_epochs", "bounds_reached")}
    assert reference.meta["info"]["image_steps"] > 4  # rounds of several image steps were resumed
