r"""Differentiable augmentations, without torchvision: DSA, IDC's DiffAug, and the crop / flip /
roll pipelines of SRe²L, WMDD and FKD-style training.

Every augmentation here is an :class:`Augmentation`: ``aug(x, generator)`` augments a batch
(training students and teachers, synthesis of barycenter matching), and
``aug.pair(real, syn, generator)`` is the siamese form of distribution matching: **one**
parameter set for every image of the real batch *and* of the synthetic batch, so both
distributions see the identical transform. Each is differentiable in the images (the synthetic
batch is optimised through it), and all randomness comes from the explicit
:class:`torch.Generator`: the same generator state gives the same output.

:func:`make_augment` builds one from a spec string (the ``augment`` of a
:class:`~ddmetrics.distill.DistillConfig`, of a :class:`~ddmetrics.protocols.TrainRecipe`):

- DSA strategies, operations of :data:`OPS` joined by ``_`` (:class:`DiffAugment`, "single"
  mode: one operation per call), with the DSA release's magnitudes; ``"auto"`` is the full
  strategy without ``flip`` for one-channel images (digits).
- ``"idc:<ops>"``: IDC's DiffAug as NCFM runs it (:class:`DiffAugment` ``mode="idc"``): colour,
  flip and cutout, where listed, at every call, plus one of the listed crop / scale / rotate.
- The names of :data:`NAMED` (:class:`CropFlipRoll`): ``"rrc_flip_roll"`` (WMDD's synthesis),
  ``"rrc_flip_roll_small"`` (CDA's Tiny-ImageNet synthesis), ``"roll"`` (SRe²L's CIFAR synthesis),
  ``"rrc_flip"`` (FKD students, WMDD's teacher), ``"crop_pad_flip"`` (SRe²L's CIFAR teacher and students),
  ``"crop_pad_flip_roll"`` (G-VBSM's CIFAR synthesis).
- Crop curricula (:func:`crop_scale_at`, CDA): a schedule of a resized crop's area range over a run.

References
----------
.. [1] B. Zhao, H. Bilen. Dataset condensation with differentiable siamese augmentation. ICML 2021.
.. [2] J.-H. Kim et al. Dataset condensation via efficient synthetic-data parameterization. ICML 2022.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, fields
from typing import Callable, Dict, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["OPS", "NAMED", "AugParams", "Augmentation", "DiffAugment", "CropParams", "CropFlipRoll",
           "is_augment_spec", "make_augment"]

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


def _check_images(x: object, name: str) -> None:
    if not isinstance(x, Tensor) or x.dim() != 4:
        raise ValueError(f"{name} must be a (N, C, H, W) tensor, got {getattr(x, 'shape', type(x).__name__)}")


def _check_sample_args(n: object, shape: Sequence[int], generator: object) -> Tuple[int, int]:
    """``(H, W)`` of ``shape`` once ``n``, ``shape`` and ``generator`` are valid for a draw."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    if len(shape) < 2 or int(shape[-1]) < 1 or int(shape[-2]) < 1:
        raise ValueError(f"shape must end with (H, W), got {tuple(shape)!r}")
    return int(shape[-2]), int(shape[-1])


class Augmentation:
    """A random, differentiable image augmentation: :meth:`sample` draws parameters, :meth:`apply`
    applies them; ``aug(x, generator)`` and :meth:`pair` are built on the two.

    ``shared`` says whether ``aug(x, generator)`` draws one parameter set for the whole batch
    (``True``: the batch-wide transforms of SRe²L and WMDD's synthesis) or one per image.
    """

    #: whether ``__call__`` applies one draw to every image of the batch (else one per image)
    shared: bool = False

    def sample(self, n: int, shape: Sequence[int], generator: torch.Generator,
               device: Optional[Union[str, torch.device]] = None):  # pragma: no cover - abstract
        raise NotImplementedError

    def apply(self, x: Tensor, params) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def __call__(self, x: Tensor, generator: torch.Generator) -> Tensor:
        """Augment the images ``x`` (N, C, H, W): one parameter set per image, or one for the
        whole batch where ``shared``.

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
        _check_images(x, "x")
        return self.apply(x, self.sample(1 if self.shared else x.shape[0], x.shape, generator, x.device))

    def pair(self, real: Tensor, syn: Tensor, generator: torch.Generator) -> Tuple[Tensor, Tensor]:
        """Siamese augmentation: one parameter set, applied to every image of both batches.

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
        _check_pair(real, syn)
        params = self.sample(1, real.shape, generator, real.device)
        return self.apply(real, params), self.apply(syn, params)


