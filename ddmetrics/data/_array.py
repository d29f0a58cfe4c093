"""In-memory image datasets: :class:`ArrayDataset`, array/npz/Dataset conversion and stratified splits.

The readers (:mod:`ddmetrics.data._cifar`, :mod:`ddmetrics.data._images`) build on this module
and :mod:`ddmetrics.data._base` only; :mod:`ddmetrics.data._load` dispatches to them.
"""
from __future__ import annotations

import os
from typing import Any, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from .._io import UNSAFE_FILE

from ._base import ImageDataset, Indices
from ._streamed import StreamedDataset

ArrayLike = Union[np.ndarray, Tensor]

__all__ = ["ArrayDataset", "from_arrays", "from_npz", "as_array_dataset", "as_dataset", "stratified_split"]


def _to_tensor(value: Any, name: str) -> Tensor:
    if isinstance(value, Tensor):
        return value.detach()
    if isinstance(value, np.ndarray):
        if value.dtype == object:
            raise TypeError(f"{name} must not be an object array")
        return torch.from_numpy(np.ascontiguousarray(value))
    if isinstance(value, (list, tuple)):
        return torch.as_tensor(np.asarray(value), device="cpu")
    raise TypeError(f"{name} must be a torch.Tensor or numpy.ndarray, got {type(value).__name__}")


def _class_ids(value: Any, name: str) -> Tensor:
    """Labels as an int64 tensor of class ids, or a ValueError naming ``name`` that says why they
    are not: strings, values that are not whole numbers, negative values. Whole numbers stored as
    floats (a CSV's labels) are taken as the integers they are."""
    if isinstance(value, (list, tuple)):
        value = np.asarray(value)
    if isinstance(value, np.ndarray) and value.dtype.kind in "US":  # str_ / bytes_
        raise ValueError(f"{name} holds strings (dtype {value.dtype}): labels must be integer class ids 0..K-1; map "
                         "the names to ids first, e.g. class_names, y = numpy.unique(y, return_inverse=True), and "
                         "pass class_names")
    dtype = str(value.dtype).replace("torch.", "") if hasattr(value, "dtype") else "?"
    labels = _to_tensor(value, name)
    if torch.is_floating_point(labels):
        whole = torch.isfinite(labels) & (labels == labels.round())
        if not bool(whole.all()):
            bad = float(labels[~whole][0])
            raise ValueError(f"{name} holds values that are not whole numbers (dtype {dtype}, e.g. {bad}): "
                             "labels must be integer class ids 0..K-1")
        labels = labels.to(torch.int64)
    if labels.numel() and labels.dtype != torch.bool and not torch.is_complex(labels) and int(labels.min()) < 0:
        raise ValueError(f"{name} holds negative values (smallest {int(labels.min())}): labels must be class ids "
                         "0..K-1")
    return labels


def _all_finite(x: Tensor, chunk: int = 1 << 22) -> bool:
    """``torch.isfinite(x).all()`` over chunks of ``chunk`` values: isfinite's temporaries are
    several times the input (over 1 GiB for CIFAR-10 in float32), a chunk's are a few MiB."""
    flat = x.reshape(-1)
    return all(bool(torch.isfinite(part).all()) for part in flat.split(chunk))


