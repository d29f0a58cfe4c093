"""Seeding, device and batching utilities shared by distill, evaluate, synset and diagnose."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterable, Iterator, Union

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

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
def embed_batched(model: nn.Module, data: Union[Tensor, Dataset], batch_size: int = 512) -> Tensor:
    """``model.embed`` of ``data`` in batches on the model's device, flattened to (n, d), without
    gradient. ``data`` is an image tensor, or a Dataset of (image, label) pairs read through a
    DataLoader, so only one batch of images (and the features) is held at a time."""
    device = model_device(model)
    if isinstance(data, Tensor):
        batches: Iterable[Tensor] = (data[i:i + batch_size] for i in range(0, len(data), batch_size))
    else:
        batches = (images for images, _ in DataLoader(data, batch_size=batch_size, shuffle=False))
    out = [model.embed(images.to(device)).flatten(1) for images in batches]
    return torch.cat(out) if out else torch.zeros((0, 0), device=device)