def _check_pair(real: object, syn: object) -> None:
    _check_images(real, "real")
    _check_images(syn, "syn")
    if real.shape[1:] != syn.shape[1:]:
        raise ValueError(f"real and syn must share (C, H, W): {tuple(real.shape[1:])} vs {tuple(syn.shape[1:])}")


class _Draws:
    """Draws for ``n`` images from one generator, on its device."""

    def __init__(self, n: int, generator: torch.Generator):
        self.n, self.generator, self.device = n, generator, generator.device

    def uniform(self, *size: int) -> Tensor:
        return torch.rand(self.n, *size, generator=self.generator, device=self.device)

    def between(self, lo: float, hi: float, *size: int) -> Tensor:
        return lo + (hi - lo) * self.uniform(*size)

    def integers(self, lo: int, hi: int) -> Tensor:
        """Uniform on ``{lo, ..., hi}`` (both included), shape (n,)."""
        return torch.randint(lo, hi + 1, (self.n,), generator=self.generator, device=self.device)


def _half_up(value: float) -> int:
    """``int(value + 0.5)``: the DSA release's rounding of pixel counts (not Python's half-to-even)."""
    return int(math.floor(value + 0.5))


#: DSA operation -> its parameters drawn for (aug, draws, H, W); the magnitudes are DSA's
#: ParamDiffAug (DatasetCondensation utils.py:474-484) with DiffAugment's defaults
_DSA_DRAWS: Dict[str, Callable[["DiffAugment", _Draws, int, int], Dict[str, Tensor]]] = {
    # brightness x + U(-0.5, 0.5), saturation x U(0, 2), contrast x U(0.5, 1.5), in this order (utils.py:565-594)
    "color": lambda aug, d, h, w: {"brightness": d.between(-aug.brightness, aug.brightness),
                                   "saturation": d.between(*aug.saturation),
                                   "contrast": d.between(*aug.contrast)},
    "flip": lambda aug, d, h, w: {"flip": d.uniform() < aug.flip},
    # sx, sy independent, U(1/1.2, 1.2) (utils.py:524-539)
    "scale": lambda aug, d, h, w: {"scale": d.between(*aug.scale, 2)},
    "rotate": lambda aug, d, h, w: {"angle": d.between(-aug.rotate, aug.rotate) * (math.pi / 180.0)},
    # whole-pixel shifts uniform on {-s..s}, s = int(0.125 * side + 0.5) per axis (utils.py:597-617)
    "crop": lambda aug, d, h, w: {"shift": torch.stack(
        [d.integers(-_half_up(aug.crop * w), _half_up(aug.crop * w)),
         d.integers(-_half_up(aug.crop * h), _half_up(aug.crop * h))], 1)},
    # the square's centre uniform on {0..side_of_image} for an even square, {0..side - 1} for an odd one
    # (utils.py:620-640: randint(0, size + (1 - cutout_size % 2)))
    "cutout": lambda aug, d, h, w: {"cutout": torch.stack(
        [d.integers(0, h - aug._cutout_side(h) % 2), d.integers(0, w - aug._cutout_side(w) % 2)], 1)},
}

#: mode -> the operations applied at every call; one of the others is drawn per call
_ALWAYS_ON: Dict[str, Tuple[str, ...]] = {
    "single": (),  # DSA's "S" mode: one operation of the strategy per call
    "all": OPS,  # every listed operation
    "idc": ("color", "flip", "cutout"),  # IDC's DiffAug (NCFM utils/diffaug.py:39-89)
}


