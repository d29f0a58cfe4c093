r"""Barycenter matching (WMDD): synthetic images whose teacher features sit on the class barycenters.

For every class :math:`k`, the real features :math:`f_e(x_{k,i})` of a trained teacher are
summarised by ``loss.barycenter`` into :math:`m_k` = IPC atoms :math:`b_{kj}` with weights
:math:`w_{kj}`. The synthetic images minimise (WMDD Eq. 15)

.. math::
    \sum_{k,j} \|f_e(\mathcal{A}(\tilde x_{kj})) - b_{kj}\|^2 + \lambda\, \mathcal{L}_{\mathrm{PCBN}}

where :math:`\mathcal{A}` is a random augmentation and :math:`\mathcal{L}_{\mathrm{PCBN}}`
matches, at every BatchNorm layer, the :math:`w`-weighted per-class channel statistics of
the synthetic inputs to the real class statistics. The weights travel with the synthetic set.

Both terms are sums over classes and the teacher runs in eval mode, so classes are
independent: :class:`BarycenterMatching` synthesises one class at a time, with its own random
stream (:func:`~ddmetrics.distributed.class_seed`) and its own copy of the loss. That
is what lets the :class:`~ddmetrics.Distiller` shard classes over ranks and checkpoint them.
"""
from __future__ import annotations

import copy
import time
from typing import Any, Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm

from ..losses.base import DistributionLoss
from .checkpoint import Checkpoint, loop_state, restore_loop
from ..distributed import class_seed
from .pcbn import PCBNLoss, per_class_bn_stats
from ..augment import make_augment
from ._loop import make_optimizer
from .presets import DistillConfig


@torch.no_grad()
def class_features(model: nn.Module, train, indices: Tensor, batch_size: int = 512) -> Tensor:
    """``model.embed`` of the images ``train[indices]``, streamed through a DataLoader
    (only this class's features are ever held, never the whole data set's)."""
    loader = DataLoader(Subset(train, indices.tolist()), batch_size=batch_size, shuffle=False)
    return torch.cat([model.embed(images) for images, _ in loader])


class BarycenterMatching:
    """WMDD's synthesis, one class at a time (see the module docstring).

    Parameters
    ----------
    train : ArrayDataset
        The real training set.
    num_classes, ipc : int
        Classes and synthetic images per class.
    loss : DistributionLoss
        Whose ``barycenter`` gives the targets; copied per class.
    cfg : DistillConfig
        Synthesis settings.
    teacher : nn.Module
        Trained classifier with ``embed`` and ``classifier``; set to eval mode, frozen.
    seed : int
        Seed of every random choice.
    """

    def __init__(self, train, num_classes: int, ipc: int, loss: DistributionLoss, cfg: DistillConfig,
                 teacher: nn.Module, seed: int):
        teacher.eval()
        for prm in teacher.parameters():
            prm.requires_grad_(False)
        self.train, self.num_classes, self.ipc, self.loss, self.cfg = train, num_classes, ipc, loss, cfg
        self.teacher, self.seed = teacher, seed
        self.augment = make_augment(cfg.augment, train.images.shape[1])
        stats = per_class_bn_stats(teacher, train, num_classes) if cfg.reg != "none" else None
        self.reg = PCBNLoss(teacher, stats, mode=cfg.reg) if stats is not None else None

    def targets(self, k: int) -> Tuple[Tensor, Tensor, Tensor, float]:
        """Class ``k``'s barycenter atoms, their weights, the distinct real image nearest to each
        atom (the initialisation) and the seconds spent in ``loss.barycenter``."""
        indices = self.train.class_indices(k)
        feats = class_features(self.teacher, self.train, indices)
        start = time.perf_counter()
        bary = copy.deepcopy(self.loss).barycenter(feats, self.ipc, learn_weights=self.cfg.learn_weights,
                                                   iters=self.cfg.bary_iters, seed=self.seed + k)
        seconds = time.perf_counter() - start
        support = bary.support.to(feats.dtype)
        d2 = torch.cdist(support, feats)
        taken = torch.zeros(len(feats), dtype=torch.bool)
        nearest = []
        for j in range(self.ipc):  # greedy: a distinct real image per atom
            i = int(d2[j].masked_fill(taken, float("inf")).argmin())
            taken[i] = True
            nearest.append(self.train[int(indices[i])][0])
        return support, bary.weights.to(feats.dtype), torch.stack(nearest), seconds

    def run_class(self, k: int, ckpt: Optional[Checkpoint] = None, progress: bool = False) -> Dict[str, Any]:
        """Synthesise class ``k``; returns ``images`` (ipc, C, H, W), ``weights`` (ipc,) and ``info``."""
        cfg = self.cfg
        gen = torch.Generator().manual_seed(class_seed(self.seed, k))
        state = ckpt.progress(k) if ckpt is not None else None
        if state is None:
            targets, weights, nearest, bary_seconds = self.targets(k)
            if cfg.init == "real":
                init = nearest.clone()
            elif cfg.init == "noise":
                init = torch.randn(nearest.shape, generator=gen)
            else:
                raise ValueError(f"init must be 'real' or 'noise', got {cfg.init!r}")
            first, start = None, 0
        else:
            targets, weights, init = state["targets"], state["weights"], state["images"]
            bary_seconds, first, start = state["barycenter_seconds"], state["first"], state["iteration"]
        syn = init.clone().requires_grad_(True)
        labels = torch.full((self.ipc,), k, dtype=torch.long)
        opt, sched = make_optimizer([syn], cfg.optimizer, cfg.lr, cfg.iterations)
        if state is not None:
            restore_loop(state, opt, sched, gen)
        last = first
        for it in tqdm(range(start, cfg.iterations), desc=f"wmdd synthesis, class {k}", disable=not progress,
                       leave=False):
            opt.zero_grad(set_to_none=True)
            view = self.augment(syn, gen) if self.augment is not None else syn
            feats, logits, reg_value = self._forward(view, labels, weights)
            if cfg.feature_loss == "barycenter":
                feature = ((feats - targets) ** 2).sum()
            elif cfg.feature_loss == "ce":
                feature = F.cross_entropy(logits, labels, reduction="sum")
            else:
                raise ValueError(f"feature_loss must be 'barycenter' or 'ce', got {cfg.feature_loss!r}")
            (feature + cfg.reg_weight * reg_value).backward()
            opt.step()
            if sched is not None:
                sched.step()
            last = float(feature.detach())
            first = last if first is None else first
            if ckpt is not None and ckpt.due(it, cfg.iterations):
                ckpt.save_progress(k, {
                    "iteration": it + 1, "images": syn.detach().clone(), "targets": targets, "weights": weights,
                    "barycenter_seconds": bary_seconds, "first": first, **loop_state(opt, sched, gen)})
        info = {"barycenter_seconds": bary_seconds, "feature_loss_first": first, "feature_loss_last": last}
        return {"images": syn.detach(), "weights": weights, "info": info}

    def _forward(self, view: Tensor, labels: Tensor, weights: Tensor):
        """Features, logits and the BN regulariser from one teacher pass."""
        if self.reg is None:
            feats = self.teacher.embed(view)
            return feats, self.teacher.classifier(feats), view.new_zeros(())
        reg_value, feats = self.reg(view, labels, weights, forward=self.teacher.embed)
        return feats, self.teacher.classifier(feats), reg_value
