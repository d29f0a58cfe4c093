"""Small pieces both matching strategies share."""
from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Iterator

import torch
from torch import Tensor, nn

from .augment import DiffAugment


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run a block (e.g. a model's default initialisation) under ``seed`` without touching
    the caller's global RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def make_augment(strategy, channels: int):
    """DSA augmentation for ``strategy``; ``"auto"`` drops the flip for 1-channel data (digits)."""
    if strategy is None or strategy == "none":
        return None
    if strategy == "auto":
        strategy = "color_crop_cutout_scale_rotate" if channels == 1 else "color_crop_cutout_flip_scale_rotate"
    return DiffAugment(strategy=strategy)


def make_optimizer(params, name: str, lr: float, iterations: int):
    """Adam (betas 0.5, 0.9) with a cosine schedule (WMDD), or SGD momentum 0.5 (DM/M3D)."""
    if name == "adam":
        opt = torch.optim.Adam(params, lr=lr, betas=(0.5, 0.9))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 0.5 * (1 + math.cos(math.pi * t / max(iterations, 1))))
        return opt, sched
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.5), None
    raise ValueError(f"optimizer must be 'adam' or 'sgd', got {name!r}")


@torch.no_grad()
def embed_all(model: nn.Module, images: Tensor, batch_size: int = 512) -> Tensor:
    """``model.embed`` over ``images`` in batches (eval mode, no gradient)."""
    return torch.cat([model.embed(images[i:i + batch_size]) for i in range(0, len(images), batch_size)])
