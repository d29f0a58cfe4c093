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
own cheap recipe: hard labels, SGD lr 0.05, batch 64, DSA, ``full_epochs``). Accuracies are
reported with a 95 % Student-t interval over the runs.

``scores=True`` adds DD-Ranking's scores [5]_ (:mod:`ddmetrics.scores`): HLR, IOR, LRS and ARS,
per run (runs paired by seed) with their intervals, from the trainings they need under the
chosen protocol — the synthetic set with hard labels (:func:`hard_label_variant`), and the
synthetic set and the random subsets without augmentation (:func:`no_augment_variant`).
``lr_search=(...)`` picks each kind of training's student learning rate on a validation split.

References
----------
.. [1] B. Zhao, H. Bilen. Dataset condensation with distribution matching. WACV 2023 (DM).
.. [2] H. Liu et al. Dataset distillation via the Wasserstein metric. ICCV 2025 (WMDD).
.. [3] Z. Yin, E. Xing, Z. Shen. Squeeze, recover and relabel: dataset condensation at ImageNet
   scale from a new perspective. NeurIPS 2023 (SRe²L).
.. [4] S. Wang et al. Dataset distillation with neural characteristic function: a minmax
   perspective. CVPR 2025 (NCFM).
.. [5] Z. Li et al. DD-Ranking: Rethinking the Evaluation of Dataset Distillation. arXiv:2505.13300,
   2025 (HLR, IOR, LRS, ARS).
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
from .protocols import MSE_CE_WEIGHT, PROTOCOLS, SOFT_LOSSES, Protocol, get_protocol
from .scores import dd_ranking_scores, t_interval
from .utils import DeviceSpec, frozen, model_device, resolve_device, seeded
from .models import (accuracy, available_models, check_model_name, check_outputs, check_recipe, get_model,
                     is_model_name, train_model)
from .synset import SyntheticSet

__all__ = ["EvalReport", "evaluate", "full_data_accuracy", "train_student", "random_subset", "resolve_protocol",
           "with_overrides", "protocol_name", "protocol_settings", "soft_label_loss", "mse_ce_loss", "LogitEnsemble",
           "student_epochs",
           "hard_label_variant", "random_hard_variant", "no_augment_variant", "format_interval"]

#: the confidence level of every interval of a report
CONFIDENCE = 0.95