class ArrayDataset(ImageDataset):
    """A labelled image dataset held in memory as two tensors.

    Parameters
    ----------
    images : Tensor or ndarray, shape (N, C, H, W)
        Floating-point, finite pixel values; stored as ``float32``.
    labels : Tensor or ndarray, shape (N,)
        Integer class indices in ``0 .. num_classes - 1``; stored as ``int64``.
    num_classes : int, optional
        Number of classes. Defaults to ``labels.max() + 1`` (or ``len(class_names)``).
    class_names : sequence of str, optional
        One name per class.

    Raises
    ------
    TypeError
        If ``images``/``labels`` are not arrays or have the wrong dtype kind.
    ValueError
        If shapes disagree, ``images`` holds NaN/inf or ``labels`` are out of range.
    """

    def __init__(self, images: ArrayLike, labels: ArrayLike, num_classes: Optional[int] = None,
                 class_names: Optional[Sequence[str]] = None) -> None:
        images = _to_tensor(images, "images")
        labels = _to_tensor(labels, "labels")
        if not torch.is_floating_point(images):
            raise TypeError(f"images must be floating point, got dtype {images.dtype} "
                            "(use from_arrays to convert uint8/integer pixels)")
        if images.dim() != 4:
            raise ValueError(f"images must be 4-D (N, C, H, W), got shape {tuple(images.shape)}")
        if not _all_finite(images):
            raise ValueError("images contains NaN or infinite values")
        if labels.dtype == torch.bool or torch.is_floating_point(labels) or torch.is_complex(labels):
            raise TypeError(f"labels must be an integer tensor, got dtype {labels.dtype}")
        if labels.dim() != 1:
            raise ValueError(f"labels must be 1-D, got shape {tuple(labels.shape)}")
        if len(labels) != len(images):
            raise ValueError(f"labels has {len(labels)} entries but images has {len(images)}")
        labels = labels.to(torch.int64)
        if class_names is not None:
            class_names = [str(c) for c in class_names]
        if num_classes is None:
            if class_names is not None:
                num_classes = len(class_names)
            else:
                num_classes = int(labels.max()) + 1 if len(labels) else 0
        if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
        num_classes = int(num_classes)
        if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
            raise ValueError(f"labels must lie in 0..{num_classes - 1}, got range "
                             f"{int(labels.min())}..{int(labels.max())}")
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"class_names has {len(class_names)} entries, expected num_classes={num_classes}")
        self.images: Tensor = images.to(torch.float32).contiguous()
        self.labels: Tensor = labels.contiguous()
        self.num_classes: int = num_classes
        self.class_names: Optional[list] = class_names

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> Tuple[Tensor, int]:
        return self.images[index], int(self.labels[index])

    def __repr__(self) -> str:
        return (f"ArrayDataset(n={len(self)}, image_shape={self.image_shape}, "
                f"num_classes={self.num_classes})")

    @property
    def image_shape(self) -> Tuple[int, int, int]:
        """``(C, H, W)`` of one image."""
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def load(self, indices: Indices) -> Tensor:
        """``images[indices]``: the batch read the pipeline uses (see :class:`ImageDataset`)."""
        return self.images[indices]

    def subset(self, indices: Union[Sequence[int], Tensor, np.ndarray]) -> "ArrayDataset":
        """A new dataset with the samples at ``indices`` (same ``num_classes``/``class_names``)."""
        idx = torch.as_tensor(np.asarray(indices) if not isinstance(indices, Tensor) else indices, device="cpu")
        if idx.numel() == 0:
            idx = idx.to(torch.int64)
        if idx.dtype == torch.bool:
            raise TypeError("indices must be integer positions, not a boolean mask")
        if torch.is_floating_point(idx):
            raise TypeError(f"indices must be integers, got dtype {idx.dtype}")
        idx = idx.to(torch.int64).flatten()
        return ArrayDataset(self.images[idx], self.labels[idx], self.num_classes, self.class_names)


