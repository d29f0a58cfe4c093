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
from torch.utils.data import Subset

from ..augment import make_augment
from ..losses import DistributionLoss
from ..utils import autocast, embed_batched
from ._loop import Strategy
from .pcbn import BoundPCBN, PCBNLoss, per_class_bn_stats
from .presets import DistillConfig


def class_features(model: nn.Module, train, indices: Tensor, batch_size: int = 512) -> Tensor:
    """``model.embed`` of the images ``train[indices]``, streamed through a DataLoader
    (only this class's features are ever held, never the whole data set's)."""
    return embed_batched(model, Subset(train, indices.tolist()), batch_size)


class BarycenterMatching(Strategy):
    """WMDD's synthesis, one class at a time (see the module docstring).

    Parameters
    ----------
    train : ArrayDataset or ImageFolder
        The real training set (features and BN statistics are read in batches).
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

    needs_teacher = True
    summed_info = ("barycenter_seconds", "feature_loss_first", "feature_loss_last")
    description = "wmdd synthesis"

    def __init__(self, train, num_classes: int, ipc: int, loss: DistributionLoss, cfg: DistillConfig,
                 seed: int, teacher: nn.Module, device: torch.device = torch.device("cpu"), amp: bool = False):
        self.device, self.amp = torch.device(device), amp
        teacher.to(self.device).eval()
        for prm in teacher.parameters():
            prm.requires_grad_(False)
        self.train, self.num_classes, self.ipc, self.loss, self.cfg = train, num_classes, ipc, loss, cfg
        self.teacher, self.seed = teacher, seed
        self.augment = make_augment(cfg.augment, train.image_shape[0])
        stats = per_class_bn_stats(teacher, train, num_classes, device=self.device) if cfg.reg != "none" else None
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
        taken = torch.zeros(len(feats), dtype=torch.bool, device=feats.device)
        nearest = []
        for j in range(self.ipc):  # greedy: a distinct real image per atom
            i = int(d2[j].masked_fill(taken, float("inf")).argmin())
            taken[i] = True
            nearest.append(self.train[int(indices[i])][0])
        return support, bary.weights.to(feats.dtype), torch.stack(nearest).to(self.device), seconds

    def start(self, k: int, gen: torch.Generator) -> Tuple[Tensor, Dict[str, Any]]:
        targets, weights, nearest, bary_seconds = self.targets(k)
        if self.cfg.init == "real":
            init = nearest.clone()
        elif self.cfg.init == "noise":
            # drawn on the CPU generator: the same start on every device
            init = torch.randn(nearest.shape, generator=gen, device="cpu").to(self.device)
        else:
            raise ValueError(f"init must be 'real' or 'noise', got {self.cfg.init!r}")
        return init, {"targets": targets, "weights": weights, "barycenter_seconds": bary_seconds}

    def context(self, k: int, fixed: Dict[str, Any]) -> Dict[str, Any]:
        labels = torch.full((self.ipc,), k, dtype=torch.long, device=self.device)
        # the regulariser's checks and targets depend only on the class's labels and weights: once per class
        reg = self.reg.bind(labels, fixed["weights"], fixed["weights"]) if self.reg is not None else None
        return {**fixed, "labels": labels, "reg": reg}

    def step(self, ctx: Dict[str, Any], syn: Tensor, it: int, gen: torch.Generator) -> Tuple[Tensor, Tensor]:
        view = self.augment(syn, gen) if self.augment is not None else syn
        if self.cfg.feature_loss not in ("barycenter", "ce"):
            raise ValueError(f"feature_loss must be 'barycenter' or 'ce', got {self.cfg.feature_loss!r}")
        # the classifier head runs only where its logits are used
        feats, logits, reg_value = self._forward(view, ctx["reg"], logits=self.cfg.feature_loss == "ce")
        if self.cfg.feature_loss == "barycenter":
            # sum of squared distances to the atoms; mse_loss is one node each way, where the
            # square takes extra calls to make its exponent a tensor
            feature = F.mse_loss(feats, ctx["targets"], reduction="sum")
        else:
            feature = F.cross_entropy(logits, ctx["labels"], reduction="sum")
        return torch.add(feature, reg_value, alpha=self.cfg.reg_weight), feature

    def weights(self, ctx: Dict[str, Any]) -> Tensor:
        return ctx["weights"]

    def summary(self, ctx: Dict[str, Any], first: Optional[float], last: Optional[float]) -> Dict[str, Any]:
        return {"barycenter_seconds": ctx["barycenter_seconds"], "feature_loss_first": first,
                "feature_loss_last": last}

    def _forward(self, view: Tensor, reg: Optional[BoundPCBN], logits: bool = True):
        """Features, logits (``None`` unless ``logits``) and the BN regulariser from one teacher
        pass (bf16 autocast with ``amp`` on CUDA; what comes out is float32 for the losses)."""
        with autocast(self.device, self.amp):
            if reg is None:
                feats = self.teacher.embed(view)
                reg_value = view.new_zeros(())
            else:
                reg_value, feats = reg(view, forward=self.teacher.embed)
            out = self.teacher.classifier(feats).float() if logits else None
        return feats.float(), out, reg_value.float()
