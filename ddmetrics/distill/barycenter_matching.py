r"""Barycenter matching (WMDD): synthetic images whose teacher features sit on the class barycenters.

For every class :math:`k`, the real features :math:`f_e(x_{k,i})` of a trained teacher are
summarised by ``loss.barycenter`` into :math:`m_k` = IPC atoms :math:`b_{kj}` with weights
:math:`w_{kj}`. The synthetic images minimise (WMDD Eq. 15)

.. math::
    \sum_{k,j} \|f_e(\mathcal{A}(\tilde x_{kj})) - b_{kj}\|^2 + \lambda\, \mathcal{L}_{\mathrm{PCBN}}

where :math:`\mathcal{A}` is a random augmentation and :math:`\mathcal{L}_{\mathrm{PCBN}}`
matches, at every BatchNorm layer, the :math:`w`-weighted per-class channel statistics of
the synthetic inputs to the real class statistics. The weights travel with the synthetic set.
"""
from __future__ import annotations

import time
from typing import Dict, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..losses.base import DistributionLoss
from .pcbn import PCBNLoss, per_class_bn_stats
from ._common import embed_all, make_augment, make_optimizer
from .presets import DistillConfig


def class_barycenters(teacher: nn.Module, train, num_classes: int, ipc: int, loss: DistributionLoss,
                      cfg: DistillConfig, seed: int) -> Tuple[Tensor, Tensor, Tensor, float]:
    """Per class: teacher features (streamed class by class), their barycenter, and the real
    image nearest to each atom (the initialisation). Returns targets (K·ipc, d), weights
    (K·ipc,), nearest real images (K·ipc, C, H, W) and the seconds spent in ``loss.barycenter``."""
    targets, weights, nearest = [], [], []
    bary_seconds = 0.0
    for k in range(num_classes):
        images = train.images[train.class_indices(k)]
        feats = embed_all(teacher, images)
        start = time.perf_counter()
        bary = loss.barycenter(feats, ipc, learn_weights=cfg.learn_weights, iters=cfg.bary_iters, seed=seed + k)
        bary_seconds += time.perf_counter() - start
        targets.append(bary.support.to(feats.dtype))
        weights.append(bary.weights.to(feats.dtype))
        # distinct nearest real image per atom (greedy over the atoms)
        d2 = torch.cdist(bary.support.to(feats.dtype), feats)
        taken = torch.zeros(len(feats), dtype=torch.bool)
        for j in range(ipc):
            row = d2[j].masked_fill(taken, float("inf"))
            i = int(row.argmin())
            taken[i] = True
            nearest.append(images[i])
    return torch.cat(targets), torch.cat(weights), torch.stack(nearest), bary_seconds


def barycenter_matching(train, num_classes: int, ipc: int, loss: DistributionLoss, cfg: DistillConfig,
                        teacher: nn.Module, seed: int, progress: bool = True) -> Tuple[Tensor, Tensor, Tensor, Dict]:
    """Run WMDD's synthesis; returns images, labels, weights and timing info."""
    teacher.eval()
    for prm in teacher.parameters():
        prm.requires_grad_(False)
    targets, weights, nearest, bary_seconds = class_barycenters(teacher, train, num_classes, ipc, loss, cfg, seed)
    labels = torch.arange(num_classes).repeat_interleave(ipc)
    gen = torch.Generator().manual_seed(seed)
    if cfg.init == "real":
        init = nearest.clone()
    elif cfg.init == "noise":
        init = torch.randn(nearest.shape, generator=gen)
    else:
        raise ValueError(f"init must be 'real' or 'noise', got {cfg.init!r}")
    syn = init.clone().requires_grad_(True)
    augment = make_augment(cfg.augment, syn.shape[1])
    stats = per_class_bn_stats(teacher, train, num_classes) if cfg.reg != "none" else None
    reg = PCBNLoss(teacher, stats, mode=cfg.reg) if stats is not None else None
    opt, sched = make_optimizer([syn], cfg.optimizer, cfg.lr, cfg.iterations)
    history = []
    for it in tqdm(range(cfg.iterations), desc="wmdd synthesis", disable=not progress, leave=False):
        opt.zero_grad(set_to_none=True)
        view = augment(syn, gen) if augment is not None else syn
        feats, logits, reg_value = _forward(teacher, reg, view, labels, weights)
        if cfg.feature_loss == "barycenter":
            feature = ((feats - targets) ** 2).sum()
        elif cfg.feature_loss == "ce":
            feature = F.cross_entropy(logits, labels, reduction="sum")
        else:
            raise ValueError(f"feature_loss must be 'barycenter' or 'ce', got {cfg.feature_loss!r}")
        total = feature + cfg.reg_weight * reg_value
        total.backward()
        opt.step()
        if sched is not None:
            sched.step()
        history.append(float(feature.detach()))
    info = {"barycenter_seconds": bary_seconds, "feature_loss_first": history[0] if history else None,
            "feature_loss_last": history[-1] if history else None}
    return syn.detach(), labels, weights, info


def _forward(teacher: nn.Module, reg, view: Tensor, labels: Tensor, weights: Tensor):
    """Features, logits and the BN regulariser from one teacher pass."""
    if reg is None:
        feats = teacher.embed(view)
        return feats, teacher.classifier(feats), view.new_zeros(())
    reg_value, feats = reg(view, labels, weights, forward=teacher.embed)
    return feats, teacher.classifier(feats), reg_value
