"""Atomic file writes: every file ddmetrics and its scripts write goes through here."""
from __future__ import annotations

import json
import os
import tempfile
from typing import IO, Any, Callable, Union

PathLike = Union[str, "os.PathLike[str]"]

__all__ = ["atomic_write", "atomic_write_bytes", "atomic_write_json", "load_tensors", "UNSAFE_FILE"]

#: our words for a file that torch's weights-only unpickler (or our CIFAR unpickler) refuses
UNSAFE_FILE = "contains Python objects that could run code; ddmetrics only loads plain tensors (nothing was run)"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def load_tensors(path: PathLike, what: str) -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)`` with errors in our own words.

    Parameters
    ----------
    path : str or PathLike
        The file.
    what : str
        What the file should be ("a synthetic set", "a checkpoint", ...), for the messages.

    Raises
    ------
    ValueError
        The file is missing, a directory, refused by the weights-only unpickler (it holds Python
        objects), or not a torch file; the message names ``path`` and never suggests
        ``weights_only=False``.
    """
    import pickle

    import torch

    path = os.fspath(path)
    if not os.path.exists(path):
        raise ValueError(f"{path} does not exist (expected {what})")
    if os.path.isdir(path):
        raise ValueError(f"{path} is a directory, not {what}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise ValueError(f"{path} {UNSAFE_FILE}") from None
    except Exception as err:  # a corrupt archive, a text file, ...
        raise ValueError(f"{path} is not {what} (not a readable torch file: {type(err).__name__})") from None


def _place_new(tmp: str, path: str) -> None:
    """Give the file ``tmp`` the name ``path`` only if nothing has that name (atomically, by a hard link)."""
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise ValueError(f"{path} exists (it appeared while this command ran); it was not replaced") from None
    except OSError:  # a file system without hard links: check, then rename
        if os.path.lexists(path):
            raise ValueError(f"{path} exists (it appeared while this command ran); it was not replaced") from None
        os.replace(tmp, path)
        return
    os.remove(tmp)


def atomic_write(path: PathLike, write: Callable[[IO[bytes]], None], replace: bool = True) -> None:
    """Write a file atomically: ``write(fh)`` fills a temporary file next to ``path``, which is
    flushed, fsync'ed and renamed over ``path`` with :func:`os.replace`.

    Parameters
    ----------
    path : str or PathLike
        Destination; its parent directories are created.
    write : callable
        ``write(fh)`` with ``fh`` a binary file object opened for writing.
    replace : bool
        ``False``: never replace an existing ``path`` (a ValueError then, and ``path`` is left
        as it is), for outputs that the user names and that exist only by their consent.

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
        # temp files are created 0600; the result gets the mode a plain open() would give it
        os.chmod(tmp.name, 0o666 & ~_umask())
        if replace:
            os.replace(tmp.name, path)
        else:
            _place_new(tmp.name, path)
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
