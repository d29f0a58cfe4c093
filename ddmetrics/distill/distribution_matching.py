r"""Distribution matching (DM, M3D, KR-dual — and any other backend).

Every ``iters_per_model`` steps a freshly initialised embedding network :math:`\psi` is
drawn; the real batch and the synthetic images of each class go through the *same*
differentiable augmentation (siamese DSA), and the synthetic images minimise

.. math::
    \sum_k \mathcal{L}\big(\psi(\mathcal{A}_\omega(X_k)),\ \psi(\mathcal{A}_\omega(\tilde X_k))\big)

with :math:`\mathcal{L}` the chosen :class:`~ddmetrics.losses.DistributionLoss` (linear-kernel
MMD for DM, Gaussian MMD for M3D, the KR dual for KR-dual). With M3D's ``factor`` l, each
stored image holds l×l down-scaled sub-images that are up-sampled before matching.
"""
from __future__ import annotations

import copy
from typing import Dict, Tuple

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..losses.base import DistributionLoss
from ..models import get_model
from . import factor as factor_mod
from ._common import make_augment, make_optimizer, seeded
from .presets import DistillConfig


def initial_images(train, num_classes: int, ipc: int, factor: int, init: str, gen: torch.Generator) -> Tensor:
    """``ipc`` stored images per class: random real images (``factor``² of them tiled into each
    stored image when ``factor`` > 1) or Gaussian noise."""
    c, h, w = train.images.shape[1:]
    if init == "noise":
        return torch.randn(num_classes * ipc, c, h, w, generator=gen)
    if init != "real":
        raise ValueError(f"init must be 'real' or 'noise', got {init!r}")
    per = ipc * factor * factor
    chosen = []
    for k in range(num_classes):
        idx = train.class_indices(k)
        pick = idx[torch.randperm(len(idx), generator=gen)[:per]]
        if len(pick) < per:  # small classes: repeat to fill the sub-images
            pick = pick[torch.arange(per) % len(pick)]
        chosen.append(train.images[pick])
    images = torch.cat(chosen)
    return factor_mod.encode(images, factor) if factor > 1 else images


def distribution_matching(train, num_classes: int, ipc: int, loss: DistributionLoss, cfg: DistillConfig,
                          seed: int, progress: bool = True) -> Tuple[Tensor, Tensor, Tensor, Dict]:
    """Run distribution matching; returns stored images, labels, per-image weights and info."""
    gen = torch.Generator().manual_seed(seed)
    factor = cfg.resolved_factor(train.images.shape[-1])
    syn = initial_images(train, num_classes, ipc, factor, cfg.init, gen).requires_grad_(True)
    labels = torch.arange(num_classes).repeat_interleave(ipc)
    channels, size = syn.shape[1], syn.shape[-1]
    augment = make_augment(cfg.augment, channels)
    # stateful losses (a critic, a direction generator) get one copy per class
    per_class = [copy.deepcopy(loss) for _ in range(num_classes)]
    by_class = [train.class_indices(k) for k in range(num_classes)]
    opt, sched = make_optimizer([syn], cfg.optimizer, cfg.lr, cfg.iterations)
    history = []
    embedder = None
    for it in tqdm(range(cfg.iterations), desc=f"{loss.name or 'loss'} matching", disable=not progress, leave=False):
        if it % cfg.iters_per_model == 0:
            with seeded(seed * 1_000_003 + it):
                embedder = get_model(cfg.embedder, channels, num_classes, size)
            embedder.train()
            for prm in embedder.parameters():
                prm.requires_grad_(False)
        real = []
        for idx in by_class:
            take = min(cfg.batch_real, len(idx))
            real.append(train.images[idx[torch.randperm(len(idx), generator=gen)[:take]]])
        sizes = [len(r) for r in real]
        real = torch.cat(real)
        imgs, lab, _ = factor_mod.decode(syn, labels, None, factor) if factor > 1 else (syn, labels, None)
        if augment is not None:
            real, imgs = augment.pair(real, imgs, gen)
        f_real = embedder.embed(real).split(sizes)
        f_syn = embedder.embed(imgs)
        total = sum(per_class[k](f_real[k], f_syn[lab == k]) for k in range(num_classes))
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()
        if sched is not None:
            sched.step()
        history.append(float(total.detach()))
    weights = torch.full((len(labels),), 1.0 / ipc)
    info = {"factor": factor, "matching_loss_first": history[0] if history else None, "matching_loss_last": history[-1] if history else None}
    return syn.detach(), labels, weights, info
