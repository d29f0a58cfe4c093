r"""Train-from-scratch evaluation of a synthetic set, next to a random real subset and the full data.

The student is trained by a named evaluation protocol (:data:`ddmetrics.protocols.PROTOCOLS`,
data, not branches): a :class:`~ddmetrics.protocols.TrainRecipe` (optimiser, schedule, batch,
augmentation, mix, epochs) run by :func:`ddmetrics.models.train_model`, and what the student
learns from:

- hard labels: cross-entropy with the set's labels (mixed as the batch is), weighted by the
  set's sample weights; ``"hard"`` is DM's ``evaluate_synset``, ``"ncfm"`` NCFM's evaluation;
- soft labels: the teacher's logits on the very view the student sees (augmented and mixed),
  computed on the fly, and per sample
  :math:`\mathrm{KL}(\mathrm{softmax}(t/T)\,\|\,\mathrm{softmax}(s/T))` summed over classes,
  averaged over the batch (times :math:`T^2` only where the protocol says so), weighted per
  the protocol's ``weights``; ``"soft"`` is SRe²L / WMDD's ``train_FKD``, ``"sre2l_small"``
  SRe²L's CIFAR relabelling. FKD stores each epoch's views and teacher logits ahead of training;
  here they are drawn and computed as the student trains: the same distribution of views and
  labels, not the same draws.

``ours_hard`` / ``ours_soft`` are ddmetrics' earlier protocols (SGD lr 0.05, DSA, ``default_epochs``).
Each protocol is repeated ``runs`` times with seeds ``seed, seed+1, ...``; the same-size random
real subset is trained under the same protocol and seeds, and the full-data model once (its
own cheap recipe: hard labels, SGD lr 0.05, batch 64, DSA, ``full_epochs``).

References
----------
.. [1] B. Zhao, H. Bilen. Dataset condensation with distribution matching. WACV 2023 (DM).
.. [2] H. Liu et al. Dataset distillation via the Wasserstein metric. ICCV 2025 (WMDD).
.. [3] Z. Yin, E. Xing, Z. Shen. Squeeze, recover and relabel: dataset condensation at ImageNet
   scale from a new perspective. NeurIPS 2023 (SRe²L).
.. [4] S. Wang et al. Dataset distillation with neural characteristic function: a minmax
   perspective. CVPR 2025 (NCFM).
"""
from __future__ import annotations

import copy
import dataclasses
import math
import statistics
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from .data import ArrayDataset, ImageDataset, as_dataset
from . import distributed
from .augment import is_augment_spec, make_augment
from .mix import Mixed
from .protocols import PROTOCOLS, Protocol, get_protocol
from .utils import DeviceSpec, frozen, model_device, resolve_device, seeded
from .models import (accuracy, available_models, check_model_name, check_outputs, check_recipe, get_model,
                     is_model_name, train_model)
from .synset import SyntheticSet

__all__ = ["EvalReport", "evaluate", "full_data_accuracy", "train_student", "random_subset", "resolve_protocol",
           "with_overrides", "protocol_name", "protocol_settings", "soft_label_loss", "student_epochs"]


