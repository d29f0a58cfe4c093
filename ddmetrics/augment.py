r"""Differentiable siamese augmentation (DSA, Zhao & Bilen 2021), without torchvision.

A *strategy* is a ``_``-joined list of operations among ``color``, ``crop``, ``cutout``,
``flip``, ``scale`` and ``rotate``. As in DSA's default ("single" mode) each call picks one
of the listed operations at random; ``mode="all"`` applies every listed operation, in the
order colour → flip → affine warp (scale, rotate, crop-translate) → cutout.

Every operation is differentiable in the images:

- colour is arithmetic: brightness :math:`x + b`, saturation
  :math:`\bar x_{c} + s\,(x - \bar x_{c})` (channel mean :math:`\bar x_{c}`; a no-op for one
  channel) and contrast :math:`\bar x + r\,(x - \bar x)` (image mean :math:`\bar x`);
- flip is an exact mirror (``torch.where`` between the image and ``torch.flip``);
- scale, rotation and crop-translation are one affine warp
  (:func:`torch.nn.functional.affine_grid` + :func:`~torch.nn.functional.grid_sample`,
  bilinear, zero padding); the translation is a whole number of pixels, so a pure
  translation copies pixels exactly, as DSA's crop does;
- cutout multiplies by a 0/1 mask (a square of side ``cutout`` × the image size).

Two entry points:

- :meth:`DiffAugment.pair` is the siamese form used by distribution matching: **one** set
  of parameters for every image of the real batch *and* of the synthetic batch (DSA's
  "batch mode"), so both distributions see the identical transform.
- :meth:`DiffAugment.__call__` draws parameters per image (training students/teachers).

All randomness comes from an explicit :class:`torch.Generator`.

References
----------
.. [1] B. Zhao, H. Bilen. Dataset condensation with differentiable siamese augmentation. ICML 2021.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Dict, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["OPS", "NAMED", "AugParams", "DiffAugment", "is_augment_spec", "make_augment"]

#: the operations a strategy may list
OPS: Tuple[str, ...] = ("color", "crop", "cutout", "flip", "scale", "rotate")

_Range = Tuple[float, float]


@dataclass(frozen=True)
class AugParams:
    """Sampled augmentation parameters for ``n`` images (``n == 1``: shared by a whole batch).

    Every field is ``None`` when its operation is not applied, else a CPU or device tensor
    whose leading dimension is ``n``.

    Attributes
    ----------
    size : tuple of int
        ``(H, W)`` the parameters were drawn for (pixel shifts and cutout boxes depend on it).
    brightness : Tensor, shape (n,)
        Added to every pixel.
    saturation : Tensor, shape (n,)
        Factor on the deviation from the per-pixel channel mean.
    contrast : Tensor, shape (n,)
        Factor on the deviation from the image mean.
    flip : Tensor of bool, shape (n,)
        Mirror left-right where true.
    scale : Tensor, shape (n, 2)
        Sampling-grid scale along (x, y); values > 1 shrink the content.
    angle : Tensor, shape (n,)
        Rotation in radians.
    shift : Tensor of int64, shape (n, 2)
        Translation in whole pixels along (x, y).
    cutout : Tensor of int64, shape (n, 2)
        Centre (row, column) of the zeroed square, in pixels.
    """

    size: Tuple[int, int]
    brightness: Optional[Tensor] = None
    saturation: Optional[Tensor] = None
    contrast: Optional[Tensor] = None
    flip: Optional[Tensor] = None
    scale: Optional[Tensor] = None
    angle: Optional[Tensor] = None
    shift: Optional[Tensor] = None
    cutout: Optional[Tensor] = None

    def tensors(self):
        """``(name, tensor)`` for every operation that is set."""
        return [(f.name, getattr(self, f.name)) for f in fields(self)
                if f.name != "size" and getattr(self, f.name) is not None]

    @property
    def n(self) -> int:
        """Leading size of the parameter tensors (1 for a shared transform)."""
        ts = self.tensors()
        return int(ts[0][1].shape[0]) if ts else 1


def _as_range(value: Union[float, Sequence[float]], name: str, centre: float) -> _Range:
    """``(lo, hi)`` from a pair, or ``centre ± value`` from a scalar."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        lo, hi = centre - float(value), centre + float(value)
    elif isinstance(value, Sequence) and len(value) == 2:
        lo, hi = float(value[0]), float(value[1])
    else:
        raise TypeError(f"{name} must be a float or a (low, high) pair, got {value!r}")
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo > hi:
        raise ValueError(f"{name} must be a finite range with low <= high, got ({lo}, {hi})")
    return lo, hi


