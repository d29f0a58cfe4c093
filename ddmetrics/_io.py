"""Atomic file writes: every file ddmetrics and its scripts write goes through here."""
from __future__ import annotations

import json
import os
import tempfile
from typing import IO, Any, Callable, Union

PathLike = Union[str, "os.PathLike[str]"]

__all__ = ["atomic_write", "atomic_write_bytes", "atomic_write_json"]


def atomic_write(path: PathLike, write: Callable[[IO[bytes]], None]) -> None:
    """Write a file atomically: ``write(fh)`` fills a temporary file next to ``path``, which is
    flushed, fsync'ed and renamed over ``path`` with :func:`os.replace`.

    Parameters
    ----------
    path : str or PathLike
        Destination; its parent directories are created.
    write : callable
        ``write(fh)`` with ``fh`` a binary file object opened for writing.

    Notes
    -----
    On any error (including ``KeyboardInterrupt``) the temporary file is removed and the
    previous content of ``path``, if any, is untouched.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = tempfile.NamedTemporaryFile(mode="wb", delete=False, dir=folder,
                                      prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    try:
        with tmp:
            write(tmp)
            tmp.flush()
            os.fsync(tmp.fileno())
        os.replace(tmp.name, path)
    except BaseException:
        try:
            os.remove(tmp.name)
        except FileNotFoundError:
            pass
        raise
    try:  # make the rename itself durable (best effort: not every platform allows it)
        dir_fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write`)."""
    atomic_write(path, lambda fh: fh.write(data))


def atomic_write_json(path: PathLike, obj: Any, indent: int = 2) -> None:
    """Write ``obj`` as JSON to ``path`` atomically."""
    atomic_write_bytes(path, (json.dumps(obj, indent=indent) + "\n").encode())
