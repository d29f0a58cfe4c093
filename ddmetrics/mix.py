r"""Batch mixing for training: CutMix and Mixup, with explicit generators.

Both pair each image of a batch with a partner from a random permutation of the batch and a
mixing weight :math:`\lambda \sim \mathrm{Beta}(\alpha, \alpha)`:

- **Mixup** (Zhang et al. 2018): :math:`\tilde x_i = \lambda x_i + (1-\lambda) x_{\pi(i)}`;
- **CutMix** (Yun et al. 2019): a box of side :math:`\sqrt{1-\lambda}` times the image's side at
  a uniform centre, clipped to the image, is pasted from the partner; :math:`\lambda` is then
  recomputed as the fraction of the image *not* pasted over, so it is exact for the clipped box.

A hard-label loss on a mixed batch is :math:`\lambda\,\mathrm{CE}(y) + (1-\lambda)\,\mathrm{CE}(y_\pi)`
(:func:`mixed_cross_entropy`); soft labels are the teacher's on the mixed images themselves.
A :class:`BatchMix` mixes a fraction ``prob`` of the batches (chosen per batch), as NCFM's
CutMix with probability 0.5 does.

Every draw (whether to mix, :math:`\lambda`, the permutation, the box centre) comes from the
CPU :class:`torch.Generator` handed in, so a seed gives the same mixes on every device.

References
----------
.. [1] H. Zhang et al. mixup: beyond empirical risk minimization. ICLR 2018.
.. [2] S. Yun et al. CutMix: regularization strategy to train strong classifiers with localizable
   features. ICCV 2019.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["Mixed", "BatchMix", "MIX_FUNCTIONS", "beta_sample", "cutmix_box", "cutmix", "mixup",
           "mixed_cross_entropy"]


@dataclass(frozen=True)
class Mixed:
    """A mixed batch: ``images``, each image's partner index ``partner`` (a permutation of the
    batch, on the images' device) and the weight ``lam`` of the image's own content."""

    images: Tensor
    partner: Tensor
    lam: float


def beta_sample(alpha: float, generator: torch.Generator) -> float:
    r""":math:`\lambda \sim \mathrm{Beta}(\alpha, \alpha)`, from ``generator`` (torch's Beta
    sampler takes no generator: a 63-bit seed is drawn from it for NumPy's)."""
    seed = int(torch.randint(2 ** 63 - 1, (1,), generator=generator, device="cpu"))
    return float(np.random.default_rng(seed).beta(alpha, alpha))


def cutmix_box(lam: float, height: int, width: int, generator: torch.Generator) -> Tuple[int, int, int, int]:
    r"""The CutMix box ``(top, bottom, left, right)`` (rows ``top:bottom``, columns ``left:right``)
    for mixing weight ``lam``.

    With sides :math:`h = \lfloor\sqrt{1-\lambda}\,H\rfloor`, :math:`w = \lfloor\sqrt{1-\lambda}\,W\rfloor`
    and a centre pixel :math:`(r, c)` drawn uniformly, the box is rows
    :math:`r \pm \lfloor h/2\rfloor` and columns :math:`c \pm \lfloor w/2\rfloor`, clipped to the
    image (as the released FKD / timm box: an odd side loses a pixel, and a box at the border is
    cut, so it may be smaller than :math:`h \times w`, or empty)."""
    ratio = math.sqrt(1.0 - lam)
    cut_h, cut_w = int(height * ratio), int(width * ratio)
    centre = torch.randint(height * width, (1,), generator=generator, device="cpu")
    row, col = divmod(int(centre), width)
    top, bottom = min(max(row - cut_h // 2, 0), height), min(max(row + cut_h // 2, 0), height)
    left, right = min(max(col - cut_w // 2, 0), width), min(max(col + cut_w // 2, 0), width)
    return top, bottom, left, right


def _partner(n: int, generator: torch.Generator, device: torch.device) -> Tensor:
    return torch.randperm(n, generator=generator, device="cpu").to(device)


def cutmix(images: Tensor, alpha: float, generator: torch.Generator) -> Mixed:
    """CutMix of a batch ``(N, C, H, W)``: one box for the batch, pasted from each image's
    partner; ``lam`` is the unpasted fraction of the image (the box clipped)."""
    lam = beta_sample(alpha, generator)
    partner = _partner(images.shape[0], generator, images.device)
    h, w = images.shape[-2:]
    top, bottom, left, right = cutmix_box(lam, h, w, generator)
    mixed = images.clone()
    mixed[:, :, top:bottom, left:right] = images[partner, :, top:bottom, left:right]
    return Mixed(mixed, partner, 1.0 - (bottom - top) * (right - left) / (h * w))


def mixup(images: Tensor, alpha: float, generator: torch.Generator) -> Mixed:
    """Mixup of a batch: ``lam * x + (1 - lam) * x[partner]``."""
    lam = beta_sample(alpha, generator)
    partner = _partner(images.shape[0], generator, images.device)
    return Mixed(lam * images + (1.0 - lam) * images[partner], partner, lam)


#: mix name -> ``fn(images, alpha, generator) -> Mixed`` (the names of :data:`ddmetrics.protocols.MIXES` but "none")
MIX_FUNCTIONS: Dict[str, Callable[[Tensor, float, torch.Generator], Mixed]] = {"cutmix": cutmix, "mixup": mixup}


class BatchMix:
    """Mix a fraction ``prob`` of training batches by ``kind`` (``"cutmix"`` or ``"mixup"``) with
    :math:`\\lambda \\sim \\mathrm{Beta}(\\alpha, \\alpha)`.

    Calling it returns the :class:`Mixed` batch, or ``None`` for a batch left as it is (then no
    draw but the coin is made; with ``prob`` 1 not even that).
    """

    def __init__(self, kind: str, alpha: float = 1.0, prob: float = 1.0):
        if kind not in MIX_FUNCTIONS:
            raise ValueError(f"mix must be one of {', '.join(sorted(MIX_FUNCTIONS))} (or 'none'), got {kind!r}")
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not alpha > 0:
            raise ValueError(f"mix_alpha must be a positive number, got {alpha!r}")
        if isinstance(prob, bool) or not isinstance(prob, (int, float)) or not 0 <= prob <= 1:
            raise ValueError(f"mix_prob must be a number in [0, 1], got {prob!r}")
        self.kind, self.alpha, self.prob = kind, float(alpha), float(prob)
        self._fn = MIX_FUNCTIONS[kind]

    def __repr__(self) -> str:
        return f"BatchMix({self.kind!r}, alpha={self.alpha}, prob={self.prob})"

    def __call__(self, images: Tensor, generator: torch.Generator) -> Optional[Mixed]:
        if self.prob < 1 and not float(torch.rand((), generator=generator, device="cpu")) < self.prob:
            return None
        return self._fn(images, self.alpha, generator)


def mixed_cross_entropy(logits: Tensor, labels: Tensor, mixed: Optional[Mixed]) -> Tensor:
    r"""Per-sample cross-entropy of a (possibly) mixed batch:
    :math:`\lambda\,\mathrm{CE}(y_i) + (1-\lambda)\,\mathrm{CE}(y_{\pi(i)})`, plain CE when
    ``mixed`` is ``None``."""
    loss = F.cross_entropy(logits, labels, reduction="none")
    if mixed is None:
        return loss
    return mixed.lam * loss + (1.0 - mixed.lam) * F.cross_entropy(logits, labels[mixed.partner], reduction="none")
