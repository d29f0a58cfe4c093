"""DataDAM: the spatial attention maps of every activation but the last, matched per class beside
the embeddings; the maps are the release's, the term is weighted as the preset says, any loss takes
the maps' slot."""
import pytest
import torch

import ddmetrics as ddm
from ddmetrics.distill import distribution_matching as dm_mod
from ddmetrics.distill.distribution_matching import attention_layers, attention_map
from ddmetrics.models import capture, get_model
from ddmetrics.losses import base


@pytest.mark.parametrize("power", [1.0, 4.0])
def test_the_attention_map_is_the_releases(power):
    # utils.py get_attention(param=1, exp=p, norm="l2") written out: sum over channels of |f|^p, one row per
    # image, each row divided by its L2 norm
    f = torch.randn(5, 7, 6, 6, generator=torch.Generator().manual_seed(0))
    rows = (f.abs() ** power).sum(1).reshape(5, -1)
    expected = rows / rows.norm(dim=1, keepdim=True)
    assert torch.allclose(attention_map(f, power), expected, rtol=1e-6, atol=0)


def test_capture_records_every_relu_output():
    net = get_model("convnet", 1, 10, 28)
    relus = attention_layers(net)
    assert len(relus) == 3  # ConvNet-3: one activation per block
    with capture(relus) as acts:
        net.embed(torch.randn(2, 1, 28, 28))
    assert [tuple(a.shape) for a in acts] == [(2, 128, 32, 32), (2, 128, 16, 16), (2, 128, 8, 8)]
    assert all(not h for m in relus for h in (m._forward_hooks,))  # removed on exit


def test_the_maps_of_every_activation_but_the_last_are_matched_and_weighted(small, monkeypatch):
    seen = []
    original = dm_mod.attention_map

    def recording(activation, power=1.0):
        seen.append(tuple(activation.shape))
        return original(activation, power)

    monkeypatch.setattr(dm_mod, "attention_map", recording)

    def first_loss(weight):
        syn = ddm.Distiller(method="datadam", ipc=2, iterations=1, seed=0, attention_weight=weight,
                            batch_real=16).fit(small, progress=False)
        return syn.meta["info"]["matching_loss_first"]

    without = first_loss(0.0)
    assert seen == []
    once = first_loss(100.0)
    # 3 classes, one step each, real and synthetic maps of the 2 activations before the last (8-px digits:
    # the ConvNet's blocks at 8 and 4 px)
    assert len(seen) == 3 * 2 * 2 and {s[2:] for s in seen} == {(8, 8), (4, 4)}
    twice = first_loss(200.0)
    # the same first step (same draws, same start): the maps' term enters linearly in its weight
    assert once > without
    assert twice - once == pytest.approx(once - without, rel=1e-4)


@pytest.mark.parametrize("loss", sorted(set(ddm.available_losses()) - set(base.missing_losses())))
def test_datadam_takes_any_registered_loss_in_the_maps_slot(small, loss):
    kwargs = {"krdual": {"steps": 2}, "ncfd": {"n_frequencies": 16}}.get(loss, {})
    syn = ddm.Distiller(method="datadam", loss=loss, loss_kwargs=kwargs, ipc=1, iterations=1, seed=0,
                        batch_real=8).fit(small, progress=False)
    assert syn.meta["info"]["matching_loss_first"] is not None and torch.isfinite(syn.images).all()


def test_attention_settings_are_refused_where_they_do_not_apply():
    with pytest.raises(ValueError, match="attention_weight does not apply to method 'wmdd'"):
        ddm.Distiller(method="wmdd", attention_weight=1.0)
    with pytest.raises(ValueError, match="attention_power does not apply to method 'dm'"):
        ddm.Distiller(method="dm", attention_power=4.0)
    assert ddm.Distiller(method="dm", attention_weight=10.0).config.attention_weight == 10.0
