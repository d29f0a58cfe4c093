"""SVHN's cropped-digits files (``train_32x32.mat``, ``test_32x32.mat``), read with scipy.

Each file is a MATLAB file holding ``X``, uint8 images ``(32, 32, 3, N)``, and ``y``, labels
``(N, 1)`` in 1..10 where 10 stands for the digit 0. scipy's ``loadmat`` parses the MATLAB format
itself: no code in the file is run.
"""
from __future__ import annotations

import os
from typing import Union

import numpy as np
import torch

from .._extras import require_extra

from ._array import ArrayDataset

__all__ = ["svhn_mat"]

#: images converted to float32 per chunk: one float32 copy of the set, not two
_CHUNK = 8192


def svhn_mat(path: Union[str, os.PathLike]) -> ArrayDataset:
    """One SVHN split from its ``.mat`` file.

    Returns
    -------
    ArrayDataset
        Images ``(N, 3, 32, 32)`` in [0, 1] (uint8 / 255); labels ``y mod 10`` (the file's 10 is the
        digit 0), class ``k`` is digit ``k``.

    Raises
    ------
    ValueError
        The file cannot be read as a MATLAB file, or ``X`` / ``y`` are missing or malformed (the
        message names the file).
    """
    require_extra("svhn", "dataset 'svhn'")
    from scipy.io import loadmat

    path = os.fspath(path)
    try:
        mat = loadmat(path, variable_names=("X", "y"))
    except Exception as err:  # noqa: BLE001 - scipy raises several types for a file that is not MATLAB
        raise ValueError(f"{path}: cannot read it as a MATLAB file ({type(err).__name__}: {err})") from None
    x, y = mat.get("X"), mat.get("y")
    if not isinstance(x, np.ndarray) or x.dtype != np.uint8 or x.ndim != 4 or x.shape[2] != 3:
        got = f"{x.dtype} {x.shape}" if isinstance(x, np.ndarray) else "nothing"
        raise ValueError(f"{path}: 'X' must be uint8 images (H, W, 3, N), got {got}")
    if not isinstance(y, np.ndarray) or y.size != x.shape[3] or y.dtype.kind not in "iuf":
        got = f"{y.dtype} {y.shape}" if isinstance(y, np.ndarray) else "nothing"
        raise ValueError(f"{path}: 'y' must hold one label per image ({x.shape[3]}), got {got}")
    labels = y.reshape(-1)
    if labels.size and (labels.min() < 1 or labels.max() > 10 or not np.all(labels == np.round(labels))):
        raise ValueError(f"{path}: 'y' must hold the digits 1..10 (10 for the digit 0), got values "
                         f"{labels.min()}..{labels.max()}")
    n, (h, w) = x.shape[3], x.shape[:2]
    images = torch.empty((n, 3, h, w), dtype=torch.float32, device="cpu")
    for start in range(0, n, _CHUNK):  # (H, W, C, N) -> (N, C, H, W), a chunk at a time
        part = np.ascontiguousarray(x[..., start:start + _CHUNK].transpose(3, 2, 0, 1))
        images[start:start + part.shape[0]] = torch.from_numpy(part)
    del x, mat
    images.div_(255.0)
    return ArrayDataset(images, torch.from_numpy(labels.astype(np.int64) % 10), 10, [str(d) for d in range(10)])
