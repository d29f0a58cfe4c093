"""Coreset baselines: ``ipc`` real images per class, selected rather than synthesised.

The presets ``"random"``, ``"herding"``, ``"kcenter"`` and ``"kmeans"`` (``strategy="coreset"``,
``DistillConfig.coreset`` the rule) run through the :class:`~ddmetrics.Distiller` like any
method: same units (one per class), checkpoints, sharding over ranks, :class:`SyntheticSet`
(uniform weights ``1/ipc``, ``meta["method"]`` the preset's name), run folder and report. The
rules that need a feature space use the teacher's ``embed`` features of each class (the
preset's ``teacher_arch`` / ``teacher_recipe``: WMDD's teacher), one class at a time:

- ``"random"``: no features; the draw of :func:`ddmetrics.evaluate.random_subset` (one CPU
  generator seeded with ``seed``, a permutation of each class in class order), so the method
  equals the random-subset baseline every report shows;
- ``"herding"`` (Welling 2009; iCaRL's exemplars): :func:`herding_indices`, deterministic;
- ``"kcenter"`` (Sener & Savarese 2018): :func:`kcenter_indices`, a first point drawn with
  ``seed + k`` for class ``k``;
- ``"kmeans"``: :func:`kmeans_nearest_indices`, k-means++ seeded with ``seed + k``.

Selection runs in float64 on the CPU (a class's features are ``n_k × d``): the greedy rules
compare distances that can tie to float32 precision.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Dict, List, Optional

import torch
from torch import Tensor, nn

from ..losses import DistributionLoss, init_support
from ._loop import Strategy, Unit
from .barycenter_matching import class_features
from .checkpoint import Checkpoint
from .presets import DistillConfig, needs_teacher

__all__ = ["SELECTIONS", "CoresetSelection", "herding_indices", "kcenter_indices", "kmeans_nearest_indices",
           "random_indices"]


def herding_indices(feats: Tensor, m: int) -> List[int]:
    """Herding: greedily add the point that keeps the running mean of the chosen features closest
    to the mean of all ``feats`` (n, d); ``m`` distinct indices, in the order chosen."""
    feats = feats.double()
    mu, total, chosen = feats.mean(0), torch.zeros_like(feats[0]), []
    taken = torch.zeros(len(feats), dtype=torch.bool, device=feats.device)
    for t in range(1, m + 1):
        gap = ((mu - (total + feats) / t) ** 2).sum(1).masked_fill(taken, float("inf"))
        i = int(gap.argmin())
        taken[i] = True
        chosen.append(i)
        total = total + feats[i]
    return chosen


def kcenter_indices(feats: Tensor, m: int, seed: int) -> List[int]:
    """Greedy k-center: a first point drawn with ``seed``, then repeatedly the point farthest (in
    Euclidean distance) from everything chosen; ``m`` indices, in the order chosen."""
    feats = feats.double()
    first = int(torch.randint(len(feats), (1,), generator=torch.Generator(device="cpu").manual_seed(seed),
                              device="cpu"))
    chosen = [first]
    dist = torch.cdist(feats, feats[first:first + 1]).squeeze(1)
    for _ in range(m - 1):
        i = int(dist.argmax())
        chosen.append(i)
        dist = torch.minimum(dist, torch.cdist(feats, feats[i:i + 1]).squeeze(1))
    return chosen


def kmeans_centroids(feats: Tensor, m: int, seed: int, max_iter: int = 100) -> Tensor:
    """``m`` k-means centroids of ``feats`` (n, d), float64: a k-means++ start
    (:func:`ddmetrics.losses.init_support`, seeded) and Lloyd's iterations until no point changes
    cluster or ``max_iter``; a cluster left empty keeps its centroid."""
    x = feats.double()
    centers = init_support(x, m, torch.full((len(x),), 1.0 / len(x), dtype=x.dtype, device=x.device), seed=seed)
    assign = None
    for _ in range(max_iter):
        new_assign = torch.cdist(x, centers).argmin(1)
        if assign is not None and torch.equal(new_assign, assign):
            break
        assign = new_assign
        counts = torch.bincount(assign, minlength=m)
        sums = torch.zeros_like(centers).index_add_(0, assign, x)
        filled = counts > 0
        centers = centers.clone()
        centers[filled] = sums[filled] / counts[filled].unsqueeze(1).to(x.dtype)
    return centers


def kmeans_nearest_indices(feats: Tensor, m: int, seed: int) -> List[int]:
    """The real points nearest the ``m`` k-means centroids (:func:`kmeans_centroids`): centroid by
    centroid, the nearest point not taken yet (so the ``m`` indices are distinct)."""
    d = torch.cdist(kmeans_centroids(feats, m, seed), feats.double())
    taken = torch.zeros(len(feats), dtype=torch.bool, device=d.device)
    chosen = []
    for j in range(m):
        i = int(d[j].masked_fill(taken, float("inf")).argmin())
        taken[i] = True
        chosen.append(i)
    return chosen


def random_indices(train, ipc: int, seed: int) -> List[Tensor]:
    """Per class ``k`` (in order), ``ipc`` indices of ``train`` drawn without replacement: the draw
    of :func:`ddmetrics.evaluate.random_subset` (one generator seeded with ``seed`` over all classes)."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    picks = []
    for k in range(train.num_classes):
        pool = train.class_indices(k)
        picks.append(pool[torch.randperm(len(pool), generator=gen, device="cpu")[:ipc]])
    return picks