@dataclass
class EvalReport:
    """Test accuracies (fractions in [0, 1]) and wall times of one evaluation.

    ``protocol`` names the evaluation protocol (:func:`protocol_name`: a registered name, with
    the overridden settings in brackets, or ``"custom"``); ``protocol_settings`` holds all its
    settings (:func:`dataclasses.asdict` of the :class:`~ddmetrics.protocols.Protocol`),
    ``budget`` the factor on its epochs and ``epochs`` the epochs the synthetic set's students
    trained for.
    """

    method: str
    loss: str
    ipc: int
    protocol: str
    runs: List[float]
    random_runs: List[float] = field(default_factory=list)
    #: the papers' random baseline: random real images with hard labels (filled for the soft protocol)
    random_hard_runs: List[float] = field(default_factory=list)
    full: Optional[float] = None
    seconds: Dict[str, float] = field(default_factory=dict)
    protocol_settings: Dict[str, Any] = field(default_factory=dict)
    budget: float = 1.0
    epochs: Optional[int] = None

    @property
    def mean(self) -> float:
        return mean_std(self.runs)[0]

    @property
    def std(self) -> float:
        return mean_std(self.runs)[1]

    def to_dict(self) -> dict:
        out = asdict(self)
        out["mean"], out["std"] = mean_std(self.runs)
        out["random_mean"], out["random_std"] = mean_std(self.random_runs)
        out["random_hard_mean"], out["random_hard_std"] = mean_std(self.random_hard_runs)
        return out

    def summary(self) -> str:
        """A small fixed-width table of the report (percentages); the protocol's settings in one line."""
        pm = format_mean_std
        labels = self.protocol_settings.get("labels", self.protocol)
        rows = [
            ("method", self.method), ("loss", self.loss), ("IPC", str(self.ipc)), ("protocol", self.protocol),
            ("protocol settings", settings_line(self.protocol_settings, self.budget, self.epochs)),
            ("accuracy (%)", pm(self.runs)), (f"random subset, {labels} labels (%)", pm(self.random_runs)),
        ] + ([("random subset, hard labels (%)", pm(self.random_hard_runs))] if self.random_hard_runs else []) + [
            ("full data (%)", "-" if self.full is None else f"{100 * self.full:.2f}"),
        ] + [(f"time {k} (s)", f"{v:.1f}") for k, v in self.seconds.items()]
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


def settings_line(settings: Dict[str, Any], budget: float = 1.0, epochs: Optional[int] = None) -> str:
    """A protocol's settings (``dataclasses.asdict`` of a :class:`~ddmetrics.protocols.Protocol`) in one line."""
    if not settings:
        return "-"
    r = settings["recipe"]
    parts = [f"{settings['labels']} labels", str(settings["model"])]
    if settings["labels"] == "soft":
        parts.append(f"T={settings['temperature']:g}{' x T^2' if settings['t_squared'] else ''}, teacher in "
                     f"{settings['teacher_mode']} mode")
    parts.append(f"weights={settings['weights']}")
    decay = f"wd {r['weight_decay']:g}" + ("" if r["decay_norm_and_bias"] else " (not on norms/biases)")
    optim = f"{r['optimizer']} lr {r['lr']:g}" + (f" momentum {r['momentum']:g}" if r["optimizer"] == "sgd" else "")
    schedule = r["schedule"] + (f" {list(r['milestones'])} x{r['gamma']:g}" if r["schedule"] == "multistep" else "")
    mix = "" if r["mix"] == "none" else f" + {r['mix']}(alpha {r['mix_alpha']:g}, p {r['mix_prob']:g})"
    planned = f"{r['epochs']} epochs" if r["epochs"] else "default_epochs"
    ran = f" = {epochs}" if epochs is not None else ""
    parts += [f"{optim} {decay}", schedule, f"batch {r['batch_size']}", f"augment {r['augment']}{mix}",
              f"{planned} x budget {budget:g}{ran}"]
    return "; ".join(parts)


def check_fits(synset: SyntheticSet, data: ImageDataset, name: str) -> None:
    """Refuse ``data`` that ``synset`` cannot be evaluated on: other image shape, channels or classes."""
    syn_shape = tuple(synset.images.shape[1:])  # factor tiles decode to the stored size
    real_shape = tuple(data.image_shape)
    if syn_shape != real_shape:
        raise ValueError(f"the synthetic images are {'x'.join(map(str, syn_shape))} (channels x height x width) but "
                         f"{name}'s are {'x'.join(map(str, real_shape))}: they were distilled from other data")
    if synset.num_classes != data.num_classes:
        raise ValueError(f"the synthetic set has {synset.num_classes} classes but {name} has {data.num_classes}: "
                         "they were distilled from other data")


def mean_std(values: Sequence[float]) -> Tuple[Optional[float], Optional[float]]:
    """Mean and population standard deviation of ``values`` (``(None, None)`` when empty)."""
    if not values:
        return None, None
    return statistics.fmean(values), statistics.pstdev(values) if len(values) > 1 else 0.0


