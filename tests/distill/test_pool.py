"""NCFM's pool of trained embedders (ddmetrics.distill.pool) and its use by distribution matching:
the mixing of weights, the draw of step t, the pool's training, and the calibration step."""
import dataclasses
import os

import pytest
import torch
import torch.nn.functional as F

import ddmetrics as ddm
from ddmetrics import factor as factor_mod
from ddmetrics.distill._loop import synthesis_units
from ddmetrics.distill.distribution_matching import DistributionMatching
from ddmetrics.distill.pool import EmbedderPool
from ddmetrics.models import ConvNet, accuracy
from ddmetrics.protocols import TEACHER_RECIPES


def narrow_convnet(channels, num_classes, image_size):
    """NCFM's ConvNet-3 (instance norm) at width 32: trains in a second on the digits."""
    return ConvNet(channels, num_classes, image_size, width=32)


def narrow_convnet_bn(channels, num_classes, image_size):
    return ConvNet(channels, num_classes, image_size, width=16, norm="batch")


# the "idc:" augmentation of NCFM's recipe is built on another branch; the recipe's other settings
# are kept, with a learning rate and batch that train the narrow ConvNet in a few epochs
RECIPE = dataclasses.replace(TEACHER_RECIPES["ncfm"], augment="color_crop", lr=0.05, batch_size=32)


@pytest.fixture
def ncfm_recipe(monkeypatch):
    """The pool recipe of the strategy set to :data:`RECIPE`."""
    monkeypatch.setitem(TEACHER_RECIPES, "ncfm", RECIPE)


def _state(net):
    return {k: v.clone() for k, v in net.state_dict().items()}


