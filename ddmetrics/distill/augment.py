r"""Differentiable siamese augmentation (DSA, Zhao & Bilen 2021), without torchvision.

A strategy is a ``_``-joined list of operations among ``color``, ``crop``, ``cutout``,
``flip``, ``scale``, ``rotate``. As in DSA's default ("single" mode), each call picks one
operation at random (``color`` is one of them); ``mode="all"`` applies all in order.
Geometric operations are one affine warp (``affine_grid`` + ``grid_sample``), so every
operation is differentiable in the images.

- :meth:`DiffAugment.pair` is the siamese form used by distribution matching: one set of
  parameters for the whole real batch *and* the whole synthetic batch.
- :meth:`DiffAugment.__call__` draws parameters per image (training students and teachers).

References
----------
.. [1] B. Zhao, H. Bilen. Dataset condensation with differentiable siamese augmentation. ICML 2021.
"""
from __future__ import annotations

import math
from typing import Dict, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

OPS = ("color", "crop", "cutout", "flip", "scale", "rotate")


class DiffAugment:
    """Differentiable augmentation with DSA's default magnitudes.

    Parameters
    ----------
    strategy : str
        Operations joined by ``_`` (default: all six).
    mode : str
        ``"single"`` (one random operation per call, DSA's default) or ``"all"``.
    brightness, saturation, contrast : float
        Colour ranges: add U(-b/2, b/2); scale saturation by U(0, s); contrast by U(1-c, 1+c)
        (DSA: 1.0, 2.0, 0.5).
    crop : float
        Maximal translation as a fraction of the size (0.125).
    cutout : float
        Side of the zeroed square as a fraction of the size (0.5).
    scale : float
        Per-axis scale drawn in U(1/scale, scale) (1.2).
    rotate : float
        Maximal rotation in degrees (15).
    """

    def __init__(self, strategy: str = "color_crop_cutout_flip_scale_rotate", mode: str = "single",
                 brightness: float = 1.0, saturation: float = 2.0, contrast: float = 0.5, crop: float = 0.125,
                 cutout: float = 0.5, scale: float = 1.2, rotate: float = 15.0):
        ops = tuple(strategy.split("_")) if strategy else ()
        bad = [o for o in ops if o not in OPS]
        if bad or not ops:
            raise ValueError(f"strategy must join operations from {OPS} with '_', got {strategy!r}")
        if mode not in ("single", "all"):
            raise ValueError(f"mode must be 'single' or 'all', got {mode!r}")
        self.ops, self.mode = ops, mode
        self.brightness, self.saturation, self.contrast = brightness, saturation, contrast
        self.crop, self.cutout, self.scale, self.rotate = crop, cutout, scale, rotate

    def __repr__(self) -> str:
        return f"DiffAugment(strategy={'_'.join(self.ops)!r}, mode={self.mode!r})"

    # ------------------------------------------------------------------ parameters
    def sample(self, n: int, generator: torch.Generator) -> Dict[str, Tensor]:
        """Random parameters for ``n`` images (``n=1``: one transform shared by a batch)."""
        ops = self.ops if self.mode == "all" else (self.ops[int(torch.randint(len(self.ops), (1,), generator=generator))],)
        u = lambda: torch.rand(n, generator=generator)  # noqa: E731
        p: Dict[str, Tensor] = {}
        for op in ops:
            if op == "color":
                p["brightness"] = (u() - 0.5) * self.brightness
                p["saturation"] = u() * self.saturation
                p["contrast"] = 1 + (u() * 2 - 1) * self.contrast
            elif op == "crop":
                p["shift"] = (torch.rand(n, 2, generator=generator) * 2 - 1) * self.crop
            elif op == "cutout":
                p["cut_center"] = torch.rand(n, 2, generator=generator)
            elif op == "flip":
                p["flip"] = (u() < 0.5).float()
            elif op == "scale":
                lo = 1.0 / self.scale
                p["scale"] = lo + torch.rand(n, 2, generator=generator) * (self.scale - lo)
            elif op == "rotate":
                p["angle"] = (u() * 2 - 1) * math.radians(self.rotate)
        return p

    # ------------------------------------------------------------------ application
    def apply(self, x: Tensor, params: Dict[str, Tensor]) -> Tensor:
        """Apply ``params`` (leading size ``len(x)`` or 1) to ``x`` of shape (N, C, H, W)."""
        if x.dim() != 4:
            raise ValueError(f"x must be (N, C, H, W), got shape {tuple(x.shape)}")
        n = x.shape[0]
        p = {k: v.to(device=x.device, dtype=x.dtype).expand(n, *v.shape[1:]) for k, v in params.items()}
        if "brightness" in p:
            x = x + p["brightness"].view(n, 1, 1, 1)
            if x.shape[1] > 1:
                gray = x.mean(1, keepdim=True)
                x = (x - gray) * p["saturation"].view(n, 1, 1, 1) + gray
            mean = x.mean((1, 2, 3), keepdim=True)
            x = (x - mean) * p["contrast"].view(n, 1, 1, 1) + mean
        if any(k in p for k in ("shift", "flip", "scale", "angle")):
            x = self._warp(x, p)
        if "cut_center" in p:
            x = x * self._cutout_mask(x, p["cut_center"])
        return x

    def _warp(self, x: Tensor, p: Dict[str, Tensor]) -> Tensor:
        n = x.shape[0]
        theta = torch.zeros(n, 2, 3, dtype=x.dtype, device=x.device)
        sx = p["scale"][:, 0] if "scale" in p else x.new_ones(n)
        sy = p["scale"][:, 1] if "scale" in p else x.new_ones(n)
        ang = p["angle"] if "angle" in p else x.new_zeros(n)
        flip = 1 - 2 * p["flip"] if "flip" in p else x.new_ones(n)
        cos, sin = torch.cos(ang), torch.sin(ang)
        theta[:, 0, 0], theta[:, 0, 1] = sx * cos * flip, -sin * sy
        theta[:, 1, 0], theta[:, 1, 1] = sin * sx * flip, cos * sy
        if "shift" in p:  # normalised coordinates span 2 per image side
            theta[:, :, 2] = 2 * p["shift"]
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    def _cutout_mask(self, x: Tensor, center: Tensor) -> Tensor:
        n, _, h, w = x.shape
        half_h, half_w = max(1, int(h * self.cutout / 2)), max(1, int(w * self.cutout / 2))
        cy, cx = (center[:, 0] * h).long(), (center[:, 1] * w).long()
        rows = torch.arange(h, device=x.device).view(1, h, 1)
        cols = torch.arange(w, device=x.device).view(1, 1, w)
        inside = ((rows - cy.view(n, 1, 1)).abs() < half_h) & ((cols - cx.view(n, 1, 1)).abs() < half_w)
        return (~inside).to(x.dtype).unsqueeze(1)

    # ------------------------------------------------------------------ entry points
    def __call__(self, x: Tensor, generator: torch.Generator) -> Tensor:
        """Augment each image with its own random parameters."""
        return self.apply(x, self.sample(x.shape[0], generator))

    def pair(self, real: Tensor, syn: Tensor, generator: torch.Generator) -> Tuple[Tensor, Tensor]:
        """Siamese augmentation: the identical transform on every image of both batches."""
        params = self.sample(1, generator)
        return self.apply(real, params), self.apply(syn, params)
