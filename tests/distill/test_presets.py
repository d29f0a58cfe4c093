"""DistillConfig: every field is checked when a config is built; the loss-settings table."""
import dataclasses
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import ddmetrics as ddm
from ddmetrics.augment import NAMED, OPS
from ddmetrics.protocols import PROTOCOLS, TEACHER_RECIPES
from ddmetrics.distill import STRATEGIES, DistillConfig
from ddmetrics.distill.presets import LOSS_SETTINGS, PRESETS, make_loss, preset
from ddmetrics.models import available_models

FIELDS = [f.name for f in dataclasses.fields(DistillConfig)]


def _int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _num(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _aug(v):
    ops = v[4:] if isinstance(v, str) and v.startswith("idc:") else v
    return v is None or v in ("auto", "none") or v in NAMED or (
        isinstance(ops, str) and ops != "" and all(o in OPS for o in ops.split("_")))


def _model(v):
    return (isinstance(v, str) and v.lower() in available_models()) or (callable(v) and not isinstance(v, str))


def _opt(test):
    return lambda v: v is None or test(v)


# an independent statement of what each field allows (the oracle of the property test)
VALID = {
    "strategy": lambda v: v in ("barycenter", "distribution", "coreset"),
    "loss": lambda v: isinstance(v, str) and v != "",
    "loss_kwargs": lambda v: isinstance(v, dict) and all(isinstance(k, str) for k in v),
    "iterations": lambda v: _int(v) and v > 0,
    "budget": lambda v: _num(v) and 0 < v <= 1,
    "optimizer": lambda v: v in ("adam", "sgd", "adamw"),
    "lr": lambda v: _num(v) and v > 0,
    "lr_schedule": lambda v: v in ("cosine", "constant", "plateau", "step"),
    "weight_decay": lambda v: _num(v) and v >= 0,
    "init": lambda v: v in ("real", "noise", "nearest"),
    "clamp": lambda v: v in ("none", "pixel"),
    "augment": _aug,
    "synthesis_batch": lambda v: v in ("class", "classes", "slot", "all"),
    "batch_images": lambda v: _int(v) and v > 0,
    "factor": lambda v: v == "auto" or (_int(v) and v > 0),
    "batch_real": lambda v: _int(v) and v > 0,
    "teacher_arch": _model,
    "teacher_recipe": lambda v: isinstance(v, str) and v in TEACHER_RECIPES,
    "teacher_epochs": _opt(lambda v: _int(v) and v > 0),
    "bary_iters": _opt(lambda v: _int(v) and v > 0),
    "learn_weights": lambda v: isinstance(v, bool),
    "bary_init": lambda v: v in ("kmeans++", "gaussian"),
    "feature_loss": lambda v: v in ("barycenter", "none"),
    "feature_norm": lambda v: v in ("squared", "frobenius"),
    "ce_weight": lambda v: _num(v) and v >= 0,
    "reg": lambda v: v in ("pcbn", "bn", "gvbsm", "none"),
    "reg_weight": lambda v: _num(v) and v >= 0,
    "reg_norm": lambda v: v in ("squared", "l2"),
    "bn_stats": lambda v: v in ("exact", "batch_mean", "running"),
    "reg_weighted": lambda v: isinstance(v, bool),
    "first_bn_weight": lambda v: _num(v) and v >= 0,
    "backbones": lambda v: isinstance(v, (list, tuple)) and all(isinstance(a, str) and _model(a) for a in v),
    "conv_drop": lambda v: _num(v) and 0 <= v <= 1,
    "stat_momentum": lambda v: _num(v) and 0 <= v < 1,
    "densify_weight": lambda v: _num(v) and v >= 0,
    "crop_curriculum": lambda v: v in ("none", "step", "linear", "cosine"),
    "crop_milestone": lambda v: _num(v) and 0 < v <= 1,
    "embedder": _model,
    "iters_per_model": lambda v: _int(v) and v > 0,
    "embedder_pool": lambda v: _int(v) and v >= 0,
    "pool_epochs": _opt(lambda v: _int(v) and v > 0),
    "pool_interpolate": lambda v: isinstance(v, bool),
    "calib_weight": lambda v: _num(v) and v >= 0,
    "normalize_features": lambda v: isinstance(v, bool),
    "embedder_queue": lambda v: _int(v) and v >= 0,
    "queue_push_every": lambda v: _int(v) and v > 0,
    "queue_train_steps": lambda v: _int(v) and v >= 0,
    "queue_ce_weight": lambda v: _num(v) and v >= 0,
    "attention_weight": lambda v: _num(v) and v >= 0,
    "attention_power": lambda v: _num(v) and v > 0,
    "layer_weights": lambda v: isinstance(v, (list, tuple)) and all(_num(w) and w >= 0 for w in v),
    "discrimination_weight": lambda v: _num(v) and v >= 0,
    "bilevel": lambda v: isinstance(v, bool),
    "coreset": lambda v: v in ("random", "herding", "kcenter", "kmeans"),
    "eval_protocol": lambda v: isinstance(v, str) and v in PROTOCOLS,
    "eval_model": _opt(_model),
    "eval_epochs": _opt(lambda v: _int(v) and v > 0),
    "eval_lr": _opt(lambda v: _num(v) and v > 0),
    "temperature": _opt(lambda v: _num(v) and v > 0),
    "teacher_mode": _opt(lambda v: v in ("eval", "train")),
}

WORDS = ["barycenter", "distribution", "adam", "sgd", "adamw", "real", "noise", "nearest", "auto", "none", "ce",
         "pcbn", "bn", "soft", "hard", "ncfm", "convnet", "ConvNet_BN", "resnet18", "color_crop", "idc:color_crop",
         "roll", "flip_bogus", "", "x", "class", "slot", "l2", "squared", "running", "gaussian", "plateau", "pixel",
         "coreset", "herding", "kcenter", "kmeans", "random"]
VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-5, 5), st.integers(), st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(WORDS), st.text(max_size=5), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    st.dictionaries(st.integers(), st.integers(), min_size=1, max_size=1), st.lists(st.integers(), max_size=2))


