"""Entry-point plugins are never ignored silently: a refused or broken one gets a PluginWarning
naming its distribution and entry point (fake entry points stand in for installed packages)."""
from types import SimpleNamespace

import pytest
import torch

import ddmetrics as ddm
from ddmetrics import models, utils
from ddmetrics.losses import base
from ddmetrics.utils import PluginWarning, Plugins


class _EntryPoint:
    """What ``importlib.metadata.entry_points`` yields, for an object already in memory."""

    def __init__(self, name, obj, dist, value=None):
        self.name, self.obj = name, obj
        self.value = value or f"{dist}_pkg:{name}"
        self.dist = SimpleNamespace(name=dist, version="1.0")

    def load(self):
        if isinstance(self.obj, BaseException):
            raise self.obj
        return self.obj


def _advertise(monkeypatch, group, eps):
    """Make ``eps`` the entry points of ``group`` (and of no other group)."""
    monkeypatch.setattr(utils, "entry_points", lambda group=None, advertised=group: eps if group == advertised else [])


class Mean(ddm.DistributionLoss):
    """Squared mean difference (plugin)."""

    def _loss(self, x, y, a, b):
        return ((a @ x - b @ y) ** 2).sum()


class OtherMean(Mean):
    """Another plugin's loss."""


@pytest.fixture
def fresh_losses(monkeypatch):
    """An unloaded loss plugin group and a copy of the registry, so nothing leaks into other tests."""
    monkeypatch.setattr(base, "_PLUGINS", Plugins("ddmetrics.losses", "loss"))
    monkeypatch.setattr(base, "_REGISTRY", dict(base._REGISTRY))


@pytest.fixture
def fresh_models(monkeypatch):
    monkeypatch.setattr(models, "_PLUGINS", Plugins("ddmetrics.models", "model", key=str.lower))
    monkeypatch.setattr(models, "MODELS", dict(models.MODELS))


def _messages(record):
    return [str(w.message) for w in record if issubclass(w.category, PluginWarning)]


def test_refused_and_broken_loss_plugins_are_warned_about_by_distribution_and_entry_point(monkeypatch,
                                                                                          fresh_losses):
    exact = base._REGISTRY["wasserstein"]
    _advertise(monkeypatch, "ddmetrics.losses", [
        _EntryPoint("plugmean", Mean, "pkg_a"),                      # accepted
        _EntryPoint("wasserstein", Mean, "pkg_b"),                   # a built-in's name
        _EntryPoint("plugmean", OtherMean, "pkg_c"),                 # another plugin's name
        _EntryPoint("halfloss", lambda x, y: 0.5, "pkg_d"),          # not a DistributionLoss subclass
        _EntryPoint("broken", ImportError("no module named foo"), "pkg_e"),  # fails to import
    ])
    with pytest.warns(PluginWarning) as record:
        names = ddm.available_losses()
    messages = _messages(record)
    assert len(messages) == 4, messages
    builtin, collision, not_a_loss, broken = messages  # in the order advertised
    assert "wasserstein = pkg_b_pkg:wasserstein in distribution pkg_b 1.0" in builtin
    assert "taken by ddmetrics.losses._exact.ExactOT" in builtin
    assert "plugmean = pkg_c_pkg:plugmean in distribution pkg_c 1.0" in collision
    assert "taken by" in collision and "(plugin plugmean = pkg_a_pkg:plugmean in distribution pkg_a 1.0)" in collision
    assert "halfloss" in not_a_loss and "pkg_d" in not_a_loss and "not a DistributionLoss subclass" in not_a_loss
    assert "broken" in broken and "pkg_e" in broken and "ImportError: no module named foo" in broken
    # the accepted plugin works, the refused ones changed nothing
    assert names["plugmean"] == "Squared mean difference (plugin)."
    assert type(ddm.get_loss("plugmean")) is Mean and base._REGISTRY["wasserstein"] is exact
    assert "halfloss" not in names and "broken" not in names
    assert float(ddm.get_loss("plugmean")(torch.zeros(2, 1), torch.ones(3, 1))) == 1.0


def test_a_plugin_that_registers_itself_under_its_entry_point_name_is_not_a_collision(monkeypatch, fresh_losses):
    ddm.register_loss("selfreg_test")(OtherMean)
    _advertise(monkeypatch, "ddmetrics.losses", [_EntryPoint("selfreg_test", OtherMean, "pkg_f")])
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", PluginWarning)
        assert "selfreg_test" in ddm.available_losses()


def _builder(channels, num_classes, image_size, width=8):
    return ddm.models.ConvNet(channels, num_classes, image_size, width=width)


def _other_builder(channels, num_classes, image_size):
    return ddm.models.ConvNet(channels, num_classes, image_size, width=4)


def test_refused_and_broken_model_plugins_are_warned_about(monkeypatch, fresh_models):
    convnet = models.MODELS["convnet"]
    _advertise(monkeypatch, "ddmetrics.models", [
        _EntryPoint("PlugNet", _builder, "pkg_a"),                   # accepted (names are case-insensitive)
        _EntryPoint("ConvNet", _other_builder, "pkg_b"),             # a built-in's name
        _EntryPoint("plugnet", _other_builder, "pkg_c"),             # another plugin's name
        _EntryPoint("seven", 7, "pkg_d"),                            # not callable
        _EntryPoint("nullary", lambda: None, "pkg_e"),               # cannot take (channels, classes, size)
        _EntryPoint("broken", RuntimeError("bad plugin"), "pkg_f"),  # fails to import
    ])
    with pytest.warns(PluginWarning) as record:
        names = models.available_models()
    messages = _messages(record)
    assert len(messages) == 5, messages
    builtin, collision, not_callable, wrong_signature, broken = messages
    assert "ConvNet = pkg_b_pkg:ConvNet in distribution pkg_b 1.0" in builtin and "'convnet' is taken" in builtin
    assert "plugnet = pkg_c_pkg:plugnet in distribution pkg_c 1.0" in collision
    assert "(plugin PlugNet = pkg_a_pkg:PlugNet in distribution pkg_a 1.0)" in collision
    assert "seven" in not_callable and "pkg_d" in not_callable and "not a model builder" in not_callable
    assert "nullary" in wrong_signature and "pkg_e" in wrong_signature and "cannot be called" in wrong_signature
    assert "broken" in broken and "pkg_f" in broken and "RuntimeError: bad plugin" in broken
    assert "plugnet" in names and models.MODELS["plugnet"] is _builder and models.MODELS["convnet"] is convnet
    assert not {"seven", "nullary", "broken"} & set(names)
    assert models.get_model("PlugNet", 1, 3, 8).features[0].out_channels == 8  # the accepted builder, width 8