@dataclass
class EvalReport:
    """Test accuracies (fractions in [0, 1]) and wall times of one evaluation.

    ``protocol`` names the evaluation protocol (:func:`protocol_name`: a registered name, with
    the overridden settings in brackets, or ``"custom"``); ``protocol_settings`` holds all its
    settings (:func:`dataclasses.asdict` of the :class:`~ddmetrics.protocols.Protocol`),
    ``budget`` the factor on its epochs and ``epochs`` the epochs the synthetic set's students
    trained for. Run ``r`` of every list trained with student seed ``seed + r`` (and, for the
    random subsets, the subset drawn with seed ``seed + r``): the lists are paired run by run.

    With scores (``score_weights`` set), ``hard_runs``, ``no_aug_runs`` and ``random_no_aug_runs``
    hold the extra trainings DD-Ranking's scores need and :meth:`scores` computes them;
    ``lr_search`` records a student learning-rate search (``{}``: none).
    """

    method: str
    loss: Optional[str]  # None: the method compared no distributions (a coreset, SRe²L-style recovery)
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
    #: the synthetic set with hard labels (:func:`hard_label_variant`; the protocol's own runs when it is hard-label)
    hard_runs: List[float] = field(default_factory=list)
    #: the synthetic set and the random subsets without augmentation or mixing (:func:`no_augment_variant`)
    no_aug_runs: List[float] = field(default_factory=list)
    random_no_aug_runs: List[float] = field(default_factory=list)
    #: ``{"lrs": w, "ars": w}``: the weights of DD-Ranking's scores; ``None``: no scores were computed
    score_weights: Optional[Dict[str, float]] = None
    #: ``{"values", "split", "chosen": {kind: lr}, "val_accuracy": {kind: [...]}}``; ``{}``: no search
    lr_search: Dict[str, Any] = field(default_factory=dict)

    @property
    def mean(self) -> float:
        return mean_std(self.runs)[0]

    @property
    def std(self) -> float:
        return mean_std(self.runs)[1]

    @property
    def interval(self) -> Tuple[float, Optional[float]]:
        """Mean accuracy and the half-width of its 95 % Student-t interval over the runs
        (:func:`ddmetrics.scores.t_interval`; ``None`` for one run)."""
        return t_interval(self.runs, CONFIDENCE)

    def scores(self) -> Optional[Dict[str, Dict[str, Any]]]:
        """DD-Ranking's HLR, IOR, LRS, ARS per run with means and 95 % intervals
        (:func:`ddmetrics.scores.dd_ranking_scores`); ``None`` when the evaluation computed none."""
        if self.score_weights is None:
            return None
        return dd_ranking_scores(self.full, self.hard_runs, self.runs, self.random_runs, self.no_aug_runs,
                                 self.random_no_aug_runs, lrs_weight=self.score_weights["lrs"],
                                 ars_weight=self.score_weights["ars"], confidence=CONFIDENCE)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["mean"], out["std"] = mean_std(self.runs)
        out["random_mean"], out["random_std"] = mean_std(self.random_runs)
        out["random_hard_mean"], out["random_hard_std"] = mean_std(self.random_hard_runs)
        out["confidence"] = CONFIDENCE
        for key, values in (("interval", self.runs), ("random_interval", self.random_runs),
                            ("random_hard_interval", self.random_hard_runs), ("hard_interval", self.hard_runs),
                            ("no_aug_interval", self.no_aug_runs),
                            ("random_no_aug_interval", self.random_no_aug_runs)):
            out[key] = _interval_dict(values)
        out["scores"] = self.scores()
        return out

    def summary(self) -> str:
        """A small fixed-width table of the report (percentages; accuracies as mean ± the half-width
        of the 95 % interval over the runs); the protocol's settings in one line."""
        pm = format_interval
        labels = self.protocol_settings.get("labels", self.protocol)
        rows = [
            ("method", self.method), ("loss", "none" if self.loss is None else self.loss), ("IPC", str(self.ipc)), ("protocol", self.protocol),
            ("protocol settings", settings_line(self.protocol_settings, self.budget, self.epochs)),
            ("accuracy (%)", pm(self.runs)), (f"random subset, {labels} labels (%)", pm(self.random_runs)),
        ] + ([("random subset, hard labels (%)", pm(self.random_hard_runs))] if self.random_hard_runs else []) + [
            ("full data (%)", "-" if self.full is None else f"{100 * self.full:.2f}"),
        ]
        scores = self.scores()
        if scores is not None:
            if labels == "soft":
                rows.append(("synthetic, hard labels, no mix (%)", pm(self.hard_runs)))
            rows += [("synthetic, no augmentation (%)", pm(self.no_aug_runs)),
                     ("random subset, no augmentation (%)", pm(self.random_no_aug_runs))]
            w = self.score_weights or {}
            for key, name, unit in (("hlr", "HLR, hard-label recovery", "points"),
                                    ("ior", "IOR, improvement over random", "points"),
                                    ("lrs", f"LRS, label-robust score (w={w.get('lrs', 0.5):g})", "%"),
                                    ("ars", f"ARS, augmentation-robust score (w={w.get('ars', 0.5):g})", "%")):
                rows.append((f"{name} ({unit})", _format_estimate(scores[key]["mean"], scores[key]["half_width"],
                                                                  len(scores[key]["runs"]))))
        if self.lr_search:
            chosen = ", ".join(f"{k} {v:g}" for k, v in self.lr_search["chosen"].items())
            rows.append((f"student lr (searched on {self.lr_search['split']})", chosen))
        rows += [(f"time {k} (s)", f"{v:.1f}") for k, v in self.seconds.items()]
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


def _interval_dict(values: Sequence[float]) -> Optional[Dict[str, Any]]:
    """``{"mean", "half_width", "low", "high"}`` of the 95 % interval of ``values`` (``None`` when empty)."""
    if not values:
        return None
    mean, half = t_interval(values, CONFIDENCE)
    return {"mean": mean, "half_width": half, "low": None if half is None else mean - half,
            "high": None if half is None else mean + half}


