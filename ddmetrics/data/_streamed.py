"""Any map-style ``torch.utils.data.Dataset`` as an :class:`ImageDataset`, streamed.

:class:`StreamedDataset` holds the labels and reads images by index when the pipeline asks
(``load``, through DataLoader workers with ``workers`` > 0): a torchvision dataset (``CIFAR10``,
``ImageFolder`` ...), a ``Subset`` of one, or any Dataset of ``(image, label)`` pairs is never
decoded whole.
"""
from __future__ import annotations

import hashlib
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import ConcatDataset, Dataset, Subset

from ._base import ImageDataset, Indices, as_index, parallel_map, read_batches

__all__ = ["StreamedDataset"]

#: items per chunk of the label pass and of the pixel-range pass
_CHUNK = 256
#: images read to fingerprint a streamed set (evenly spaced)
_FINGERPRINT_IMAGES = 16
_GRAY_MODES = ("1", "L", "I", "I;16", "F")


def _pair(item: Any, i: int) -> Tuple[Any, Any]:
    if not isinstance(item, (tuple, list)) or len(item) < 2:
        raise TypeError(f"dataset[{i}] must be an (image, label) pair, got {type(item).__name__}")
    return item[0], item[1]


def _label(value: Any, i: int) -> int:
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise TypeError(f"dataset[{i}]'s label must be one class id, got a tensor of shape {tuple(value.shape)}")
        value = value.item()
    whole = isinstance(value, (int, np.integer)) or (
        isinstance(value, (float, np.floating)) and bool(np.isfinite(value)) and value == int(value))
    if isinstance(value, (bool, np.bool_)) or not whole or value < 0:
        raise TypeError(f"dataset[{i}]'s label must be a class id 0..K-1, got {value!r}")
    return int(value)


def image_tensor(image: Any, i: int) -> Tensor:
    """One item's image as a float32 ``(C, H, W)`` CPU tensor.

    A PIL image (a torchvision dataset without a transform) is converted as ``ToTensor`` does:
    ``L`` (gray) or ``RGB``, uint8 / 255 in [0, 1]. A tensor or array (what a transform gives) is
    taken as ``(C, H, W)`` or ``(H, W)``, its values cast to float32 unchanged.
    """
    if hasattr(image, "getbands") and hasattr(image, "convert"):  # a PIL image, without importing Pillow
        im = image.convert("L" if image.mode in _GRAY_MODES else "RGB")
        a = np.array(im, dtype=np.uint8)
        x = torch.from_numpy(a[None] if a.ndim == 2 else a.transpose(2, 0, 1).copy()).to(torch.float32).div_(255.0)
        return x
    try:
        x = torch.as_tensor(image, device="cpu")
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(f"dataset[{i}]'s image must be a PIL image, a tensor or an array, got "
                        f"{type(image).__name__}") from None
    if x.dim() == 2:
        x = x.unsqueeze(0)
    if x.dim() != 3:
        raise ValueError(f"dataset[{i}]'s image must be (C, H, W) or (H, W), got shape {tuple(x.shape)}")
    return x.to(torch.float32)