def _equal_states(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("arch", [narrow_convnet, narrow_convnet_bn], ids=["instance_norm", "batch_norm"])
def test_mixing_at_l_0_and_1_gives_the_trained_and_the_initial_weights_exactly(small, arch):
    pool = EmbedderPool(2, arch, RECIPE, epochs=1, seed=0).fit(small, 3)
    for member in range(2):
        trained, initial = _state(pool.trained(member)), pool.initial(member)
        assert not _equal_states(trained, initial)  # trained: the test below can tell the two apart
        assert _equal_states(_state(pool.mixed(member, 0.0)), trained)
        # l = 1: the initial parameters and BatchNorm running statistics; the batch counter is the trained one's
        at_one = _state(pool.mixed(member, 1.0))
        for name, value in at_one.items():
            assert torch.equal(value, initial[name] if value.is_floating_point() else trained[name]), name
        # in between: the formula, the same operations (NCFM utils/utils.py:449-456)
        half = pool.mixed(member, 0.25, out=pool.mixed(member, 0.5))  # written in place equals a new copy
        for name, value in half.state_dict().items():
            if value.is_floating_point():
                assert torch.equal(value, 0.25 * initial[name] + 0.75 * trained[name]), name
        assert not half.training and not any(p.requires_grad for p in half.parameters())
    with pytest.raises(ValueError, match="out is a trained member"):
        pool.mixed(0, 0.5, out=pool.trained(0))


def test_pool_members_differ_and_are_trained(small):
    pool = EmbedderPool(2, narrow_convnet, RECIPE, epochs=3, seed=0).fit(small, 3)
    assert not _equal_states(pool.initial(0), pool.initial(1))
    assert not _equal_states(_state(pool.trained(0)), _state(pool.trained(1)))
    # chance is 1/3; three epochs of the narrow ConvNet reach 0.75-0.96 on this machine, and the
    # margin covers other CPUs' rounding of the same training
    for member in range(2):
        assert accuracy(pool.trained(member), small) > 0.5


def test_the_draw_of_a_step_depends_only_on_seed_and_step(tiny_digits):
    a = EmbedderPool(2, narrow_convnet, RECIPE, epochs=1, seed=5).fit(tiny_digits, 3)
    b = EmbedderPool(2, narrow_convnet, RECIPE, epochs=1, seed=5).fit(tiny_digits, 3)  # retrained: a resumed run
    choices = [a.choice(t) for t in range(40)]
    assert choices == [b.choice(t) for t in range(40)]
    assert {m for m, _ in choices} == {0, 1} and all(0 <= l < 1 for _, l in choices)
    assert len({l for _, l in choices}) == 40
    assert choices != [EmbedderPool(2, narrow_convnet, RECIPE, 1, seed=6).choice(t) for t in range(40)]
    for t in (0, 7):
        (mixed_a, trained_a), (mixed_b, trained_b) = a.draw(t), b.draw(t)
        assert _equal_states(_state(mixed_a), _state(mixed_b))
        assert _equal_states(_state(trained_a), _state(trained_b))
        member, l = a.choice(t)
        assert trained_a is a.trained(member) and _equal_states(_state(mixed_a), _state(a.mixed(member, l)))
        embedder, trained = a.draw(t, interpolate=False)  # without mixing: the trained member itself
        assert embedder is trained is trained_a


def _strategy(train, **overrides):
    """A tiny NCFM run's strategy on ``train`` (3 classes, ipc 1), its pool trained."""
    settings = dict(ipc=1, seed=2, embedder=narrow_convnet, embedder_pool=2, pool_epochs=2, iterations=6,
                    augment="color_crop_cutout", batch_real=32, loss_kwargs={"n_frequencies": 64, "alpha": 0.5,
                                                                            "steps": 0, "bandwidth": 1.0})
    settings.update(overrides)
    d = ddm.Distiller(method="ncfm", **settings)
    return DistributionMatching(train, 3, d.ipc, d.loss, d.config, d.seed)


def _unit_context(strategy, k):
    unit = synthesis_units(3, strategy.ipc, strategy.cfg.synthesis_batch)[k]
    gen = torch.Generator().manual_seed(unit.seed(strategy.seed))
    images, fixed = strategy.start(unit, gen)
    return strategy.context(unit, fixed), images.clone().requires_grad_(True), gen


def test_every_class_and_a_resumed_run_match_with_the_pool_network_of_the_step(tiny_digits, ncfm_recipe):
    strategy = _strategy(tiny_digits, iters_per_model=2)
    # a run: every class steps through 0..3 (the network of steps 2 and 3 is drawn at step 2)
    seen = {}
    for k in range(3):
        ctx, syn, gen = _unit_context(strategy, k)
        for t in range(4):
            strategy.step(ctx, syn, t, gen)
            seen[k, t] = _state(ctx["embedder"]), ctx["trained"]
    member, l = strategy.pool.choice(2)
    drawn = _state(strategy.pool.mixed(member, l))
    for k in range(3):
        assert _equal_states(seen[k, 3][0], drawn) and seen[k, 3][1] is strategy.pool.trained(member)
        assert _equal_states(seen[k, 0][0], seen[0, 0][0])
    # a resumed run builds its strategy again (the pool retrained from the seed) and enters at step 3
    resumed = _strategy(tiny_digits, iters_per_model=2)
    ctx, syn, gen = _unit_context(resumed, 1)
    resumed.step(ctx, syn, 3, gen)
    assert _equal_states(_state(ctx["embedder"]), drawn)
    assert _equal_states(_state(ctx["trained"]), _state(strategy.pool.trained(member)))


@pytest.mark.parametrize("interpolate", [True, False])
def test_the_calibration_step_is_the_cross_entropy_of_the_trained_end_on_the_decoded_images(
        tiny_digits, ncfm_recipe, interpolate):
    strategy = _strategy(tiny_digits, factor=2, calib_weight=0.5, pool_interpolate=interpolate)
    ctx, syn, gen = _unit_context(strategy, 1)
    strategy.step(ctx, syn, 4, gen)
    state = gen.get_state()
    objectives = list(strategy.extra_steps(ctx, syn, 4, gen))
    assert len(objectives) == 1
    # by hand: the 4 decoded tiles, one augmentation draw shared by them, the drawn member's trained
    # end (not the mixed network), class 1's label, mean cross-entropy x calib_weight
    by_hand_gen = torch.Generator().set_state(state)
    tiles = factor_mod.decode(syn, torch.ones(1, dtype=torch.long), None, 2)[0]
    aug = strategy.augment
    x = aug.apply(tiles, aug.sample(1, tiles.shape, by_hand_gen))
    trained = strategy.pool.trained(strategy.pool.choice(4)[0])
    expected = 0.5 * F.cross_entropy(trained(x), torch.ones(4, dtype=torch.long))
    assert torch.equal(objectives[0], expected)
    grad, = torch.autograd.grad(objectives[0], syn)
    expected_grad, = torch.autograd.grad(expected, syn)
    assert torch.equal(grad, expected_grad) and grad.abs().sum() > 0
    if interpolate:  # the matching network is another one: the calibration did not use it
        assert not torch.equal(ctx["embedder"](x), trained(x))
    # calib_weight = 0: no calibration step
    plain = _strategy(tiny_digits, factor=2, calib_weight=0.0, pool_interpolate=interpolate)
    ctx, syn, gen = _unit_context(plain, 1)
    plain.step(ctx, syn, 4, gen)
    assert list(plain.extra_steps(ctx, syn, 4, gen)) == []


def test_an_interrupted_ncfm_run_resumes_exactly(tiny_digits, ncfm_recipe, tmp_path, interrupt_at_save):
    kw = dict(method="ncfm", ipc=1, seed=3, embedder=narrow_convnet, embedder_pool=2, pool_epochs=1, iterations=4,
              augment="color_crop_cutout", batch_real=32, factor=2, calib_weight=1.0,
              loss_kwargs={"n_frequencies": 64, "alpha": 0.5, "steps": 0, "bandwidth": 1.0})
    reference = ddm.Distiller(**kw).fit(tiny_digits, progress=False)
    folder = tmp_path / "ckpt"
    with pytest.raises(interrupt_at_save(2)):  # class 1 after step 2 of 4 (its last step finishes it, unsaved)
        ddm.Distiller(**kw).fit(tiny_digits, progress=False, checkpoint=folder, checkpoint_every=2)
    interrupt_at_save(None)
    assert "class_0001.progress.pt" in os.listdir(folder)
    resumed = ddm.Distiller(**kw).fit(tiny_digits, progress=False, checkpoint=folder, checkpoint_every=2, resume=True)
    assert torch.equal(resumed.images, reference.images)
    # the calibration steps act: without them the run ends elsewhere
    plain = ddm.Distiller(**{**kw, "calib_weight": 0.0}).fit(tiny_digits, progress=False)
    assert not torch.equal(plain.images, reference.images)


def test_bad_pool_settings_are_refused_before_any_training():
    with pytest.raises(ValueError, match="size"):
        EmbedderPool(0, narrow_convnet, RECIPE, epochs=1, seed=0)
    with pytest.raises(ValueError, match="epochs"):
        EmbedderPool(2, narrow_convnet, RECIPE, epochs=0, seed=0)
    with pytest.raises(TypeError, match="recipe"):
        EmbedderPool(2, narrow_convnet, "ncfm", epochs=1, seed=0)
    with pytest.raises(RuntimeError, match="fit"):
        EmbedderPool(2, narrow_convnet, RECIPE, epochs=1, seed=0).draw(0)