def format_mean_std(values: Sequence[float], scale: float = 100.0, digits: int = 2) -> str:
    """``"mean ± std"`` of ``values`` times ``scale`` (accuracies in %), ``"-"`` when empty."""
    m, s = mean_std(values)
    return "-" if m is None else f"{scale * m:.{digits}f} ± {scale * s:.{digits}f}"


def random_subset(train: ImageDataset, ipc: int, seed: int) -> SyntheticSet:
    """``ipc`` random real images per class (seeded), uniform weights; only those are read."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    idx = torch.cat([train.class_indices(k)[torch.randperm(len(train.class_indices(k)), generator=gen,
                                                           device="cpu")[:ipc]]
                     for k in range(train.num_classes)])
    return SyntheticSet(images=train.load(idx), labels=train.labels[idx].clone(),
                        weights=torch.full((len(idx),), 1.0 / ipc, device="cpu"), meta={"method": "random", "ipc": ipc},
                        num_classes=train.num_classes)


def default_epochs(num_images: int, batch_size: int = 256) -> int:
    """Student epochs when none are given: 1000 under 50 images, else 300 SGD steps' worth.

    At batch 256 that is 300 epochs up to 256 images (IPC 10 on 10 classes) and 150 at 500
    (IPC 50). A cost choice, measured on the digits validation split
    (``benchmarks/results/validation_choices.md``): at IPC 50, DM 97.90 % either way, WMDD
    97.20 % at 150 epochs against 98.25 % at 300 — half the student time for about one point.
    """
    if num_images < 50:
        return 1000
    return max(1, 300 // math.ceil(num_images / batch_size))



# --------------------------------------------------------------------------- protocols
def _check_budget(budget: float) -> float:
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not 0 < budget <= 1:
        raise ValueError(f"budget must be a number in (0, 1], got {budget!r}")
    return float(budget)


def student_epochs(protocol: Protocol, num_images: int, budget: float = 1.0) -> int:
    """The epochs a student of ``num_images`` images trains for: the recipe's (0: the earlier
    :func:`default_epochs` rule, the ``ours_*`` protocols) times ``budget``, at least 1
    (:meth:`ddmetrics.distill.DistillConfig.scaled`)."""
    recipe = protocol.recipe
    base = recipe.epochs if recipe.epochs > 0 else default_epochs(num_images, recipe.batch_size)
    return max(1, round(base * _check_budget(budget)))


def _is_positive_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0


def with_overrides(protocol: Protocol, model=None, epochs: Optional[int] = None, lr: Optional[float] = None,
                   temperature: Optional[float] = None, augment: Optional[str] = None) -> Protocol:
    """``protocol`` with the given settings replaced (``None``: its own); each checked by name."""
    if model is not None and not (is_model_name(model) or (callable(model) and not isinstance(model, str))):
        raise ValueError(f"model={model!r} is not allowed: it must be a registered model name "
                         f"({', '.join(available_models())}), torchvision:NAME / timm:NAME, or a builder "
                         "fn(channels, num_classes, image_size)")
    if model is not None:
        check_model_name(model, f"model={model!r}")  # a library model without its library: the extra to install
    if epochs is not None and (isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1):
        raise ValueError(f"epochs must be None (the protocol's) or a positive int, got {epochs!r}")
    if lr is not None and not _is_positive_number(lr):
        raise ValueError(f"lr must be None (the protocol's) or a positive number, got {lr!r}")
    if temperature is not None:
        if not _is_positive_number(temperature):
            raise ValueError(f"temperature must be None (the protocol's) or a positive number, got {temperature!r}")
        if protocol.labels != "soft":
            raise ValueError(f"temperature={temperature!r}: the protocol trains on hard labels, it has no temperature")
    if augment is not None and not (isinstance(augment, str) and is_augment_spec(augment)):
        raise ValueError(f"augment={augment!r} is not an augmentation spec (see ddmetrics.augment.make_augment)")
    recipe = protocol.recipe
    recipe_changes = {k: v for k, v in (("epochs", epochs), ("lr", lr), ("augment", augment)) if v is not None}
    if recipe_changes:
        recipe = dataclasses.replace(recipe, **recipe_changes)
    changes = {k: v for k, v in (("model", model), ("temperature", temperature)) if v is not None}
    return dataclasses.replace(protocol, recipe=recipe, **changes)


def resolve_protocol(protocol: Union[str, Protocol, None], meta: Optional[Dict[str, Any]] = None) -> Protocol:
    """The :class:`~ddmetrics.protocols.Protocol` meant by ``protocol``: itself, a registered
    name, or (``None``) the one recorded in a synthetic set's ``meta["config"]``
    (``eval_protocol`` with its ``eval_model`` / ``eval_epochs`` / ``eval_lr`` / ``temperature``
    overrides, as :meth:`ddmetrics.distill.DistillConfig.protocol`), else ``"hard"``."""
    if isinstance(protocol, Protocol):
        return protocol
    if isinstance(protocol, str):
        return get_protocol(protocol)
    if protocol is not None:
        raise TypeError(f"protocol must be a protocol name, a ddmetrics.protocols.Protocol or None, "
                        f"got {type(protocol).__name__}")
    config = (meta or {}).get("config") or {}
    recorded = get_protocol(config.get("eval_protocol", "hard"))
    temperature = config.get("temperature") if recorded.labels == "soft" else None
    return with_overrides(recorded, model=config.get("eval_model"), epochs=config.get("eval_epochs"),
                          lr=config.get("eval_lr"), temperature=temperature)


def protocol_settings(protocol: Protocol) -> Dict[str, Any]:
    """``dataclasses.asdict(protocol)``, JSON-able: a model builder is recorded by its qualified name."""
    out = asdict(protocol)
    if callable(out["model"]):
        out["model"] = f"<builder {_builder_name(out['model'])}>"
    return out


def _builder_name(fn) -> str:
    qualname = getattr(fn, "__qualname__", None)
    return f"{getattr(fn, '__module__', '?')}.{qualname}" if qualname else repr(fn)


def protocol_name(protocol: Protocol) -> str:
    """The registered name of ``protocol``; a registered name with the settings that differ
    (``"hard (epochs=300, lr=0.05)"``) when only the model, temperature, learning rate, epochs or
    augmentation do; else ``"custom"``."""
    for name, registered in PROTOCOLS.items():
        if registered == protocol:
            return name
    recipe = protocol.recipe
    for name, registered in PROTOCOLS.items():
        base = dataclasses.replace(registered, model=protocol.model, temperature=protocol.temperature,
                                   recipe=dataclasses.replace(registered.recipe, lr=recipe.lr, epochs=recipe.epochs,
                                                              augment=recipe.augment))
        if base == protocol:
            diffs = [(key, mine) for key, mine, theirs in (
                ("model", protocol.model, registered.model), ("temperature", protocol.temperature,
                                                              registered.temperature),
                ("lr", recipe.lr, registered.recipe.lr), ("epochs", recipe.epochs, registered.recipe.epochs),
                ("augment", recipe.augment, registered.recipe.augment)) if mine != theirs]
            shown = ", ".join(f"{k}={v if isinstance(v, (str, int, float)) else _builder_name(v)}" for k, v in diffs)
            return f"{name} ({shown})"
    return "custom"


# --------------------------------------------------------------------------- students
def soft_label_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float,
                    t_squared: bool = False) -> Tensor:
    r"""Per-sample :math:`\mathrm{KL}(\mathrm{softmax}(t/T)\,\|\,\mathrm{softmax}(s/T))`, summed over
    classes, shape ``(B,)`` (its batch mean is ``KLDivLoss(reduction="batchmean")``), times
    :math:`T^2` when ``t_squared``."""
    target = F.softmax(teacher_logits / temperature, dim=1)
    kl = F.kl_div(F.log_softmax(student_logits / temperature, dim=1), target, reduction="none").sum(1)
    return kl * temperature ** 2 if t_squared else kl


@contextmanager
def labelling_teacher(teacher: nn.Module, mode: str, device: torch.device) -> Iterator[nn.Module]:
    """The teacher that labels the student's views, in ``mode``, on ``device``; the caller's
    teacher keeps its mode, device and (BatchNorm) statistics.

    ``"eval"``: the teacher itself in eval mode (its mode restored after), or a copy where it
    lives on another device. ``"train"``: a deep copy in train mode, whose BatchNorm layers
    normalise each batch by its own statistics and update the copy's running statistics, as
    SRe²L's CIFAR relabelling does with its teacher.
    """
    if mode == "train":
        yield copy.deepcopy(teacher).to(device).train()
        return
    if mode != "eval":
        raise ValueError(f"teacher_mode must be 'eval' or 'train', got {mode!r}")
    labeller = teacher if model_device(teacher) == device else copy.deepcopy(teacher).to(device)
    was_training = labeller.training
    labeller.eval()
    try:
        yield labeller
    finally:
        labeller.train(was_training)


def _soft_criterion(teacher: nn.Module, temperature: float, t_squared: bool):
    """``criterion(logits, images, labels, mixed)`` for :func:`~ddmetrics.models.train_model`:
    the KL to the teacher's labels of the same (augmented, mixed) images."""
    def criterion(logits: Tensor, images: Tensor, labels: Tensor, mixed: Optional[Mixed]) -> Tensor:
        with torch.no_grad():
            target = teacher(images)
        return soft_label_loss(logits, target, temperature, t_squared)

    return criterion


