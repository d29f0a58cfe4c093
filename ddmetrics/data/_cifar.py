"""CIFAR-10/100 python batch files, read with a restricted unpickler."""
from __future__ import annotations

import io
import os
import pickle
from typing import Any, List, Optional, Union

import numpy as np
import torch

from ._array import ArrayDataset

__all__ = ["cifar_batches", "safe_unpickle", "is_cifar_dir"]


def _numpy_reconstruct():
    try:  # numpy >= 2
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


# (module, name) -> object. These are the only globals a CIFAR batch needs: numpy arrays pickled
# with protocols 2-4 are rebuilt from ``_reconstruct(ndarray, shape, dtype)`` plus a state tuple.
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy", "dtype"): lambda: np.dtype,
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only numpy's array-reconstruction globals and refuses all others."""

    def find_class(self, module: str, name: str) -> Any:
        factory = _ALLOWED.get((module, name))
        if factory is None:
            raise pickle.UnpicklingError(f"the file contains Python objects that could run code ({module}.{name}); "
                                         "ddmetrics only loads plain arrays from CIFAR batches (nothing was run)")
        return factory()

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("refusing persistent ids in a CIFAR batch file")


def safe_unpickle(data: bytes) -> Any:
    """Unpickle ``data`` allowing only plain containers, scalars, bytes/str and numpy arrays.

    Any other global (``os.system``, ``builtins.eval`` ...) raises :class:`pickle.UnpicklingError`
    before it is called. Python-2 pickles are read with ``encoding="bytes"`` (the original CIFAR
    files), so their keys come back as ``bytes``.
    """
    return _RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()


def _get(d: dict, key: str, path: str) -> Any:
    for k in (key, key.encode()):
        if k in d:
            return d[k]
    raise ValueError(f"{path}: missing key {key!r} (found {sorted(map(repr, d))})")


def _read_batch(path: str) -> dict:
    with open(path, "rb") as f:
        try:
            obj = safe_unpickle(f.read())
        except pickle.UnpicklingError as err:
            raise pickle.UnpicklingError(f"{path}: {err}") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a pickled dict, got {type(obj).__name__}")
    return obj


def _decode(names: List[Any]) -> List[str]:
    return [n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in names]


def is_cifar_dir(root: Union[str, os.PathLike]) -> bool:
    """True when ``root`` holds a CIFAR-10 (``data_batch_1``) or CIFAR-100 (``train``) batch file."""
    root = os.fspath(root)
    return any(os.path.isfile(os.path.join(root, f)) for f in ("data_batch_1", "train"))


def cifar_batches(root: Union[str, os.PathLike], train: bool = True) -> ArrayDataset:
    """Read CIFAR-10 or CIFAR-100 "python version" batch files from ``root``.

    CIFAR-10: ``data_batch_1`` ... ``data_batch_5`` (those present, at least ``data_batch_1``) or
    ``test_batch``, labels under ``labels``, class names from ``batches.meta`` when present.
    CIFAR-100: ``train`` or ``test``, fine labels under ``fine_labels``, names from ``meta``.
    Keys may be ``str`` or ``bytes``. Files are parsed with a restricted unpickler that refuses every
    global except numpy's array reconstruction (``numpy[._]core.multiarray._reconstruct``,
    ``numpy.ndarray``, ``numpy.dtype``), so a crafted file cannot run code. Arrays pickled with
    protocol 5 (``_frombuffer``) or bytes written by Python 3 with protocol <= 2 (``_codecs.encode``)
    are refused as well; re-save such files with protocol 4.

    Parameters
    ----------
    root : str or PathLike
        Directory with the batch files.
    train : bool
        Training batches (True) or the test batch (False).

    Returns
    -------
    ArrayDataset
        Images ``(N, 3, 32, 32)`` in [0, 1] (uint8 / 255) and int64 labels.

    Raises
    ------
    FileNotFoundError
        If the batch files are missing.
    pickle.UnpicklingError
        If a file references a forbidden global.
    ValueError
        If a file does not have the CIFAR layout.
    """
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise FileNotFoundError(f"root {root!r} is not a directory")
    if os.path.isfile(os.path.join(root, "data_batch_1")):
        if train:
            files = [f"data_batch_{i}" for i in range(1, 6) if os.path.isfile(os.path.join(root, f"data_batch_{i}"))]
        else:
            files = ["test_batch"]
        label_key, meta_file, names_key, default_classes = "labels", "batches.meta", "label_names", 10
    elif os.path.isfile(os.path.join(root, "train")):
        files = ["train" if train else "test"]
        label_key, meta_file, names_key, default_classes = "fine_labels", "meta", "fine_label_names", 100
    else:
        raise FileNotFoundError(f"root {root!r} has neither data_batch_1 (CIFAR-10) nor train (CIFAR-100)")
    xs, ys = [], []  # uint8 batches: a quarter of the float32 images
    for name in files:
        path = os.path.join(root, name)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"missing CIFAR batch file {path!r}")
        batch = _read_batch(path)
        data = np.asarray(_get(batch, "data", path))
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            raise ValueError(f"{path}: 'data' must be uint8 of shape (N, 3072), got {data.dtype} {data.shape}")
        labels = np.asarray(_get(batch, label_key, path), dtype=np.int64).reshape(-1)
        if len(labels) != len(data):
            raise ValueError(f"{path}: {len(labels)} labels for {len(data)} images")
        xs.append(data.reshape(-1, 3, 32, 32))
        ys.append(labels)
    class_names: Optional[List[str]] = None
    meta_path = os.path.join(root, meta_file)
    if os.path.isfile(meta_path):
        meta = _read_batch(meta_path)
        try:
            class_names = _decode(list(_get(meta, names_key, meta_path)))
        except ValueError:
            class_names = None
    num_classes = len(class_names) if class_names else default_classes
    # filled batch by batch and scaled in place: one float32 copy of the images, not three
    images = torch.empty((sum(len(x) for x in xs), 3, 32, 32), dtype=torch.float32, device="cpu")
    start = 0
    for x in xs:
        images[start:start + len(x)] = torch.from_numpy(x)
        start += len(x)
    del xs
    images.div_(255.0)
    return ArrayDataset(images, torch.from_numpy(np.concatenate(ys)), num_classes,
                        class_names if class_names and len(class_names) == num_classes else None)
