"""The random embedders of distribution matching: one draw per ``iters_per_model`` steps, seeded by
the step it starts at, built by whatever the model name means now."""
import pytest
import torch

import ddmetrics as ddm
from ddmetrics.distill.distribution_matching import embedder_at
from ddmetrics.models import MODELS, ConvNet


def _state(net):
    return {k: v.clone() for k, v in net.state_dict().items()}


@pytest.mark.parametrize("name", ["convnet", "resnet18"])
def test_an_embedder_is_redrawn_every_iters_per_model_steps(name):
    cfg = ddm.Distiller(method="dm", embedder=name, iters_per_model=5).config
    first, same, next_draw = (_state(embedder_at(cfg, 3, it, 3, 10, 32)) for it in (0, 4, 5))
    assert all(torch.equal(v, same[k]) for k, v in first.items())
    assert not all(torch.equal(v, next_draw[k]) for k, v in first.items() if v.is_floating_point())
    net = embedder_at(cfg, 3, 7, 3, 10, 32)
    assert not any(p.requires_grad for p in net.parameters()) and net.training
    assert all(torch.equal(v, next_draw[k]) for k, v in _state(net).items())


def test_a_model_registered_over_a_built_in_name_is_the_one_drawn(monkeypatch):
    monkeypatch.setitem(MODELS, "convnet", lambda c, n, s: ConvNet(c, n, s, width=16))
    cfg = ddm.Distiller(method="dm", iters_per_model=5).config
    assert embedder_at(cfg, 3, 5, 1, 10, 8).features[0].out_channels == 16
