"""``SyntheticSet``: distilled images, labels and per-sample weights, with atomic save/load and a PNG grid.

On disk a synthetic set is a ``torch.save`` file holding only tensors, ints and strings —
``{"format", "images", "labels", "weights", "num_classes", "meta_json"}`` — so it loads with
``torch.load(path, weights_only=True)``: no arbitrary object is ever unpickled.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Sequence, Tuple

import torch
from torch import Tensor

__all__ = ["FORMAT", "SyntheticSet", "atomic_write"]

#: format tag written into every file
FORMAT = "ddmetrics.synset/1"

from ._io import PathLike, atomic_write, load_tensors


def _stats(value: Any, name: str, channels: int) -> Optional[Tensor]:
    if value is None:
        return None
    t = torch.as_tensor(value, dtype=torch.float32, device="cpu").flatten()
    if t.numel() not in (1, channels):
        raise ValueError(f"{name} must have 1 or {channels} entries, got {t.numel()}")
    if not bool(torch.isfinite(t).all()) or (name == "std" and bool((t <= 0).any())):
        raise ValueError(f"{name} must be finite{' and positive' if name == 'std' else ''}, got {t.tolist()}")
    return t.view(1, -1, 1, 1)


@dataclass
class SyntheticSet:
    """A distilled data set.

    Attributes
    ----------
    images : Tensor
        (N, C, H, W) floating-point stored images (with ``meta["factor"]`` > 1 each holds
        f×f sub-images, see :meth:`decoded`).
    labels : Tensor
        (N,) int64 class labels in ``0 .. num_classes - 1``.
    weights : Tensor
        (N,) non-negative per-image weights; within a class they sum to 1 (barycenter weights
        for WMDD, ``1/ipc`` for the other methods).
    meta : dict
        JSON-able description: method, loss, ipc, seed, factor, mean, std, timings, ...
    num_classes : int, optional
        Defaults to ``labels.max() + 1``.

    Raises
    ------
    TypeError
        On non-tensor fields, non-floating images/weights, non-integer labels or a
        non-dict ``meta``.
    ValueError
        On inconsistent shapes, negative or non-finite weights, or labels out of range.

    Examples
    --------
    >>> syn = SyntheticSet(torch.zeros(2, 1, 8, 8), torch.tensor([0, 1]), torch.ones(2))
    >>> syn.save("runs/x/synset.pt")                # doctest: +SKIP
    >>> SyntheticSet.load("runs/x/synset.pt")       # doctest: +SKIP
    """

    images: Tensor
    labels: Tensor
    weights: Tensor
    meta: Dict[str, Any] = field(default_factory=dict)
    num_classes: Optional[int] = None

    def __post_init__(self) -> None:
        for name in ("images", "labels", "weights"):
            if not isinstance(getattr(self, name), Tensor):
                raise TypeError(f"{name} must be a Tensor, got {type(getattr(self, name)).__name__}")
        if not isinstance(self.meta, dict):
            raise TypeError(f"meta must be a dict, got {type(self.meta).__name__}")
        if self.images.dim() != 4:
            raise ValueError(f"images must be (N, C, H, W), got shape {tuple(self.images.shape)}")
        if not torch.is_floating_point(self.images):
            raise TypeError(f"images must be floating point, got dtype {self.images.dtype}")
        n = self.images.shape[0]
        if self.labels.dtype == torch.bool or torch.is_floating_point(self.labels) or torch.is_complex(self.labels):
            raise TypeError(f"labels must be an integer tensor, got dtype {self.labels.dtype}")
        if self.labels.shape != (n,):
            raise ValueError(f"labels must have shape ({n},), got {tuple(self.labels.shape)}")
        if not torch.is_floating_point(self.weights):
            raise TypeError(f"weights must be floating point, got dtype {self.weights.dtype}")
        if self.weights.shape != (n,):
            raise ValueError(f"weights must have shape ({n},), got {tuple(self.weights.shape)}")
        if not bool(torch.isfinite(self.weights).all()) or bool((self.weights < 0).any()):
            raise ValueError("weights must be finite and non-negative")
        self.labels = self.labels.long()
        if self.num_classes is None:
            self.num_classes = int(self.labels.max()) + 1 if n else 1
        if isinstance(self.num_classes, bool) or not isinstance(self.num_classes, int) or self.num_classes < 1:
            raise ValueError(f"num_classes must be a positive int, got {self.num_classes!r}")
        if n and (int(self.labels.min()) < 0 or int(self.labels.max()) >= self.num_classes):
            raise ValueError(f"labels must lie in 0..{self.num_classes - 1}")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __repr__(self) -> str:  # the dataclass default would print every pixel
        shape = "x".join(str(v) for v in self.images.shape[1:])
        what = ", ".join(f"{k}={self.meta[k]!r}" for k in ("method", "loss", "ipc", "seed") if k in self.meta)
        return (f"SyntheticSet({len(self)} images of {shape}, {self.num_classes} classes"
                + (f", factor={self.factor}" if self.factor > 1 else "") + (f", {what}" if what else "") + ")")

    @property
    def factor(self) -> int:
        """The factor-technique tiles per side (``meta["factor"]``, default 1)."""
        return int(self.meta.get("factor", 1) or 1)

    # ---------------------------------------------------------------- I/O
    def save(self, path: PathLike) -> None:
        """Write tensors and JSON metadata atomically (parent directories are created).

        The file loads with ``torch.load(path, weights_only=True)``.

        Raises
        ------
        TypeError
            If ``meta`` is not JSON-serialisable.
        """
        try:
            meta_json = json.dumps(self.meta)
        except (TypeError, ValueError) as err:
            raise TypeError(f"meta must be JSON-serialisable: {err}") from err
        payload = {"format": FORMAT,
                   "images": self.images.detach().cpu().contiguous(),
                   "labels": self.labels.detach().cpu().contiguous(),
                   "weights": self.weights.detach().cpu().contiguous(),
                   "num_classes": int(self.num_classes),
                   "meta_json": meta_json}
        atomic_write(path, lambda fh: torch.save(payload, fh))

    @classmethod
    def load(cls, path: PathLike) -> "SyntheticSet":
        """Read a file written by :meth:`save` (CPU tensors).

        Only tensors and plain containers are unpickled (``weights_only=True``): a file
        holding a pickled callable or any other object is refused without running it.

        Raises
        ------
        ValueError
            If the file is missing, a directory, holds Python objects, or is not a valid
            synthetic set; the message names ``path``.
        """
        payload = load_tensors(path, "a ddmetrics synthetic set")
        keys = {"images", "labels", "weights", "num_classes", "meta_json"}
        if not isinstance(payload, dict) or not keys <= set(payload):
            raise ValueError(f"{os.fspath(path)} is not a ddmetrics synthetic set (expected keys {sorted(keys)})")
        fmt = payload.get("format", FORMAT)
        if fmt != FORMAT:
            raise ValueError(f"{os.fspath(path)} has format {fmt!r}, expected {FORMAT!r}")
        try:
            meta = json.loads(payload["meta_json"])
            num_classes = payload["num_classes"]
            if isinstance(num_classes, Tensor) and num_classes.numel() == 1:
                num_classes = int(num_classes)
            return cls(images=payload["images"], labels=payload["labels"], weights=payload["weights"],
                       meta=meta, num_classes=num_classes)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{os.fspath(path)} holds a malformed synthetic set: {err}") from err

    # ---------------------------------------------------------------- views
    def decoded(self) -> Tuple[Tensor, Tensor, Tensor]:
        """Images, labels and weights as the learner sees them.

        With ``meta["factor"]`` = f > 1 every stored image becomes f² up-sampled tiles
        (:func:`ddmetrics.factor.decode`; tile weights ``w/f²``); otherwise the
        stored tensors are returned.
        """
        from .factor import decode

        images, labels, weights = decode(self.images, self.labels, self.weights, self.factor)
        return images, labels, weights

    def to_dataset(self):
        """The decoded set as an :class:`~ddmetrics.data.ArrayDataset` of ``(image, label)``.

        The per-sample weights (decoded) are available as its ``weights`` attribute.
        """
        from .data import ArrayDataset

        images, labels, weights = self.decoded()
        ds = ArrayDataset(images.detach(), labels, self.num_classes)
        ds.weights = weights.detach()
        return ds

    def save_grid(self, path: PathLike, mean: Optional[Sequence[float]] = None,
                  std: Optional[Sequence[float]] = None, tile: int = 32, pad: int = 2) -> None:
        """Write a PNG with one row per class and one column per image of that class.

        Parameters
        ----------
        path : str or PathLike
            Destination (written atomically, parents created).
        mean, std : sequence of float, optional
            Per-channel normalisation to undo (``x·std + mean``); default ``meta["mean"]`` /
            ``meta["std"]``. Without them each image is min–max stretched to [0, 1].
        tile : int
            Minimal tile side in pixels; stored images are up-scaled by the smallest whole
            factor reaching it (nearest neighbour), so 8×8 digits become 32×32.
        pad : int
            White border between tiles.

        Notes
        -----
        The image is (num_classes·(s·H + pad)) × (cols·(s·W + pad)) pixels, ``s`` the
        up-scaling factor and ``cols`` the largest class size. One channel gives a grey
        PNG, three or more an RGB one from the first three channels (two: their mean).
        """
        import numpy as np
        from PIL import Image

        for name, v in (("tile", tile), ("pad", pad)):
            if isinstance(v, bool) or not isinstance(v, int) or v < (1 if name == "tile" else 0):
                raise ValueError(f"{name} must be a {'positive' if name == 'tile' else 'non-negative'} int, got {v!r}")
        x = self.images.detach().cpu().float()
        c, h, w = x.shape[1:]
        m = _stats(self.meta.get("mean") if mean is None else mean, "mean", c)
        s = _stats(self.meta.get("std") if std is None else std, "std", c)
        if m is not None and s is not None:
            x = x * s + m
        elif len(x):
            lo = x.amin((1, 2, 3), keepdim=True)
            x = (x - lo) / (x.amax((1, 2, 3), keepdim=True) - lo).clamp_min(1e-8)
        x = x.clamp(0, 1)
        if c == 2:
            x = x.mean(1, keepdim=True)
        elif c > 3:
            x = x[:, :3]
        scale = max(1, math.ceil(tile / min(h, w)))
        x = x.repeat_interleave(scale, 2).repeat_interleave(scale, 3)
        th, tw = h * scale, w * scale
        rows = [x[self.labels == k] for k in range(self.num_classes)]
        cols = max([len(r) for r in rows] + [1])
        canvas = torch.ones(x.shape[1], self.num_classes * (th + pad), cols * (tw + pad), dtype=x.dtype, device=x.device)
        for k, r in enumerate(rows):
            for j, img in enumerate(r):
                top, left = k * (th + pad) + pad // 2, j * (tw + pad) + pad // 2
                canvas[:, top:top + th, left:left + tw] = img
        arr = (canvas.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        image = Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr)  # L or RGB
        atomic_write(path, lambda fh: image.save(fh, format="PNG"))
