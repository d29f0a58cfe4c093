"""Method presets: WMDD, DM, M3D and KR-dual are configuration data, not code paths.

A preset fills a :class:`DistillConfig`; any field can be overridden, and any loss can be
plugged into any preset (``method="wmdd", loss="sliced"`` is the WMDD paper's sliced
ablation).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional, Tuple, Union

from ..losses import DistributionLoss, UnknownSettingError, get_loss


# --------------------------------------------------------------------------- field checks
# Every DistillConfig field is checked when a config is built (and so before any data is read):
# a rule per field says what is allowed, and the error names the field, the value and that.

def _model_names() -> list:
    from ..models import available_models  # the registry may grow after import

    return available_models()


def _model_ok(v: Any) -> bool:
    return (isinstance(v, str) and v.lower() in _model_names()) or (callable(v) and not isinstance(v, (str, type(None))))


def _augment_ok(v: Any) -> bool:
    from ..augment import OPS

    return v is None or v in ("auto", "none") or (isinstance(v, str) and bool(v) and
                                                 all(op in OPS for op in v.split("_")))


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


#: field -> (test of a value, what is allowed); names with a fixed set of choices use a tuple
_CHOICES: Dict[str, tuple] = {
    "strategy": ("barycenter", "distribution"),
    "optimizer": ("adam", "sgd"),
    "init": ("real", "noise"),
    "feature_loss": ("barycenter", "ce"),
    "reg": ("pcbn", "bn", "none"),
    "eval_protocol": ("soft", "hard"),
}
_RULES: Dict[str, Tuple[Callable[[Any], bool], str]] = {
    "loss": (lambda v: isinstance(v, str) and bool(v), "a loss name (see ddmetrics.available_losses())"),
    "loss_kwargs": (lambda v: isinstance(v, dict) and all(isinstance(k, str) for k in v),
                    "a dict of the loss's keyword arguments"),
    "iterations": (lambda v: _is_int(v) and v >= 1, "a positive integer"),
    "lr": (lambda v: _is_number(v) and v > 0, "a positive number"),
    "factor": (lambda v: v == "auto" or (_is_int(v) and v >= 1), "a positive integer or 'auto'"),
    "augment": (_augment_ok, "None, 'none', 'auto' or operations from ddmetrics.augment.OPS joined by '_'"),
    "batch_real": (lambda v: _is_int(v) and v >= 1, "a positive integer"),
    "teacher_arch": (_model_ok, "a model name or a builder fn(channels, num_classes, image_size)"),
    "teacher_epochs": (lambda v: _is_int(v) and v >= 1, "a positive integer"),
    "bary_iters": (lambda v: v is None or (_is_int(v) and v >= 1), "None or a positive integer"),
    "learn_weights": (lambda v: isinstance(v, bool), "True or False"),
    "reg_weight": (lambda v: _is_number(v) and v >= 0, "a non-negative number"),
    "embedder": (_model_ok, "a model name or a builder fn(channels, num_classes, image_size)"),
    "iters_per_model": (lambda v: _is_int(v) and v >= 1, "a positive integer"),
    "eval_model": (_model_ok, "a model name or a builder fn(channels, num_classes, image_size)"),
    "eval_epochs": (lambda v: v is None or (_is_int(v) and v >= 1), "None or a positive integer"),
    "eval_lr": (lambda v: _is_number(v) and v > 0, "a positive number"),
    "temperature": (lambda v: _is_number(v) and v > 0, "a positive number"),
}
for _name, _choices in _CHOICES.items():
    _RULES[_name] = ((lambda v, c=_choices: isinstance(v, str) and v in c), "one of " + ", ".join(map(repr, _choices)))


def check_field(name: str, value: Any) -> Any:
    """``value`` if it is allowed for the :class:`DistillConfig` field ``name`` (a float field
    given an int gets a float); else a ``ValueError`` naming the field, the value and what is
    allowed."""
    test, allowed = _RULES[name]
    if not test(value):
        if "model name" in allowed:
            allowed += " (" + ", ".join(_model_names()) + ")"
        raise ValueError(f"{name}={value!r} is not allowed: {name} must be {allowed}")
    if isinstance(value, int) and not isinstance(value, bool) and _FLOAT_FIELDS.get(name):
        return float(value)
    return value


@dataclass
class DistillConfig:
    """Everything a distillation run needs besides the data.

    Matching
        ``strategy``: ``"barycenter"`` (teacher features, ``loss.barycenter`` targets, WMDD)
        or ``"distribution"`` (random embedders, ``loss(f(real), f(syn))`` per class, DM).
        ``loss`` / ``loss_kwargs``: the :class:`~ddmetrics.losses.DistributionLoss`.
    Synthesis
        ``iterations``, ``lr``, ``optimizer`` (``"adam"``: betas (0.5, 0.9) with a cosine
        schedule, as WMDD; ``"sgd"``: momentum 0.5, as DM), ``init`` (``"real"`` or
        ``"noise"``), ``factor`` (M3D/IDC sub-images per side; ``"auto"``: 2 for images of
        16 px and more, 1 below — on 8×8 digits 4×4 sub-images lose the digit: validation accuracy
        70.6 % against 88.5 % with factor 1 at IPC 1), ``augment`` (DSA strategy;
        ``"auto"`` drops the flip for single-channel data such as digits), ``batch_real``.
    Barycenter matching
        ``teacher_arch`` (the model name of the teacher trained when none is given), ``teacher_epochs``, ``bary_iters`` (K; ``None``: the backend's
        default, 10 for the exact solver, 200 gradient-flow steps otherwise), ``learn_weights``,
        ``feature_loss`` (``"barycenter"``: Eq. 12 MSE to the barycenter atoms; ``"ce"``: the
        teacher's cross-entropy, the WMDD Table 3 ablation), ``reg`` (``"pcbn"``, ``"bn"``,
        ``"none"``) and its weight ``reg_weight`` (λ).
    Distribution matching
        ``embedder`` (model name), ``iters_per_model``.
    Evaluation
        ``eval_protocol`` (``"soft"``: teacher soft labels, KL at ``temperature``; ``"hard"``),
        ``eval_model``, ``eval_epochs`` (``None``: 1000 for sets under 50 images, else 300 SGD
        steps' worth, i.e. 300 epochs at IPC 10 and 150 at IPC 50 —
        :func:`ddmetrics.evaluate.default_epochs`, measured on the digits validation split), ``eval_lr``.
    """

    strategy: str = "barycenter"
    loss: str = "wasserstein"
    loss_kwargs: Dict[str, Any] = field(default_factory=dict)
    iterations: int = 300
    lr: float = 0.05
    optimizer: str = "adam"
    init: str = "real"
    factor: Union[int, str] = 1
    augment: Optional[str] = "auto"
    batch_real: int = 64
    # barycenter matching
    teacher_arch: str = "convnet_bn"
    teacher_epochs: int = 30
    bary_iters: Optional[int] = None
    learn_weights: bool = True
    feature_loss: str = "barycenter"
    reg: str = "pcbn"
    reg_weight: float = 10.0
    # distribution matching
    embedder: str = "convnet"
    iters_per_model: int = 5
    # evaluation
    eval_protocol: str = "soft"
    eval_model: str = "convnet"
    eval_epochs: Optional[int] = None
    eval_lr: float = 0.05
    temperature: float = 4.0

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            setattr(self, f.name, check_field(f.name, getattr(self, f.name)))

    def replace(self, **overrides) -> "DistillConfig":
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise TypeError(f"unknown setting(s) {', '.join(unknown)}; valid settings: {', '.join(sorted(names))}")
        return dataclasses.replace(self, **overrides)

    def resolved_factor(self, image_size: int) -> int:
        """``factor`` as an integer for images of side ``image_size``."""
        if self.factor == "auto":
            return 2 if image_size >= 16 else 1
        return self.factor

    def evaluation_kwargs(self) -> Dict[str, Any]:
        """The :func:`ddmetrics.evaluate` settings of this config (model, protocol, epochs, lr,
        temperature)."""
        return {"model": self.eval_model, "protocol": self.eval_protocol, "epochs": self.eval_epochs,
                "lr": self.eval_lr, "temperature": self.temperature}

    def to_dict(self) -> Dict[str, Any]:
        """The settings as JSON-able data (a model builder is recorded by its qualified name)."""
        out = dataclasses.asdict(self)
        for key, value in out.items():
            if callable(value):
                out[key] = f"<builder {getattr(value, '__module__', '?')}.{getattr(value, '__qualname__', repr(value))}>"
        return out


_FLOAT_FIELDS = {f.name: f.type in ("float", float) for f in dataclasses.fields(DistillConfig)}

#: method name -> the settings that differ from :class:`DistillConfig`'s defaults
PRESETS: Dict[str, Dict[str, Any]] = {
    "wmdd": dict(strategy="barycenter", loss="wasserstein", reg="pcbn", eval_protocol="soft"),
    "dm": dict(strategy="distribution", loss="mmd", loss_kwargs={"kernel": "linear"}, optimizer="sgd", lr=1.0,
               iterations=300, eval_protocol="hard"),
    "m3d": dict(strategy="distribution", loss="mmd", loss_kwargs={"kernel": "gaussian"}, optimizer="sgd", lr=1.0,
                iterations=300, factor="auto", eval_protocol="hard"),
    # the clipped critic's values (and gradients) are ~100x smaller than DM's: lr 100 instead of 1,
    # chosen on the digits validation split (IPC 10: 97.2 % vs 94.8 %; IPC 1: 86.0 % either way)
    "krdual": dict(strategy="distribution", loss="krdual", optimizer="sgd", lr=100.0, iterations=300,
                   eval_protocol="hard"),
    # NCFM (Wang et al., CVPR 2025): distribution matching with the NCFD, 4096 frequencies, alpha 0.5
    # and an Adam-type image optimiser (the authors use AdamW), IDC/M3D sub-images ("auto"). lr 0.05
    # chosen on the digits validation split (benchmarks/ncfm_validation.py, lr 0.01 / 0.05 / 0.2:
    # IPC 1: 78.7 / 83.9 / 82.5 %; IPC 10: 96.5 / 96.5 / 92.0 %; DM: 90.9 % and 95.5 %)
    "ncfm": dict(strategy="distribution", loss="ncfd", loss_kwargs={"n_frequencies": 4096, "alpha": 0.5},
                 optimizer="adam", lr=0.05, iterations=300, factor="auto", eval_protocol="hard"),
    # SRe²L (Yin et al. 2023): the teacher's cross-entropy plus its BatchNorm statistics (global,
    # not per class), uniform weights, soft-label evaluation. Departs from the paper in starting
    # from real images (the nearest to each class's barycenter atom) instead of noise.
    "sre2l": dict(strategy="barycenter", feature_loss="ce", reg="bn", learn_weights=False, eval_protocol="soft"),
}

#: The one table of loss settings used when a distiller builds a loss from its name — by the
#: presets, ``diagnose`` and the benchmarks alike: explicit ``loss_kwargs`` override it. The KR
#: dual is called once per class and iteration, so it keeps a warm-started critic and trains it
#: 20 steps per call instead of a fresh one 100 times (5x cheaper, same matching signal).
LOSS_SETTINGS: Dict[str, Dict[str, Any]] = {
    "krdual": {"steps": 20, "warm_start": True},
    # NCFM's minmax game: one sampler ascent step (lr 1e-3, the authors' lr_sampling_net) per
    # synthesis step, the sampler kept across steps
    "ncfd": {"steps": 1, "warm_start": True, "lr": 1e-3},
}


def make_loss(name: str, **kwargs) -> DistributionLoss:
    """The registered loss ``name`` with :data:`LOSS_SETTINGS` for it, updated by ``kwargs``
    (a config's ``loss_kwargs``: an unknown setting is refused naming that field)."""
    try:
        return get_loss(name, **{**LOSS_SETTINGS.get(name, {}), **kwargs})
    except UnknownSettingError as err:
        raise UnknownSettingError(f"loss_kwargs: {err}") from None


def preset(method: str, **overrides) -> DistillConfig:
    """The :class:`DistillConfig` of ``method`` with ``overrides`` applied.

    Passing ``loss`` without ``loss_kwargs`` drops the preset's own loss settings (they
    belong to the preset's loss).
    """
    if method not in PRESETS:
        raise ValueError(f"unknown method {method!r}; valid methods: {', '.join(sorted(PRESETS))}")
    settings = dict(PRESETS[method])
    if overrides.get("loss") is None:  # loss=None means "the preset's own"
        overrides.pop("loss", None)
    elif overrides["loss"] != settings.get("loss") and "loss_kwargs" not in overrides:
        settings["loss_kwargs"] = {}
    settings.update(overrides)
    return DistillConfig().replace(**settings)
