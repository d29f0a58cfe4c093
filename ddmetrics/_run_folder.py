"""Run folders: what ``ddmetrics distill --out DIR`` writes, and the only folders it will replace.

A run folder is marked by a manifest, :data:`MANIFEST`, written last, that lists the files the
run wrote. ``--overwrite`` replaces a folder only when it is such a run folder holding nothing
but the listed files, and then replaces exactly those files: a project folder, the current
folder or one of its parents, the home folder, a folder with other files, or a file are refused
before any work, with the reason. Everything is written into a sibling temporary folder first,
so a failing or killed run leaves the previous run folder as it was.
"""
from __future__ import annotations

import json
import os
import tempfile
from typing import Callable, Dict, List, Optional

from ._io import PathLike, atomic_write_json

__all__ = ["MANIFEST", "check_out", "write_run_folder"]

MANIFEST = ".ddmetrics-run.json"
_KIND = "ddmetrics run folder"


def _listed(folder: str) -> Optional[List[str]]:
    """The files ``folder``'s manifest lists, or ``None`` when it has no readable manifest."""
    try:
        with open(os.path.join(folder, MANIFEST)) as fh:
            manifest = json.load(fh)
    except (OSError, ValueError):
        return None
    files = manifest.get("files") if isinstance(manifest, dict) and manifest.get("kind") == _KIND else None
    if not isinstance(files, list) or not all(isinstance(f, str) and f and os.path.basename(f) == f for f in files):
        return None
    return files


def _writable_ancestor(path: str) -> None:
    """Refuse ``path`` when no folder can be created or written where it would live."""
    parent = os.path.dirname(path)
    while parent and not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise ValueError(f"--out {path}: {parent} is not a folder")
    try:  # a probe file is the only reliable test (os.access says yes to root everywhere)
        fd, probe = tempfile.mkstemp(dir=parent, prefix=".ddmetrics-probe-")
        os.close(fd)
        os.remove(probe)
    except OSError as err:
        raise ValueError(f"--out {path}: cannot write in {parent} ({err.strerror or err})") from None


def check_out(out: PathLike, overwrite: bool) -> str:
    """Check, before any work, that a run may be written to ``out``; return its absolute path.

    Raises
    ------
    ValueError
        ``out`` is a file; exists without ``overwrite``; with ``overwrite`` is the current
        folder, one of its parents, the home folder or the root, is not a run folder, or holds
        files its manifest does not list; or nothing can be written where it would be.
    """
    path = os.path.abspath(os.fspath(out))
    if os.path.lexists(path) and not os.path.isdir(path):
        raise ValueError(f"--out {out} is a file, not a folder")
    if os.path.isdir(path):
        if not overwrite:
            raise ValueError(f"--out {out} exists; pass --overwrite to replace a previous run there")
        real, cwd = os.path.realpath(path), os.path.realpath(os.getcwd())
        protected = {os.path.realpath(os.path.expanduser("~")): "the home folder", os.path.realpath(os.sep): "/"}
        if real in protected or cwd == real or cwd.startswith(real.rstrip(os.sep) + os.sep):
            what = protected.get(real) or ("the current folder" if cwd == real else "a parent of the current folder")
            raise ValueError(f"--overwrite refuses --out {out}: it is {what}, never a run folder")
        listed = _listed(path)
        if listed is None:
            raise ValueError(f"--overwrite refuses --out {out}: it is not a ddmetrics run folder (no {MANIFEST}); "
                             "nothing was deleted")
        others = sorted(set(os.listdir(path)) - set(listed) - {MANIFEST})
        if others:
            shown = ", ".join(others[:5]) + (", ..." if len(others) > 5 else "")
            raise ValueError(f"--overwrite refuses --out {out}: it holds files the run did not write ({shown}); "
                             "nothing was deleted")
    _writable_ancestor(path)
    return path


def _temp_folder(path: str, names) -> str:
    """The sibling folder a run is written into first; one left by a killed run is cleared only
    when it holds nothing but run files."""
    tmp = os.path.join(os.path.dirname(path), "." + os.path.basename(path) + ".writing")
    if os.path.isdir(tmp):
        listed = _listed(tmp) or []
        for name in os.listdir(tmp):
            if name not in listed and name != MANIFEST and not name.endswith(".tmp") and name not in names:
                raise ValueError(f"{tmp} holds {name}, which ddmetrics did not write; remove it yourself")
        for name in os.listdir(tmp):
            os.remove(os.path.join(tmp, name))
        os.rmdir(tmp)
    os.makedirs(tmp)
    return tmp


def write_run_folder(out: PathLike, writers: Dict[str, Callable[[str], None]], overwrite: bool = False) -> str:
    """Write a run folder: ``writers[name](path)`` writes the file ``name``; the manifest comes last.

    The files are written into a sibling temporary folder; then either that folder is renamed
    to ``out``, or (``overwrite`` of a run folder, checked again now) the old run's listed files
    are replaced by the new ones. Returns the absolute path of ``out``.
    """
    path = check_out(out, overwrite)
    tmp = _temp_folder(path, set(writers))
    try:
        for name, write in writers.items():
            write(os.path.join(tmp, name))
        atomic_write_json(os.path.join(tmp, MANIFEST), {"kind": _KIND, "files": sorted(writers)})
        if not os.path.isdir(path):
            os.replace(tmp, path)
            return path
        old = _listed(path) or []
        # list old and new files first, so a run killed in the next lines still leaves a run folder
        atomic_write_json(os.path.join(path, MANIFEST), {"kind": _KIND, "files": sorted(set(old) | set(writers))})
        for name in old:  # the previous run's files, and only those
            try:
                os.remove(os.path.join(path, name))
            except FileNotFoundError:
                pass
        for name in sorted(writers) + [MANIFEST]:
            os.replace(os.path.join(tmp, name), os.path.join(path, name))
        os.rmdir(tmp)
        return path
    except BaseException:
        for name in os.listdir(tmp) if os.path.isdir(tmp) else []:
            os.remove(os.path.join(tmp, name))
        if os.path.isdir(tmp):
            os.rmdir(tmp)
        raise
