"""The generic :class:`Distiller`: any method preset, any :class:`DistributionLoss`."""
from __future__ import annotations

import time
from typing import Callable, Dict, Optional, Union

import torch
from torch import nn

from ..data import as_array_dataset
from ..losses.base import DistributionLoss, get_loss
from ..models import get_model, train_model
from ..synset import SyntheticSet
from ._common import make_augment, seeded
from .barycenter_matching import barycenter_matching
from .distribution_matching import distribution_matching
from .presets import DistillConfig, preset

LossSpec = Union[str, DistributionLoss, None]


def _run_barycenter(self: "Distiller", train, num_classes, ipc, loss, progress):
    teacher = self.teacher_ if self.teacher_ is not None else self.train_teacher(train, num_classes, progress)
    return barycenter_matching(train, num_classes, ipc, loss, self.config, teacher, self.seed, progress)


def _run_distribution(self: "Distiller", train, num_classes, ipc, loss, progress):
    return distribution_matching(train, num_classes, ipc, loss, self.config, self.seed, progress)


#: matching strategy name -> runner
STRATEGIES: Dict[str, Callable] = {"barycenter": _run_barycenter, "distribution": _run_distribution}


class Distiller:
    """Distil a labelled image set into ``ipc`` synthetic images per class.

    Parameters
    ----------
    method : str
        A preset: ``"wmdd"``, ``"dm"``, ``"m3d"`` or ``"krdual"`` (see
        :data:`ddmetrics.distill.presets.PRESETS`).
    loss : str or DistributionLoss, optional
        Overrides the preset's loss (``method="wmdd", loss="sliced"`` is WMDD's sliced ablation).
    ipc : int
        Images per class.
    seed : int
        Seed of every random choice; same seed, same synthetic set on CPU.
    teacher : nn.Module, optional
        A trained classifier with ``embed``/``classifier`` for barycenter matching; trained
        on the real data when omitted (kept as ``teacher_``).
    **overrides
        Any :class:`~ddmetrics.distill.presets.DistillConfig` field.

    Examples
    --------
    >>> syn = Distiller(method="wmdd", loss="wasserstein", ipc=10, seed=0).fit(train)  # doctest: +SKIP
    """

    def __init__(self, method: str = "wmdd", loss: LossSpec = None, ipc: int = 10, seed: int = 0,
                 teacher: Optional[nn.Module] = None, **overrides):
        if not isinstance(ipc, int) or isinstance(ipc, bool) or ipc < 1:
            raise ValueError(f"ipc must be a positive integer, got {ipc!r}")
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise TypeError(f"seed must be an int, got {type(seed).__name__}")
        self.method = method
        self.ipc = ipc
        self.seed = seed
        loss_name = loss.name if isinstance(loss, DistributionLoss) else loss
        self.config: DistillConfig = preset(method, loss=loss_name, **overrides)
        if self.config.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {sorted(STRATEGIES)}, got {self.config.strategy!r}")
        # resolve the loss now so an unknown name fails before any work
        self.loss: DistributionLoss = loss if isinstance(loss, DistributionLoss) else get_loss(
            self.config.loss, **self.config.loss_kwargs)
        self.teacher_ = teacher
        self.timings_: Dict[str, float] = {}

    def train_teacher(self, train, num_classes: int, progress: bool = True) -> nn.Module:
        """Train the preset's teacher on the real training set (seeded) and keep it as ``teacher_``."""
        channels, size = train.images.shape[1], train.images.shape[-1]
        start = time.perf_counter()
        with seeded(self.seed):
            model = get_model(self.config.teacher, channels, num_classes, size)
        aug = make_augment(self.config.augment, channels)
        self.teacher_ = train_model(model, train, epochs=self.config.teacher_epochs, seed=self.seed,
                                    augment=aug, progress=progress)
        self.timings_["teacher_seconds"] = time.perf_counter() - start
        return self.teacher_

    def _check(self, train):
        train = as_array_dataset(train)
        num_classes = train.num_classes
        counts = torch.bincount(train.labels, minlength=num_classes)
        smallest = int(counts.min())
        if self.ipc > smallest:
            raise ValueError(f"ipc={self.ipc} is larger than the smallest class ({smallest} images, "
                             f"class {int(counts.argmin())})")
        return train, num_classes

    def fit(self, train, progress: bool = True) -> SyntheticSet:
        """Distil ``train`` (an ``ArrayDataset`` or any Dataset of (image, label) pairs)."""
        train, num_classes = self._check(train)
        start = time.perf_counter()
        images, labels, weights, info = STRATEGIES[self.config.strategy](
            self, train, num_classes, self.ipc, self.loss, progress)
        self.timings_["distill_seconds"] = time.perf_counter() - start
        meta = {
            "method": self.method,
            "loss": self.loss.name or type(self.loss).__name__,
            "ipc": self.ipc,
            "seed": self.seed,
            "factor": info.pop("factor", 1),
            "config": self.config.to_dict(),
            "timings": dict(self.timings_),
            "info": info,
        }
        return SyntheticSet(images=images, labels=labels, weights=weights, meta=meta, num_classes=num_classes)