def _format_estimate(mean: float, half: Optional[float], n: int, scale: float = 100.0, digits: int = 2) -> str:
    runs = f"{n} run{'s' if n != 1 else ''}"
    if half is None:
        return f"{scale * mean:.{digits}f} ({runs}: no interval)"
    return f"{scale * mean:.{digits}f} ± {scale * half:.{digits}f} (95 % CI, {runs})"


def format_interval(values: Sequence[float], scale: float = 100.0, digits: int = 2) -> str:
    """``"mean ± h (95 % CI, n runs)"`` of ``values`` times ``scale``, ``h`` the half-width of the
    Student-t interval (:func:`ddmetrics.scores.t_interval`); one run has no interval; ``"-"`` when empty."""
    if not values:
        return "-"
    mean, half = t_interval(values, CONFIDENCE)
    return _format_estimate(mean, half, len(values), scale, digits)


def settings_line(settings: Dict[str, Any], budget: float = 1.0, epochs: Optional[int] = None) -> str:
    """A protocol's settings (``dataclasses.asdict`` of a :class:`~ddmetrics.protocols.Protocol`) in one line."""
    if not settings:
        return "-"
    r = settings["recipe"]
    parts = [f"{settings['labels']} labels", str(settings["model"])]
    if settings["labels"] == "soft" and settings.get("soft_loss", "kl") == "mse_ce":
        parts.append(f"MSE(logits) + {MSE_CE_WEIGHT:g} CE(hard label), teacher in {settings['teacher_mode']} mode")
    elif settings["labels"] == "soft":
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
                   temperature: Optional[float] = None, augment: Optional[str] = None,
                   teacher_mode: Optional[str] = None) -> Protocol:
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
        if protocol.soft_loss != "kl":
            raise ValueError(f"temperature={temperature!r}: the protocol's soft loss ({protocol.soft_loss!r}) compares "
                             "raw logits, it has no temperature")
    if augment is not None and not (isinstance(augment, str) and is_augment_spec(augment)):
        raise ValueError(f"augment={augment!r} is not an augmentation spec (see ddmetrics.augment.make_augment)")
    if teacher_mode is not None:
        if teacher_mode not in ("eval", "train"):
            raise ValueError(f"teacher_mode must be None (the protocol's), 'eval' or 'train', got {teacher_mode!r}")
        if protocol.labels != "soft":
            raise ValueError(f"teacher_mode={teacher_mode!r}: the protocol trains on hard labels, no teacher labels "
                             "its images")
    recipe = protocol.recipe
    recipe_changes = {k: v for k, v in (("epochs", epochs), ("lr", lr), ("augment", augment)) if v is not None}
    if recipe_changes:
        recipe = dataclasses.replace(recipe, **recipe_changes)
    changes = {k: v for k, v in (("model", model), ("temperature", temperature), ("teacher_mode", teacher_mode))
               if v is not None}
    return dataclasses.replace(protocol, recipe=recipe, **changes)


