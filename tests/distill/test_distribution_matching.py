"""The random embedders of distribution matching: a redraw in place equals a new draw."""
import pytest
import torch

import ddmetrics as ddm
from ddmetrics.distill.distribution_matching import embedder_at
from ddmetrics.models import MODELS, ConvNet


def _state(net):
    return {k: v.clone() for k, v in net.state_dict().items()}


@pytest.mark.parametrize("name", ["convnet", "convnet_bn", "resnetap10", "resnet18"])
def test_an_embedder_redrawn_in_place_has_the_weights_of_a_new_draw(name):
    cfg = ddm.Distiller(method="dm", embedder=name, iters_per_model=5).config
    first = embedder_at(cfg, 3, 0, 3, 10, 32)
    drawn_first = _state(first)
    with torch.no_grad():  # a forward in train mode moves the BN running statistics: reset too
        first.embed(torch.randn(4, 3, 32, 32))
    again = embedder_at(cfg, 3, 7, 3, 10, 32, reuse=first)
    assert again is first and not any(p.requires_grad for p in again.parameters()) and again.training
    new = _state(embedder_at(cfg, 3, 7, 3, 10, 32))
    assert new.keys() == _state(again).keys()
    assert all(torch.equal(v, new[k]) for k, v in _state(again).items())
    assert not all(torch.equal(v, drawn_first[k]) for k, v in new.items() if v.is_floating_point())


def test_a_model_registered_over_a_built_in_name_is_built_anew(monkeypatch):
    monkeypatch.setitem(MODELS, "convnet", lambda c, n, s: ConvNet(c, n, s, width=16))
    cfg = ddm.Distiller(method="dm", iters_per_model=5).config
    first = embedder_at(cfg, 3, 0, 1, 10, 8)
    again = embedder_at(cfg, 3, 5, 1, 10, 8, reuse=first)
    assert again is not first and again.features[0].out_channels == 16