def from_arrays(x: ArrayLike, y: ArrayLike, num_classes: Optional[int] = None,
                class_names: Optional[Sequence[str]] = None) -> ArrayDataset:
    """Build an :class:`ArrayDataset` from numpy arrays or tensors.

    Layout rule for ``x``:

    * 3-D ``(N, H, W)``: grayscale, a channel axis is added -> ``(N, 1, H, W)``;
    * 4-D with ``x.shape[-1]`` in {1, 3, 4} and ``x.shape[1]`` **not** in {1, 3, 4}: channels-last
      ``(N, H, W, C)``, transposed to ``(N, C, H, W)``;
    * any other 4-D array is taken as channels-first ``(N, C, H, W)`` (so an ambiguous
      ``(N, 3, H, 3)`` is read as channels-first).

    ``uint8`` pixels are scaled to [0, 1]; other integer/bool types are cast to float unchanged.

    Parameters
    ----------
    x : ndarray or Tensor
        Images.
    y : ndarray or Tensor, shape (N,)
        Integer class ids ``0 .. K-1`` (whole numbers stored as floats are accepted; strings,
        fractions and negative values are refused with a ValueError naming ``y``).
    num_classes : int, optional
        Defaults to ``y.max() + 1``.
    class_names : sequence of str, optional
        One name per class.

    Returns
    -------
    ArrayDataset
    """
    images = _to_tensor(x, "x")
    if images.dim() == 3:
        images = images.unsqueeze(1)
    elif images.dim() == 4:
        if images.shape[-1] in (1, 3, 4) and images.shape[1] not in (1, 3, 4):
            images = images.permute(0, 3, 1, 2)
    else:
        raise ValueError(f"x must have shape (N, H, W), (N, C, H, W) or (N, H, W, C), got {tuple(images.shape)}")
    if images.dtype == torch.uint8:
        images = images.to(torch.float32) / 255.0
    elif not torch.is_floating_point(images):
        images = images.to(torch.float32)
    return ArrayDataset(images.contiguous(), _class_ids(y, "y"), num_classes, class_names)


def from_npz(path: Union[str, os.PathLike]) -> ArrayDataset:
    """Load an ``.npz`` file with keys ``x``/``y`` (or ``images``/``labels``).

    Optional keys: ``num_classes`` (scalar) and ``class_names`` (string array). The file is read
    with ``allow_pickle=False``; layout rules are those of :func:`from_arrays`.
    """
    try:
        with np.load(os.fspath(path), allow_pickle=False) as f:
            keys = set(f.files)
            for xk, yk in (("x", "y"), ("images", "labels")):
                if xk in keys and yk in keys:
                    x, y = f[xk], _class_ids(f[yk], f"the labels array {yk!r} of {os.fspath(path)}")
                    break
            else:
                raise ValueError(f"path {os.fspath(path)!r} must contain arrays 'x' and 'y' (or 'images' and "
                                 f"'labels'), found {sorted(keys)}")
            num_classes = int(f["num_classes"]) if "num_classes" in keys else None
            class_names = [str(c) for c in f["class_names"]] if "class_names" in keys else None
    except ValueError as err:
        if "allow_pickle" in str(err):  # an object array: say so in our words, not numpy's advice
            raise ValueError(f"{os.fspath(path)} {UNSAFE_FILE}") from None
        raise
    return from_arrays(x, y, num_classes=num_classes, class_names=class_names)


def as_array_dataset(ds: Dataset, num_classes: Optional[int] = None) -> ArrayDataset:
    """Convert any Dataset of ``(image tensor, label)`` pairs into an :class:`ArrayDataset`.

    An :class:`ArrayDataset` is returned unchanged (unless ``num_classes`` differs). The class count
    is taken from ``num_classes``, else ``ds.num_classes``/``len(ds.classes)``, else the labels.
    """
    if isinstance(ds, ArrayDataset):
        if num_classes is None or int(num_classes) == ds.num_classes:
            return ds
        return ArrayDataset(ds.images, ds.labels, num_classes)
    if not isinstance(ds, Dataset) and not (hasattr(ds, "__getitem__") and hasattr(ds, "__len__")):
        raise TypeError(f"ds must be a torch Dataset, got {type(ds).__name__}")
    n = len(ds)
    if n == 0:
        raise ValueError("ds is empty")
    images, labels = [], []
    for i in range(n):
        item = ds[i]
        if not isinstance(item, (tuple, list)) or len(item) < 2:
            raise TypeError(f"ds[{i}] must be an (image, label) pair, got {type(item).__name__}")
        img = torch.as_tensor(item[0], device="cpu")
        if not torch.is_floating_point(img):
            img = img.to(torch.float32)
        images.append(img)
        labels.append(int(item[1]))
    x = torch.stack(images)
    if x.dim() == 3:
        x = x.unsqueeze(1)
    if num_classes is None:
        num_classes = getattr(ds, "num_classes", None)
    if num_classes is None and hasattr(ds, "classes"):
        num_classes = len(ds.classes)
    return ArrayDataset(x, torch.tensor(labels, dtype=torch.int64, device="cpu"), num_classes)