def test_oracle_covers_every_field():
    assert sorted(VALID) == sorted(FIELDS)


@settings(max_examples=600, deadline=None, derandomize=True)
@given(name=st.sampled_from(FIELDS), value=VALUES)
def test_nothing_invalid_is_built_and_nothing_valid_is_refused(name, value):
    # values allowed for the field but not with the other defaults (WMDD's): refused, naming the field
    combination = {("bn_stats", repr("running")), ("calib_weight", "positive")}  # repr: a dict is unhashable
    key = (name, "positive" if name == "calib_weight" and _num(value) and value > 0 else repr(value))
    if VALID[name](value) and key in combination:
        with pytest.raises(ValueError, match=name):
            DistillConfig(**{name: value})
    elif VALID[name](value):
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
    assert sorted(STRATEGIES) == sorted(("barycenter", "distribution", "coreset"))


def test_a_presets_loss_settings_reach_its_loss_and_explicit_kwargs_override_them():
    d = ddm.Distiller(method="krdual", ipc=1)
    assert d.loss.config()["steps"] == PRESETS["krdual"]["loss_kwargs"]["steps"] == 100
    assert ddm.Distiller(method="krdual", ipc=1, loss_kwargs={"steps": 3}).loss.config()["steps"] == 3
    assert make_loss("krdual", steps=3).config()["steps"] == 3


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
    # dm uses no teacher (hard labels): an architecture for it is refused, not ignored
    with pytest.raises(ValueError, match="teacher_arch does not apply to method 'dm'"):
        ddm.Distiller(method="dm", teacher="resnetap10", ipc=1, iterations=2)
    # the named architecture is the one trained
    d = ddm.Distiller(method="wmdd", teacher_arch="resnetap10", ipc=1, iterations=2, teacher_epochs=1,
                      augment="auto")
    d.fit(small, progress=False)
    assert isinstance(d.teacher_, ddm.models.ResNetAP10)


