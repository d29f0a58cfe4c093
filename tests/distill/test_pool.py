"""NCFM's pool of trained embedders (ddmetrics.distill.pool): the mixing of weights, the draw of
step t, the pool's training."""
import dataclasses

import pytest
import torch

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


def test_bad_pool_settings_are_refused_before_any_training():
    with pytest.raises(ValueError, match="size"):
        EmbedderPool(0, narrow_convnet, RECIPE, epochs=1, seed=0)
    with pytest.raises(ValueError, match="epochs"):
        EmbedderPool(2, narrow_convnet, RECIPE, epochs=0, seed=0)
    with pytest.raises(TypeError, match="recipe"):
        EmbedderPool(2, narrow_convnet, "ncfm", epochs=1, seed=0)
    with pytest.raises(RuntimeError, match="fit"):
        EmbedderPool(2, narrow_convnet, RECIPE, epochs=1, seed=0).draw(0)
