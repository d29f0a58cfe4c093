"""What the pipeline reads from a real data set: :class:`ImageDataset` and batch reads.

An :class:`ImageDataset` exposes its labels (held in memory) and reads images by index in
batches (:meth:`ImageDataset.load`), so a caller never needs the whole set decoded. Two kinds
exist: :class:`~ddmetrics.data.ArrayDataset` (in memory; ``load`` is plain indexing) and
:class:`~ddmetrics.data.ImageFolder` (decodes files on access). :func:`read_batches` reads a
sequence of index batches, through ``DataLoader`` worker processes when asked.
"""
from __future__ import annotations

from typing import Any, Callable, Iterator, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

__all__ = ["ImageDataset", "as_index", "iterate_on_cpu", "pixel_bounds", "read_batches", "parallel_map"]

Indices = Union[Sequence[int], Tensor, np.ndarray]


def as_index(indices: Indices, n: int, name: str = "indices") -> Tensor:
    """``indices`` as a 1-D int64 CPU tensor of positions in ``0 .. n - 1`` (negative ones wrap).

    Raises
    ------
    TypeError
        Boolean or floating-point indices.
    IndexError
        An index outside ``-n .. n - 1``.
    """
    if isinstance(indices, Tensor):
        idx = indices.detach().to("cpu")
    else:
        arr = np.asarray(indices)
        if arr.dtype == object:
            raise TypeError(f"{name} must be integer positions, got an object array")
        idx = torch.as_tensor(arr, device="cpu")
    if idx.numel() == 0:
        return torch.zeros(0, dtype=torch.int64, device="cpu")
    if idx.dtype == torch.bool:
        raise TypeError(f"{name} must be integer positions, not a boolean mask")
    if torch.is_floating_point(idx) or torch.is_complex(idx):
        raise TypeError(f"{name} must be integers, got dtype {idx.dtype}")
    idx = idx.to(torch.int64).flatten()
    lo, hi = int(idx.min()), int(idx.max())
    if lo < -n or hi >= n:
        raise IndexError(f"{name} must lie in {-n}..{n - 1} for a data set of {n} images, got {lo}..{hi}")
    return torch.where(idx < 0, idx + n, idx) if lo < 0 else idx


class ImageDataset(Dataset):
    """A labelled image set that reads its images by index, in batches.

    Subclasses hold ``labels`` (``LongTensor``, shape ``(N,)``), ``num_classes`` and
    ``class_names`` in memory and implement :attr:`image_shape`, :meth:`load` and
    :meth:`subset`. ``workers`` is how many ``DataLoader`` worker processes passes over the
    set use (0: read in the calling process).
    """

    labels: Tensor
    num_classes: int
    class_names: Optional[list]
    workers: int = 0

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def image_shape(self) -> Tuple[int, int, int]:
        """``(C, H, W)`` of one image."""
        raise NotImplementedError

    def load(self, indices: Indices) -> Tensor:
        """The images at ``indices`` as one float32 CPU tensor ``(len(indices), C, H, W)``."""
        raise NotImplementedError

    def subset(self, indices: Indices) -> "ImageDataset":
        """A data set of the samples at ``indices`` (same classes)."""
        raise NotImplementedError

    def class_indices(self, k: int) -> Tensor:
        """Indices (``LongTensor``) of the samples of class ``k``."""
        if not 0 <= int(k) < self.num_classes:
            raise ValueError(f"k must lie in 0..{self.num_classes - 1}, got {k}")
        return torch.nonzero(self.labels == int(k), as_tuple=False).flatten()


class _Calls(Dataset):
    """Item ``j`` is ``fn(chunks[j])``: one call per DataLoader item, in a worker process."""

    def __init__(self, fn: Callable[[Any], Any], chunks: Sequence[Any]) -> None:
        self.fn, self.chunks = fn, chunks

    def __len__(self) -> int:
        return len(self.chunks)

    def __getitem__(self, j: int) -> Any:
        return self.fn(self.chunks[j])


def _first(batch: Any) -> Any:  # collate_fn of batch_size=None loaders: keep the item as it is
    return batch


def parallel_map(fn: Callable[[Any], Any], chunks: Sequence[Any], workers: int = 0) -> Iterator[Any]:
    """``fn(chunk)`` for every chunk, in order: in this process (``workers=0``) or in ``workers``
    DataLoader worker processes, each holding at most two results ahead of the consumer."""
    if workers == 0 or len(chunks) <= 1:
        for chunk in chunks:
            yield fn(chunk)
        return
    loader = DataLoader(_Calls(fn, chunks), batch_size=None, shuffle=False, num_workers=min(workers, len(chunks)),
                        collate_fn=_first, prefetch_factor=2)
    yield from iterate_on_cpu(loader)


_END = object()


def iterate_on_cpu(loader: DataLoader) -> Iterator[Any]:
    """The items of ``loader``, with the CPU as the default device while it makes each one.

    A DataLoader makes its seed tensor (and collated labels) without a device: under another
    default device (``torch.set_default_device``) they would land there. The CPU context is held
    item by item, never across a ``yield``, where it would leak into the caller.
    """
    with torch.device("cpu"):
        it = iter(loader)
    while True:
        with torch.device("cpu"):
            item = next(it, _END)
        if item is _END:
            return
        yield item


def read_batches(dataset: ImageDataset, index_batches: Sequence[Tensor],
                 workers: Optional[int] = None) -> Iterator[Tensor]:
    """``dataset.load(b)`` for every index batch ``b``, in order.

    ``workers`` (default ``dataset.workers``) > 0 reads the batches in DataLoader worker processes:
    at most ``2 * workers`` batches are decoded ahead of the consumer, never the whole set.
    """
    workers = getattr(dataset, "workers", 0) if workers is None else workers
    if isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) or workers < 0:
        raise ValueError(f"workers must be a non-negative int, got {workers!r}")
    return parallel_map(dataset.load, list(index_batches), int(workers))


def pixel_bounds(dataset: ImageDataset) -> Tuple[Tensor, Tensor]:
    """The valid pixel range of ``dataset``'s (normalised) images, per channel: ``(low, high)``, each ``(C,)``.

    A dataset that knows its normalisation (an :class:`~ddmetrics.data.ImageFolder`'s ``mean`` /
    ``std`` in [0, 1] pixel units) gives ``((0 - mean) / std, (1 - mean) / std)`` — the range
    the released methods clamp synthetic images to. An in-memory dataset gives its images'
    per-channel minimum and maximum, which is the same range when each channel takes the values
    0 and 1 somewhere (MNIST, CIFAR and the digits do); a streamed Dataset
    (:class:`~ddmetrics.data.StreamedDataset`) the same, found by one pass over its images.
    """
    mean, std = getattr(dataset, "mean", None), getattr(dataset, "std", None)
    if isinstance(mean, Tensor) and isinstance(std, Tensor):
        return ((0 - mean) / std).float(), ((1 - mean) / std).float()
    pixel_range = getattr(dataset, "pixel_range", None)
    if callable(pixel_range):  # a streamed Dataset: its images' range, found by one pass
        low, high = pixel_range()
        return low.float(), high.float()
    images = getattr(dataset, "images", None)
    if not isinstance(images, Tensor):
        raise ValueError("clamp='pixel' needs the data's pixel range: give an ArrayDataset, an ImageFolder, a "
                         "Dataset of (image, label) pairs, or a dataset with mean/std attributes (per channel, in "
                         "[0, 1] pixel units)")
    flat = images.transpose(0, 1).reshape(images.shape[1], -1)
    return flat.min(dim=1).values.float(), flat.max(dim=1).values.float()
