"""Seeding, device and batching utilities shared by distill, evaluate, synset and diagnose."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import Tensor, nn

__all__ = ["embed_batched", "model_device", "seeded"]


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run a block (e.g. a model's default initialisation) under ``seed`` without touching
    the caller's global RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def model_device(model: nn.Module) -> torch.device:
    """The device of a module's first parameter or buffer (CPU for a module with neither)."""
    for t in list(model.parameters()) + list(model.buffers()):
        return t.device
    return torch.device("cpu")


@torch.no_grad()
def embed_batched(model: nn.Module, images: Tensor, batch_size: int = 512) -> Tensor:
    """``model.embed`` over ``images`` in batches on the model's device, flattened to (n, d),
    without gradient."""
    device = model_device(model)
    out = [model.embed(images[i:i + batch_size].to(device)).flatten(1) for i in range(0, len(images), batch_size)]
    return torch.cat(out) if out else images.new_zeros((0, 0))
