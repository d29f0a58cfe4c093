r"""The factor technique (IDC; used by M3D): one stored image holds f×f down-scaled sub-images.

A stored image :math:`s_i` of size (H, W) is cut into f×f tiles of size (H/f, W/f), which are
up-sampled (bilinear, differentiable) back to (H, W) for matching and training:

.. math::
    s_i \;\to\; \begin{bmatrix} s_i^{1,1} & \cdots & s_i^{1,f} \\ \vdots & \ddots & \vdots \\
    s_i^{f,1} & \cdots & s_i^{f,f} \end{bmatrix} \;\to\; \{\mathrm{up}(s_i^{1,1}), \dots,
    \mathrm{up}(s_i^{f,f})\}

The storage budget stays ``ipc`` images per class while the learner sees ``ipc·f²`` images.
Tiles are numbered row-major: decoded image ``i·f² + r·f + c`` is tile (r, c) of stored
image ``i``. :func:`encode` is the inverse layout: it area-downsamples ``N·f²`` full-size
images and tiles consecutive groups of f² of them into ``N`` stored images.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["decode", "encode"]


def _check(images: Tensor, factor: int) -> None:
    if isinstance(factor, bool) or not isinstance(factor, int):
        raise TypeError(f"factor must be an int, got {type(factor).__name__}")
    if factor < 1:
        raise ValueError(f"factor must be a positive integer, got {factor}")
    if not isinstance(images, Tensor):
        raise TypeError(f"images must be a Tensor, got {type(images).__name__}")
    if images.dim() != 4:
        raise ValueError(f"images must be (N, C, H, W), got shape {tuple(images.shape)}")
    if not torch.is_floating_point(images):
        raise TypeError(f"images must be floating point, got dtype {images.dtype}")
    if images.shape[2] % factor or images.shape[3] % factor:
        raise ValueError(f"factor={factor} must divide the image size (H, W) = {tuple(images.shape[2:])}")


def decode(images: Tensor, labels: Tensor, weights: Optional[Tensor] = None,
           factor: int = 2) -> Tuple[Tensor, Tensor, Optional[Tensor]]:
    r"""Stored images → up-sampled tiles.

    Parameters
    ----------
    images : Tensor
        (N, C, H, W) stored images, H and W divisible by ``factor``.
    labels : Tensor
        (N,) labels; each is repeated for the f² tiles of its image.
    weights : Tensor, optional
        (N,) per-image weights; each tile gets :math:`w_i / f^2`, so sums (per class and in
        total) are preserved.
    factor : int
        Tiles per side f (1: identity, the inputs are returned unchanged).

    Returns
    -------
    images : Tensor
        (N·f², C, H, W), differentiable in the stored images.
    labels : Tensor
        (N·f²,)
    weights : Tensor or None
        (N·f²,) or ``None`` when no weights were given.

    Raises
    ------
    ValueError
        If ``factor`` does not divide H and W, or shapes disagree.
    TypeError
        If ``factor`` is not an int.
    """
    _check(images, factor)
    n = images.shape[0]
    if not isinstance(labels, Tensor) or labels.shape != (n,):
        raise ValueError(f"labels must have shape ({n},), got {getattr(labels, 'shape', type(labels).__name__)}")
    if weights is not None and (not isinstance(weights, Tensor) or weights.shape != (n,)):
        raise ValueError(f"weights must have shape ({n},), got {getattr(weights, 'shape', type(weights).__name__)}")
    if factor == 1:
        return images, labels, weights
    _, c, h, w = images.shape
    f2 = factor * factor
    th, tw = h // factor, w // factor
    tiles = (images.reshape(n, c, factor, th, factor, tw)
             .permute(0, 2, 4, 1, 3, 5)
             .reshape(n * f2, c, th, tw))
    up = F.interpolate(tiles, size=(h, w), mode="bilinear", align_corners=False)
    lab = labels.repeat_interleave(f2)
    wts = None if weights is None else weights.repeat_interleave(f2) / f2
    return up, lab, wts


def encode(images: Tensor, factor: int = 2) -> Tensor:
    """Full-size images → stored images holding f×f down-scaled tiles (inverse layout of :func:`decode`).

    Parameters
    ----------
    images : Tensor
        (N·f², C, H, W); consecutive groups of f² images share a stored image, row-major.
    factor : int
        Tiles per side f (1: identity).

    Returns
    -------
    Tensor
        (N, C, H, W); each tile is the area (f×f average) down-sampling of one input image.

    Raises
    ------
    ValueError
        If ``factor`` does not divide H and W or the number of images is not a multiple of f².
    """
    _check(images, factor)
    if factor == 1:
        return images
    m, c, h, w = images.shape
    f2 = factor * factor
    if m % f2:
        raise ValueError(f"the number of images ({m}) must be a multiple of factor**2 = {f2}")
    small = F.avg_pool2d(images, kernel_size=factor)  # (m, C, H/f, W/f)
    n = m // f2
    return (small.reshape(n, factor, factor, c, h // factor, w // factor)
            .permute(0, 3, 1, 4, 2, 5)
            .reshape(n, c, h, w))