def resolve_protocol(protocol: Union[str, Protocol, None], meta: Optional[Dict[str, Any]] = None) -> Protocol:
    """The :class:`~ddmetrics.protocols.Protocol` meant by ``protocol``: itself, a registered
    name, or (``None``) the one recorded in a synthetic set's ``meta["config"]``
    (``eval_protocol`` with its ``eval_model`` / ``eval_epochs`` / ``eval_lr`` / ``temperature`` /
    ``teacher_mode`` overrides, as :meth:`ddmetrics.distill.DistillConfig.protocol`), else ``"hard"``."""
    if isinstance(protocol, Protocol):
        return protocol
    if isinstance(protocol, str):
        return get_protocol(protocol)
    if protocol is not None:
        raise TypeError(f"protocol must be a protocol name, a ddmetrics.protocols.Protocol or None, "
                        f"got {type(protocol).__name__}")
    config = (meta or {}).get("config") or {}
    recorded = get_protocol(config.get("eval_protocol", "hard"))
    soft = recorded.labels == "soft"
    return with_overrides(recorded, model=config.get("eval_model"), epochs=config.get("eval_epochs"),
                          lr=config.get("eval_lr"), temperature=config.get("temperature") if soft else None,
                          teacher_mode=config.get("teacher_mode") if soft else None)


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
    (``"hard (epochs=300, lr=0.05)"``) when only the model, temperature, teacher mode, learning rate,
    epochs or augmentation do; else ``"custom"``."""
    for name, registered in PROTOCOLS.items():
        if registered == protocol:
            return name
    recipe = protocol.recipe
    for name, registered in PROTOCOLS.items():
        base = dataclasses.replace(registered, model=protocol.model, temperature=protocol.temperature,
                                   teacher_mode=protocol.teacher_mode,
                                   recipe=dataclasses.replace(registered.recipe, lr=recipe.lr, epochs=recipe.epochs,
                                                              augment=recipe.augment))
        if base == protocol:
            diffs = [(key, mine) for key, mine, theirs in (
                ("model", protocol.model, registered.model), ("temperature", protocol.temperature,
                                                              registered.temperature),
                ("teacher_mode", protocol.teacher_mode, registered.teacher_mode),
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


def mse_ce_loss(student_logits: Tensor, teacher_logits: Tensor, labels: Tensor,
                ce_weight: float = MSE_CE_WEIGHT) -> Tensor:
    r"""G-VBSM's ``mse_gt`` student loss per sample, shape ``(B,)``:

    .. math::
        \ell_i = \frac{1}{C} \sum_c (s_{ic} - t_{ic})^2 + w\, \mathrm{CE}(s_i, y_i),

    the raw student logits :math:`s` against the teacher's (ensemble's) raw logits :math:`t` and the
    cross-entropy with the hard label :math:`y` of the un-mixed image, :math:`w` = 0.15. Its batch
    mean is the release's ``F.mse_loss(s, t) + 0.15 * F.cross_entropy(s, y)`` (train_FKD.py:307-308:
    the MSE is a mean over the batch's B x C entries)."""
    mse = (student_logits - teacher_logits).pow(2).mean(1)
    return mse + ce_weight * F.cross_entropy(student_logits, labels, reduction="none")


def _soft_criterion(teacher: nn.Module, temperature: Optional[float], t_squared: bool, soft_loss: str = "kl"):
    """``criterion(logits, images, labels, mixed)`` for :func:`~ddmetrics.models.train_model`:
    the KL (or G-VBSM's MSE + CE) to the teacher's labels of the same (augmented, mixed) images."""
    def criterion(logits: Tensor, images: Tensor, labels: Tensor, mixed: Optional[Mixed]) -> Tensor:
        with torch.no_grad():
            target = teacher(images)
        if soft_loss == "mse_ce":  # labels: the un-mixed images' (train_model passes them unmixed)
            return mse_ce_loss(logits, target.to(logits.dtype), labels)
        return soft_label_loss(logits, target, temperature, t_squared)

    return criterion


class LogitEnsemble(nn.Module):
    r"""Several trained classifiers as one teacher: the plain mean of their raw logits,
    :math:`t = \frac1M \sum_m f_m(x)` (G-VBSM's relabelling, ``torch.stack(outputs).mean(0)``,
    generate_soft_label_with_db.py:279-284: no softmax, no temperature).

    Parameters
    ----------
    members : sequence of nn.Module
        The classifiers (one output per class each); held, not copied.
    """

    def __init__(self, members: Sequence[nn.Module]):
        super().__init__()
        members = list(members)
        if not members or not all(isinstance(m, nn.Module) for m in members):
            raise ValueError("LogitEnsemble needs one or more nn.Module members")
        self.members = nn.ModuleList(members)
        # the wrapper's own flag says what its members are (eval after training), so that restoring the
        # wrapper's mode after labelling (labelling_teacher) does not put trained members in training mode
        self.training = any(m.training for m in members)
        self.members.training = self.training

    def forward(self, x: Tensor) -> Tensor:
        return torch.stack([m(x).float() for m in self.members]).mean(0)


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
        if protocol.soft_loss not in SOFT_LOSSES:
            raise ValueError(f"protocol.soft_loss must be one of {', '.join(SOFT_LOSSES)}, got {protocol.soft_loss!r}")
        if protocol.soft_loss == "kl" and not _is_positive_number(protocol.temperature):
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
        criterion = _soft_criterion(labeller, protocol.temperature, protocol.t_squared, protocol.soft_loss)
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