#: Protocol.weights -> (whether the set's weights enter the loss, train_model's weight_norm)
WEIGHTINGS: Dict[str, Tuple[bool, str]] = {"set": (True, "set"), "batch": (True, "batch"), "none": (False, "set")}


def _check_protocol(protocol: Protocol, teacher: Optional[nn.Module]) -> None:
    """Refuse a protocol that cannot be trained (each field by name), before any training."""
    check_recipe(protocol.recipe, "protocol.recipe")
    model = protocol.model
    if not (is_model_name(model) or (callable(model) and not isinstance(model, str))):
        raise ValueError(f"protocol.model={model!r} is not a registered model ({', '.join(available_models())}) "
                         "or a builder fn(channels, num_classes, image_size)")
    check_model_name(model, "protocol.model")
    if protocol.labels not in ("hard", "soft"):
        raise ValueError(f"protocol.labels must be 'hard' or 'soft', got {protocol.labels!r}")
    if protocol.weights not in WEIGHTINGS:
        raise ValueError(f"protocol.weights must be one of {', '.join(WEIGHTINGS)}, got {protocol.weights!r}")
    if protocol.labels == "soft":
        if teacher is None:
            raise ValueError("the soft-label protocol needs the teacher (teacher=...)")
        if not isinstance(teacher, nn.Module):
            raise TypeError(f"teacher must be an nn.Module, got {type(teacher).__name__}")
        if not _is_positive_number(protocol.temperature):
            raise ValueError(f"protocol.temperature must be a positive number, got {protocol.temperature!r}")
        if protocol.teacher_mode not in ("eval", "train"):
            raise ValueError(f"protocol.teacher_mode must be 'eval' or 'train', got {protocol.teacher_mode!r}")