def _nonneg(value: float, name: str, upper: Optional[float] = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a float, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value) or value < 0 or (upper is not None and value > upper):
        bound = f" and <= {upper}" if upper is not None else ""
        raise ValueError(f"{name} must be finite, >= 0{bound}, got {value}")
    return value


def _operand(v: Tensor, x: Tensor) -> Tensor:
    """A parameter tensor on ``x``'s device, a floating one in ``x``'s dtype (no call when it is)."""
    if v.device != x.device:
        v = v.to(x.device)
    if v.is_floating_point() and v.dtype != x.dtype:
        v = v.to(x.dtype)
    return v


class DiffAugment:
    """Differentiable (siamese) augmentation with DSA-like magnitudes.

    Parameters
    ----------
    strategy : str
        Operations joined by ``_``; default all six.
    mode : {"single", "all"}
        ``"single"`` (DSA's default): each call applies **one** operation of the strategy,
        drawn at random (for ``__call__`` the same operation for the whole batch, with
        per-image parameters). ``"all"``: every operation of the strategy.
    brightness : float
        Brightness offset drawn in U(-brightness, brightness) (0.5, as DSA's
        ``(U(0,1) - 0.5)·1.0``).
    saturation : float or (float, float)
        Saturation factor range; a scalar ``s`` means ``(1 - s, 1 + s)``. Default (0.5, 1.5)
        (DSA draws U(0, 2); the narrower range keeps digits legible).
    contrast : float or (float, float)
        Contrast factor range, default (0.5, 1.5) (DSA's).
    crop : float
        Maximal translation as a fraction of the image size, default 0.125 (DSA's 1/8),
        rounded to whole pixels.
    cutout : float
        Side of the zeroed square as a fraction of the image size, default 0.5 (DSA's);
        the centre is uniform over the image, so the square may be clipped at the border.
    flip : float
        Probability of a left-right mirror, default 0.5.
    scale : float or (float, float)
        Per-axis scale range of the sampling grid, default (0.8, 1.2).
    rotate : float
        Maximal rotation in degrees, default 15.

    Raises
    ------
    ValueError
        On an unknown operation, an empty strategy, an unknown mode or an invalid range.
    TypeError
        When a magnitude is not a number.

    Examples
    --------
    >>> aug = DiffAugment()
    >>> g = torch.Generator().manual_seed(0)
    >>> real_aug, syn_aug = aug.pair(torch.randn(8, 3, 32, 32), torch.randn(2, 3, 32, 32), g)
    >>> tuple(syn_aug.shape)
    (2, 3, 32, 32)
    """

    def __init__(self, strategy: str = "color_crop_cutout_flip_scale_rotate", mode: str = "single",
                 brightness: float = 0.5, saturation: Union[float, Sequence[float]] = (0.5, 1.5),
                 contrast: Union[float, Sequence[float]] = (0.5, 1.5), crop: float = 0.125,
                 cutout: float = 0.5, flip: float = 0.5, scale: Union[float, Sequence[float]] = (0.8, 1.2),
                 rotate: float = 15.0) -> None:
        if not isinstance(strategy, str):
            raise TypeError(f"strategy must be a str, got {type(strategy).__name__}")
        ops = tuple(o for o in strategy.split("_") if o)
        bad = [o for o in ops if o not in OPS]
        if bad or not ops:
            raise ValueError(f"strategy must join operations from {OPS} with '_', got {strategy!r}")
        if mode not in ("single", "all"):
            raise ValueError(f"mode must be 'single' or 'all', got {mode!r}")
        self.ops: Tuple[str, ...] = tuple(dict.fromkeys(ops))  # unique, order kept
        self.mode = mode
        self.brightness = _nonneg(brightness, "brightness")
        self.saturation = _as_range(saturation, "saturation", 1.0)
        self.contrast = _as_range(contrast, "contrast", 1.0)
        self.scale = _as_range(scale, "scale", 1.0)
        if self.saturation[0] < 0 or self.contrast[0] < 0 or self.scale[0] <= 0:
            raise ValueError("saturation and contrast must be >= 0 and scale > 0")
        self.crop = _nonneg(crop, "crop", 1.0)
        self.cutout = _nonneg(cutout, "cutout", 1.0)
        self.flip = _nonneg(flip, "flip", 1.0)
        self.rotate = _nonneg(rotate, "rotate")
        #: constants of an image size (the warp's base grid, ...), made on first use: see _cached
        self._constants: dict = {}

    def __repr__(self) -> str:
        return f"DiffAugment(strategy={'_'.join(self.ops)!r}, mode={self.mode!r})"

    # ------------------------------------------------------------------ parameters
    def sample(self, n: int, shape: Sequence[int], generator: torch.Generator,
               device: Optional[Union[str, torch.device]] = None) -> AugParams:
        """Draw parameters for ``n`` images of spatial size ``shape[-2:]``.

        Parameters
        ----------
        n : int
            Number of parameter sets; 1 gives one transform shared by a whole batch.
        shape : sequence of int
            The image shape, ``(..., H, W)`` (e.g. ``x.shape``).
        generator : torch.Generator
            Source of all randomness (drawn on the generator's device).
        device : str or torch.device, optional
            Where the returned tensors live (default: the generator's device).

        Returns
        -------
        AugParams
        """
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive int, got {n!r}")
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        if len(shape) < 2 or int(shape[-1]) < 1 or int(shape[-2]) < 1:
            raise ValueError(f"shape must end with (H, W), got {tuple(shape)!r}")
        h, w = int(shape[-2]), int(shape[-1])
        gdev = generator.device

        def u(*size: int) -> Tensor:
            return torch.rand(n, *size, generator=generator, device=gdev)

        def between(lo: float, hi: float, *size: int) -> Tensor:
            return lo + (hi - lo) * u(*size)

        if self.mode == "all":
            ops = self.ops
        else:
            ops = (self.ops[int(torch.randint(len(self.ops), (1,), generator=generator, device=gdev))],)
        p = {}
        for op in ops:
            if op == "color":
                p["brightness"] = between(-self.brightness, self.brightness)
                p["saturation"] = between(*self.saturation)
                p["contrast"] = between(*self.contrast)
            elif op == "flip":
                p["flip"] = u() < self.flip
            elif op == "scale":
                p["scale"] = between(*self.scale, 2)
            elif op == "rotate":
                p["angle"] = between(-self.rotate, self.rotate) * (math.pi / 180.0)
            elif op == "crop":
                frac = between(-self.crop, self.crop, 2)
                p["shift"] = torch.round(frac * frac.new_tensor([w, h])).long()
            elif op == "cutout":
                size = torch.tensor([h, w], device=gdev)
                p["cutout"] = torch.minimum(torch.floor(u(2) * size).long(), size - 1)
        if device is not None:
            p = {k: v.to(device) for k, v in p.items()}
        return AugParams(size=(h, w), **p)

    # ------------------------------------------------------------------ application
    def apply(self, x: Tensor, params: Union[AugParams, Mapping[str, Tensor]]) -> Tensor:
        """Apply ``params`` to a batch ``x`` of shape (N, C, H, W).

        Parameters
        ----------
        x : Tensor
            Images; gradients flow back to them.
        params : AugParams or mapping
            From :meth:`sample` with ``n`` equal to 1 (shared) or ``N``; a mapping of
            :class:`AugParams` fields is accepted (its ``size`` defaults to ``x``'s).

        Returns
        -------
        Tensor
            Augmented images, same shape, dtype and device as ``x``.
        """
        if not isinstance(x, Tensor):
            raise TypeError(f"x must be a Tensor, got {type(x).__name__}")
        if x.dim() != 4:
            raise ValueError(f"x must be (N, C, H, W), got shape {tuple(x.shape)}")
        if isinstance(params, Mapping):
            params = AugParams(size=tuple(params.get("size", x.shape[-2:])),
                               **{k: v for k, v in params.items() if k != "size"})
        if not isinstance(params, AugParams):
            raise TypeError(f"params must be AugParams or a mapping, got {type(params).__name__}")
        if tuple(params.size) != tuple(x.shape[-2:]):
            raise ValueError(f"x has spatial size {tuple(x.shape[-2:])} but params were drawn for {params.size}")
        n = x.shape[0]
        if params.n not in (1, n):
            raise ValueError(f"params hold {params.n} parameter sets; x has {n} images (need 1 or {n})")
        return self._transform(x, self._operands(x, params))

    def _operands(self, x: Tensor, params: AugParams) -> Dict[str, Tensor]:
        """``params`` as operands of ``x``'s dtype and device, with what depends on the image size
        only, not on the images, built: the warp's sampling grid ``(k, H, W, 2)`` and the cutout
        mask ``(k, 1, H, W)``. :meth:`pair` builds them once for both of its batches."""
        # (1 or n, ...) operands broadcast against x, no copy or call where none is needed: on
        # small images the augmentation's time is mostly its number of operations
        p = {k: _operand(v, x) for k, v in params.tensors()}
        if "scale" in p or "angle" in p or "shift" in p:
            p["grid"] = self._grid(x, p)
        if "cutout" in p:
            p["mask"] = self._cutout_mask(x, p["cutout"])
        return p

    def _transform(self, x: Tensor, p: Dict[str, Tensor]) -> Tensor:
        """``x`` (N, C, H, W) transformed by the operands ``p`` of :meth:`_operands` (for 1 or N images)."""
        n, _, h, w = x.shape
        k = next(iter(p.values())).shape[0] if p else 1
        if "brightness" in p:
            x = x + p["brightness"].view(k, 1, 1, 1)
        if "saturation" in p and x.shape[1] > 1:
            gray = x.mean(1, keepdim=True)
            x = gray + (x - gray) * p["saturation"].view(k, 1, 1, 1)
        if "contrast" in p:
            mean = x.mean((1, 2, 3), keepdim=True)
            x = mean + (x - mean) * p["contrast"].view(k, 1, 1, 1)
        if "flip" in p:
            x = torch.where(p["flip"].view(k, 1, 1, 1).bool(), x.flip(3), x)
        if "grid" in p:
            x = F.grid_sample(x, p["grid"].expand(n, h, w, 2), mode="bilinear", padding_mode="zeros",
                              align_corners=False)
        if "mask" in p:
            x = x * p["mask"]
        return x

    def _theta(self, x: Tensor, p) -> Tensor:
        r"""The warp's affine matrices ``(k, 2, 3)`` in normalised coordinates (``k``: 1 or n).

        Scale :math:`(s_x, s_y)` then rotation :math:`\phi` in pixel geometry (aspect
        :math:`a = W/H`), then the translation of whole pixels :math:`(t_x, t_y)`:

        .. math::
            \theta = \begin{pmatrix} s_x\cos\phi & -s_y\sin\phi / a & -2t_x/W \\
                                      s_x a\sin\phi & s_y\cos\phi & -2t_y/H \end{pmatrix}
        """
        h, w = x.shape[-2:]
        k = next(iter(p.values())).shape[0]
        if "angle" in p:
            cos, sin = torch.cos(p["angle"]), torch.sin(p["angle"])
            entries = [cos, -sin, sin, cos]
            if "scale" in p:
                sx, sy = p["scale"].unbind(1)
                entries = [entries[0] * sx, entries[1] * sy, entries[2] * sx, entries[3] * sy]
            entries[1], entries[2] = entries[1] / (w / h), entries[2] * (w / h)
            linear = torch.stack(entries, 1).view(k, 2, 2)
        elif "scale" in p:
            linear = torch.diag_embed(p["scale"])
        else:
            linear = torch.eye(2, dtype=x.dtype, device=x.device).expand(k, 2, 2)
        if "shift" in p:  # whole pixels -> normalised units (2 per image side)
            per_pixel = self._cached(x, "per_pixel", lambda: x.new_tensor([-2.0 / w, -2.0 / h]))
            move = p["shift"].to(x.dtype) * per_pixel
        else:
            move = x.new_zeros(k, 2)
        return torch.cat([linear, move.unsqueeze(2)], 2)

    def _grid(self, x: Tensor, p) -> Tensor:
        r"""The sampling grid ``(k, H, W, 2)`` of one bilinear resampling for scale ∘ rotation (in
        pixel geometry) + translation, for images of ``x``'s size.

        The grid is :func:`torch.nn.functional.affine_grid`'s, :math:`(x\theta_{j0} +
        y\theta_{j1}) + \theta_{j2}` at every pixel centre :math:`(x, y)` of its base grid, here
        from the ``W`` column and ``H`` row coordinates (kept per image size): two additions at
        the grid's size instead of a batched matrix product with rows of three, which is slow on
        the CPU. The order of operations is the product's, so the grids agree to float rounding
        (bit for bit with ATen's CPU kernels; ``tests/test_augment.py``).
        """
        h, w = x.shape[-2:]
        theta = self._theta(x, p)
        k = theta.shape[0]
        # affine_grid's base grid: pixel centres in [-1, 1], x along W, y along H
        xs, ys = self._cached(x, "centres", lambda: tuple(F.affine_grid(
            torch.eye(2, 3, dtype=x.dtype, device=x.device).unsqueeze(0), [1, 1, h, w],
            align_corners=False)[0].unbind(2)))
        # (k, 2, H, W), rows of W contiguous (a last dimension of 2 makes slow broadcast loops)
        grid = (xs[0].view(1, 1, 1, w) * theta[:, :, 0].view(k, 2, 1, 1)
                + ys[:, 0].view(1, 1, h, 1) * theta[:, :, 1].view(k, 2, 1, 1)).add_(theta[:, :, 2].view(k, 2, 1, 1))
        return grid.permute(0, 2, 3, 1)

    def _cached(self, x: Tensor, name: str, make):
        """A constant of ``x``'s image size, dtype and device, made once (``make()``) and kept."""
        key = (name, tuple(x.shape[-2:]), x.dtype, x.device)
        value = self._constants.get(key)
        if value is None:
            value = self._constants[key] = make()
        return value

    def _cutout_mask(self, x: Tensor, centre: Tensor) -> Tensor:
        """(k, 1, H, W) mask, zero on a square of side ``cutout``·size around ``centre``."""
        h, w = x.shape[-2:]
        side_h, side_w = int(round(h * self.cutout)), int(round(w * self.cutout))
        start = centre - centre.new_tensor([side_h // 2, side_w // 2])
        rows = torch.arange(h, device=x.device) - start[:, :1]  # (k, H): rows from the square's top
        cols = torch.arange(w, device=x.device) - start[:, 1:]
        inside = (rows >= 0) & (rows < side_h)
        inside = inside.unsqueeze(2) & ((cols >= 0) & (cols < side_w)).unsqueeze(1)
        return (~inside).to(x.dtype).unsqueeze(1)

    # ------------------------------------------------------------------ entry points
    def __call__(self, x: Tensor, generator: torch.Generator) -> Tensor:
        """Augment each image of ``x`` (N, C, H, W) with its own random parameters.

        Parameters
        ----------
        x : Tensor
            Images.
        generator : torch.Generator
            Source of randomness.

        Returns
        -------
        Tensor
            Augmented images, differentiable in ``x``.
        """
        if not isinstance(x, Tensor) or x.dim() != 4:
            raise ValueError(f"x must be a (N, C, H, W) tensor, got {getattr(x, 'shape', type(x).__name__)}")
        return self.apply(x, self.sample(x.shape[0], x.shape, generator, x.device))

    def pair(self, real: Tensor, syn: Tensor, generator: torch.Generator) -> Tuple[Tensor, Tensor]:
        """Siamese augmentation: the identical transform on every image of both batches.

        One parameter set is drawn (DSA's batch mode) and applied to ``real`` and ``syn``.

        Parameters
        ----------
        real, syn : Tensor
            (N, C, H, W) and (M, C, H, W) batches with the same C, H, W.
        generator : torch.Generator
            Source of randomness.

        Returns
        -------
        (Tensor, Tensor)
            The augmented real and synthetic batches.
        """
        for name, t in (("real", real), ("syn", syn)):
            if not isinstance(t, Tensor) or t.dim() != 4:
                raise ValueError(f"{name} must be a (N, C, H, W) tensor, got {getattr(t, 'shape', type(t).__name__)}")
        if real.shape[1:] != syn.shape[1:]:
            raise ValueError(f"real and syn must share (C, H, W): {tuple(real.shape[1:])} vs {tuple(syn.shape[1:])}")
        params = self.sample(1, real.shape, generator, real.device)
        if syn.dtype != real.dtype or syn.device != real.device:
            return self.apply(real, params), self.apply(syn, params)
        # one parameter set: the grid and the mask are the same for both batches, built once
        p = self._operands(real, params)
        return self._transform(real, p), self._transform(syn, p)


#: named augmentations besides DSA strategies (see :func:`make_augment`)
NAMED: Tuple[str, ...] = ("rrc_flip_roll", "roll", "rrc_flip", "crop_pad_flip")


def is_augment_spec(spec: object) -> bool:
    """Whether ``spec`` is an augmentation :func:`make_augment` understands: ``None``,
    ``"none"``, ``"auto"``, DSA operations of :data:`OPS` joined by ``_`` (optionally prefixed
    ``"idc:"``), or a name of :data:`NAMED`."""
    if spec is None or spec in ("none", "auto") or spec in NAMED:
        return True
    if not isinstance(spec, str) or not spec:
        return False
    ops = spec[len("idc:"):] if spec.startswith("idc:") else spec
    return bool(ops) and all(op in OPS for op in ops.split("_"))


def make_augment(strategy: "Optional[str]", channels: int, size: Optional[int] = None) -> "Optional[DiffAugment]":
    """DSA augmentation for ``strategy``; ``"auto"`` drops the flip for 1-channel data (digits);
    ``None`` or ``"none"``: no augmentation. ``size`` (the image side) is not used by DSA."""
    if strategy is None or strategy == "none":
        return None
    if strategy == "auto":
        strategy = "color_crop_cutout_scale_rotate" if channels == 1 else "color_crop_cutout_flip_scale_rotate"
    return DiffAugment(strategy=strategy)