def random_hard_variant(protocol: Protocol) -> Protocol:
    """The protocol of the papers' random baseline with hard labels (``random_hard``): ``protocol``
    with its labels alone made hard, its augmentation and batch mixing kept."""
    return dataclasses.replace(protocol, labels="hard", temperature=None)


def hard_label_variant(protocol: Protocol) -> Protocol:
    """The protocol that trains DD-Ranking's "syn-hard" student: ``protocol`` itself when it is
    hard-label; else the same recipe with hard labels and no batch mixing (DD-Ranking's
    ``use_aug_for_hard: false`` in every released config: CutMix / Mixup off, the per-image
    augmentation kept)."""
    if protocol.labels == "hard":
        return protocol
    return dataclasses.replace(protocol, labels="hard", temperature=None, t_squared=False, teacher_mode="eval",
                               soft_loss="kl", recipe=dataclasses.replace(protocol.recipe, mix="none"))


def no_augment_variant(protocol: Protocol) -> Protocol:
    """``protocol`` without augmentation: no per-image augmentation (``augment="none"``) and no
    batch mixing (``mix="none"``), labels and everything else kept (DD-Ranking's ARS "naug")."""
    return dataclasses.replace(protocol, recipe=dataclasses.replace(protocol.recipe, augment="none", mix="none"))


def _check_weight(name: str, w: float) -> float:
    if isinstance(w, bool) or not isinstance(w, (int, float)) or not 0.0 <= w <= 1.0:
        raise ValueError(f"{name} must be a number in [0, 1], got {w!r}")
    return float(w)


def _check_lr_search(lr_search: Optional[Sequence[float]], lr: Optional[float], val_set) -> Optional[Tuple[float, ...]]:
    """``lr_search`` as a tuple of positive learning rates, or ``None``; its companions checked by name."""
    if lr_search is None:
        return None
    if isinstance(lr_search, (str, bytes)) or not isinstance(lr_search, (list, tuple)) or not lr_search:
        raise ValueError(f"lr_search must be a non-empty list or tuple of learning rates, got {lr_search!r}")
    for value in lr_search:
        if not _is_positive_number(value):
            raise ValueError(f"lr_search must hold positive learning rates, got {value!r} in {list(lr_search)}")
    if lr is not None:
        raise ValueError(f"lr={lr!r} and lr_search are exclusive: the search chooses the learning rate")
    if val_set is None:
        raise ValueError("lr_search needs val_set: the learning rate is chosen on a validation split, never on "
                         "test_set (ddm.data.load(...).val)")
    return tuple(float(v) for v in lr_search)


def _run_sharded(tasks: List[Tuple], run, progress: bool, desc: str) -> Tuple[Tensor, Tensor]:
    """Run ``run(*task)`` for each task, the tasks spread over the ranks of a process group (every
    rank gets every result: zeros elsewhere, summed); the values and the seconds each took."""
    rank, world_size = distributed.world()
    values = torch.zeros(len(tasks), dtype=torch.float64, device="cpu")
    times = torch.zeros(len(tasks), dtype=torch.float64, device="cpu")
    for i in tqdm(distributed.shard(len(tasks), rank, world_size), desc=desc, disable=not progress, leave=False):
        start = time.perf_counter()
        values[i] = run(*tasks[i])
        times[i] = time.perf_counter() - start
    return distributed.all_reduce_sum(values), distributed.all_reduce_sum(times)


