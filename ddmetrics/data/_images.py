"""Image-folder datasets read with Pillow (no torchvision): :class:`ImageFolder` streams them,
:class:`AnnotatedImageFolder` streams a folder of images labelled by an annotations file
(Tiny-ImageNet's ``val/``), :func:`image_folder` decodes a small folder into memory."""
from __future__ import annotations

import hashlib
import os
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import Any, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import get_worker_info

from ._array import ArrayDataset
from ._base import ImageDataset, Indices, as_index, parallel_map, read_batches

__all__ = ["AnnotatedImageFolder", "ImageFolder", "image_folder", "IMAGE_EXTENSIONS", "class_differences"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
_GRAY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"}
#: files per header-check call when listing (one DataLoader item)
_LIST_CHUNK = 512
#: images per batch of the passes this module makes itself (statistics, materialise)
_BATCH = 256
#: a class folder's sub-folder searched for images too (Tiny-ImageNet: ``train/<wnid>/images/``)
IMAGES_SUBFOLDER = "images"
#: the file that labels a Tiny-ImageNet validation folder's images (file name, class, box per line)
ANNOTATIONS_FILE = "val_annotations.txt"
_MODES = ("RGB", "L")

Stat = Union[float, Sequence[float], Tensor, None]


def _pil():
    from PIL import Image

    return Image


def _is_gray(im) -> bool:
    rgb = np.asarray(im.convert("RGB"))
    return bool((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all())


def _headers(paths: Sequence[str]) -> List[Tuple[Optional[str], Optional[Tuple[int, int]], Optional[str]]]:
    """``(mode, size, None)`` per readable file, ``(None, None, error)`` per unreadable one. Only
    the header is parsed (Pillow opens lazily); a palette image reports ``P:L``/``P:RGB``."""
    Image = _pil()
    out = []
    for path in paths:
        try:
            with Image.open(path) as im:
                mode, size = im.mode, tuple(im.size)
            out.append((mode, size, None))
        except Exception as err:  # noqa: BLE001 - any failure to identify the file means "unreadable"
            out.append((None, None, f"{type(err).__name__}: {err}"))
    return out


def _first_mode(path: str) -> str:
    """The mode of ``path``, with a palette image resolved to ``L`` (gray palette) or ``RGB``."""
    try:
        with _pil().open(path) as im:
            return ("L" if _is_gray(im) else "RGB") if im.mode == "P" else im.mode
    except Exception as err:  # noqa: BLE001 - re-raised naming the file
        raise ValueError(f"cannot read image {path!r}: {type(err).__name__}: {err}") from err


def _resized_size(w: int, h: int, size: int) -> Tuple[int, int]:
    """Shorter side to ``size``, aspect ratio kept (the longer side truncated, as torchvision)."""
    if w <= h:
        return size, max(size, int(size * h / w))
    return max(size, int(size * w / h)), size


def decode_image(path: str, mode: str, size: int) -> np.ndarray:
    """One file as ``uint8`` ``(C, size, size)``: converted to ``mode``, shorter side resized to
    ``size`` (bilinear), centre-cropped to ``size x size``.

    Raises
    ------
    ValueError
        The file cannot be decoded (the message names it).
    """
    Image = _pil()
    try:
        with Image.open(path) as im:
            im = im.convert(mode)
            w, h = im.size
            nw, nh = _resized_size(w, h, size)
            if (nw, nh) != (w, h):
                im = im.resize((nw, nh), resample=getattr(Image, "Resampling", Image).BILINEAR)
            if (nw, nh) != (size, size):
                left, top = int(round((nw - size) / 2.0)), int(round((nh - size) / 2.0))
                im = im.crop((left, top, left + size, top + size))
            a = np.array(im, dtype=np.uint8)  # a writable copy (torch.from_numpy warns on read-only)
    except Exception as err:  # noqa: BLE001 - re-raised naming the file
        raise ValueError(f"cannot decode image {path!r}: {type(err).__name__}: {err}") from err
    return a[None] if a.ndim == 2 else a.transpose(2, 0, 1)


def _channel_values(value: Stat, channels: int, name: str, positive: bool) -> Tensor:
    t = torch.as_tensor(value, dtype=torch.float32, device="cpu").flatten()
    if t.numel() == 1:
        t = t.expand(channels).clone()
    if t.numel() != channels:
        raise ValueError(f"{name} must have one value per channel ({channels}), got {t.numel()}")
    if not bool(torch.isfinite(t).all()) or (positive and not bool((t > 0).all())):
        raise ValueError(f"{name} must be finite{' and > 0' if positive else ''}, got {t.tolist()}")
    return t


def _check_stat_type(value: Stat, name: str) -> None:
    if value is None or isinstance(value, Tensor):
        return
    if isinstance(value, bool) or isinstance(value, str):
        raise TypeError(f"{name} must be a float, a sequence of floats (one per channel) or None, got {value!r}")
    if isinstance(value, (int, float, np.floating, np.integer)):
        return
    try:
        [float(v) for v in value]  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a float, a sequence of floats (one per channel) or None, "
                        f"got {type(value).__name__}") from None


def _image_names(folder: str) -> List[str]:
    """The image files directly in ``folder`` (sorted; hidden entries skipped)."""
    return sorted(f for f in os.listdir(folder)
                  if not f.startswith(".") and f.lower().endswith(IMAGE_EXTENSIONS)
                  and os.path.isfile(os.path.join(folder, f)))


def _class_files(root: str, name: str) -> List[str]:
    """Class ``name``'s images, as paths relative to ``root``: the image files of ``root/name``, then
    those of its ``images/`` sub-folder when it has one (Tiny-ImageNet's ``train/<wnid>/images/``)."""
    folder = os.path.join(root, name)
    files = [os.path.join(name, f) for f in _image_names(folder)]
    inner = os.path.join(folder, IMAGES_SUBFOLDER)
    if os.path.isdir(inner):
        files += [os.path.join(name, IMAGES_SUBFOLDER, f) for f in _image_names(inner)]
    return files


def class_differences(expected: Sequence[str], found: Sequence[str], limit: int = 5) -> str:
    """What differs between two sets of class names, in words ("" when they are the same set)."""
    missing = sorted(set(expected) - set(found))
    extra = sorted(set(found) - set(expected))

    def shown(names: List[str]) -> str:
        more = f" and {len(names) - limit} more" if len(names) > limit else ""
        return ", ".join(repr(n) for n in names[:limit]) + more

    parts = ([f"missing {len(missing)}: {shown(missing)}"] if missing else []) + \
            ([f"{len(extra)} not in the training classes: {shown(extra)}"] if extra else [])
    return "; ".join(parts)


def _positive_int(value: Any, name: str, allow_none: bool = False, minimum: int = 1) -> None:
    if allow_none and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        kind = "a positive int" if minimum == 1 else f"an int >= {minimum}"
        raise ValueError(f"{name} must be {kind}{' or None' if allow_none else ''}, got {value!r}")


class ImageFolder(ImageDataset):
    """An image folder with one sub-folder per class, decoded on access (nothing is held decoded).

    The files are listed once: class ``k`` is the ``k``-th sub-folder in sorted name order (or
    ``classes[k]``), its images the files with an image extension (:data:`IMAGE_EXTENSIONS`) in
    sorted name order, then those of its ``images/`` sub-folder when it has one (the layout of
    Tiny-ImageNet's ``train/<wnid>/images/*.JPEG``); hidden entries are skipped. Only labels and
    file names are kept in memory. Each image is decoded with Pillow when read: converted to
    ``RGB``, or to ``L`` when the first image of *every* class is grayscale (later images are then
    converted to ``L`` too), resized so that its shorter side is ``image_size`` (bilinear),
    centre-cropped to ``image_size x image_size``, scaled to [0, 1] and normalised per channel,
    ``(x - mean) / std``.

    Parameters
    ----------
    root : str or PathLike
        Folder with the class sub-folders.
    image_size : int or None
        Output side length S. ``None``: the images' own size when they all share one square
        size, else the smallest side found (sizes come from the file headers).
    mean, std : float or sequence of float, optional
        Per-channel normalisation in [0, 1] pixel units (a single value applies to every
        channel). When either is ``None`` both are estimated from a seeded uniform sample of at
        most ``stats_images`` images (:meth:`pixel_stats`); ``mean=0, std=1`` keeps [0, 1] pixels.
    workers : int
        DataLoader worker processes for passes over the set (listing, statistics, the
        pipeline's reads through :func:`~ddmetrics.data.read_batches`), and threads for one large
        :meth:`load`; 0 decodes in the calling process.
    stats_images : int
        Most images sampled to estimate ``mean``/``std`` (default 1000: for a folder of at most
        that many images the statistics are exact).
    seed : int
        Seed of that sample.
    classes : sequence of str, optional
        The class folders, in label order (a validation folder read with its training folder's
        classes). The sub-folders must be exactly these: otherwise ``ValueError`` naming the
        missing and the extra ones. ``None``: every sub-folder, sorted.
    mode : {"RGB", "L"}, optional
        The images' mode (a validation folder read in its training folder's mode); ``None``:
        chosen from the first image of each class as above.
    check_files : bool
        Parse every file's header when listing: a file Pillow cannot identify is skipped with a
        :class:`UserWarning` naming it. A file whose header parses but whose pixels cannot be
        decoded (truncated data) raises ``ValueError`` naming it when it is read. ``False``
        lists names only (faster on very large folders; unreadable files then raise when read).

    Raises
    ------
    ValueError
        ``root`` is not a directory or has no class sub-folders, a class folder has no
        (readable) images — the message names the folder —, or an argument is out of range.
    TypeError
        ``mean``/``std`` are not numbers.

    Examples
    --------
    >>> ds = ImageFolder("imagenette/train", image_size=64, workers=4)  # doctest: +SKIP
    >>> ds.image_shape, ds.num_classes, len(ds)                          # doctest: +SKIP
    ((3, 64, 64), 10, 9469)
    >>> x = ds.load(ds.class_indices(0)[:32])                            # (32, 3, 64, 64)  # doctest: +SKIP
    """

    def __init__(self, root: Union[str, os.PathLike], image_size: Optional[int] = 32, mean: Stat = None,
                 std: Stat = None, *, workers: int = 0, stats_images: int = 1000, seed: int = 0,
                 classes: Optional[Sequence[str]] = None, mode: Optional[str] = None,
                 check_files: bool = True) -> None:
        if not isinstance(root, (str, os.PathLike)):
            raise TypeError(f"root must be a path, got {type(root).__name__}")
        root = os.fspath(root)
        if not os.path.isdir(root):
            raise ValueError(f"root {root!r} is not a directory")
        _positive_int(image_size, "image_size", allow_none=True)
        _positive_int(workers, "workers", minimum=0)
        _positive_int(stats_images, "stats_images")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise TypeError(f"seed must be an int, got {type(seed).__name__}")
        if not isinstance(check_files, bool):
            raise TypeError(f"check_files must be True or False, got {check_files!r}")
        _check_stat_type(mean, "mean")
        _check_stat_type(std, "std")
        if (mean is None) != (std is None):
            raise ValueError("give both mean and std, or neither (to estimate both)")
        if classes is not None:
            if isinstance(classes, str) or not all(isinstance(c, str) for c in classes) or not classes:
                raise TypeError(f"classes must be a non-empty sequence of folder names, got {classes!r}")
            if len(set(classes)) != len(classes):
                raise ValueError("classes must not repeat a name")
        if mode is not None and mode not in _MODES:
            raise ValueError(f"mode must be one of {_MODES} or None, got {mode!r}")
        self.root: str = root
        self._given_classes: Optional[List[str]] = None if classes is None else [str(c) for c in classes]
        self.workers: int = int(workers)
        self._pool: Optional[Tuple[int, ThreadPoolExecutor]] = None
        self._pool_lock = threading.Lock()
        classes, files, labels, headers = self._list(check_files)
        self.class_names: Optional[list] = classes
        self.num_classes: int = len(classes)
        # names as one fixed-width bytes array, not a list of str: ~N x path length bytes, and no
        # per-item refcounts for forked DataLoader workers to copy-on-write
        self._files: np.ndarray = np.array([os.fsencode(f) for f in files], dtype=np.bytes_)
        self.labels: Tensor = torch.tensor(labels, dtype=torch.int64, device="cpu")
        firsts = [int(i) for i in np.unique(np.asarray(labels), return_index=True)[1]]  # each class's first image
        if mode is None:
            modes = [_first_mode(self._path(i)) for i in firsts]
            mode = "L" if all(m in _GRAY_MODES for m in modes) else "RGB"
        self.mode: str = mode
        if image_size is None:
            sizes = [s for _, s, _ in headers] if headers is not None else [self._size(i) for i in firsts]
            square = all(s == sizes[0] and s[0] == s[1] for s in sizes)
            image_size = sizes[0][0] if square else min(min(s) for s in sizes)
        self.image_size: int = int(image_size)
        channels = 1 if self.mode == "L" else 3
        if mean is None:
            self.mean = torch.zeros(channels, device="cpu")
            self.std = torch.ones(channels, device="cpu")
            mean, std = self.pixel_stats(stats_images, int(seed))
        self.mean: Tensor = _channel_values(mean, channels, "mean", positive=False)
        self.std: Tensor = _channel_values(std, channels, "std", positive=True)

    # ----------------------------------------------------------------- listing
    def _class_folders(self) -> List[str]:
        """The class sub-folders, in label order: the given ``classes`` (which must be exactly the
        sub-folders there) or every sub-folder, sorted."""
        root = self.root
        found = sorted(d for d in os.listdir(root) if not d.startswith(".") and os.path.isdir(os.path.join(root, d)))
        if self._given_classes is None:
            if not found:
                raise ValueError(f"root {root!r} has no class sub-folders")
            return found
        differ = class_differences(self._given_classes, found)
        if differ:
            raise ValueError(f"root {root!r}: its class folders are not the training folder's classes ({differ}); "
                             "a validation folder needs one sub-folder per training class, with the same names")
        return list(self._given_classes)

    def _listing(self) -> Tuple[List[str], List[str], List[int]]:
        """``(classes, files, labels)``: class names, image paths relative to ``root`` and their labels."""
        root = self.root
        classes = self._class_folders()
        per_class = []
        for name in classes:
            names = _class_files(root, name)
            if not names:
                raise ValueError(f"root {root!r}: class folder {name!r} has no images ({', '.join(IMAGE_EXTENSIONS)})")
            per_class.append(names)
        files = [f for names in per_class for f in names]
        labels = [k for k, names in enumerate(per_class) for _ in names]
        return classes, files, labels

    def _list(self, check: bool):
        root = self.root
        classes, files, labels = self._listing()
        if not check:
            return classes, files, labels, None
        paths = [os.path.join(root, f) for f in files]
        chunks = [paths[i:i + _LIST_CHUNK] for i in range(0, len(paths), _LIST_CHUNK)]
        headers = [h for part in parallel_map(_headers, chunks, self.workers) for h in part]
        bad = [i for i, (_, _, err) in enumerate(headers) if err is not None]
        for i in bad:
            warnings.warn(f"{type(self).__name__}: skipping unreadable image {paths[i]!r} ({headers[i][2]})",
                          UserWarning, stacklevel=3)
        if bad:
            before = np.bincount(np.asarray(labels), minlength=len(classes))
            keep = sorted(set(range(len(files))) - set(bad))
            files, labels, headers = [files[i] for i in keep], [labels[i] for i in keep], [headers[i] for i in keep]
            present = set(labels)
            for k, name in enumerate(classes):
                if k not in present:
                    raise ValueError(f"root {root!r}: class folder {name!r} has no readable images "
                                     f"(all {int(before[k])} files failed to open)")
        return classes, files, labels, headers

    def _path(self, i: int) -> str:
        return os.path.join(self.root, os.fsdecode(self._files[i]))

    def _size(self, i: int) -> Tuple[int, int]:
        try:
            with _pil().open(self._path(i)) as im:
                return tuple(im.size)
        except Exception as err:  # noqa: BLE001 - re-raised naming the file
            raise ValueError(f"cannot read image {self._path(i)!r}: {type(err).__name__}: {err}") from err

    # ----------------------------------------------------------------- reading
    @property
    def image_shape(self) -> Tuple[int, int, int]:
        """``(C, S, S)``: ``C`` 1 (mode ``L``) or 3 (``RGB``), ``S`` = ``image_size``."""
        return (1 if self.mode == "L" else 3, self.image_size, self.image_size)

    @property
    def files(self) -> List[str]:
        """The image paths, in index order."""
        return [self._path(i) for i in range(len(self))]

    def __getitem__(self, index: int) -> Tuple[Tensor, int]:
        if isinstance(index, bool) or not isinstance(index, (int, np.integer, Tensor)):
            raise TypeError(f"index must be an int, got {type(index).__name__}")
        i = int(as_index([int(index)], len(self), "index")[0])
        return self.load([i])[0], int(self.labels[i])

    def load(self, indices: Indices) -> Tensor:
        """Decode the images at ``indices`` into one normalised float32 CPU tensor ``(n, C, S, S)``.

        With ``workers > 0`` (and outside a DataLoader worker) the files are decoded by that many
        threads (Pillow releases the GIL while decoding and resizing); the result is the same.

        Raises
        ------
        IndexError, TypeError
            Bad indices.
        ValueError
            A file cannot be decoded (the message names it).
        """
        idx = as_index(indices, len(self))
        c, s, _ = self.image_shape
        out = torch.empty((len(idx), c, s, s), dtype=torch.float32, device="cpu")
        paths = [self._path(i) for i in idx.tolist()]

        def fill(j: int) -> None:
            out[j] = torch.from_numpy(decode_image(paths[j], self.mode, s))

        pool = self._threads() if len(paths) > 1 else None
        if pool is None:
            for j in range(len(paths)):
                fill(j)
        else:
            for _ in pool.map(fill, range(len(paths))):
                pass
        # the same operations as ArrayDataset / the in-memory reader: /255, then (x - mean) / std
        out.div_(255.0)
        out.sub_(self.mean.view(1, -1, 1, 1)).div_(self.std.view(1, -1, 1, 1))
        return out

    def _threads(self) -> Optional[ThreadPoolExecutor]:
        """A per-process thread pool of ``workers`` threads (None: decode in this thread). Never
        used inside a DataLoader worker, which is one of ``workers`` processes already."""
        if self.workers < 1 or get_worker_info() is not None:
            return None
        with self._pool_lock:
            if self._pool is None or self._pool[0] != os.getpid():  # a fork does not inherit threads
                self._pool = (os.getpid(), ThreadPoolExecutor(self.workers, thread_name_prefix="ImageFolder"))
            return self._pool[1]

    def __getstate__(self) -> dict:  # pickled into spawned DataLoader workers: no pool, no lock
        state = dict(self.__dict__)
        state["_pool"], state["_pool_lock"] = None, None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._pool_lock = threading.Lock()

    # ----------------------------------------------------------------- views and statistics
    def _copy(self, **changes: Any) -> "ImageFolder":
        new = object.__new__(type(self))
        new.__setstate__({**self.__getstate__(), **changes})
        return new

    def subset(self, indices: Indices) -> "ImageFolder":
        """The samples at ``indices`` as an ImageFolder (same classes, normalisation, workers)."""
        idx = as_index(indices, len(self))
        return self._copy(_files=self._files[idx.numpy()], labels=self.labels[idx])

    def normalized(self, mean: Stat, std: Stat) -> "ImageFolder":
        """The same files with another normalisation (``mean=0, std=1``: [0, 1] pixels)."""
        _check_stat_type(mean, "mean")
        _check_stat_type(std, "std")
        c = self.image_shape[0]
        return self._copy(mean=_channel_values(mean, c, "mean", False), std=_channel_values(std, c, "std", True))

    def pixel_stats(self, max_images: int = 1000, seed: int = 0) -> Tuple[Tensor, Tensor]:
        """Per-channel mean and (population) std in [0, 1] pixel units, float32, over a seeded
        uniform sample of at most ``max_images`` images (all of them when the set is smaller),
        accumulated in float64, batch by batch. A std below 1e-12 is reported as 1."""
        _positive_int(max_images, "max_images")
        gen = torch.Generator(device="cpu").manual_seed(int(seed))
        pick = torch.randperm(len(self), generator=gen, device="cpu")[:max_images]
        pick = torch.sort(pick).values  # in file order: sequential reads
        raw = self.normalized(0.0, 1.0)
        c = self.image_shape[0]
        s1 = torch.zeros(c, dtype=torch.float64, device="cpu")
        s2 = torch.zeros(c, dtype=torch.float64, device="cpu")
        count = 0
        for x in read_batches(raw, list(pick.split(_BATCH))):
            x = x.to(torch.float64)
            s1 += x.sum((0, 2, 3))
            s2 += x.square().sum((0, 2, 3))
            count += x.shape[0] * x.shape[2] * x.shape[3]
        mean = s1 / count
        std = (s2 / count - mean.square()).clamp_min(0).sqrt()
        std = torch.where(std > 1e-12, std, torch.ones_like(std))
        return mean.to(torch.float32), std.to(torch.float32)

    def materialize(self) -> ArrayDataset:
        """All images decoded into an :class:`ArrayDataset` (same labels, classes and values)."""
        idx = torch.arange(len(self), device="cpu")
        images = torch.cat(list(read_batches(self, list(idx.split(_BATCH)))))
        return ArrayDataset(images, self.labels.clone(), self.num_classes, self.class_names)

    def fingerprint(self) -> str:
        """A short hash of the file names, labels, size, mode and normalisation (no decoding):
        what a checkpoint of a run on this set must match."""
        h = hashlib.sha256()
        h.update(repr((self.image_shape, self.num_classes, self.class_names)).encode())
        h.update(self.labels.numpy().tobytes())
        h.update(b"\0".join(self._files.tolist()))
        h.update(self.mean.numpy().tobytes() + self.std.numpy().tobytes())
        return h.hexdigest()[:16]

    def __repr__(self) -> str:
        return (f"ImageFolder({self.root!r}, n={len(self)}, image_shape={self.image_shape}, "
                f"num_classes={self.num_classes}, workers={self.workers})")


class AnnotatedImageFolder(ImageFolder):
    """A folder of images labelled by an annotations file, decoded on access: Tiny-ImageNet's
    ``val/``, whose ``images/*.JPEG`` are labelled by ``val_annotations.txt`` (one line per image,
    tab-separated: the file name, its class — a WordNet id —, then a bounding box, ignored).

    Read with the training folder's classes: label ``k`` is ``classes[k]``. Everything else (mode,
    resizing, normalisation, ``workers``) is as :class:`ImageFolder`; files are in the order of
    the annotations file.

    Parameters
    ----------
    root : str or PathLike
        The folder holding ``images`` and ``annotations``.
    classes : sequence of str
        The class names in label order (the training folder's ``class_names``). The annotations
        must name exactly these classes, each for one image at least.
    image_size, mean, std, workers, stats_images, seed, mode, check_files
        As :class:`ImageFolder`.
    annotations : str
        The annotations file's name inside ``root``.
    images : str
        The sub-folder of ``root`` that holds the images.

    Raises
    ------
    ValueError
        The annotations file or the images folder is missing (the message names it), a line has
        fewer than two fields, a file is listed twice or is not in the images folder, or the
        annotated classes are not ``classes`` (the message names the differences).
    """

    def __init__(self, root: Union[str, os.PathLike], classes: Sequence[str], image_size: Optional[int] = 32,
                 mean: Stat = None, std: Stat = None, *, annotations: str = ANNOTATIONS_FILE,
                 images: str = IMAGES_SUBFOLDER, **kwargs: Any) -> None:
        if classes is None:
            raise TypeError("classes must be given: the training folder's class names, in label order")
        self._annotations, self._images = str(annotations), str(images)
        super().__init__(root, image_size, mean, std, classes=classes, **kwargs)

    @property
    def annotations_path(self) -> str:
        """The annotations file."""
        return os.path.join(self.root, self._annotations)

    def _listing(self) -> Tuple[List[str], List[str], List[int]]:
        root, path = self.root, self.annotations_path
        if not os.path.isfile(path):
            raise ValueError(f"the Tiny-ImageNet val folder {root!r} has no annotations file {path!r} (one line per "
                             f"image: file name, class); without it its {self._images}/ images have no labels")
        folder = os.path.join(root, self._images)
        if not os.path.isdir(folder):
            raise ValueError(f"{root!r} has no {self._images}/ sub-folder (the images that {path!r} labels)")
        on_disk = set(_image_names(folder))
        classes = list(self._given_classes or [])
        index = {c: k for k, c in enumerate(classes)}
        files: List[str] = []
        labels: List[int] = []
        named, seen, absent = set(), set(), []
        with open(path, encoding="utf-8") as fh:
            for line_no, line in enumerate(fh, 1):
                fields = line.split()
                if not fields:
                    continue
                if len(fields) < 2:
                    raise ValueError(f"{path}, line {line_no}: expected a file name and a class name, got "
                                     f"{line.strip()!r}")
                name, cls = fields[0], fields[1]
                named.add(cls)
                if name in seen:
                    raise ValueError(f"{path}, line {line_no}: {name!r} is listed twice")
                seen.add(name)
                if name not in on_disk:
                    absent.append(name)
                elif cls in index:
                    files.append(os.path.join(self._images, name))
                    labels.append(index[cls])
        differ = class_differences(classes, sorted(named))
        if differ:
            raise ValueError(f"{path}: its classes are not the training folder's ({differ}); the validation "
                             "images must be labelled with the training classes, each class at least once")
        if absent:
            more = f" and {len(absent) - 3} more" if len(absent) > 3 else ""
            raise ValueError(f"{path} lists {len(absent)} file(s) that are not images in {folder!r}: "
                             f"{', '.join(map(repr, absent[:3]))}{more}")
        unlisted = len(on_disk - seen)
        if unlisted:
            warnings.warn(f"AnnotatedImageFolder: {unlisted} image(s) in {folder!r} are not in {path!r} and are "
                          "skipped (no label)", UserWarning, stacklevel=4)
        return classes, files, labels


def image_folder(root: Union[str, os.PathLike], size: Optional[int] = 32) -> ArrayDataset:
    """Read a (small) image folder with one sub-folder per class into memory.

    ``ImageFolder(root, size, mean=0, std=1).materialize()``: the same listing, mode choice and
    resizing (shorter side to ``size``, centre crop) as :class:`ImageFolder`, pixels in [0, 1].
    For folders that do not fit in memory use :class:`ImageFolder` (or
    :func:`ddmetrics.data.load`, which streams image folders).

    Parameters
    ----------
    root : str or PathLike
        Folder with the class sub-folders.
    size : int or None
        Output side length. ``None`` keeps the images' size when they all share one square size and
        otherwise resizes to the smallest side found.

    Returns
    -------
    ArrayDataset
        Images ``(N, C, size, size)`` with ``C`` 1 or 3, labels, ``class_names`` = folder names.

    Raises
    ------
    ValueError
        If ``root`` has no class folders, a class folder has no images, or ``size`` is invalid.
    """
    if size is not None and (isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1):
        raise ValueError(f"size must be a positive int or None, got {size!r}")
    return ImageFolder(root, size, mean=0.0, std=1.0).materialize()
