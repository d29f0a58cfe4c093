r"""The factor technique (IDC, used by M3D): one stored image holds f×f down-scaled sub-images.

A stored image of size (H, W) is cut into f×f tiles of size (H/f, W/f); for matching and
training each tile is up-sampled (bilinear, differentiable) back to (H, W). The storage
budget stays ``ipc`` images per class while the learner sees ``ipc·f²`` images.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch.nn.functional as F
from torch import Tensor


def _check(images: Tensor, factor: int) -> None:
    if not isinstance(factor, int) or factor < 1:
        raise ValueError(f"factor must be a positive integer, got {factor!r}")
    if images.dim() != 4:
        raise ValueError(f"images must be (N, C, H, W), got shape {tuple(images.shape)}")
    if images.shape[2] % factor or images.shape[3] % factor:
        raise ValueError(f"factor={factor} must divide the image size {tuple(images.shape[2:])}")


def decode(images: Tensor, labels: Tensor, weights: Optional[Tensor] = None,
           factor: int = 2) -> Tuple[Tensor, Tensor, Optional[Tensor]]:
    """(N, C, H, W) stored images → (N·f², C, H, W) up-sampled tiles, labels repeated, weights split by f²."""
    _check(images, factor)
    if factor == 1:
        return images, labels, weights
    n, c, h, w = images.shape
    th, tw = h // factor, w // factor
    tiles = images.reshape(n, c, factor, th, factor, tw).permute(0, 2, 4, 1, 3, 5).reshape(n * factor * factor, c, th, tw)
    up = F.interpolate(tiles, size=(h, w), mode="bilinear", align_corners=False)
    lab = labels.repeat_interleave(factor * factor)
    wts = None if weights is None else weights.repeat_interleave(factor * factor) / (factor * factor)
    return up, lab, wts


def encode(images: Tensor, factor: int = 2) -> Tensor:
    """(N·f², C, H, W) full-size images → (N, C, H, W) stored images of f×f down-scaled tiles
    (consecutive groups of f² images share a stored image)."""
    _check(images, factor)
    if factor == 1:
        return images
    m, c, h, w = images.shape
    if m % (factor * factor):
        raise ValueError(f"the number of images ({m}) must be a multiple of factor² = {factor * factor}")
    small = F.interpolate(images, size=(h // factor, w // factor), mode="bilinear", align_corners=False, antialias=True)
    n = m // (factor * factor)
    return small.reshape(n, factor, factor, c, h // factor, w // factor).permute(0, 3, 1, 4, 2, 5).reshape(n, c, h, w)
