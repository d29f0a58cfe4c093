"""Method presets: WMDD, DM, IDM, DataDAM, CAFE, M3D, KR-dual, NCFM, SRe²L, CDA, G-VBSM and the coreset
baselines (random, herding, k-center, k-means) are configuration data, not code paths.

A preset fills a :class:`DistillConfig` with its method's released pipeline (its paper where no
code was released: M3D, KR-dual); ``docs/fidelity.md`` gives every value's source. Any field can
be overridden, and any loss can be plugged into any preset (``method="wmdd", loss="sliced"`` is
the WMDD paper's sliced ablation).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

from ..losses import DistributionLoss, UnknownSettingError, get_loss


# --------------------------------------------------------------------------- field checks
# Every DistillConfig field is checked when a config is built (and so before any data is read):
# a rule per field says what is allowed, and the error names the field, the value and that.

def _model_names() -> list:
    from ..models import available_models  # the registry may grow after import

    return available_models()


def _model_ok(v: Any) -> bool:
    from ..models import is_model_name

    return is_model_name(v) or (callable(v) and not isinstance(v, (str, type(None))))


#: the fields that name a model: a library model ("timm:NAME") is also checked for its library
_MODEL_FIELDS = ("teacher_arch", "embedder", "eval_model")


def _augment_ok(v: Any) -> bool:
    from ..augment import is_augment_spec

    return is_augment_spec(v)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


#: field -> (test of a value, what is allowed); names with a fixed set of choices use a tuple
_CHOICES: Dict[str, tuple] = {
    "strategy": ("barycenter", "distribution", "coreset"),
    "optimizer": ("adam", "sgd", "adamw"),
    "lr_schedule": ("cosine", "constant", "plateau", "step"),
    "init": ("real", "noise", "nearest"),
    "clamp": ("none", "pixel"),
    "synthesis_batch": ("class", "classes", "slot", "all"),
    "bary_init": ("kmeans++", "gaussian"),
    "feature_loss": ("barycenter", "none"),
    "feature_norm": ("squared", "frobenius"),
    "reg": ("pcbn", "bn", "gvbsm", "none"),
    "reg_norm": ("squared", "l2"),
    "bn_stats": ("exact", "batch_mean", "running"),
    "coreset": ("random", "herding", "kcenter", "kmeans"),
    "crop_curriculum": ("none", "step", "linear", "cosine"),
}


def _protocol_ok(v: Any) -> bool:
    from ..protocols import PROTOCOLS

    return isinstance(v, str) and v in PROTOCOLS


def _recipe_ok(v: Any) -> bool:
    from ..protocols import TEACHER_RECIPES

    return isinstance(v, str) and v in TEACHER_RECIPES


def _optional(test: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: v is None or test(v)


_positive_int = (lambda v: _is_int(v) and v >= 1)
_non_negative = (lambda v: _is_number(v) and v >= 0)
_positive = (lambda v: _is_number(v) and v > 0)
_RULES: Dict[str, Tuple[Callable[[Any], bool], str]] = {
    "loss": (lambda v: isinstance(v, str) and bool(v), "a loss name (see ddmetrics.available_losses())"),
    "loss_kwargs": (lambda v: isinstance(v, dict) and all(isinstance(k, str) for k in v),
                    "a dict of the loss's keyword arguments"),
    "iterations": (_positive_int, "a positive integer"),
    "budget": (lambda v: _is_number(v) and 0 < v <= 1, "a number in (0, 1]"),
    "lr": (_positive, "a positive number"),
    "weight_decay": (_non_negative, "a non-negative number"),
    "factor": (lambda v: v == "auto" or _positive_int(v), "a positive integer or 'auto'"),
    "augment": (_augment_ok, "None, 'none', 'auto', DSA operations from ddmetrics.augment.OPS joined by '_' "
                             "(optionally prefixed 'idc:'), or a named augmentation of ddmetrics.augment.NAMED"),
    "batch_real": (_positive_int, "a positive integer"),
    "batch_images": (_positive_int, "a positive integer"),
    "teacher_arch": (_model_ok, "a model name or a builder fn(channels, num_classes, image_size)"),
    "teacher_recipe": (_recipe_ok, "a teacher recipe of ddmetrics.protocols.TEACHER_RECIPES"),
    "teacher_epochs": (_optional(_positive_int), "None (the recipe's) or a positive integer"),
    "bary_iters": (_optional(_positive_int), "None or a positive integer"),
    "learn_weights": (lambda v: isinstance(v, bool), "True or False"),
    "ce_weight": (_non_negative, "a non-negative number"),
    "reg_weight": (_non_negative, "a non-negative number"),
    "reg_weighted": (lambda v: isinstance(v, bool), "True or False"),
    "first_bn_weight": (_non_negative, "a non-negative number"),
    "backbones": (lambda v: isinstance(v, (list, tuple)) and all(isinstance(a, str) and _model_ok(a) for a in v),
                  "a list of model names (the networks trained beside the teacher; [] for none)"),
    "conv_drop": (lambda v: _is_number(v) and 0 <= v <= 1, "a number in [0, 1]"),
    "stat_momentum": (lambda v: _is_number(v) and 0 <= v < 1, "a number in [0, 1)"),
    "densify_weight": (_non_negative, "a non-negative number"),
    "crop_milestone": (lambda v: _is_number(v) and 0 < v <= 1, "a number in (0, 1]"),
    "embedder": (_model_ok, "a model name or a builder fn(channels, num_classes, image_size)"),
    "iters_per_model": (_positive_int, "a positive integer"),
    "embedder_pool": (lambda v: _is_int(v) and v >= 0, "0 (fresh random embedders) or a positive integer"),
    "pool_epochs": (_optional(_positive_int), "None (the recipe's) or a positive integer"),
    "pool_interpolate": (lambda v: isinstance(v, bool), "True or False"),
    "calib_weight": (_non_negative, "a non-negative number"),
    "normalize_features": (lambda v: isinstance(v, bool), "True or False"),
    "embedder_queue": (lambda v: _is_int(v) and v >= 0, "0 (no queue) or a positive integer"),
    "queue_push_every": (_positive_int, "a positive integer"),
    "queue_train_steps": (lambda v: _is_int(v) and v >= 0, "a non-negative integer"),
    "queue_ce_weight": (_non_negative, "a non-negative number"),
    "attention_weight": (_non_negative, "a non-negative number"),
    "attention_power": (_positive, "a positive number"),
    "layer_weights": (lambda v: isinstance(v, (list, tuple)) and all(_is_number(w) and w >= 0 for w in v),
                      "a list of non-negative numbers (one per activation of the embedder, then the embedding)"),
    "discrimination_weight": (_non_negative, "a non-negative number"),
    "bilevel": (lambda v: isinstance(v, bool), "True or False"),
    "eval_protocol": (_protocol_ok, "an evaluation protocol of ddmetrics.protocols.PROTOCOLS"),
    "eval_model": (_optional(_model_ok), "None (the protocol's) or a model name or builder"),
    "eval_epochs": (_optional(_positive_int), "None (the protocol's) or a positive integer"),
    "eval_lr": (_optional(_positive), "None (the protocol's) or a positive number"),
    "temperature": (_optional(_positive), "None (the protocol's) or a positive number"),
    "teacher_mode": (_optional(lambda v: v in ("eval", "train")), "None (the protocol's), 'eval' or 'train'"),
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
            allowed += " (" + ", ".join(_model_names()) + ", or torchvision:NAME / timm:NAME)"
        raise ValueError(f"{name}={value!r} is not allowed: {name} must be {allowed}")
    if name in _MODEL_FIELDS and value is not None:
        from ..models import check_model_name

        check_model_name(value, f"{name}={value!r}")  # a library that is not installed, naming its extra
    if isinstance(value, int) and not isinstance(value, bool) and _FLOAT_FIELDS.get(name):
        return float(value)
    if name in _LIST_FIELDS:  # a tuple or a list of ints from a file or --set: the same list of floats
        return [float(w) for w in value]
    if name in _NAME_LIST_FIELDS:
        return list(value)
    return value


@dataclass
class DistillConfig:
    """Everything a distillation run needs besides the data.

    The defaults are WMDD's released pipeline (:data:`PRESETS` ``"wmdd"``); every method preset
    sets the fields that differ, and the fidelity table (``docs/fidelity.md``) says where each
    value comes from. A field that does not apply to a configuration (:func:`applies`) is
    refused when given explicitly (:func:`preset`).

    Matching
        ``strategy``: ``"barycenter"`` (a trained teacher's features, ``loss.barycenter``
        targets, WMDD / SRe²L), ``"distribution"`` (``loss(f(real), f(syn))`` per class in
        embedders, DM / M3D / KR-dual / NCFM) or ``"coreset"`` (real images, below). ``loss`` / ``loss_kwargs``: the
        :class:`~ddmetrics.losses.DistributionLoss`.
    Budget
        ``iterations`` (the method's), ``budget``: one factor in (0, 1] on every iteration and
        epoch count of the run (synthesis, teacher, embedder pool, students), recorded in the
        run's report; 1 is the method's own budget.
    Synthesis
        ``optimizer`` (``"adam"``: betas (0.5, 0.9); ``"sgd"``: momentum 0.5; ``"adamw"``: betas
        (0.9, 0.999)), ``lr``, ``lr_schedule`` (``"cosine"`` to 0, ``"constant"``, ``"plateau"``:
        ×0.5 after 500 steps without a 1e-4 relative improvement of the loss, ``"step"``: ×0.5 at
        60 %, 80 % and 90 % of the iterations, CAFE), ``weight_decay``;
        ``init``: ``"noise"`` (N(0, 1) in normalised pixel space), ``"real"`` (random real
        images of the class) or ``"nearest"`` (the distinct real image nearest to each
        barycenter atom); ``clamp``: ``"pixel"`` clips every image to the valid pixel range
        after each step; ``augment``: the differentiable augmentation of the synthetic (and, for
        distribution matching, the real) images (:func:`ddmetrics.augment.make_augment`);
        ``synthesis_batch``: what one optimisation batch holds — ``"class"`` (the images of one
        class), ``"classes"`` (all images of ``batch_images // ipc`` classes, WMDD) or
        ``"slot"`` (image j of up to ``batch_images`` classes, SRe²L) or ``"all"`` (every image of
        every class, CAFE); ``factor`` (M3D / IDC
        sub-images per side; ``"auto"``: 2 for images of 16 px and more); ``batch_real``
        (real images per class and step).
    Barycenter matching
        ``teacher_arch``, ``teacher_recipe`` (:data:`ddmetrics.protocols.TEACHER_RECIPES`),
        ``teacher_epochs`` (``None``: the recipe's); the barycenter: ``bary_iters`` (``None``:
        the backend's default), ``learn_weights``, ``bary_init``; the objective
        ``feature_loss`` (``"barycenter"``: distance of each image's features to its atom,
        ``feature_norm`` ``"squared"`` = Σ‖f − b‖² (paper Eq. 12) or ``"frobenius"`` = ‖F − B‖
        over the batch (released code); ``"none"``) + ``ce_weight`` × the teacher's mean
        cross-entropy + ``reg_weight`` × the BatchNorm regulariser ``reg`` (``"pcbn"`` per class,
        ``"bn"`` all classes, ``"none"``) with ``reg_norm`` (``"squared"``: squared distances
        summed over classes and layers, paper Eq. 13; ``"l2"``: unsquared per-layer norms,
        averaged over the batch's classes, released code), ``bn_stats`` (the real statistics:
        ``"exact"``, ``"batch_mean"``: within-batch variances of 100-image batches averaged, as
        WMDD's code; ``"running"``: the teacher's running statistics, SRe²L, ``reg="bn"`` only),
        ``reg_weighted`` (the synthetic statistics weighted by the barycenter weights, Eq. 14)
        and ``first_bn_weight`` (the first BatchNorm layer's factor, SRe²L's 10; with ``reg="gvbsm"``
        the first hooked layer's, G-VBSM's stem conv); ``reg="gvbsm"`` is G-VBSM's statistic matching
        (:mod:`ddmetrics.distill.gvbsm`: every BatchNorm layer's input against its running statistics
        and every Conv layer's input against reference channel and 4x4-cell statistics of the real set,
        unsquared norms, EMA momentum ``stat_momentum``, each Conv term dropped with probability
        ``conv_drop``) on one network per step, round-robin over the teacher and ``backbones``
        (networks of those architectures trained by the teacher's recipe from the run's seed,
        :class:`~ddmetrics.distill.pool.EmbedderPool`), + ``densify_weight`` × G-VBSM's data
        densification of the step's view (τ = 4); with a
        RandomResizedCrop augmentation, ``crop_curriculum`` (CDA: ``"step"``, ``"linear"`` or
        ``"cosine"`` fall of the smallest crop area from 1 to 0.08 until ``crop_milestone`` × the
        iterations, :func:`ddmetrics.augment.crop_scale_at`; ``"none"``: 0.08 throughout).
    Distribution matching
        ``embedder``, ``iters_per_model`` (steps per embedder); ``embedder_pool`` (0: a fresh
        random network per draw, DM; P > 0: P networks trained by the ``"ncfm"`` teacher recipe
        for ``pool_epochs`` epochs, one drawn per step and, with ``pool_interpolate``, mixed
        with its initialisation, NCFM); ``calib_weight`` (NCFM's extra cross-entropy step
        through the drawn network's trained end); ``normalize_features`` (features on the unit
        sphere before the loss, NCFM); ``attention_weight`` (DataDAM: the loss also compares, per
        class and weighted by it, the spatial attention maps Σ_c |f_c|^p (p =
        ``attention_power``), L2-normalised per image, of the output of every ReLU of the embedder
        but the last); ``embedder_queue`` (IDM: > 0, the capacity of a queue of embedders trained
        alongside the images, :class:`~ddmetrics.distill.pool.EmbedderQueue`: a new random network
        every ``queue_push_every`` steps, two members trained ``queue_train_steps`` SGD steps on real
        batches after each step, one drawn per step; ``queue_ce_weight`` × the drawn network's running
        accuracy (%) × its cross-entropy on the synthetic views joins the loss); ``layer_weights``
        (CAFE: the loss also compares, per class and weighted by the list's entries, the outputs of
        every ReLU of the embedder in order and then the embedding itself, beside the embedding's own
        term of weight 1); ``discrimination_weight`` (CAFE: × the summed cross-entropy of the real
        images classified by their inner products with the synthetic class-mean embeddings; needs
        several classes in a batch); ``bilevel`` (CAFE's loop: each iteration is a round on a new
        network that takes image steps until the network's accuracy on real images settles, training
        on the synthetic set between them, :mod:`ddmetrics.distill.distribution_matching`).
    Coreset selection
        ``strategy="coreset"`` synthesises nothing: the set is ``ipc`` real images per class with
        uniform weights, chosen by ``coreset`` (:mod:`ddmetrics.distill.coresets`): ``"random"``
        (seeded, the draw of :func:`ddmetrics.evaluate.random_subset`), or in the teacher's
        feature space (``teacher_arch``, ``teacher_recipe``: WMDD's teacher by default)
        ``"herding"`` (running mean closest to the class mean), ``"kcenter"`` (greedy k-center)
        or ``"kmeans"`` (the real image nearest each k-means centroid).
    Evaluation
        ``eval_protocol`` (:data:`ddmetrics.protocols.PROTOCOLS`); ``eval_model``,
        ``eval_epochs``, ``eval_lr``, ``temperature``, ``teacher_mode`` (the mode the teacher labels
        the students' views in, ``"eval"`` or ``"train"``: SRe²L's small-data relabelling runs it in
        train mode) override the protocol's (``None``: its own).
    """

    strategy: str = "barycenter"
    loss: str = "wasserstein"
    loss_kwargs: Dict[str, Any] = field(default_factory=dict)
    # budget
    iterations: int = 2000
    budget: float = 1.0
    # synthesis
    optimizer: str = "adam"
    lr: float = 0.25
    lr_schedule: str = "cosine"
    weight_decay: float = 0.0
    init: str = "noise"
    clamp: str = "pixel"
    augment: Optional[str] = "rrc_flip_roll"
    synthesis_batch: str = "classes"
    batch_images: int = 100
    factor: Union[int, str] = 1
    batch_real: int = 256
    # barycenter matching
    teacher_arch: str = "resnet18"
    teacher_recipe: str = "wmdd"
    teacher_epochs: Optional[int] = None
    bary_iters: Optional[int] = 100
    learn_weights: bool = False
    bary_init: str = "gaussian"
    feature_loss: str = "barycenter"
    feature_norm: str = "frobenius"
    ce_weight: float = 1.0
    reg: str = "pcbn"
    reg_weight: float = 10.0
    reg_norm: str = "l2"
    bn_stats: str = "batch_mean"
    reg_weighted: bool = False
    first_bn_weight: float = 1.0
    backbones: List[str] = field(default_factory=list)
    conv_drop: float = 0.4
    stat_momentum: float = 0.8
    densify_weight: float = 0.0
    crop_curriculum: str = "none"
    crop_milestone: float = 1.0
    # distribution matching
    embedder: str = "convnet"
    iters_per_model: int = 1
    embedder_pool: int = 0
    pool_epochs: Optional[int] = None
    pool_interpolate: bool = False
    calib_weight: float = 0.0
    normalize_features: bool = False
    embedder_queue: int = 0
    queue_push_every: int = 30
    queue_train_steps: int = 10
    queue_ce_weight: float = 0.0
    attention_weight: float = 0.0
    attention_power: float = 1.0
    layer_weights: List[float] = field(default_factory=list)
    discrimination_weight: float = 0.0
    bilevel: bool = False
    # coreset selection
    coreset: str = "random"
    # evaluation
    eval_protocol: str = "soft"
    eval_model: Optional[str] = None
    eval_epochs: Optional[int] = None
    eval_lr: Optional[float] = None
    temperature: Optional[float] = None
    teacher_mode: Optional[str] = None

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            setattr(self, f.name, check_field(f.name, getattr(self, f.name)))
        _check_combination(self)

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

    def scaled(self, count: int) -> int:
        """``count`` iterations or epochs under ``budget`` (at least 1)."""
        return max(1, round(count * self.budget))

    @property
    def effective_iterations(self) -> int:
        """The synthesis steps this run takes: ``iterations`` under ``budget``."""
        return self.scaled(self.iterations)

    def protocol(self):
        """The evaluation :class:`~ddmetrics.protocols.Protocol`, with this config's overrides applied."""
        from ..protocols import get_protocol

        proto = get_protocol(self.eval_protocol)
        if self.eval_model is not None:
            proto = dataclasses.replace(proto, model=self.eval_model)
        if self.temperature is not None:
            proto = dataclasses.replace(proto, temperature=self.temperature)
        if self.teacher_mode is not None:
            proto = dataclasses.replace(proto, teacher_mode=self.teacher_mode)
        recipe = proto.recipe
        if self.eval_lr is not None:
            recipe = dataclasses.replace(recipe, lr=self.eval_lr)
        if self.eval_epochs is not None:
            recipe = dataclasses.replace(recipe, epochs=self.eval_epochs)
        return dataclasses.replace(proto, recipe=recipe)

    def teacher_training(self):
        """The teacher's :class:`~ddmetrics.protocols.TrainRecipe` with ``teacher_epochs`` and ``budget`` applied."""
        from ..protocols import get_teacher_recipe

        recipe = get_teacher_recipe(self.teacher_recipe)
        epochs = recipe.epochs if self.teacher_epochs is None else self.teacher_epochs
        return dataclasses.replace(recipe, epochs=self.scaled(epochs))

    def evaluation_kwargs(self) -> Dict[str, Any]:
        """The :func:`ddmetrics.evaluate` settings of this config, JSON-able: the protocol's name,
        its overrides (``None``: the protocol's own) and the budget."""
        return {"protocol": self.eval_protocol, "model": self.eval_model, "epochs": self.eval_epochs,
                "lr": self.eval_lr, "temperature": self.temperature, "teacher_mode": self.teacher_mode,
                "budget": self.budget}

    def to_dict(self) -> Dict[str, Any]:
        """The settings as JSON-able data (a model builder is recorded by its qualified name)."""
        out = dataclasses.asdict(self)
        for key, value in out.items():
            if callable(value):
                out[key] = f"<builder {getattr(value, '__module__', '?')}.{getattr(value, '__qualname__', repr(value))}>"
        return out


_FLOAT_FIELDS = {f.name: f.type in ("float", float, "Optional[float]") for f in dataclasses.fields(DistillConfig)}
#: the fields that hold a list of numbers
_LIST_FIELDS = ("layer_weights",)
#: the fields that hold a list of model names (kept as given, a tuple as a list)
_NAME_LIST_FIELDS = ("backbones",)


def _soft(cfg: DistillConfig) -> bool:
    from ..protocols import get_protocol

    return get_protocol(cfg.eval_protocol).labels == "soft"


def _tempered(cfg: DistillConfig) -> bool:
    """Whether the evaluation's soft labels have a temperature (the KL ones; G-VBSM's MSE + CE has none)."""
    from ..protocols import get_protocol

    proto = get_protocol(cfg.eval_protocol)
    return proto.labels == "soft" and proto.soft_loss == "kl"


def needs_teacher(cfg: DistillConfig) -> bool:
    """Whether making the set needs a trained teacher: teacher matching, and a coreset chosen in the
    teacher's feature space (every rule but ``"random"``)."""
    return cfg.strategy == "barycenter" or (cfg.strategy == "coreset" and cfg.coreset != "random")


def uses_teacher(cfg: DistillConfig) -> bool:
    """Whether the run trains (or takes) a teacher: to make the set (:func:`needs_teacher`) or to
    label the students' views under a soft-label evaluation protocol."""
    return needs_teacher(cfg) or _soft(cfg)


def _synthesises(cfg: DistillConfig) -> bool:
    """Whether images are optimised (every strategy but ``"coreset"``, which selects real ones)."""
    return cfg.strategy != "coreset"


def _resized_crop(augment: Optional[str]) -> bool:
    """Whether the augmentation ``augment`` draws a ``RandomResizedCrop`` (what a crop curriculum schedules)."""
    from ..augment import CropFlipRoll, make_augment

    aug = make_augment(augment, 1, 32)
    return isinstance(aug, CropFlipRoll) and aug.crop == "resized"


def _gvbsm(cfg: DistillConfig) -> bool:
    """Whether ``cfg`` runs G-VBSM's statistic matching (teacher matching with ``reg="gvbsm"``)."""
    return cfg.strategy == "barycenter" and cfg.reg == "gvbsm"


def _barycenter(cfg: DistillConfig) -> bool:
    """Whether ``cfg`` computes class barycenters: as targets, or for the nearest-real start."""
    return cfg.strategy == "barycenter" and (cfg.feature_loss == "barycenter" or cfg.init == "nearest")


#: field -> whether it is used by a configuration; a field given explicitly where it is not used
#: is refused by :func:`preset` (a setting of one method given to another is a mistake, not a no-op)
APPLIES: Dict[str, Callable[[DistillConfig], bool]] = {
    # the loss compares distributions: of embedded classes, or of a class's features and its barycenter
    "loss": lambda c: c.strategy == "distribution" or _barycenter(c),
    "loss_kwargs": lambda c: c.strategy == "distribution" or _barycenter(c),
    "factor": lambda c: c.strategy == "distribution",
    "batch_real": lambda c: c.strategy == "distribution",
    "batch_images": lambda c: c.synthesis_batch not in ("class", "all"),
    "teacher_arch": uses_teacher,
    "teacher_recipe": uses_teacher,
    "teacher_epochs": uses_teacher,
    "bary_iters": _barycenter,
    "learn_weights": _barycenter,
    "bary_init": _barycenter,
    "feature_loss": lambda c: c.strategy == "barycenter",
    "feature_norm": lambda c: c.strategy == "barycenter" and c.feature_loss == "barycenter",
    "ce_weight": lambda c: c.strategy == "barycenter",
    "reg": lambda c: c.strategy == "barycenter",
    "reg_weight": lambda c: c.strategy == "barycenter" and c.reg != "none",
    # G-VBSM's statistic matching has its own norms (unsquared) and targets (running and reference statistics)
    "reg_norm": lambda c: c.strategy == "barycenter" and c.reg not in ("none", "gvbsm"),
    "bn_stats": lambda c: c.strategy == "barycenter" and c.reg not in ("none", "gvbsm"),
    "backbones": _gvbsm,
    "conv_drop": _gvbsm,
    "stat_momentum": _gvbsm,
    "densify_weight": _gvbsm,
    "reg_weighted": lambda c: c.strategy == "barycenter" and c.feature_loss == "barycenter" and c.reg != "none",
    "first_bn_weight": lambda c: c.strategy == "barycenter" and c.reg != "none",
    "crop_curriculum": lambda c: c.strategy == "barycenter" and _resized_crop(c.augment),
    "crop_milestone": lambda c: c.strategy == "barycenter" and _resized_crop(c.augment) and c.crop_curriculum != "none",
    "embedder": lambda c: c.strategy == "distribution",
    "iters_per_model": lambda c: c.strategy == "distribution" and c.embedder_queue == 0,
    "embedder_pool": lambda c: c.strategy == "distribution",
    "pool_epochs": lambda c: c.strategy == "distribution" and c.embedder_pool > 0,
    "pool_interpolate": lambda c: c.strategy == "distribution" and c.embedder_pool > 0,
    # settable with no pool, so that a run without NCFM's pool can also drop its calibration
    "calib_weight": lambda c: c.strategy == "distribution",
    "normalize_features": lambda c: c.strategy == "distribution",
    "embedder_queue": lambda c: c.strategy == "distribution",
    "queue_push_every": lambda c: c.strategy == "distribution" and c.embedder_queue > 0,
    "queue_train_steps": lambda c: c.strategy == "distribution" and c.embedder_queue > 0,
    "queue_ce_weight": lambda c: c.strategy == "distribution" and c.embedder_queue > 0,
    "attention_weight": lambda c: c.strategy == "distribution",
    "attention_power": lambda c: c.strategy == "distribution" and c.attention_weight > 0,
    "layer_weights": lambda c: c.strategy == "distribution",
    "discrimination_weight": lambda c: c.strategy == "distribution",
    "bilevel": lambda c: c.strategy == "distribution",
    "temperature": _tempered,
    "teacher_mode": _soft,
    "coreset": lambda c: c.strategy == "coreset",
}
#: what only a synthesis uses: a coreset (real images) optimises nothing
for _field in ("iterations", "optimizer", "lr", "lr_schedule", "weight_decay", "init", "clamp", "augment",
               "synthesis_batch"):
    APPLIES[_field] = _synthesises


#: why a field is unused when :data:`APPLIES` says so (the refusal's reason)
_UNUSED_BECAUSE: Dict[str, str] = {
    "loss": "it compares no distributions (feature_loss='none' and no init='nearest')",
    "factor": "only distribution matching stores factor sub-images",
    "batch_real": "only distribution matching draws real batches",
    "batch_images": "synthesis_batch='class' puts one class in a batch, 'all' every image",
    "teacher_arch": "it uses no teacher (distribution matching or a random coreset, with a hard-label protocol)",
    "bary_iters": "it computes no barycenter",
    "feature_loss": "distribution matching has no teacher feature loss",
    "feature_norm": "feature_loss is not 'barycenter'",
    "ce_weight": "distribution matching has no teacher cross-entropy",
    "reg": "distribution matching has no BatchNorm regulariser",
    "reg_weight": "it has no BatchNorm regulariser (reg='none' or distribution matching)",
    "reg_norm": "it has no PCBN / BN regulariser (reg='none' or 'gvbsm', whose statistic matching has its own "
                "unsquared norms and targets, or distribution matching)",
    "backbones": "reg is not 'gvbsm': only G-VBSM's statistic matching runs networks beside the teacher",
    "reg_weighted": "it has no barycenter weights in a BatchNorm regulariser",
    "embedder": "teacher matching uses the teacher, not random embedders",
    "pool_epochs": "embedder_pool is 0",
    "temperature": "its evaluation protocol uses hard labels, or soft labels without a temperature (G-VBSM's "
                   "MSE + CE on raw logits)",
    "teacher_mode": "its evaluation protocol uses hard labels: no teacher labels the students' images",
    "coreset": "only strategy='coreset' selects real images",
    "crop_curriculum": "only teacher matching (strategy='barycenter') with a RandomResizedCrop augmentation "
                       "('rrc_flip_roll', 'rrc_flip_roll_small', 'rrc_flip') has a crop scale to schedule",
    "crop_milestone": "crop_curriculum is 'none' (or there is no crop scale to schedule)",
    "attention_power": "attention_weight is 0: no attention maps are matched",
    "queue_push_every": "embedder_queue is 0: there is no queue of trained embedders",
    "iters_per_model": "only distribution matching redraws random embedders, and with embedder_queue > 0 the "
                       "queue draws one every step",
}
#: why a field of the synthesis is unused by a coreset (every field but the teacher's and the evaluation's)
_CORESET_UNUSED = "a coreset selects real images (strategy='coreset'): nothing is synthesised"
_CORESET_USES = ("teacher_arch", "teacher_recipe", "teacher_epochs", "temperature", "teacher_mode")
for _field, _same in (("loss_kwargs", "loss"), ("teacher_recipe", "teacher_arch"), ("teacher_epochs", "teacher_arch"),
                      ("learn_weights", "bary_iters"), ("bary_init", "bary_iters"), ("reg_norm", "reg_weight"),
                      ("bn_stats", "reg_norm"), ("first_bn_weight", "reg_weight"),
                      ("conv_drop", "backbones"), ("stat_momentum", "backbones"), ("densify_weight", "backbones"),
                      ("embedder_pool", "embedder"), ("normalize_features", "embedder"),
                      ("pool_interpolate", "pool_epochs"), ("calib_weight", "embedder"),
                      ("attention_weight", "embedder"), ("embedder_queue", "embedder"),
                      ("queue_train_steps", "queue_push_every"), ("queue_ce_weight", "queue_push_every"),
                      ("layer_weights", "embedder"), ("discrimination_weight", "embedder"), ("bilevel", "embedder")):
    _UNUSED_BECAUSE[_field] = _UNUSED_BECAUSE[_same]


def applies(cfg: DistillConfig, name: str) -> bool:
    """Whether the field ``name`` is used by ``cfg`` (see :data:`APPLIES`; other fields always are)."""
    test = APPLIES.get(name)
    return True if test is None else bool(test(cfg))


class SettingError(ValueError):
    """A ``ValueError`` about settings of a :class:`DistillConfig`; ``fields`` names them (so that
    a caller reading the settings from a file can point at their lines)."""

    def __init__(self, message: str, fields: Sequence[str] = ()):
        super().__init__(message)
        self.fields: Tuple[str, ...] = tuple(fields)


def _check_combination(cfg: DistillConfig) -> None:
    """Refuse settings that cannot work together (each error names the fields)."""
    if cfg.bn_stats == "running" and cfg.reg == "pcbn":
        raise SettingError("bn_stats='running' needs reg='bn': a teacher's running statistics are all-class "
                         "statistics, PCBN needs per-class ones ('exact' or 'batch_mean')", ("bn_stats", "reg"))
    if cfg.init == "nearest" and cfg.strategy != "barycenter":
        raise SettingError("init='nearest' starts from the real image nearest each barycenter atom of the teacher's "
                           "features: it needs strategy='barycenter'", ("init", "strategy"))
    if cfg.strategy == "barycenter" and cfg.feature_loss == "none" and cfg.ce_weight == 0 and (
            cfg.reg == "none" or cfg.reg_weight == 0):
        raise SettingError("feature_loss='none', ce_weight=0 and no regulariser leave nothing to minimise",
                           ("feature_loss", "ce_weight", "reg", "reg_weight"))
    if cfg.embedder_queue > 0 and cfg.embedder_pool > 0:
        raise SettingError("embedder_queue (IDM's networks trained alongside) and embedder_pool (NCFM's networks "
                           "trained before) are two sources of embedders: choose one", ("embedder_queue",
                                                                                       "embedder_pool"))
    if cfg.discrimination_weight > 0 and cfg.synthesis_batch == "class":
        raise SettingError("discrimination_weight > 0 classifies real images among the synthetic class centres of a "
                           "batch: it needs several classes in one (synthesis_batch='all' or 'classes')",
                           ("discrimination_weight", "synthesis_batch"))
    if cfg.bilevel and (cfg.embedder_pool > 0 or cfg.embedder_queue > 0):
        raise SettingError("bilevel trains each round's new random network on the synthetic set: it takes no "
                           "embedder_pool or embedder_queue", ("bilevel", "embedder_pool", "embedder_queue"))
    if cfg.bilevel and cfg.iters_per_model != 1:
        raise SettingError("bilevel draws a new network for every round (iteration) and trains it within the round: "
                           "iters_per_model must be 1", ("bilevel", "iters_per_model"))
    if cfg.reg == "gvbsm" and cfg.strategy == "barycenter" and cfg.feature_loss != "none":
        raise SettingError("reg='gvbsm' is G-VBSM's objective (cross-entropy + statistic matching + densification on "
                           "one network per step, which may be a backbone without barycenter targets): it needs "
                           "feature_loss='none'", ("reg", "feature_loss"))
    if cfg.calib_weight > 0 and cfg.embedder_pool == 0:
        raise SettingError(f"calib_weight={cfg.calib_weight} needs embedder_pool > 0: the calibration step uses a "
                           "pool network's trained weights (with embedder_pool=0, pass calib_weight=0)",
                           ("calib_weight", "embedder_pool"))


#: method name -> the settings that differ from :class:`DistillConfig`'s defaults (WMDD's release).
#: Each value's source is in docs/fidelity.md; budgets are the methods' own (``budget`` scales them).
PRESETS: Dict[str, Dict[str, Any]] = {
    # WMDD (Liu et al., ICCV 2025), as run.sh -n -w runs data_synthesis_new.py: the defaults above
    "wmdd": dict(),
    # DM (Zhao & Bilen, WACV 2023), main_DM.py: a new random ConvNet every step, 256 real images per class,
    # SGD lr 1 (momentum 0.5), 20 000 iterations, DSA with flip, real init, no clamp
    "dm": dict(strategy="distribution", loss="mmd", loss_kwargs={"kernel": "linear"}, iterations=20000,
               optimizer="sgd", lr=1.0, lr_schedule="constant", init="real", clamp="none",
               augment="color_crop_cutout_flip_scale_rotate", synthesis_batch="class", batch_real=256,
               iters_per_model=1, eval_protocol="hard"),
    # IDM (Zhao et al., CVPR 2023), IDM_cifar10.py with command.txt's CIFAR-10 IPC-10 line: DM's mean matching
    # through a queue of up to 100 ConvNets trained alongside (3 to start, one more every 30 steps, two members
    # trained 10 SGD steps on 256 real images after each step), + 0.5 x accuracy(%) x the drawn network's
    # cross-entropy on the synthetic views, partition-and-expand (factor 2), SGD lr 0.2, 256 real images per class,
    # 20 000 iterations, DSA, real init; evaluation on the expanded set as DM's
    "idm": dict(strategy="distribution", loss="mmd", loss_kwargs={"kernel": "linear"}, iterations=20000,
                optimizer="sgd", lr=0.2, lr_schedule="constant", init="real", clamp="none",
                augment="color_crop_cutout_flip_scale_rotate", synthesis_batch="class", batch_real=256, factor=2,
                embedder_queue=100, queue_push_every=30, queue_train_steps=10, queue_ce_weight=0.5,
                eval_protocol="hard"),
    # DataDAM (Sajedi et al., ICCV 2023), main_DataDAM.py and the README's hyper-parameter table: DM's step with a
    # new random ConvNet each iteration, + 100 x the per-class mean attention maps (sum over channels of |f|, exp 1
    # in the code, L2-normalised) of every ReLU output but the last, the final embedding's mean matching (100 x
    # task_balance 0.01 = 1), SGD lr 1 momentum 0.5, 64 real images per class, 8000 iterations, DSA, real init
    "datadam": dict(strategy="distribution", loss="mmd", loss_kwargs={"kernel": "linear"}, iterations=8000,
                    optimizer="sgd", lr=1.0, lr_schedule="constant", init="real", clamp="none",
                    augment="color_crop_cutout_flip_scale_rotate", synthesis_batch="class", batch_real=64,
                    iters_per_model=1, attention_weight=100.0, attention_power=1.0, eval_protocol="datadam"),
    # CAFE (Wang et al., CVPR 2022), kaiwang960112/CAFE distill.py with the README's CIFAR-10 command: every class in
    # one batch; a new random ConvNet every round (2000 rounds), image steps until its real accuracy settles, trained
    # on the synthetic set between them; the class means of every ReLU output (x0.1, 0.1, 1) and of the embedding
    # (x1, + its own term: 2) matched, + 0.01 x the summed cross-entropy of real images classified by inner products
    # with the synthetic class centres; noise init, no augmentation, SGD lr 0.1 halved at 60/80/90 %, 256 real images
    "cafe": dict(strategy="distribution", loss="mmd", loss_kwargs={"kernel": "linear"}, iterations=2000,
                 optimizer="sgd", lr=0.1, lr_schedule="step", init="noise", clamp="none", augment="none",
                 synthesis_batch="all", batch_real=256, iters_per_model=1, layer_weights=[0.1, 0.1, 1.0, 1.0],
                 discrimination_weight=0.01, bilevel=True, eval_protocol="cafe"),
    # M3D (Zhang et al., AAAI 2024; no released code: the paper): Gaussian-kernel MMD, factor 2, 5 steps per
    # random model, 10 000 iterations, lr 1; the rest as DM (the paper follows DM)
    "m3d": dict(strategy="distribution", loss="mmd", loss_kwargs={"kernel": "gaussian"}, iterations=10000,
                optimizer="sgd", lr=1.0, lr_schedule="constant", init="real", clamp="none",
                augment="color_crop_cutout_flip_scale_rotate", synthesis_batch="class", batch_real=256,
                factor="auto", iters_per_model=5, eval_protocol="hard"),
    # KR-dual (no released code: the paper's Algorithm 1): a fresh critic per class and step, 100 plain
    # gradient steps at lr 1e-3, synthesis lr 1; iterations, real batch and augmentation as DM (unstated)
    "krdual": dict(strategy="distribution", loss="krdual",
                   loss_kwargs={"steps": 100, "lr": 1e-3, "warm_start": False, "critic_optimizer": "sgd"},
                   iterations=20000, optimizer="sgd", lr=1.0, lr_schedule="constant", init="real", clamp="none",
                   augment="color_crop_cutout_flip_scale_rotate", synthesis_batch="class", batch_real=256,
                   iters_per_model=1, eval_protocol="hard"),
    # NCFM (Wang et al., CVPR 2025), condenser/Condenser.py with config/ipc*/cifar10.yaml: the NCFD on
    # unit-sphere features at 4096 N(0, I) frequencies (no sampler), x300, a pool of 20 trained ConvNets mixed with
    # their initialisation, a cross-entropy calibration step, 1024 real images, factor 2, AdamW lr 1e-3 wd 5e-4
    # with a plateau schedule, 20 000 iterations, IDC augmentation (colour, crop, cutout), pixel clamp
    "ncfm": dict(strategy="distribution", loss="ncfd",
                 loss_kwargs={"n_frequencies": 4096, "alpha": 0.5, "steps": 0, "bandwidth": 1.0, "scale": 300.0},
                 iterations=20000, optimizer="adamw", lr=1e-3, weight_decay=5e-4, lr_schedule="plateau",
                 init="real", clamp="pixel", augment="idc:color_crop_cutout", synthesis_batch="class",
                 batch_real=1024, factor=2, iters_per_model=1, embedder_pool=20, pool_interpolate=True,
                 calib_weight=1.0, normalize_features=True, eval_protocol="ncfm"),
    # SRe²L (Yin et al., NeurIPS 2023), the small-data release (SRe2L/*small_dataset/recover_cifar.py, .sh):
    # batches of image j of every class, cross-entropy + 0.01 x unsquared distances to the teacher's running
    # BatchNorm statistics (first layer x10), noise init, a random roll, pixel clamp, Adam lr 0.25, 1000
    # iterations; teacher and relabelling as squeeze_cifar.py / relabel_cifar.py
    "sre2l": dict(strategy="barycenter", feature_loss="none", ce_weight=1.0, reg="bn", reg_weight=0.01,
                  reg_norm="l2", bn_stats="running", first_bn_weight=10.0, synthesis_batch="slot",
                  iterations=1000, lr=0.25, init="noise", clamp="pixel", augment="roll",
                  teacher_recipe="sre2l", eval_protocol="sre2l_small"),
    # CDA (Yin & Shen, "Dataset distillation in large data era", 2023), the Tiny-ImageNet release, the closest to
    # small images (VILA-Lab/SRe2L CDA/recover_cda_tiny.py, README's script): SRe²L's recovery (batches of image j
    # of every class, CE + r_bn x unsquared distances to the running BatchNorm statistics, first layer x10, noise
    # init, Adam (0.5, 0.9) cosine, pixel clamp) with RandomResizedCrop + flip + roll, the crop's smallest area
    # falling from 1 to 0.08 on a cosine over the whole run (--easy2hard-mode cosine --milestone 1), lr 0.4,
    # r_bn 0.05, 4000 iterations; teacher and relabelling as SRe²L's small-data release
    "cda": dict(strategy="barycenter", feature_loss="none", ce_weight=1.0, reg="bn", reg_weight=0.05,
                reg_norm="l2", bn_stats="running", first_bn_weight=10.0, synthesis_batch="slot",
                iterations=4000, lr=0.4, init="noise", clamp="pixel", augment="rrc_flip_roll_small",
                crop_curriculum="cosine", crop_milestone=1.0, teacher_recipe="sre2l", eval_protocol="sre2l_small"),
    # G-VBSM (Shao et al., CVPR 2024), the CIFAR-10 release (shaoshitong/G_VBSM_Dataset_Condensation Branch_CIFAR_10,
    # recover.sh, data_synthesis_with_svd_with_db_with_all_statistic.py): one network per step, round-robin over the
    # teacher and the backbones (the release's five; here resnet18 + the three other CIFAR-sized models of the
    # registry), CE + 0.01 x its BN and Conv statistic matching (EMA 0.8, conv terms dropped with p 0.4, first hook
    # x10) + 1.0 x data densification (tau 4); all images of 100 // ipc classes in one batch (IPC 10: every image),
    # noise init, Adam (0.5, 0.9) lr 0.05 cosine, 4000 iterations, one RandomCrop(pad 4) + flip for the batch then a
    # roll over the whole side, pixel clamp; teachers as squeeze/train.py (5 epochs), students as train_FKD.py
    "g_vbsm": dict(strategy="barycenter", feature_loss="none", ce_weight=1.0, reg="gvbsm", reg_weight=0.01,
                   first_bn_weight=10.0, conv_drop=0.4, stat_momentum=0.8, densify_weight=1.0,
                   backbones=["convnet", "convnet_bn", "resnetap10"], synthesis_batch="classes", batch_images=100,
                   iterations=4000, lr=0.05, init="noise", clamp="pixel", augment="crop_pad_flip_roll",
                   teacher_arch="resnet18", teacher_recipe="g_vbsm", eval_protocol="g_vbsm"),
    # Coreset baselines (in the package, beside the distiller): ipc real images per class, uniform weights, nothing
    # synthesised (ddmetrics/distill/coresets.py). herding, kcenter and kmeans select in the feature space of the
    # teacher above (WMDD's: resnet18 by the "wmdd" recipe, as the benchmarks' coresets always did); random needs
    # none. Evaluated by WMDD's protocol ("soft": the teacher labels the views); eval_protocol="hard" for DM's
    "random": dict(strategy="coreset", coreset="random", synthesis_batch="class"),
    # herding (Welling, ICML 2009; iCaRL's exemplars, Rebuffi et al. 2017)
    "herding": dict(strategy="coreset", coreset="herding", synthesis_batch="class"),
    # greedy k-center (Sener & Savarese, ICLR 2018)
    "kcenter": dict(strategy="coreset", coreset="kcenter", synthesis_batch="class"),
    # the real image nearest each of ipc k-means centroids (k-means++ start, Lloyd's iterations)
    "kmeans": dict(strategy="coreset", coreset="kmeans", synthesis_batch="class"),
}

#: The one table of loss settings used when a distiller builds a loss from its name — by the
#: presets, ``diagnose`` and the benchmarks alike: explicit ``loss_kwargs`` override it. Empty
#: since issue 24: the methods' own settings are in their presets' ``loss_kwargs``.
LOSS_SETTINGS: Dict[str, Dict[str, Any]] = {}


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
    belong to the preset's loss). An override of a field the resulting configuration does not
    use (:func:`applies`: a temperature with hard labels, a crop of the real batch for a
    teacher-based method, ...) is refused, naming the field and why.
    """
    if method not in PRESETS:
        raise ValueError(f"unknown method {method!r}; valid methods: {', '.join(sorted(PRESETS))}")
    settings = dict(PRESETS[method])
    if overrides.get("loss") is None:  # loss=None means "the preset's own"
        overrides.pop("loss", None)
    elif overrides["loss"] != settings.get("loss", DistillConfig.loss) and "loss_kwargs" not in overrides:
        settings["loss_kwargs"] = {}
    settings.update(overrides)
    cfg = DistillConfig().replace(**settings)
    unused = [name for name in overrides if not applies(cfg, name)]
    if unused:
        name = unused[0]
        reason = _UNUSED_BECAUSE.get(name, "this configuration does not use it")
        if cfg.strategy == "coreset" and name not in _CORESET_USES:
            reason = _CORESET_UNUSED
        elif name in ("loss", "loss_kwargs") and _gvbsm(cfg):
            reason = ("G-VBSM (reg='gvbsm') matches statistics with fixed unsquared norms and takes no distribution "
                      "loss to swap")
        raise SettingError(f"{name} does not apply to method {method!r} as configured: {reason}; it would be "
                           "ignored, leave it out" + (f" (also unused: {', '.join(unused[1:])})" if len(unused) > 1
                                                      else ""), unused)
    return cfg
