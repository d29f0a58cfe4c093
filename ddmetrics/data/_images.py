"""Image-folder datasets read with Pillow (no torchvision)."""
from __future__ import annotations

import os
from typing import List, Optional, Tuple, Union

import numpy as np
import torch

from ._array import ArrayDataset

__all__ = ["image_folder", "IMAGE_EXTENSIONS"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
_GRAY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"}


def _list(root: str) -> Tuple[List[str], List[Tuple[str, int]]]:
    classes = sorted(d for d in os.listdir(root)
                     if not d.startswith(".") and os.path.isdir(os.path.join(root, d)))
    if not classes:
        raise ValueError(f"root {root!r} has no class sub-folders")
    items = []
    for k, name in enumerate(classes):
        folder = os.path.join(root, name)
        files = sorted(f for f in os.listdir(folder)
                       if not f.startswith(".") and f.lower().endswith(IMAGE_EXTENSIONS)
                       and os.path.isfile(os.path.join(folder, f)))
        if not files:
            raise ValueError(f"root {root!r}: class folder {name!r} has no images ({', '.join(IMAGE_EXTENSIONS)})")
        items.extend((os.path.join(folder, f), k) for f in files)
    return classes, items


def image_folder(root: Union[str, os.PathLike], size: Optional[int] = 32) -> ArrayDataset:
    """Read an image folder with one sub-folder per class.

    Class ``k`` is the ``k``-th sub-folder in sorted name order; hidden entries are skipped. Every
    image is read with Pillow, converted to ``L`` when all images are grayscale and to ``RGB``
    otherwise, resized to ``size x size`` (bilinear) and scaled to [0, 1].

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
    from PIL import Image

    root = os.fspath(root)
    if not os.path.isdir(root):
        raise ValueError(f"root {root!r} is not a directory")
    if size is not None and (isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1):
        raise ValueError(f"size must be a positive int or None, got {size!r}")
    classes, items = _list(root)
    modes, sizes = [], []
    for path, _ in items:
        with Image.open(path) as im:
            mode = im.mode
            if mode == "P":
                mode = "L" if _is_gray(im) else "RGB"
            modes.append(mode)
            sizes.append(im.size)
    target_mode = "L" if all(m in _GRAY_MODES for m in modes) else "RGB"
    if size is None:
        size = sizes[0][0] if all(s == sizes[0] and s[0] == s[1] for s in sizes) else min(min(s) for s in sizes)
    resample = getattr(Image, "Resampling", Image).BILINEAR
    arrays = []
    for path, _ in items:
        with Image.open(path) as im:
            im = im.convert(target_mode)
            if im.size != (size, size):
                im = im.resize((size, size), resample=resample)
            a = np.asarray(im, dtype=np.uint8)
        arrays.append(a[None] if a.ndim == 2 else a.transpose(2, 0, 1))
    images = torch.from_numpy(np.stack(arrays)).to(torch.float32) / 255.0
    labels = torch.tensor([k for _, k in items], dtype=torch.int64)
    return ArrayDataset(images, labels, len(classes), classes)


def _is_gray(im) -> bool:
    rgb = np.asarray(im.convert("RGB"))
    return bool((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all())
