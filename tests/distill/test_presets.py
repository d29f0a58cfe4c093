"""DistillConfig: every field is checked when a config is built; the loss-settings table."""
import dataclasses
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import ddmetrics as ddm
from ddmetrics.augment import OPS
from ddmetrics.distill import STRATEGIES, DistillConfig
from ddmetrics.distill.presets import LOSS_SETTINGS, PRESETS, make_loss, preset
from ddmetrics.models import available_models

FIELDS = [f.name for f in dataclasses.fields(DistillConfig)]


def _int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _num(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _aug(v):
    return v is None or v in ("auto", "none") or (isinstance(v, str) and v != "" and all(o in OPS for o in v.split("_")))


# an independent statement of what each field allows (the oracle of the property test)
VALID = {
    "strategy": lambda v: v in ("barycenter", "distribution"),
    "loss": lambda v: isinstance(v, str) and v != "",
    "loss_kwargs": lambda v: isinstance(v, dict) and all(isinstance(k, str) for k in v),
    "iterations": lambda v: _int(v) and v > 0,
    "lr": lambda v: _num(v) and v > 0,
    "optimizer": lambda v: v in ("adam", "sgd"),
    "init": lambda v: v in ("real", "noise"),
    "factor": lambda v: v == "auto" or (_int(v) and v > 0),
    "augment": _aug,
    "batch_real": lambda v: _int(v) and v > 0,
    "teacher_arch": lambda v: (isinstance(v, str) and v.lower() in available_models()) or (callable(v) and not isinstance(v, str)),
    "teacher_epochs": lambda v: _int(v) and v > 0,
    "bary_iters": lambda v: v is None or (_int(v) and v > 0),
    "learn_weights": lambda v: isinstance(v, bool),
    "feature_loss": lambda v: v in ("barycenter", "ce"),
    "reg": lambda v: v in ("pcbn", "bn", "none"),
    "reg_weight": lambda v: _num(v) and v >= 0,
    "embedder": lambda v: (isinstance(v, str) and v.lower() in available_models()) or (callable(v) and not isinstance(v, str)),
    "iters_per_model": lambda v: _int(v) and v > 0,
    "eval_protocol": lambda v: v in ("soft", "hard"),
    "eval_model": lambda v: (isinstance(v, str) and v.lower() in available_models()) or (callable(v) and not isinstance(v, str)),
    "eval_epochs": lambda v: v is None or (_int(v) and v > 0),
    "eval_lr": lambda v: _num(v) and v > 0,
    "temperature": lambda v: _num(v) and v > 0,
}

WORDS = ["barycenter", "distribution", "adam", "sgd", "real", "noise", "auto", "none", "ce", "pcbn", "bn",
         "soft", "hard", "convnet", "ConvNet_BN", "resnet18", "color_crop", "flip_bogus", "", "x"]
VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-5, 5), st.integers(), st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(WORDS), st.text(max_size=5), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    st.dictionaries(st.integers(), st.integers(), min_size=1, max_size=1), st.lists(st.integers(), max_size=2))


def test_oracle_covers_every_field():
    assert sorted(VALID) == sorted(FIELDS)


@settings(max_examples=600, deadline=None, derandomize=True)
@given(name=st.sampled_from(FIELDS), value=VALUES)
def test_nothing_invalid_is_built_and_nothing_valid_is_refused(name, value):
    if VALID[name](value):
        cfg = DistillConfig(**{name: value})
        assert getattr(cfg, name) == value
    else:
        with pytest.raises(ValueError, match=name):
            DistillConfig(**{name: value})


@pytest.mark.parametrize("kwargs", [dict(iterations=-5), dict(iterations=0), dict(iterations="x"), dict(lr=None),
                                    dict(lr="abc"), dict(eval_protocol="soft-ish"), dict(teacher_arch="nope")])
def test_distiller_refuses_bad_settings_at_construction(kwargs):
    (name, value), = kwargs.items()
    with pytest.raises(ValueError) as err:
        ddm.Distiller(method="wmdd", **kwargs)
    assert name in str(err.value) and repr(value) in str(err.value)


def test_float_fields_given_ints_become_floats():
    assert DistillConfig(lr=1, reg_weight=0, temperature=2).lr == 1.0
    assert isinstance(DistillConfig(lr=1).lr, float) and isinstance(DistillConfig(iterations=3).iterations, int)


def test_every_preset_is_a_valid_config_and_names_a_strategy():
    for method in PRESETS:
        assert preset(method).strategy in STRATEGIES
    assert sorted(STRATEGIES) == sorted(("barycenter", "distribution"))


def test_loss_settings_table_is_what_a_named_loss_gets_and_kwargs_override_it():
    assert make_loss("krdual").config()["steps"] == LOSS_SETTINGS["krdual"]["steps"]
    assert make_loss("krdual", steps=3).config()["steps"] == 3
    d = ddm.Distiller(method="krdual", ipc=1)
    assert d.loss.config()["steps"] == LOSS_SETTINGS["krdual"]["steps"]


def test_given_loss_instance_is_used_as_given_and_recorded_truthfully():
    loss = ddm.losses.MMD(kernel="gaussian")
    d = ddm.Distiller(method="dm", loss=loss, ipc=1)   # dm's own loss is the *linear* MMD
    assert d.loss is loss
    assert d.config.loss == "mmd" and d.config.loss_kwargs.get("kernel") == "gaussian"


def test_teacher_architecture_and_teacher_module_do_not_collide(small):
    d = ddm.Distiller(method="wmdd", teacher="resnetap10", ipc=1)
    assert d.config.teacher_arch == "resnetap10" and d.teacher_ is None
    assert ddm.Distiller(method="wmdd", teacher_arch="resnetap10", ipc=1).config.teacher_arch == "resnetap10"
    with pytest.raises(ValueError, match="disagree"):
        ddm.Distiller(method="wmdd", teacher="resnetap10", teacher_arch="convnet_bn")
    with pytest.raises(TypeError, match="teacher"):
        ddm.Distiller(method="wmdd", teacher=3)
    # dm trains no teacher whatever the architecture says
    syn_dm = ddm.Distiller(method="dm", teacher="resnetap10", ipc=1, iterations=2)
    syn_dm.fit(small, progress=False)
    assert syn_dm.teacher_ is None
    # the named architecture is the one trained
    d = ddm.Distiller(method="wmdd", teacher_arch="resnetap10", ipc=1, iterations=2, teacher_epochs=1)
    d.fit(small, progress=False)
    assert isinstance(d.teacher_, ddm.models.ResNetAP10)


def test_sre2l_preset_is_barycenter_matching_with_ce_and_global_bn(small):
    cfg = preset("sre2l")
    assert (cfg.strategy, cfg.feature_loss, cfg.reg, cfg.eval_protocol, cfg.learn_weights) == \
        ("barycenter", "ce", "bn", "soft", False)
    d = ddm.Distiller(method="sre2l", ipc=1, seed=0, iterations=3, teacher_epochs=1)
    syn = d.fit(small, progress=False)
    assert syn.images.shape == (3, 1, 8, 8) and torch.isfinite(syn.images).all()
    assert torch.allclose(syn.weights, torch.ones(3))  # uniform: no learned barycenter weights
    info = syn.meta["info"]
    assert info["feature_loss_first"] is not None and math.isfinite(info["feature_loss_last"])