def train_student(synset: SyntheticSet, protocol: Union[str, Protocol], teacher: Optional[nn.Module] = None,
                  seed: int = 0, budget: float = 1.0, device: DeviceSpec = "cpu", progress: bool = False) -> nn.Module:
    """Train a fresh ``protocol.model`` on ``synset`` by ``protocol`` on ``device`` and return it (eval mode).

    Parameters
    ----------
    synset : SyntheticSet
        Decoded (factor tiles) before training.
    protocol : str, Protocol or None
        A name of :data:`ddmetrics.protocols.PROTOCOLS` or a protocol (``None``: the set's
        recorded one, :func:`resolve_protocol`).
    teacher : nn.Module, optional
        Labels the views for a soft-label protocol (required there); left as it is.
    seed : int
        The student's initialisation and every draw of its training.
    budget : float
        In (0, 1]: the factor on the epochs (:func:`student_epochs`).
    device, progress
        Where it trains; a progress bar.
    """
    protocol = resolve_protocol(protocol, synset.meta)
    _check_protocol(protocol, teacher)
    budget = _check_budget(budget)
    device = resolve_device(device)
    images, labels, weights = synset.decoded()
    epochs = student_epochs(protocol, len(images), budget)
    channels, size = images.shape[1], images.shape[-1]
    with seeded(seed):
        student = get_model(protocol.model, channels, synset.num_classes, size)
    student.to(device)
    data = ArrayDataset(images, labels, synset.num_classes)
    weighted, weight_norm = WEIGHTINGS[protocol.weights]
    sample_weights = weights * len(weights) / weights.sum() if weighted else None
    kw = dict(epochs=epochs, seed=seed, sample_weights=sample_weights, weight_norm=weight_norm, progress=progress,
              device=device)
    if protocol.labels == "hard":
        return train_model(student, data, protocol.recipe, **kw)
    with labelling_teacher(teacher, protocol.teacher_mode, device) as labeller:
        criterion = _soft_criterion(labeller, protocol.temperature, protocol.t_squared)
        return train_model(student, data, protocol.recipe, criterion=criterion, **kw)


