"""The one synthesis loop both matching strategies run, one class at a time."""
from __future__ import annotations

import math

import torch


def make_optimizer(params, name: str, lr: float, iterations: int):
    """Adam (betas 0.5, 0.9) with a cosine schedule (WMDD), or SGD momentum 0.5 (DM/M3D)."""
    if name == "adam":
        opt = torch.optim.Adam(params, lr=lr, betas=(0.5, 0.9))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 0.5 * (1 + math.cos(math.pi * t / max(iterations, 1))))
        return opt, sched
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.5), None
    raise ValueError(f"optimizer must be 'adam' or 'sgd', got {name!r}")
