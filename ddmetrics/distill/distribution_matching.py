r"""Distribution matching (DM, M3D, KR-dual — and any other backend).

Every ``iters_per_model`` steps a freshly initialised embedding network :math:`\psi` is
drawn; the real batch and the synthetic images of each class go through the *same*
differentiable augmentation (siamese DSA), and the synthetic images minimise

.. math::
    \sum_k \mathcal{L}\big(\psi(\mathcal{A}_\omega(X_k)),\ \psi(\mathcal{A}_\omega(\tilde X_k))\big)

with :math:`\mathcal{L}` the chosen :class:`~ddmetrics.losses.DistributionLoss` (linear-kernel
MMD for DM, Gaussian MMD for M3D, the KR dual for KR-dual). With M3D's ``factor`` l, each
stored image holds l×l down-scaled sub-images that are up-sampled before matching.

The objective is a sum of per-class terms with per-class parameters, so
:class:`DistributionMatching` runs one class at a time: its own random stream (real batches,
augmentation parameters — drawn per class, as in DM's reference code), its own copy of the
loss (a critic, a direction generator), its own optimiser. The embedder of step ``t`` depends
only on ``(seed, t)`` and is the same for every class.
"""
from __future__ import annotations

import copy
from typing import Any, Dict, Optional

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..losses.base import DistributionLoss
from ..models import get_model
from .. import factor as factor_mod
from .checkpoint import Checkpoint, loop_state, restore_loop
from ..distributed import class_seed
from ..augment import make_augment
from ..utils import seeded
from ._loop import make_optimizer
from .presets import DistillConfig


def initial_class_images(train, k: int, ipc: int, factor: int, init: str, gen: torch.Generator) -> Tensor:
    """``ipc`` stored images of class ``k``: random real images of the class (``factor``² of them
    tiled into each stored image when ``factor`` > 1) or Gaussian noise."""
    c, h, w = train.images.shape[1:]
    if init == "noise":
        return torch.randn(ipc, c, h, w, generator=gen)
    if init != "real":
        raise ValueError(f"init must be 'real' or 'noise', got {init!r}")
    per = ipc * factor * factor
    idx = train.class_indices(k)
    pick = idx[torch.randperm(len(idx), generator=gen)[:per]]
    if len(pick) < per:  # small classes: repeat to fill the sub-images
        pick = pick[torch.arange(per) % len(pick)]
    images = train.images[pick]
    return factor_mod.encode(images, factor) if factor > 1 else images


def embedder_at(cfg: DistillConfig, seed: int, iteration: int, channels: int, num_classes: int, size: int) -> nn.Module:
    """The frozen random embedder used at ``iteration`` (redrawn every ``iters_per_model`` steps)."""
    drawn_at = iteration - iteration % cfg.iters_per_model
    with seeded(seed * 1_000_003 + drawn_at):
        net = get_model(cfg.embedder, channels, num_classes, size)
    net.train()
    for prm in net.parameters():
        prm.requires_grad_(False)
    return net


class DistributionMatching:
    """Distribution matching, one class at a time (see the module docstring).

    Parameters
    ----------
    train : ArrayDataset
        The real training set.
    num_classes, ipc : int
        Classes and stored synthetic images per class.
    loss : DistributionLoss
        The matching loss; copied per class.
    cfg : DistillConfig
        Synthesis settings.
    seed : int
        Seed of every random choice.
    """

    def __init__(self, train, num_classes: int, ipc: int, loss: DistributionLoss, cfg: DistillConfig, seed: int):
        self.train, self.num_classes, self.ipc, self.loss, self.cfg, self.seed = train, num_classes, ipc, loss, cfg, seed
        self.factor = cfg.resolved_factor(train.images.shape[-1])
        self.augment = make_augment(cfg.augment, train.images.shape[1])

    def run_class(self, k: int, ckpt: Optional[Checkpoint] = None, progress: bool = False) -> Dict[str, Any]:
        """Synthesise class ``k``; returns stored ``images``, ``weights`` (uniform) and ``info``."""
        cfg, train = self.cfg, self.train
        channels, size = train.images.shape[1], train.images.shape[-1]
        gen = torch.Generator().manual_seed(class_seed(self.seed, k))
        loss = copy.deepcopy(self.loss)
        state = ckpt.progress(k) if ckpt is not None else None
        if state is None:
            syn, first, start = initial_class_images(train, k, self.ipc, self.factor, cfg.init, gen), None, 0
        else:
            syn, first, start = state["images"], state["first"], state["iteration"]
        syn = syn.clone().requires_grad_(True)
        labels = torch.full((self.ipc,), k, dtype=torch.long)
        opt, sched = make_optimizer([syn], cfg.optimizer, cfg.lr, cfg.iterations)
        if state is not None:
            restore_loop(state, opt, sched, gen)
            loss.load_state_dict(state["loss"])
        indices = train.class_indices(k)
        take = min(cfg.batch_real, len(indices))
        embedder, last = None, first
        for it in tqdm(range(start, cfg.iterations), desc=f"{loss.name or 'loss'} matching, class {k}",
                       disable=not progress, leave=False):
            if embedder is None or it % cfg.iters_per_model == 0:
                embedder = embedder_at(cfg, self.seed, it, channels, self.num_classes, size)
            real = train.images[indices[torch.randperm(len(indices), generator=gen)[:take]]]
            imgs = factor_mod.decode(syn, labels, None, self.factor)[0] if self.factor > 1 else syn
            if self.augment is not None:
                real, imgs = self.augment.pair(real, imgs, gen)
            value = loss(embedder.embed(real), embedder.embed(imgs))
            opt.zero_grad(set_to_none=True)
            value.backward()
            opt.step()
            if sched is not None:
                sched.step()
            last = float(value.detach())
            first = last if first is None else first
            if ckpt is not None and ckpt.due(it, cfg.iterations):
                ckpt.save_progress(k, {
                    "iteration": it + 1, "images": syn.detach().clone(), "first": first, **loop_state(opt, sched, gen),
                    "loss": loss.state_dict()})
        weights = torch.full((self.ipc,), 1.0 / self.ipc)
        return {"images": syn.detach(), "weights": weights,
                "info": {"matching_loss_first": first, "matching_loss_last": last}}
