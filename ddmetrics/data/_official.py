"""Datasets by name, read from the files their official distributions ship, with their own test split.

:data:`OFFICIAL` is the table: for each name, the files its reader needs, where under ``root``
they are looked for, the published files a download fetches (URL and MD5) and the reader. The
readers are :func:`~ddmetrics.data.cifar_batches` (CIFAR python batches), :func:`idx_dataset`
(MNIST / Fashion-MNIST IDX files), :func:`svhn_mat` (SVHN ``.mat`` files) and
:func:`tiny_imagenet` (the Tiny-ImageNet-200 folder as unzipped). Nothing is downloaded unless
asked (``download=True``); a download is written to a temporary file, checked against the
published MD5, then renamed, and an existing file is never replaced.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass, field
from http.client import HTTPException
from typing import Callable, Dict, List, Optional, Tuple, Union

from ._base import ImageDataset
from ._cifar import cifar_batches
from ._idx import idx_dataset
from ._images import ANNOTATIONS_FILE, IMAGES_SUBFOLDER, AnnotatedImageFolder, ImageFolder
from ._svhn import svhn_mat

__all__ = ["OFFICIAL", "NamedDataset", "RemoteFile", "download", "file_md5", "find_folder", "is_tiny_imagenet",
           "missing_message", "tiny_imagenet", "verify_md5"]

Reader = Callable[[str, Optional[int], int], Tuple[ImageDataset, ImageDataset]]
#: seconds without data before a download gives up
_TIMEOUT = 60.0
_BLOCK = 1 << 20


@dataclass(frozen=True)
class RemoteFile:
    """A published file: its name, where it is served (tried in order) and its MD5."""

    name: str
    urls: Tuple[str, ...]
    md5: str


@dataclass(frozen=True)
class NamedDataset:
    """How to find, fetch and read one named dataset.

    Attributes
    ----------
    name : str
        The name ``load`` takes.
    needs : tuple of tuple of str
        The entries the reader needs, each as the names it may have (``x.gz`` or ``x``), relative
        to the folder that holds them.
    folders : tuple of str
        Sub-folders of ``root`` searched after ``root`` itself (the official archive's folder
        first, then torchvision's). A download puts the files in the first one.
    files : tuple of RemoteFile
        What a download fetches.
    archive : bool
        The download is one archive holding ``folders[0]`` (unpacked into ``root``); else the
        files are placed in ``root/folders[0]`` as they are.
    read : callable
        ``read(folder, image_size, workers) -> (train, test)``.
    extra : str, optional
        The setup.cfg extra the reader needs.
    homepage : str
        Where the dataset is published.
    """

    name: str
    needs: Tuple[Tuple[str, ...], ...]
    folders: Tuple[str, ...]
    files: Tuple[RemoteFile, ...]
    archive: bool
    read: Reader = field(repr=False)
    homepage: str
    extra: Optional[str] = None


def _sized(reader: Callable[[str, bool], ImageDataset]) -> Reader:
    """An in-memory reader as a :data:`Reader` (its images keep their size; no workers)."""
    return lambda folder, image_size, workers: (reader(folder, True), reader(folder, False))


def _first(folder: str, names: Tuple[str, ...]) -> str:
    return next(os.path.join(folder, n) for n in names if os.path.exists(os.path.join(folder, n)))


#: the four IDX files MNIST and Fashion-MNIST ship, gzip-compressed or not
_IDX = tuple((name, name + ".gz") for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                                               "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"))
_FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                    "Ankle boot")


def _idx_reader(class_names: Tuple[str, ...]) -> Reader:
    def read(folder: str, train: bool) -> ImageDataset:
        images, labels = _IDX[0:2] if train else _IDX[2:4]
        return idx_dataset(_first(folder, images), _first(folder, labels), list(class_names))

    return _sized(read)


def _svhn(folder: str, train: bool) -> ImageDataset:
    return svhn_mat(os.path.join(folder, "train_32x32.mat" if train else "test_32x32.mat"))


# --------------------------------------------------------------------------- Tiny-ImageNet
def is_tiny_imagenet(root: Union[str, os.PathLike]) -> bool:
    """True when ``root`` has Tiny-ImageNet's layout: ``train/`` and ``val/`` sub-folders, the
    latter holding an ``images/`` sub-folder (its images labelled by ``val/val_annotations.txt``)."""
    root = os.fspath(root)
    return os.path.isdir(os.path.join(root, "train")) and os.path.isdir(os.path.join(root, "val", IMAGES_SUBFOLDER))


def tiny_imagenet(root: Union[str, os.PathLike], image_size: Optional[int] = None, workers: int = 0
                  ) -> Tuple[ImageFolder, AnnotatedImageFolder]:
    """Tiny-ImageNet-200 as unzipped: ``train/<wnid>/images/*.JPEG`` and the labelled ``val/``.

    Returns ``(train, val)`` in [0, 1] pixels (``mean=0, std=1``): the training folder (one class
    per ``wnid`` folder, read in its ``images/`` sub-folder) and the validation folder, its
    ``images/`` labelled by ``val_annotations.txt``, read with the training classes, size and
    mode. ``test/`` has no labels and is not read.

    Raises
    ------
    ValueError
        ``val/val_annotations.txt`` is missing (the message names it), or the classes it names are
        not the training folder's.
    """
    root = os.fspath(root)
    annotations = os.path.join(root, "val", ANNOTATIONS_FILE)
    if not os.path.isfile(annotations):  # before the training folder is listed
        raise ValueError(f"the Tiny-ImageNet folder {root!r} has no {annotations!r}: its val/images/ have no "
                         "labels without it (one line per image: file name, class)")
    train = ImageFolder(os.path.join(root, "train"), image_size, mean=0.0, std=1.0, workers=workers)
    val = AnnotatedImageFolder(os.path.join(root, "val"), train.class_names or [], train.image_size, mean=0.0,
                               std=1.0, workers=workers, mode=train.mode)
    return train, val


# --------------------------------------------------------------------------- the table
_MNIST_MIRRORS = ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/")
_FASHION_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
_SVHN_URL = "http://ufldl.stanford.edu/housenumbers/"

#: name -> how to find, fetch and read it. MD5s as published with the files (and used by
#: torchvision): an integrity check against a broken or truncated download, not a signature.
OFFICIAL: Dict[str, NamedDataset] = {d.name: d for d in (
    NamedDataset(
        "cifar10", needs=tuple((f"data_batch_{i}",) for i in range(1, 6)) + (("test_batch",),),
        folders=("cifar-10-batches-py",),
        files=(RemoteFile("cifar-10-python.tar.gz", ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",),
                          "c58f30108f718f92721af3b95e74349a"),),
        archive=True, read=_sized(lambda folder, train: cifar_batches(folder, train)),
        homepage="https://www.cs.toronto.edu/~kriz/cifar.html"),
    NamedDataset(
        "cifar100", needs=(("train",), ("test",)), folders=("cifar-100-python",),
        files=(RemoteFile("cifar-100-python.tar.gz", ("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",),
                          "eb9058c3a382ffc7106e4002c42a8d85"),),
        archive=True, read=_sized(lambda folder, train: cifar_batches(folder, train)),
        homepage="https://www.cs.toronto.edu/~kriz/cifar.html"),
    NamedDataset(
        "mnist-full", needs=_IDX, folders=("mnist", os.path.join("MNIST", "raw")),
        files=tuple(RemoteFile(n, tuple(m + n for m in _MNIST_MIRRORS), md5) for n, md5 in (
            ("train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
            ("train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432"),
            ("t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3"),
            ("t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c"))),
        archive=False, read=_idx_reader(tuple(str(d) for d in range(10))),
        homepage="http://yann.lecun.com/exdb/mnist/"),
    NamedDataset(
        "fashion-mnist", needs=_IDX, folders=("fashion-mnist", os.path.join("FashionMNIST", "raw")),
        files=tuple(RemoteFile(n, (_FASHION_URL + n,), md5) for n, md5 in (
            ("train-images-idx3-ubyte.gz", "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
            ("train-labels-idx1-ubyte.gz", "25c81989df183df01b3e8a0aad5dffbe"),
            ("t10k-images-idx3-ubyte.gz", "bef4ecab320f06d8554ea6380940ec79"),
            ("t10k-labels-idx1-ubyte.gz", "bb300cfdad3c16e7a12a480ee83cd310"))),
        archive=False, read=_idx_reader(_FASHION_CLASSES),
        homepage="https://github.com/zalandoresearch/fashion-mnist"),
    NamedDataset(
        "svhn", needs=(("train_32x32.mat",), ("test_32x32.mat",)), folders=("svhn",),
        files=(RemoteFile("train_32x32.mat", (_SVHN_URL + "train_32x32.mat",), "e26dedcc434d2e4c54c9b2d4a06d8373"),
               RemoteFile("test_32x32.mat", (_SVHN_URL + "test_32x32.mat",), "eb5a983be6a315427106f1b164d9cef3")),
        archive=False, read=_sized(_svhn), extra="svhn", homepage="http://ufldl.stanford.edu/housenumbers/"),
    NamedDataset(
        "tiny-imagenet", needs=(("train",), (os.path.join("val", ANNOTATIONS_FILE),),
                                (os.path.join("val", IMAGES_SUBFOLDER),)),
        folders=("tiny-imagenet-200",),
        files=(RemoteFile("tiny-imagenet-200.zip", ("http://cs231n.stanford.edu/tiny-imagenet-200.zip",),
                          "90528d7ca1a48142e341f4ef8d21d0de"),),
        archive=True, read=lambda folder, image_size, workers: tiny_imagenet(folder, image_size, workers),
        homepage="http://cs231n.stanford.edu/"),
)}


# --------------------------------------------------------------------------- finding the files
def _candidates(spec: NamedDataset, root: str) -> List[str]:
    return [root] + [os.path.join(root, f) for f in spec.folders]


def find_folder(spec: NamedDataset, root: Union[str, os.PathLike]) -> Optional[str]:
    """The first of ``root``, ``root/<folders>`` that holds every entry ``spec`` needs, or None."""
    for folder in _candidates(spec, os.fspath(root)):
        if all(any(os.path.exists(os.path.join(folder, n)) for n in names) for names in spec.needs):
            return folder
    return None


def missing_message(spec: NamedDataset, root: str) -> str:
    """Which files were expected where (the start of a missing-files error)."""
    expected = ", ".join(names[0] + "[.gz]" if names[1:] == (names[0] + ".gz",) else names[0]
                         for names in spec.needs)
    where = " or ".join(repr(f) for f in _candidates(spec, root))
    return f"dataset {spec.name!r}: root {root!r} does not hold its files: expected {expected} in {where}"


# --------------------------------------------------------------------------- downloading
def file_md5(path: Union[str, os.PathLike]) -> str:
    """The MD5 of a file, read a block at a time."""
    digest = hashlib.md5()  # the checksum the datasets publish; an integrity check only
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_md5(path: Union[str, os.PathLike], md5: str) -> None:
    """Raise ``ValueError`` naming ``path`` when its MD5 is not ``md5``."""
    got = file_md5(path)
    if got != md5.lower():
        raise ValueError(f"{os.fspath(path)}: MD5 {got}, not the published {md5.lower()} (a broken or changed "
                         "download)")


def _fetch(url: str, path: str, md5: str) -> None:
    """``url`` into ``path`` through a temporary file beside it, renamed once its MD5 is ``md5``."""
    import urllib.request

    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".part", dir=os.path.dirname(path))
    try:
        digest = hashlib.md5()  # the published checksum: an integrity check only
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=_TIMEOUT) as response:
            for block in iter(lambda: response.read(_BLOCK), b""):
                out.write(block)
                digest.update(block)
        if digest.hexdigest() != md5.lower():
            raise ValueError(f"{path}: the file downloaded from {url} has MD5 {digest.hexdigest()}, not the "
                             f"published {md5.lower()} (a broken or changed download; nothing was kept)")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _safe_members(tar: tarfile.TarFile, archive: str) -> List[tarfile.TarInfo]:
    """The archive's files and folders, refused when one would land outside the extraction folder."""
    members = []
    for m in tar.getmembers():
        parts = m.name.replace("\\", "/").split("/")
        if m.name.startswith(("/", "\\")) or ".." in parts or not (m.isfile() or m.isdir()):
            raise ValueError(f"{archive}: refusing member {m.name!r} (an absolute path, '..', or a link/device)")
        members.append(m)
    return members


def _unpack(archive: str, root: str, folder: str) -> None:
    """Unpack ``archive`` (tar.gz or zip) into a temporary folder in ``root``, then move its
    ``folder`` to ``root/folder`` (which must not exist)."""
    target = os.path.join(root, folder)
    tmp = tempfile.mkdtemp(prefix=".ddmetrics-unpack-", dir=root)
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                zf.extractall(tmp)  # zipfile drops absolute prefixes and '..' from member names
        else:
            with tarfile.open(archive, "r:*") as tar:
                members = _safe_members(tar, archive)
                # the standard library's own check as well, where it has one (Python >= 3.11.4)
                tar.extractall(tmp, members=members, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
        inner = os.path.join(tmp, folder)
        if not os.path.isdir(inner):
            raise ValueError(f"{archive} does not hold the folder {folder!r}")
        os.rename(inner, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def download(spec: NamedDataset, root: Union[str, os.PathLike]) -> str:
    """Fetch ``spec``'s published files into ``root`` and return the folder that holds them.

    Files already there with the published MD5 are not fetched again; an archive is unpacked
    into ``root/<folders[0]>`` and kept beside it. Nothing that exists is replaced: a file of the same name with
    another MD5, or an existing incomplete ``root/<folders[0]>``, is refused.

    Raises
    ------
    ValueError
        The download failed (no network, a server error: the message names the root, the URLs
        tried and the files expected, so they can be put there by hand), a checksum does not
        match, or something in the way would have to be replaced.
    """
    root = os.fspath(root)
    os.makedirs(root, exist_ok=True)
    home = os.path.join(root, spec.folders[0])
    if spec.archive and os.path.exists(home):
        raise ValueError(f"{missing_message(spec, root)}; {home!r} exists but is incomplete: move it away, then "
                         "download again")
    dest = root if spec.archive else home
    os.makedirs(dest, exist_ok=True)
    for remote in spec.files:
        path = os.path.join(dest, remote.name)
        if os.path.exists(path):
            verify_md5(path, remote.md5)  # ours from an earlier run, or the user's: never replaced
            continue
        errors = []
        for url in remote.urls:
            try:
                _fetch(url, path, remote.md5)
                break
            except (OSError, HTTPException) as err:  # URLError and timeouts are OSErrors
                errors.append(f"{url}: {type(err).__name__}: {err}")
        else:
            raise ValueError(f"{missing_message(spec, root)}, and downloading {remote.name} failed ("
                             f"{'; '.join(errors)}); without network, put the files there by hand (from "
                             f"{spec.homepage})")
    if spec.archive:
        _unpack(os.path.join(root, spec.files[0].name), root, spec.folders[0])
    folder = find_folder(spec, root)
    if folder is None:
        raise ValueError(f"{missing_message(spec, root)}, even after the download")
    return folder