#: ``DistillConfig.coreset`` -> ``select(features (n, d), m, seed) -> m distinct row indices`` (the
#: feature-space rules; ``"random"`` needs no features and is drawn by :func:`random_indices`)
SELECTIONS: Dict[str, Callable[[Tensor, int, int], List[int]]] = {
    "herding": lambda feats, m, seed: herding_indices(feats, m),
    "kcenter": kcenter_indices,
    "kmeans": kmeans_nearest_indices,
}


class CoresetSelection(Strategy):
    """The ``"coreset"`` strategy: each unit (one class) is ``ipc`` selected real images.

    Parameters
    ----------
    train : ImageDataset
        The real training set (only the selected images are read; features one class at a time).
    num_classes, ipc : int
        Classes and images per class.
    loss : DistributionLoss or None
        Unused (a coreset compares no distributions); accepted for the strategies' common signature.
    cfg : DistillConfig
        ``coreset`` names the rule.
    seed : int
        Seed of the random draw / the k-center and k-means starts (``seed + k`` for class ``k``).
    teacher : nn.Module, optional
        The trained teacher whose ``embed`` features the feature-space rules use (eval mode,
        frozen by the Distiller); required unless ``cfg.coreset == "random"``.
    """

    summed_info = ("selection_seconds",)
    description = "coreset selection"

    def __init__(self, train, num_classes: int, ipc: int, loss: Optional[DistributionLoss], cfg: DistillConfig,
                 seed: int, teacher: Optional[nn.Module] = None, device: torch.device = torch.device("cpu"),
                 amp: bool = False, checkpoint: Optional[Checkpoint] = None):  # nothing to keep: it trains nothing
        if needs_teacher(cfg) and teacher is None:
            raise ValueError(f"coreset={cfg.coreset!r} selects in the teacher's feature space: it needs the teacher")
        self.device, self.amp = torch.device(device), amp
        self.train, self.num_classes, self.ipc, self.cfg, self.seed = train, num_classes, ipc, cfg, seed
        self.teacher = teacher.to(self.device).eval() if needs_teacher(cfg) else None
        self.description = f"{cfg.coreset} coreset"
        self._random = random_indices(train, ipc, seed) if cfg.coreset == "random" else None

    def indices(self, k: int) -> Tensor:
        """The training-set indices of class ``k``'s ``ipc`` images, in the rule's order."""
        if self._random is not None:
            return self._random[k]
        pool = self.train.class_indices(k)
        with torch.no_grad():
            feats = class_features(self.teacher, self.train, pool).cpu()
        picked = SELECTIONS[self.cfg.coreset](feats, self.ipc, self.seed + k)
        return pool[torch.tensor(picked, dtype=torch.long, device="cpu")]

    def run_unit(self, unit: Unit, ckpt: Optional[Checkpoint] = None, progress: bool = False) -> Dict[str, Any]:
        """Select ``unit``'s images (nothing to resume within a class: a finished class is checkpointed
        by the Distiller)."""
        start = time.perf_counter()
        slots = torch.tensor(unit.slots, dtype=torch.long, device="cpu")
        idx = torch.cat([self.indices(k)[slots] for k in unit.classes])
        return {"images": self.train.load(idx).cpu(), "weights": torch.full((len(idx),), 1.0 / self.ipc, device="cpu"),
                "info": {"selection_seconds": time.perf_counter() - start}}