def as_dataset(ds: Dataset, num_classes: Optional[int] = None) -> ImageDataset:
    """``ds`` as an :class:`ImageDataset`: an :class:`ArrayDataset` or a streaming
    :class:`~ddmetrics.data.ImageFolder` is returned as it is (nothing is decoded), any other
    Dataset of ``(image, label)`` pairs (a torchvision dataset, a ``Subset`` ...) is wrapped in a
    :class:`~ddmetrics.data.StreamedDataset`: its labels are read, its images only when the
    pipeline asks, batch by batch (never materialised; :func:`as_array_dataset` does that).
    """
    if isinstance(ds, ArrayDataset):
        return as_array_dataset(ds, num_classes)
    if isinstance(ds, ImageDataset):
        if num_classes is not None and int(num_classes) != ds.num_classes:
            raise ValueError(f"num_classes={num_classes} but the data set has {ds.num_classes} classes")
        return ds
    if not isinstance(ds, Dataset) and not (hasattr(ds, "__getitem__") and hasattr(ds, "__len__")):
        raise TypeError(f"ds must be a torch Dataset, got {type(ds).__name__}")
    return StreamedDataset(ds, num_classes)


def stratified_split(ds: ImageDataset, fraction: float, seed: int) -> Tuple[ImageDataset, ImageDataset]:
    """Split ``ds`` per class into ``(rest, held_out)`` with ``fraction`` of each class held out.

    Each class ``k`` with ``n_k`` samples gives ``round(fraction * n_k)`` samples to ``held_out``,
    clipped to ``1 .. n_k - 1`` when ``fraction > 0`` and ``n_k >= 2`` so that every class is present
    on both sides. The draw uses a ``torch.Generator`` seeded with ``seed``; indices keep their
    original order inside each part.

    Parameters
    ----------
    ds : ImageDataset or Dataset
        Dataset to split (any other Dataset is streamed, :func:`as_dataset`); the parts are
        ``ds.subset(...)``, so an :class:`~ddmetrics.data.ImageFolder` or a streamed Dataset
        splits without decoding.
    fraction : float
        Fraction in [0, 1) to hold out.
    seed : int
        Seed of the random draw (same seed => same split).

    Returns
    -------
    rest, held_out : same type as ``ds``
    """
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0.0 <= fraction < 1.0:
        raise ValueError(f"fraction must be a float in [0, 1), got {fraction!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    if not isinstance(ds, ImageDataset):
        ds = as_dataset(ds)
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    held, rest = [], []
    for k in range(ds.num_classes):
        idx = ds.class_indices(k)
        n_k = len(idx)
        if n_k == 0:
            continue
        take = int(round(fraction * n_k))
        if fraction > 0 and n_k >= 2:
            take = min(max(take, 1), n_k - 1)
        perm = idx[torch.randperm(n_k, generator=gen, device="cpu")]
        held.append(perm[:take])
        rest.append(perm[take:])
    held_idx = torch.sort(torch.cat(held)).values if held else torch.empty(0, dtype=torch.int64, device="cpu")
    rest_idx = torch.sort(torch.cat(rest)).values if rest else torch.empty(0, dtype=torch.int64, device="cpu")
    return ds.subset(rest_idx), ds.subset(held_idx)
