"""The IDX files of MNIST and Fashion-MNIST (``train-images-idx3-ubyte[.gz]`` ...), parsed with numpy.

An IDX file is a 4-byte magic number — two zero bytes, a type code, the number of dimensions —
then one big-endian uint32 per dimension, then the values, big-endian, in C order. MNIST and
Fashion-MNIST ship uint8 images ``(N, 28, 28)`` and uint8 labels ``(N,)``, gzip-compressed.
"""
from __future__ import annotations

import gzip
import os
from typing import Optional, Sequence, Union

import numpy as np
import torch

from ._array import ArrayDataset

__all__ = ["read_idx", "idx_dataset"]

#: IDX type code -> numpy dtype (big-endian)
_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_GZIP_MAGIC = b"\x1f\x8b"


def read_idx(path: Union[str, os.PathLike]) -> np.ndarray:
    """The array stored in the IDX file ``path`` (gzip-compressed or not: told by its first bytes).

    Returns
    -------
    ndarray
        In native byte order, shape and dtype as the header says.

    Raises
    ------
    ValueError
        The file is not an IDX file, or its size does not match its header (the message names it).
    """
    path = os.fspath(path)
    with open(path, "rb") as fh:
        compressed = fh.read(2) == _GZIP_MAGIC
    try:
        with (gzip.open(path, "rb") if compressed else open(path, "rb")) as fh:
            data = fh.read()
    except (OSError, EOFError) as err:  # a truncated or corrupt gzip stream
        raise ValueError(f"{path}: cannot read it ({type(err).__name__}: {err})") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_TYPES:
        raise ValueError(f"{path}: not an IDX file (it must start with two zero bytes, a type code in "
                         f"{sorted(hex(c) for c in _IDX_TYPES)} and the number of dimensions)")
    dtype, ndim = np.dtype(_IDX_TYPES[data[2]]), data[3]
    start = 4 + 4 * ndim
    if len(data) < start:
        raise ValueError(f"{path}: truncated IDX header ({ndim} dimensions, {len(data)} bytes)")
    shape = tuple(int(v) for v in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    expected = start + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected:
        raise ValueError(f"{path}: its header gives shape {shape} of {dtype.name} ({expected} bytes), the file has "
                         f"{len(data)} bytes")
    # astype copies: a writable array in native order (frombuffer's view of bytes is read-only)
    return np.frombuffer(data, dtype=dtype, offset=start).reshape(shape).astype(dtype.newbyteorder("="))


def idx_dataset(images_path: Union[str, os.PathLike], labels_path: Union[str, os.PathLike],
                class_names: Optional[Sequence[str]] = None) -> ArrayDataset:
    """One split of MNIST or Fashion-MNIST from its two IDX files.

    Parameters
    ----------
    images_path : str or PathLike
        uint8 images ``(N, H, W)`` (``*-images-idx3-ubyte[.gz]``).
    labels_path : str or PathLike
        uint8 class ids ``(N,)`` (``*-labels-idx1-ubyte[.gz]``).
    class_names : sequence of str, optional
        One name per class (the class count is its length, else the largest label + 1).

    Returns
    -------
    ArrayDataset
        Images ``(N, 1, H, W)`` in [0, 1] (uint8 / 255), int64 labels.
    """
    x, y = read_idx(images_path), read_idx(labels_path)
    if x.dtype != np.uint8 or x.ndim != 3:
        raise ValueError(f"{os.fspath(images_path)}: expected uint8 images (N, H, W), got {x.dtype} {x.shape}")
    if y.ndim != 1 or y.dtype.kind not in "iu":
        raise ValueError(f"{os.fspath(labels_path)}: expected integer labels (N,), got {y.dtype} {y.shape}")
    if len(y) != len(x):
        raise ValueError(f"{os.fspath(labels_path)} has {len(y)} labels for the {len(x)} images of "
                         f"{os.fspath(images_path)}")
    images = torch.from_numpy(x).unsqueeze(1).to(torch.float32).div_(255.0)
    return ArrayDataset(images, torch.from_numpy(y.astype(np.int64)),
                        len(class_names) if class_names is not None else None, class_names)