def evaluate(synset: SyntheticSet, test_set, train_set=None, protocol: Union[str, Protocol, None] = None,
             runs: int = 3, teacher: Optional[nn.Module] = None, model=None, epochs: Optional[int] = None,
             lr: Optional[float] = None, temperature: Optional[float] = None, augment: Optional[str] = None,
             teacher_mode: Optional[str] = None, budget: float = 1.0, full_data: bool = True, full_epochs: int = 20, seed: int = 0,
             random_hard: bool = False, scores: bool = False, lrs_weight: float = 0.5, ars_weight: float = 0.5,
             lr_search: Optional[Sequence[float]] = None, val_set=None, progress: bool = True,
             device: DeviceSpec = None) -> EvalReport:
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
    model, epochs, lr, temperature, augment, teacher_mode : optional
        Override the protocol's student model, epochs, learning rate, temperature (soft labels
        only), augmentation spec and the mode the teacher labels in (``"eval"`` or ``"train"``;
        soft labels only) (``None``: the protocol's).
    budget : float
        In (0, 1]: the factor on every epoch count (students and the full-data model).
    scores : bool
        Also compute DD-Ranking's HLR, IOR, LRS and ARS (:meth:`EvalReport.scores`; needs
        ``train_set`` and ``full_data``). Adds ``runs`` trainings of the synthetic set with hard
        labels (:func:`hard_label_variant`; none for a hard-label protocol) and ``runs`` of the
        synthetic set and of the random subsets without augmentation (:func:`no_augment_variant`;
        none when the protocol has neither augmentation nor mixing).
    lrs_weight, ars_weight : float
        In [0, 1]: the weight ``w`` of LRS (on IOR) and of ARS (on the augmented difference);
        DD-Ranking's default 0.5.
    lr_search : sequence of float, optional
        Student learning rates to choose from, on ``val_set`` and never on the test set: for each
        kind of training (the synthetic set, the random subsets, each score variant) one student
        per rate with seed ``seed`` (and random subset ``seed``) is tested on ``val_set``, and
        the rate with the best validation accuracy (the first listed among equals) trains that
        kind's ``runs`` students. The full-data model keeps its own recipe. Exclusive with ``lr``.
    val_set : Dataset, optional
        The validation split of ``lr_search`` (``ddm.data.load(...).val``: held out of the
        training split, disjoint from the test split).
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
    if not isinstance(scores, bool):
        raise TypeError(f"scores must be True or False, got {scores!r}")
    lrs_weight, ars_weight = _check_weight("lrs_weight", lrs_weight), _check_weight("ars_weight", ars_weight)
    if scores and (train_set is None or not full_data):
        raise ValueError("scores=True needs train_set and full_data=True: HLR compares with the full-data model, "
                         "IOR and ARS with random real subsets")
    lr_values = _check_lr_search(lr_search, lr, val_set)
    budget = _check_budget(budget)
    meta = synset.meta or {}
    protocol = with_overrides(resolve_protocol(protocol, meta), model=model, epochs=epochs, lr=lr,
                              temperature=temperature, augment=augment, teacher_mode=teacher_mode)
    _check_protocol(protocol, teacher)
    device = resolve_device(device)
    test_set = as_dataset(test_set)  # a streaming ImageFolder stays streamed
    check_fits(synset, test_set, "test_set")
    if train_set is not None:
        train_set = as_dataset(train_set)
        check_fits(synset, train_set, "train_set")
    if lr_values is not None:
        val_set = as_dataset(val_set)
        check_fits(synset, val_set, "val_set")
    if protocol.labels == "soft":  # its logits are the students' targets: one per class
        check_outputs(teacher, tuple(synset.images.shape[1:]), synset.num_classes)
    channels, size = synset.images.shape[1], synset.images.shape[-1]
    make_augment(protocol.recipe.augment, channels, size)  # an augmentation it cannot build fails here
    hard = random_hard_variant(protocol)
    no_aug = no_augment_variant(protocol)
    # each kind of student training: (its protocol, whether it trains on the random subset of its run)
    kinds: Dict[str, Tuple[Protocol, bool]] = {"evaluate": (protocol, False)}
    if train_set is not None:
        kinds["random_subset"] = (protocol, True)
        if protocol.labels == "soft" and random_hard:
            kinds["random_hard"] = (hard, True)
    if scores:
        if protocol.labels == "soft":
            kinds["hard_labels"] = (hard_label_variant(protocol), False)
        if no_aug != protocol:
            kinds["no_augment"], kinds["random_no_augment"] = (no_aug, False), (no_aug, True)
    ipc = int(meta.get("ipc", 0)) or int(torch.bincount(synset.labels).max())
    kw = dict(teacher=teacher, budget=budget, device=device)
    chosen: Dict[str, float] = {}

    def train(kind: str, r: int, on, lr_value: Optional[float] = None) -> float:
        variant, on_random = kinds[kind]
        lr_value = chosen.get(kind) if lr_value is None else lr_value
        if lr_value is not None:
            variant = dataclasses.replace(variant, recipe=dataclasses.replace(variant.recipe, lr=lr_value))
        data = random_subset(train_set, ipc, seed + r) if on_random else synset
        return accuracy(train_student(data, variant, seed=seed + r, **kw), on)

    def run(kind: str, r: int) -> float:
        if kind == "full_data":
            return full_data_accuracy(train_set, test_set, model=protocol.model,
                                      epochs=max(1, round(full_epochs * budget)), seed=seed, device=device)
        return train(kind, r, test_set)

    search: Dict[str, Any] = {}
    search_seconds = 0.0
    with frozen(teacher):  # the caller's teacher is borrowed: its modes and requires_grad come back as they were
        if lr_values is not None:  # every kind's rate is chosen on val_set before any test-set training
            candidates = [(kind, i) for kind in kinds for i in range(len(lr_values))]
            val_acc, times = _run_sharded(candidates, lambda kind, i: train(kind, 0, val_set, lr_values[i]),
                                          progress, "lr search")
            table = {kind: [float(val_acc[j]) for j, (k, _) in enumerate(candidates) if k == kind] for kind in kinds}
            chosen.update({kind: lr_values[max(range(len(accs)), key=lambda i: (accs[i], -i))]
                           for kind, accs in table.items()})
            search = {"values": list(lr_values), "split": "val_set", "chosen": dict(chosen), "val_accuracy": table}
            search_seconds = float(times.sum())
        tasks = [(kind, r) for kind in kinds for r in range(runs)]
        if train_set is not None and full_data:
            tasks.append(("full_data", 0))
        values, times = _run_sharded(tasks, run, progress, "evaluate")
    result = {kind: [float(values[i]) for i, (k, _) in enumerate(tasks) if k == kind]
              for kind in (*kinds, "full_data")}
    spent = {kind: float(sum(float(times[i]) for i, (k, _) in enumerate(tasks) if k == kind))
             for kind in (*kinds, "full_data")}
    # seconds of training per kind, summed over ranks (= wall time in a single process)
    seconds = {kind: spent[kind] for kind in ("evaluate", "random_subset", "full_data") if result.get(kind)}
    if result.get("random_hard"):
        seconds["random_subset"] += spent["random_hard"]
    if scores:
        seconds["scores"] = sum(spent.get(k, 0.0) for k in ("hard_labels", "no_augment", "random_no_augment"))
    if search:
        seconds["lr_search"] = search_seconds
    own_runs = protocol.labels == "hard"  # the protocol's runs are the hard-label ones
    return EvalReport(method=meta.get("method", "?"), loss=meta.get("loss", "?"), ipc=int(meta.get("ipc", 0)),
                      protocol=protocol_name(protocol), runs=result["evaluate"],
                      random_runs=result.get("random_subset", []), random_hard_runs=result.get("random_hard", []),
                      full=result["full_data"][0] if result["full_data"] else None, seconds=seconds,
                      protocol_settings=protocol_settings(protocol), budget=budget,
                      epochs=student_epochs(protocol, len(synset.labels) * synset.factor ** 2, budget),
                      hard_runs=(result["evaluate"] if own_runs else result["hard_labels"]) if scores else [],
                      no_aug_runs=result.get("no_augment", result["evaluate"]) if scores else [],
                      random_no_aug_runs=result.get("random_no_augment", result.get("random_subset", []))
                      if scores else [],
                      score_weights={"lrs": lrs_weight, "ars": ars_weight} if scores else None,
                      lr_search=search)