def full_data_accuracy(train_set, test_set, model: str = "convnet", epochs: int = 20, lr: float = 0.05,
                       seed: int = 0, device: DeviceSpec = "cpu") -> float:
    """Test accuracy of ``model`` trained on the whole training set: ddmetrics' cheap fixed recipe
    (hard labels, SGD ``lr`` momentum 0.9, ×0.1 at half, batch 64, DSA ``"auto"``), whatever the
    protocol of the students."""
    device = resolve_device(device)
    train_set, test_set = as_dataset(train_set), as_dataset(test_set)
    channels, size = train_set.image_shape[0], train_set.image_shape[-1]
    with seeded(seed):
        net = get_model(model, channels, train_set.num_classes, size)
    net = train_model(net, train_set, epochs=epochs, lr=lr, seed=seed, batch_size=64,
                      augment=make_augment("auto", channels, size), progress=False, device=device)
    return accuracy(net, test_set)


def evaluate(synset: SyntheticSet, test_set, train_set=None, protocol: Union[str, Protocol, None] = None,
             runs: int = 3, teacher: Optional[nn.Module] = None, model=None, epochs: Optional[int] = None,
             lr: Optional[float] = None, temperature: Optional[float] = None, augment: Optional[str] = None,
             budget: float = 1.0, full_data: bool = True, full_epochs: int = 20, seed: int = 0,
             random_hard: bool = False, progress: bool = True, device: DeviceSpec = None) -> EvalReport:
    """Evaluate ``synset`` by training ``runs`` fresh students and testing them on ``test_set``.

    Parameters
    ----------
    synset : SyntheticSet
    test_set, train_set : Dataset
        With ``train_set`` the report also holds the same-size random real subset (same
        protocol, same seeds; with ``random_hard`` and a soft-label protocol also with hard
        labels, the baseline the papers report) and, with ``full_data``, a model trained on the
        full training set (:func:`full_data_accuracy`: its own cheap hard-label recipe, the
        protocol's model, ``full_epochs`` × ``budget``; most of an evaluation's time on small sets).
    protocol : str, Protocol or None
        A name of :data:`ddmetrics.protocols.PROTOCOLS` or a protocol; ``None``: the one in the
        set's recorded config (with its overrides, :func:`resolve_protocol`), else ``"hard"``.
    runs : int
        Students, seeds ``seed, seed + 1, ...``.
    teacher : nn.Module, optional
        Required by soft-label protocols. Borrowed, not changed: it runs in eval mode without
        parameter gradients, and its modes and ``requires_grad`` flags are restored afterwards (it
        is moved to ``device``).
    model, epochs, lr, temperature, augment : optional
        Override the protocol's student model, epochs, learning rate, temperature (soft labels
        only) and augmentation spec (``None``: the protocol's).
    budget : float
        In (0, 1]: the factor on every epoch count (students and the full-data model).
    device : str or torch.device, optional
        Students, the teacher and every baseline train there (``None``/``"auto"``: CUDA when
        available); their random draws come from CPU generators, the same on every device.

    With a ``torch.distributed`` process group, the trainings are spread over the ranks and
    every rank returns the same report.
    """
    if not isinstance(synset, SyntheticSet):
        raise TypeError(f"synset must be a SyntheticSet, got {type(synset).__name__}")
    if isinstance(runs, bool) or not isinstance(runs, int) or runs < 1:
        raise ValueError(f"runs must be a positive integer, got {runs!r}")
    if isinstance(full_epochs, bool) or not isinstance(full_epochs, int) or full_epochs < 1:
        raise ValueError(f"full_epochs must be a positive integer, got {full_epochs!r}")
    budget = _check_budget(budget)
    meta = synset.meta or {}
    protocol = with_overrides(resolve_protocol(protocol, meta), model=model, epochs=epochs, lr=lr,
                              temperature=temperature, augment=augment)
    _check_protocol(protocol, teacher)
    device = resolve_device(device)
    test_set = as_dataset(test_set)  # a streaming ImageFolder stays streamed
    check_fits(synset, test_set, "test_set")
    if train_set is not None:
        train_set = as_dataset(train_set)
        check_fits(synset, train_set, "train_set")
    if protocol.labels == "soft":  # its logits are the students' targets: one per class
        check_outputs(teacher, tuple(synset.images.shape[1:]), synset.num_classes)
    channels, size = synset.images.shape[1], synset.images.shape[-1]
    make_augment(protocol.recipe.augment, channels, size)  # an augmentation it cannot build fails here
    hard = dataclasses.replace(protocol, labels="hard", temperature=None)
    # every training is a task (synthetic runs, random-subset runs, the full-data model); with a
    # process group the tasks are sharded over ranks and their results summed (zeros elsewhere)
    ipc = int(meta.get("ipc", 0)) or int(torch.bincount(synset.labels).max())
    tasks = [("evaluate", r) for r in range(runs)]
    if train_set is not None:
        tasks += [("random_subset", r) for r in range(runs)]
        if protocol.labels == "soft" and random_hard:
            tasks += [("random_hard", r) for r in range(runs)]
        if full_data:
            tasks.append(("full_data", 0))
    kw = dict(teacher=teacher, budget=budget, device=device)

    def run(kind: str, r: int) -> float:
        if kind == "evaluate":
            return accuracy(train_student(synset, protocol, seed=seed + r, **kw), test_set)
        if kind == "full_data":
            return full_data_accuracy(train_set, test_set, model=protocol.model,
                                      epochs=max(1, round(full_epochs * budget)), seed=seed, device=device)
        subset = random_subset(train_set, ipc, seed + r)
        return accuracy(train_student(subset, hard if kind == "random_hard" else protocol, seed=seed + r, **kw),
                        test_set)

    rank, world_size = distributed.world()
    values = torch.zeros(len(tasks), dtype=torch.float64, device="cpu")
    times = torch.zeros(len(tasks), dtype=torch.float64, device="cpu")
    with frozen(teacher):  # the caller's teacher is borrowed: its modes and requires_grad come back as they were
        for i in tqdm(distributed.shard(len(tasks), rank, world_size), desc="evaluate", disable=not progress,
                      leave=False):
            start = time.perf_counter()
            values[i] = run(*tasks[i])
            times[i] = time.perf_counter() - start
    values, times = distributed.all_reduce_sum(values), distributed.all_reduce_sum(times)
    result = {kind: [float(values[i]) for i, (k, _) in enumerate(tasks) if k == kind]
              for kind in ("evaluate", "random_subset", "random_hard", "full_data")}
    # seconds of training per kind, summed over ranks (= wall time in a single process)
    seconds = {kind: float(sum(float(times[i]) for i, (k, _) in enumerate(tasks) if k == kind))
               for kind in ("evaluate", "random_subset", "full_data") if result[kind]}
    if result["random_hard"]:
        seconds["random_subset"] += float(sum(float(times[i]) for i, (k, _) in enumerate(tasks) if k == "random_hard"))
    return EvalReport(method=meta.get("method", "?"), loss=meta.get("loss", "?"), ipc=int(meta.get("ipc", 0)),
                      protocol=protocol_name(protocol), runs=result["evaluate"], random_runs=result["random_subset"],
                      random_hard_runs=result["random_hard"],
                      full=result["full_data"][0] if result["full_data"] else None, seconds=seconds,
                      protocol_settings=protocol_settings(protocol), budget=budget,
                      epochs=student_epochs(protocol, len(synset.labels) * synset.factor ** 2, budget))