class _LabelReader:
    """Labels of a chunk of items, read through ``dataset[i]`` (images dropped at once)."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __call__(self, rows: List[int]) -> List[int]:
        return [_label(_pair(self.dataset[i], i)[1], i) for i in rows]


def declared_labels(dataset: Any) -> Optional[Tensor]:
    """The labels ``dataset`` declares without reading an item, or ``None``.

    ``targets`` (torchvision's datasets) or ``labels`` (torchvision's SVHN), one class id per item,
    read through ``Subset`` and ``ConcatDataset``. Not trusted when the dataset has a
    ``target_transform``, which changes the labels its items give.
    """
    if isinstance(dataset, Subset):
        inner = declared_labels(dataset.dataset)
        if inner is None:
            return None
        return inner[as_index(dataset.indices, len(inner), "Subset indices")]
    if isinstance(dataset, ConcatDataset):
        parts = [declared_labels(d) for d in dataset.datasets]
        return None if any(p is None for p in parts) else torch.cat(parts)
    if getattr(dataset, "target_transform", None) is not None:
        return None
    n = len(dataset)
    for attr in ("targets", "labels"):
        value = getattr(dataset, attr, None)
        if value is None or callable(value) or isinstance(value, (str, bytes)):
            continue
        try:
            t = torch.as_tensor(np.asarray(value), device="cpu")
        except (TypeError, ValueError, RuntimeError):
            continue
        if t.dim() != 1 or len(t) != n or t.dtype == torch.bool or t.dtype.is_complex:
            continue
        if t.dtype.is_floating_point and not bool((t == t.round()).all()):
            continue
        t = t.to(torch.int64)
        if n and int(t.min()) < 0:
            continue
        return t
    return None


class StreamedDataset(ImageDataset):
    """A map-style ``Dataset`` of ``(image, label)`` items read by index, never materialised.

    The labels are read once, when it is built: from the dataset's ``targets`` / ``labels`` when
    it declares them (torchvision's datasets; through ``Subset`` / ``ConcatDataset``; not with a
    ``target_transform``), else by one pass over the items that keeps the labels only (through
    ``workers`` DataLoader worker processes when > 0). One item is read for the image shape.
    Afterwards images are read only when asked (:meth:`load`): the pipeline's passes read them
    batch by batch, through ``workers`` DataLoader worker processes when > 0.

    Images are converted by :func:`image_tensor`: a PIL image to ``[0, 1]`` as torchvision's
    ``ToTensor`` (``L`` or ``RGB``), a tensor or array as it is (cast to float32), ``(C, H, W)``
    or ``(H, W)``. They are not normalised here (give a normalising transform to the dataset);
    every image must have the first one's shape.

    Parameters
    ----------
    dataset : Dataset
        Items ``dataset[i]`` for ``i`` in ``0 .. len(dataset) - 1``, each an ``(image, label)``
        pair (more entries are ignored).
    num_classes : int, optional
        Defaults to ``dataset.num_classes``, else ``len(dataset.classes)``, else the largest label + 1.
    workers : int
        DataLoader worker processes for passes over the set (0: read in the calling process).

    Raises
    ------
    TypeError
        ``dataset`` is not a Dataset with ``len``, an item is not an ``(image, label)`` pair, an
        image is not an image or a label not a class id.
    ValueError
        ``dataset`` is empty, or a label is outside ``0 .. num_classes - 1``.
    """

    def __init__(self, dataset: Dataset, num_classes: Optional[int] = None, workers: int = 0) -> None:
        if isinstance(dataset, ImageDataset):
            raise TypeError("dataset is an ImageDataset already: use it as it is")
        if not (hasattr(dataset, "__getitem__") and hasattr(dataset, "__len__")):
            raise TypeError(f"dataset must be a map-style torch Dataset (with __getitem__ and __len__), got "
                            f"{type(dataset).__name__}")
        if isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) or workers < 0:
            raise ValueError(f"workers must be a non-negative int, got {workers!r}")
        n = len(dataset)
        if n == 0:
            raise ValueError("dataset is empty")
        self.dataset = dataset
        self.workers: int = int(workers)
        self._rows: Optional[Tensor] = None  # positions in ``dataset`` (None: 0 .. n - 1)
        self._range: Optional[Tuple[Tensor, Tensor]] = None
        self._shape: Tuple[int, int, int] = tuple(image_tensor(_pair(dataset[0], 0)[0], 0).shape)  # type: ignore
        labels = declared_labels(dataset)
        if labels is None:
            chunks = [list(range(s, min(s + _CHUNK, n))) for s in range(0, n, _CHUNK)]
            labels = torch.tensor([y for part in parallel_map(_LabelReader(dataset), chunks, self.workers)
                                   for y in part], dtype=torch.int64, device="cpu")
        self.labels: Tensor = labels.contiguous()
        classes = getattr(dataset, "classes", None)
        if num_classes is None:
            num_classes = getattr(dataset, "num_classes", None)
        if num_classes is None and isinstance(classes, Sequence) and not isinstance(classes, str):
            num_classes = len(classes)
        if num_classes is None:
            num_classes = int(self.labels.max()) + 1
        if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
        self.num_classes: int = int(num_classes)
        if int(self.labels.max()) >= self.num_classes:
            raise ValueError(f"labels must lie in 0..{self.num_classes - 1}, got up to {int(self.labels.max())}")
        names = None
        if isinstance(classes, Sequence) and not isinstance(classes, str) and len(classes) == self.num_classes:
            names = [str(c) for c in classes]
        self.class_names: Optional[list] = names

    @property
    def image_shape(self) -> Tuple[int, int, int]:
        """``(C, H, W)`` of one image (the first item's)."""
        return self._shape

    def _row(self, index: int) -> int:
        return int(self._rows[index]) if self._rows is not None else int(index)

    def load(self, indices: Indices) -> Tensor:
        """The images at ``indices``, read item by item, as one float32 CPU tensor ``(n, C, H, W)``.

        Raises
        ------
        ValueError
            An image whose shape is not the first one's (the message names its index).
        """
        idx = as_index(indices, len(self))
        rows = self._rows[idx] if self._rows is not None else idx
        out = torch.empty((len(idx), *self._shape), dtype=torch.float32, device="cpu")
        for j, i in enumerate(rows.tolist()):
            x = image_tensor(_pair(self.dataset[i], i)[0], i)
            if tuple(x.shape) != self._shape:
                raise ValueError(f"dataset[{i}]'s image has shape {tuple(x.shape)}, the first one {self._shape}: "
                                 "every image must have one shape (resize them in the dataset's transform)")
            out[j] = x
        return out

    def __getitem__(self, index: int) -> Tuple[Tensor, int]:
        i = int(as_index([int(index)], len(self), "index")[0])
        return self.load([i])[0], int(self.labels[i])

    def subset(self, indices: Indices) -> "StreamedDataset":
        """The items at ``indices`` (same dataset, classes and workers; nothing is read)."""
        idx = as_index(indices, len(self))
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__)
        new._rows = self._rows[idx] if self._rows is not None else idx.clone()
        new.labels = self.labels[idx]
        new._range = None
        return new

    def pixel_range(self) -> Tuple[Tensor, Tensor]:
        """Per-channel minimum and maximum over every image, ``((C,), (C,))``: one pass, batch by
        batch (kept: a second call reads nothing)."""
        if self._range is None:
            c = self._shape[0]
            lo = torch.full((c,), float("inf"), device="cpu")
            hi = torch.full((c,), float("-inf"), device="cpu")
            idx = torch.arange(len(self), device="cpu")
            for x in read_batches(self, list(idx.split(_CHUNK))):
                flat = x.transpose(0, 1).reshape(c, -1)
                lo = torch.minimum(lo, flat.min(dim=1).values)
                hi = torch.maximum(hi, flat.max(dim=1).values)
            self._range = (lo, hi)
        return self._range

    def fingerprint(self) -> str:
        """A short hash of the labels, the positions read, the image shape and a few evenly
        spaced images (what a checkpoint of a run on this set must match)."""
        h = hashlib.sha256()
        h.update(repr((type(self.dataset).__name__, self._shape, self.num_classes, self.class_names)).encode())
        h.update(self.labels.numpy().tobytes())
        if self._rows is not None:
            h.update(self._rows.numpy().tobytes())
        sample = torch.linspace(0, len(self) - 1, min(_FINGERPRINT_IMAGES, len(self))).round().to(torch.int64)
        h.update(self.load(sample).numpy().tobytes())
        return h.hexdigest()[:16]

    def __repr__(self) -> str:
        return (f"StreamedDataset({type(self.dataset).__name__}, n={len(self)}, image_shape={self._shape}, "
                f"num_classes={self.num_classes}, workers={self.workers})")