class DiffAugment(Augmentation):
    r"""Differentiable siamese augmentation (DSA), and IDC's DiffAug, with the DSA release's magnitudes.

    A *strategy* is a ``_``-joined list of operations among ``color``, ``crop``, ``cutout``,
    ``flip``, ``scale`` and ``rotate``. Which of them a call applies depends on ``mode``:

    - ``"single"`` (DSA's default "S" mode, DatasetCondensation ``utils.py:511-516``): **one**
      operation of the strategy, drawn uniformly at each call (for ``__call__`` the same
      operation for the whole batch, with per-image parameters);
    - ``"idc"`` (IDC's DiffAug as NCFM runs it, ``utils/diffaug.py:39-89``): ``color``, ``flip``
      and ``cutout``, where listed, at **every** call, plus one operation drawn among the listed
      ``crop``, ``scale`` and ``rotate`` (none where none is listed);
    - ``"all"``: every operation of the strategy.

    The operations are applied in the order colour → flip → affine warp (scale, rotate,
    crop-translate) → cutout (IDC flips before the colour change; the two commute).

    Every operation is differentiable in the images:

    - colour is arithmetic: brightness :math:`x + b`, saturation
      :math:`\bar x_{c} + s\,(x - \bar x_{c})` (channel mean :math:`\bar x_{c}`; a no-op for one
      channel) and contrast :math:`\bar x + r\,(x - \bar x)` (image mean :math:`\bar x`), in
      that order;
    - flip is an exact mirror (``torch.where`` between the image and ``torch.flip``);
    - scale, rotation and crop-translation are one affine warp
      (:func:`torch.nn.functional.affine_grid` + :func:`~torch.nn.functional.grid_sample`,
      bilinear, zero padding, ``align_corners=False``: the modern torch default; the release,
      pinned to torch 1.2, ran the old behaviour, equivalent to ``align_corners=True``). The
      rotation is in pixel geometry (the release's matrix has no aspect correction: the same
      for square images). The translation is a whole number of pixels, so a pure translation
      copies pixels (up to float rounding) with zero fill, as DSA's index-based crop does;
    - cutout multiplies by a 0/1 mask (a square of side ``int(cutout · size + 0.5)``, clipped at
      the border).

    The default magnitudes are the DSA release's (``ParamDiffAug``, DatasetCondensation
    ``utils.py:474-484``; IDC's DiffAug has the same): brightness U(-0.5, 0.5), saturation U(0, 2),
    contrast U(0.5, 1.5), a crop shift uniform on the integers {-s..s} per axis with
    s = ``int(crop · side + 0.5)`` (4 at 28 and 32 px), a cutout centre uniform on {0..side}
    (an even square; {0..side - 1} for an odd one), flip p 0.5, scale factors U(1/1.2, 1.2)
    per axis, rotation U(-15°, 15°).

    Parameters
    ----------
    strategy : str
        Operations joined by ``_``; default all six.
    mode : {"single", "idc", "all"}
        See above.
    brightness : float
        Brightness offset drawn in U(-brightness, brightness), default 0.5.
    saturation : float or (float, float)
        Saturation factor range; a scalar ``s`` means ``(1 - s, 1 + s)``. Default (0, 2).
    contrast : float or (float, float)
        Contrast factor range, default (0.5, 1.5).
    crop : float
        Maximal translation as a fraction of the image side, default 0.125, as whole pixels
        ``int(crop · side + 0.5)``.
    cutout : float
        Side of the zeroed square as a fraction of the image side, default 0.5.
    flip : float
        Probability of a left-right mirror, default 0.5.
    scale : float or (float, float)
        Per-axis scale range of the sampling grid, default (1/1.2, 1.2).
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
                 brightness: float = 0.5, saturation: Union[float, Sequence[float]] = (0.0, 2.0),
                 contrast: Union[float, Sequence[float]] = (0.5, 1.5), crop: float = 0.125,
                 cutout: float = 0.5, flip: float = 0.5, scale: Union[float, Sequence[float]] = (1 / 1.2, 1.2),
                 rotate: float = 15.0) -> None:
        if not isinstance(strategy, str):
            raise TypeError(f"strategy must be a str, got {type(strategy).__name__}")
        ops = tuple(o for o in strategy.split("_") if o)
        bad = [o for o in ops if o not in OPS]
        if bad or not ops:
            raise ValueError(f"strategy must join operations from {OPS} with '_', got {strategy!r}")
        if mode not in _ALWAYS_ON:
            raise ValueError(f"mode must be one of {tuple(_ALWAYS_ON)}, got {mode!r}")
        self.ops: Tuple[str, ...] = tuple(dict.fromkeys(ops))  # unique, order kept
        self.mode = mode
        #: applied at every call, and those of which one is drawn per call
        self.always_on = tuple(o for o in self.ops if o in _ALWAYS_ON[mode])
        self.drawn = tuple(o for o in self.ops if o not in self.always_on)
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

    def _cutout_side(self, side: int) -> int:
        return _half_up(self.cutout * side)

    # ------------------------------------------------------------------ parameters
    def sample(self, n: int, shape: Sequence[int], generator: torch.Generator,
               device: Optional[Union[str, torch.device]] = None) -> AugParams:
        """Draw parameters for ``n`` images of spatial size ``shape[-2:]``.

        Which operations are drawn is decided once per call (see ``mode``); their parameters
        are drawn for each of the ``n`` images.

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
        h, w = _check_sample_args(n, shape, generator)
        ops = self.always_on
        if self.drawn:
            pick = int(torch.randint(len(self.drawn), (1,), generator=generator, device=generator.device))
            ops = ops + (self.drawn[pick],)
        draws = _Draws(n, generator)
        p: Dict[str, Tensor] = {}
        for op in ops:
            p.update(_DSA_DRAWS[op](self, draws, h, w))
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
        """(k, 1, H, W) mask, zero on a square of side ``int(cutout · size + 0.5)`` around ``centre``
        (its top-left corner at ``centre - side // 2``, as the release)."""
        h, w = x.shape[-2:]
        side_h, side_w = self._cutout_side(h), self._cutout_side(w)
        start = centre - centre.new_tensor([side_h // 2, side_w // 2])
        rows = torch.arange(h, device=x.device) - start[:, :1]  # (k, H): rows from the square's top
        cols = torch.arange(w, device=x.device) - start[:, 1:]
        inside = (rows >= 0) & (rows < side_h)
        inside = inside.unsqueeze(2) & ((cols >= 0) & (cols < side_w)).unsqueeze(1)
        return (~inside).to(x.dtype).unsqueeze(1)

    # ------------------------------------------------------------------ entry points
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
        _check_pair(real, syn)
        params = self.sample(1, real.shape, generator, real.device)
        if syn.dtype != real.dtype or syn.device != real.device:
            return self.apply(real, params), self.apply(syn, params)
        # one parameter set: the grid and the mask are the same for both batches, built once
        p = self._operands(real, params)
        return self._transform(real, p), self._transform(syn, p)



@dataclass(frozen=True)
class CropParams:
    """Sampled :class:`CropFlipRoll` parameters for ``n`` images (``n == 1``: shared by a batch).

    Attributes
    ----------
    size : tuple of int
        ``(H, W)`` the parameters were drawn for.
    window : Tensor of int64, shape (n, 4), or None
        The crop window ``(top, left, height, width)`` in pixels, resized to ``(H, W)``; it may
        reach outside the image (zero padding). ``None``: no crop.
    flip : Tensor of bool, shape (n,), or None
        Mirror left-right (after the crop) where true.
    roll : Tensor of int64, shape (n, 2), or None
        Circular shift (rows, columns), ``torch.roll(x, (rows, columns), dims=(2, 3))``, last.
    """

    size: Tuple[int, int]
    window: Optional[Tensor] = None
    flip: Optional[Tensor] = None
    roll: Optional[Tensor] = None

    def tensors(self):
        """``(name, tensor)`` for every operation that is set."""
        return [(f.name, getattr(self, f.name)) for f in fields(self)
                if f.name != "size" and getattr(self, f.name) is not None]

    @property
    def n(self) -> int:
        """Leading size of the parameter tensors (1 for a shared transform)."""
        ts = self.tensors()
        return int(ts[0][1].shape[0]) if ts else 1


def _positive_range(value: Sequence[float], name: str) -> _Range:
    if not isinstance(value, Sequence) or len(value) != 2 or any(
            isinstance(v, bool) or not isinstance(v, (int, float)) for v in value):
        raise TypeError(f"{name} must be a (low, high) pair of numbers, got {value!r}")
    lo, hi = float(value[0]), float(value[1])
    if not (0 < lo <= hi < math.inf):
        raise ValueError(f"{name} must satisfy 0 < low <= high < inf, got ({lo}, {hi})")
    return lo, hi


class CropFlipRoll(Augmentation):
    r"""A crop resized back to the image size, a left-right flip and a circular roll, in this
    order: torchvision's ``RandomResizedCrop`` / ``RandomCrop(padding)`` + ``RandomHorizontalFlip``
    and ``torch.roll``, as the released SRe²L, WMDD and FKD pipelines run them, differentiable.

    Each is a linear map of every image row and column, so the whole transform is
    :math:`R\,x\,C^\top` with an ``(H, H)`` matrix ``R`` and a ``(W, W)`` matrix ``C`` per image:
    the crop's bilinear resize (``F.interpolate(..., mode="bilinear", align_corners=False)`` of
    the window, the source index clamped to the window as torch does; resizing never shrinks, so
    torchvision's antialiasing changes nothing), the flip and the roll are permutations (exact
    copies of pixels), and zero padding drops the columns outside the image.

    Parameters
    ----------
    crop : {None, "resized", "padded"}
        ``"resized"``: torchvision's ``RandomResizedCrop`` (up to 10 draws of an area fraction
        in ``scale`` and a log-uniform aspect ratio in ``ratio`` that fit, else the central crop
        of the closest allowed ratio), resized bilinearly to the input size; ``"padded"``:
        ``RandomCrop(size, padding=padding)`` with zero padding, i.e. a shift uniform on
        {-padding..padding} per axis; ``None``: no crop.
    scale, ratio : (float, float)
        ``"resized"``'s area-fraction and aspect-ratio ranges, default (0.08, 1) and (3/4, 4/3)
        (torchvision's).
    padding : int
        ``"padded"``'s zero padding, default 4.
    flip : float
        Probability of a left-right mirror (0: none).
    roll : float, optional
        Largest circular shift J as a fraction of the image side: shifts uniform on {0..J} per
        axis with ``J = int(roll · side + 0.5)`` (``None``: no roll).
    size : int, optional
        The side the roll range is computed from (default: each image's own height and width).
    shared : bool
        ``True``: ``aug(x, generator)`` applies one draw to every image of the batch (a
        torchvision transform applied to a batched tensor, as SRe²L's and WMDD's synthesis do);
        ``False``: one draw per image. :meth:`pair` always applies one draw to both batches.
    """

    def __init__(self, crop: Optional[str] = None, scale: Sequence[float] = (0.08, 1.0),
                 ratio: Sequence[float] = (3 / 4, 4 / 3), padding: int = 4, flip: float = 0.0,
                 roll: Optional[float] = None, size: Optional[int] = None, shared: bool = False) -> None:
        if crop is not None and crop not in _CROP_WINDOWS:
            raise ValueError(f"crop must be None or one of {tuple(_CROP_WINDOWS)}, got {crop!r}")
        if isinstance(padding, bool) or not isinstance(padding, int) or padding < 0:
            raise ValueError(f"padding must be a non-negative int, got {padding!r}")
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
            raise ValueError(f"size must be None or a positive int, got {size!r}")
        if not isinstance(shared, bool):
            raise TypeError(f"shared must be True or False, got {shared!r}")
        self.crop, self.padding, self.size, self.shared = crop, padding, size, shared
        self.scale = _positive_range(scale, "scale")
        self.ratio = _positive_range(ratio, "ratio")
        self.flip = _nonneg(flip, "flip", 1.0)
        self.roll = None if roll is None else _nonneg(roll, "roll")

    def __repr__(self) -> str:
        return (f"CropFlipRoll(crop={self.crop!r}, flip={self.flip}, roll={self.roll}, size={self.size}, "
                f"shared={self.shared})")

    def with_scale(self, scale: Sequence[float]) -> "CropFlipRoll":
        """A copy whose ``"resized"`` crop draws its area fraction from ``scale`` (a crop curriculum's
        step: :func:`crop_scale_at`); everything else as this one."""
        out = copy.copy(self)
        out.scale = _positive_range(scale, "scale")
        return out

    def roll_range(self, h: int, w: int) -> Tuple[int, int]:
        """The largest shift J of the roll along rows and columns for images of ``h`` × ``w``."""
        if self.roll is None:
            return 0, 0
        rows, cols = (self.size, self.size) if self.size is not None else (h, w)
        return _half_up(self.roll * rows), _half_up(self.roll * cols)

    # ------------------------------------------------------------------ parameters
    def sample(self, n: int, shape: Sequence[int], generator: torch.Generator,
               device: Optional[Union[str, torch.device]] = None) -> CropParams:
        """Draw parameters for ``n`` images of spatial size ``shape[-2:]`` (see
        :meth:`DiffAugment.sample`)."""
        h, w = _check_sample_args(n, shape, generator)
        draws = _Draws(n, generator)
        p: Dict[str, Tensor] = {}
        if self.crop is not None:
            p["window"] = _CROP_WINDOWS[self.crop](self, draws, h, w)
        if self.flip > 0:
            p["flip"] = draws.uniform() < self.flip
        if self.roll is not None:
            jr, jc = self.roll_range(h, w)
            p["roll"] = torch.stack([draws.integers(0, jr), draws.integers(0, jc)], 1)
        if device is not None:
            p = {k: v.to(device) for k, v in p.items()}
        return CropParams(size=(h, w), **p)

    def _resized_window(self, d: _Draws, h: int, w: int) -> Tensor:
        """torchvision's ``RandomResizedCrop.get_params`` for ``d.n`` images, vectorised."""
        attempts = 10
        area = float(h * w)
        target = area * (self.scale[0] + (self.scale[1] - self.scale[0]) * d.uniform(attempts).double())
        log_lo, log_hi = math.log(self.ratio[0]), math.log(self.ratio[1])
        aspect = torch.exp(log_lo + (log_hi - log_lo) * d.uniform(attempts).double())
        cw = torch.round(torch.sqrt(target * aspect))  # half to even, as Python's round
        ch = torch.round(torch.sqrt(target / aspect))
        fits = (cw > 0) & (cw <= w) & (ch > 0) & (ch <= h)
        first = fits.double().argmax(1, keepdim=True)  # the first attempt that fits
        found = fits.any(1)
        # no attempt fits: the central crop of the allowed ratio closest to the image's
        if w / h < self.ratio[0]:
            fw, fh = w, int(round(w / self.ratio[0]))
        elif w / h > self.ratio[1]:
            fw, fh = int(round(h * self.ratio[1])), h
        else:
            fw, fh = w, h
        cw = torch.where(found, cw.gather(1, first).squeeze(1).long(), fw)
        ch = torch.where(found, ch.gather(1, first).squeeze(1).long(), fh)
        top = torch.minimum((d.uniform().double() * (h - ch + 1)).floor().long(), h - ch)
        left = torch.minimum((d.uniform().double() * (w - cw + 1)).floor().long(), w - cw)
        top = torch.where(found, top, (h - fh) // 2)
        left = torch.where(found, left, (w - fw) // 2)
        return torch.stack([top, left, ch, cw], 1)

    def _padded_window(self, d: _Draws, h: int, w: int) -> Tensor:
        """``RandomCrop((h, w), padding)``: a window of the image's size shifted by {-p..p} per axis."""
        top, left = d.integers(-self.padding, self.padding), d.integers(-self.padding, self.padding)
        return torch.stack([top, left, torch.full_like(top, h), torch.full_like(left, w)], 1)

    # ------------------------------------------------------------------ application
    def apply(self, x: Tensor, params: CropParams) -> Tensor:
        """Apply ``params`` (from :meth:`sample`, for 1 or ``N`` images) to ``x`` (N, C, H, W).

        Returns
        -------
        Tensor
            Augmented images, same shape, dtype and device as ``x``, differentiable in ``x``.
        """
        if not isinstance(x, Tensor):
            raise TypeError(f"x must be a Tensor, got {type(x).__name__}")
        if x.dim() != 4:
            raise ValueError(f"x must be (N, C, H, W), got shape {tuple(x.shape)}")
        if not isinstance(params, CropParams):
            raise TypeError(f"params must be CropParams, got {type(params).__name__}")
        if tuple(params.size) != tuple(x.shape[-2:]):
            raise ValueError(f"x has spatial size {tuple(x.shape[-2:])} but params were drawn for {params.size}")
        n, _, h, w = x.shape
        k = params.n
        if k not in (1, n):
            raise ValueError(f"params hold {k} parameter sets; x has {n} images (need 1 or {n})")
        window = None if params.window is None else params.window.to(x.device)
        rows = _axis_matrix(h, None if window is None else window[:, 0], None if window is None else window[:, 2], x)
        cols = _axis_matrix(w, None if window is None else window[:, 1], None if window is None else window[:, 3], x)
        if params.flip is not None:  # output column j is column W - 1 - j of the crop
            cols = torch.where(params.flip.to(x.device).view(k, 1, 1), cols.flip(1), cols)
        if params.roll is not None:  # torch.roll: output index i takes input index (i - shift) mod size
            shift = params.roll.to(x.device)
            rows = rows.expand(k, h, h).gather(1, _rolled_index(h, shift[:, 0]).unsqueeze(2).expand(k, h, h))
            cols = cols.expand(k, w, w).gather(1, _rolled_index(w, shift[:, 1]).unsqueeze(2).expand(k, w, w))
        return _separable(rows, x, cols)


#: crop kind -> the windows drawn for (aug, draws, H, W), shape (n, 4)
_CROP_WINDOWS: Dict[str, Callable[[CropFlipRoll, _Draws, int, int], Tensor]] = {
    "resized": CropFlipRoll._resized_window,
    "padded": CropFlipRoll._padded_window,
}


def _separable(rows: Tensor, x: Tensor, cols: Tensor) -> Tensor:
    """``rows[i] @ x[i, c] @ cols[i].T`` for every image ``i`` and channel ``c`` (``rows`` (k, H, H),
    ``cols`` (k, W, W), k = 1 or N) as two products over whole batches: a broadcast
    ``(k, 1, H, H) @ (N, C, H, W)`` runs N·C tiny products (``apply`` of one draw per image on
    256×3×32×32 took 35 ms that way against 29 ms, one CPU thread)."""
    n, c, h, w = x.shape
    if rows.shape[0] == 1 and cols.shape[0] == 1:  # one transform: plain matrix products
        return rows[0] @ (x @ cols[0].T)
    rows, cols = rows.expand(n, h, h), cols.expand(n, w, w)
    y = torch.bmm(x.reshape(n, c * h, w), cols.transpose(1, 2))  # columns: (N, C*H, W)
    y = torch.bmm(y.view(n, c, h, w).transpose(2, 3).reshape(n, c * w, h), rows.transpose(1, 2))  # rows
    return y.view(n, c, w, h).transpose(2, 3).contiguous()


def _rolled_index(size: int, shift: Tensor) -> Tensor:
    """(k, size): the input index of each output index under ``torch.roll`` by ``shift``."""
    return (torch.arange(size, device=shift.device) - shift.view(-1, 1)) % size


def _axis_matrix(size: int, start: Optional[Tensor], length: Optional[Tensor], like: Tensor) -> Tensor:
    """(k, size, size) matrix of one axis: the window ``[start, start + length)`` resized to
    ``size`` bilinearly as ``F.interpolate(align_corners=False)`` (source index
    ``max(0, (i + 0.5) · length / size - 0.5)``, its upper neighbour clamped to the window);
    entries outside ``[0, size)`` are dropped (zero padding). ``None``: the identity, (1, size, size)."""
    if start is None:
        return torch.eye(size, dtype=like.dtype, device=like.device).unsqueeze(0)
    k = start.shape[0]
    out = torch.arange(size, dtype=torch.float64, device=like.device)
    src = ((out + 0.5) * (length.double() / size).view(k, 1) - 0.5).clamp_min(0.0)  # (k, size)
    low = src.floor().long()
    frac = src - low
    high = torch.minimum(low + 1, (length - 1).view(k, 1))
    matrix = torch.zeros(k, size, size + 1, dtype=torch.float64, device=like.device)
    for index, weight in ((low, 1.0 - frac), (high, frac)):
        index = start.view(k, 1) + index
        outside = (index < 0) | (index >= size)
        # columns outside the image go to a spare column, cut off below
        matrix.scatter_add_(2, torch.where(outside, size, index).unsqueeze(2), weight.unsqueeze(2))
    return matrix[:, :, :size].to(like.dtype)


def _scaled_padding(fraction: float, size: Optional[int]) -> int:
    """``fraction`` of the side in whole pixels, rounded half up (at least 1; 4 px without a size)."""
    return 4 if size is None else max(1, int(fraction * size + 0.5))


#: named augmentations besides DSA strategies -> builder(size) (see :func:`make_augment`)
_NAMED_BUILDERS: Dict[str, Callable[[Optional[int]], Augmentation]] = {
    # WMDD's synthesis (recover/data_synthesis_new.py:139-149): one RandomResizedCrop (0.08-1, 3/4-4/3)
    # and one flip for the whole batch, then a circular roll by U{0..J} per axis, J = 32 at 224 px
    # (--jitter 32), scaled to the image: J = int(32/224 * side + 0.5) (4 at 28 px, 5 at 32 px)
    "rrc_flip_roll": lambda size: CropFlipRoll(crop="resized", flip=0.5, roll=32 / 224, size=size, shared=True),
    # SRe²L's CIFAR synthesis (recover_cifar.py:79-81): a circular roll by U{0..4} at 32 px for the
    # whole batch, scaled: J = int(4/32 * side + 0.5) (4 at 28 px)
    "roll": lambda size: CropFlipRoll(roll=4 / 32, size=size, shared=True),
    # CDA's Tiny-ImageNet recovery (CDA/recover_cda_tiny.py:57-72): one RandomResizedCrop and one flip for the
    # whole batch, then a roll by U{0..4} per axis at 64 px (--jitter 4), scaled: J = int(4/64 * side + 0.5)
    # (2 at 28 px); the crop's scale is what CDA's curriculum schedules (crop_scale_at)
    "rrc_flip_roll_small": lambda size: CropFlipRoll(crop="resized", flip=0.5, roll=4 / 64, size=size, shared=True),
    # FKD students (train_FKD.py) and WMDD's teacher: RandomResizedCrop + flip per image
    "rrc_flip": lambda size: CropFlipRoll(crop="resized", flip=0.5),
    # SRe²L's CIFAR teacher and relabelling: RandomCrop(size, padding=4) + flip per image, the padding
    # 4 px at 32 scaled to the image as the rolls are: int(4/32 * side + 0.5) (4 at 28 and 32 px, 1 at 8;
    # 4 unscaled would shift 8-px digits by up to half their side)
    "crop_pad_flip": lambda size: CropFlipRoll(crop="padded", padding=_scaled_padding(4 / 32, size), flip=0.5),
    # G-VBSM's CIFAR synthesis (Branch_CIFAR_10/recover/data_synthesis_with_svd_with_db_with_all_statistic.py:137-146):
    # one RandomCrop(32, padding=4) and one flip for the whole batch, then a circular roll by U{0..32} per axis
    # (--jitter 32: the whole side), the padding scaled as crop_pad_flip's and the roll range the whole side
    "crop_pad_flip_roll": lambda size: CropFlipRoll(crop="padded", padding=_scaled_padding(4 / 32, size), flip=0.5,
                                                    roll=1.0, size=size, shared=True),
}

#: named augmentations besides DSA strategies (see :func:`make_augment`)
NAMED: Tuple[str, ...] = tuple(_NAMED_BUILDERS)

#: the crop curricula of :func:`crop_scale_at`: how the smallest crop area grows harder over a run
CROP_CURRICULA: Tuple[str, ...] = ("none", "step", "linear", "cosine")


def crop_scale_at(curriculum: str, iteration: int, iterations: int, milestone: float = 1.0,
                  low: float = 0.08, high: float = 1.0) -> Tuple[float, float]:
    r"""The ``RandomResizedCrop`` area range at ``iteration`` of ``iterations`` under a crop
    curriculum (CDA, easy to hard).

    Before the milestone :math:`t < M = \text{milestone} \cdot T` the smallest area :math:`s` falls
    from ``high`` (whole images: easy) towards ``low``; from the milestone on it is ``low``:

    .. math::
        s_{\text{step}} = \text{high}, \qquad
        s_{\text{linear}} = \text{low} + (\text{high} - \text{low})\,(1 - t / M), \qquad
        s_{\text{cosine}} = \text{low} + (\text{high} - \text{low})\,\tfrac12 (1 + \cos(\pi t / M))

    ``"none"``: ``(low, high)`` throughout. Returns ``(s, high)``.

    References
    ----------
    .. [1] Z. Yin, Z. Shen. Dataset distillation in large data era (CDA). arXiv:2311.18838, 2023.
    """
    if curriculum not in CROP_CURRICULA:
        raise ValueError(f"curriculum must be one of {CROP_CURRICULA}, got {curriculum!r}")
    edge = milestone * iterations
    if curriculum == "none" or not iteration < edge:
        return low, high
    if curriculum == "step":
        return high, high
    progress = iteration / edge
    fall = 1.0 - progress if curriculum == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))
    return low + (high - low) * fall, high

_IDC = "idc:"


def is_augment_spec(spec: object) -> bool:
    """Whether ``spec`` is an augmentation :func:`make_augment` understands: ``None``,
    ``"none"``, ``"auto"``, DSA operations of :data:`OPS` joined by ``_`` (optionally prefixed
    ``"idc:"``), or a name of :data:`NAMED`."""
    if spec is None or spec in ("none", "auto") or spec in NAMED:
        return True
    if not isinstance(spec, str) or not spec:
        return False
    ops = spec[len(_IDC):] if spec.startswith(_IDC) else spec
    return bool(ops) and all(op in OPS for op in ops.split("_"))


def make_augment(spec: Optional[str], channels: int, size: Optional[int] = None) -> Optional[Augmentation]:
    """The augmentation named by ``spec``, for images of ``channels`` channels.

    Parameters
    ----------
    spec : str or None
        ``None`` or ``"none"``: no augmentation (returns ``None``).
        A DSA strategy (operations of :data:`OPS` joined by ``_``): :class:`DiffAugment` in
        "single" mode with the DSA release's magnitudes; ``"auto"``: the full strategy, without
        ``flip`` for one channel (digits), as ddmetrics before issue 24.
        ``"idc:<ops>"``: IDC's DiffAug (:class:`DiffAugment` ``mode="idc"``).
        A name of :data:`NAMED`: ``"rrc_flip_roll"``, ``"roll"`` (one draw for the whole batch),
        ``"rrc_flip"``, ``"crop_pad_flip"`` (one draw per image) — see :class:`CropFlipRoll`.
    channels : int
        Image channels.
    size : int, optional
        The image side the rolls' range is scaled from (``"rrc_flip_roll"``, ``"roll"``);
        default: the side of the images it is applied to.

    Returns
    -------
    Augmentation or None
        ``aug(x, generator)`` and ``aug.pair(real, syn, generator)``.

    Raises
    ------
    ValueError
        ``spec`` is not one of the above, ``channels`` not a positive int or ``size`` neither
        None nor a positive int.
    """
    if not is_augment_spec(spec):
        raise ValueError(f"spec must be None, 'none', 'auto', DSA operations from {OPS} joined by '_' (optionally "
                         f"prefixed 'idc:'), or one of {NAMED}; got {spec!r}")
    if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
        raise ValueError(f"channels must be a positive int, got {channels!r}")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
        raise ValueError(f"size must be None or a positive int, got {size!r}")
    if spec is None or spec == "none":
        return None
    if spec in _NAMED_BUILDERS:
        return _NAMED_BUILDERS[spec](size)
    if spec == "auto":
        spec = "color_crop_cutout_scale_rotate" if channels == 1 else "color_crop_cutout_flip_scale_rotate"
    if spec.startswith(_IDC):
        return DiffAugment(strategy=spec[len(_IDC):], mode="idc")
    return DiffAugment(strategy=spec)