def test_sre2l_preset_is_slot_batches_with_ce_and_running_bn_statistics(small):
    cfg = preset("sre2l")
    assert (cfg.strategy, cfg.feature_loss, cfg.ce_weight, cfg.reg, cfg.bn_stats, cfg.reg_norm, cfg.first_bn_weight,
            cfg.reg_weight, cfg.synthesis_batch, cfg.eval_protocol) == \
        ("barycenter", "none", 1.0, "bn", "running", "l2", 10.0, 0.01, "slot", "sre2l_small")
    d = ddm.Distiller(method="sre2l", ipc=2, seed=0, iterations=3, teacher_epochs=1, teacher_arch="convnet_bn")
    syn = d.fit(small, progress=False)
    assert syn.images.shape == (6, 1, 8, 8) and torch.isfinite(syn.images).all()
    assert torch.allclose(syn.weights, torch.full((6,), 0.5))  # uniform: no barycenter, no learned weights
    info = syn.meta["info"]
    assert info["feature_loss_first"] is not None and math.isfinite(info["feature_loss_last"])


@pytest.mark.parametrize("method, field, value, why", [
    ("dm", "temperature", 3.0, "temperature does not apply"),
    ("dm", "reg_weight", 1.0, "reg_weight does not apply"),
    ("wmdd", "batch_real", 64, "batch_real does not apply"),
    ("wmdd", "factor", 2, "factor does not apply"),
    ("sre2l", "learn_weights", True, "learn_weights does not apply"),
    ("dm", "pool_epochs", 3, "pool_epochs does not apply"),
    ("dm", "teacher_mode", "eval", "teacher_mode does not apply"),
])
def test_a_setting_of_another_method_is_refused_naming_it(method, field, value, why):
    with pytest.raises(ValueError, match=why):
        preset(method, **{field: value})
    with pytest.raises(ValueError, match=why):
        ddm.Distiller(method=method, ipc=1, **{field: value})


def test_a_setting_that_applies_once_another_is_changed_is_accepted():
    assert preset("dm", eval_protocol="soft", temperature=3.0).temperature == 3.0
    assert preset("wmdd", reg="bn", bn_stats="running").bn_stats == "running"
    assert preset("dm", eval_protocol="soft", teacher_mode="train").protocol().teacher_mode == "train"


def test_teacher_mode_overrides_the_protocols_and_reaches_evaluate():
    # SRe²L's small-data protocol relabels in train mode; the option labels with the teacher in eval mode
    assert preset("sre2l").protocol().teacher_mode == "train"
    cfg = preset("sre2l", teacher_mode="eval")
    assert cfg.protocol() == dataclasses.replace(preset("sre2l").protocol(), teacher_mode="eval")
    assert cfg.evaluation_kwargs()["teacher_mode"] == "eval"
    # a saved set records it: evaluate() without a protocol rebuilds the same one from the set's config
    from ddmetrics.evaluate import protocol_name, resolve_protocol

    assert resolve_protocol(None, {"config": cfg.to_dict()}) == cfg.protocol()
    assert protocol_name(cfg.protocol()).startswith("sre2l_small (teacher_mode=eval")
    with pytest.raises(ValueError, match="teacher_mode"):
        preset("sre2l", teacher_mode="inference")


def test_budget_scales_every_count_and_is_recorded():
    cfg = preset("wmdd", budget=0.05)
    assert cfg.effective_iterations == 100 and cfg.teacher_training().epochs == round(50 * 0.05)
    assert preset("dm", budget=0.001).effective_iterations == 20
    assert preset("wmdd", budget=1e-9).effective_iterations == 1  # never below one step
