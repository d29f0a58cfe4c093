"""Run folders: what ``ddmetrics distill --out DIR`` writes, and the only folders it will replace.

A run folder is marked by a manifest, :data:`MANIFEST`, written last, that lists the files the
run wrote. ``--overwrite`` replaces a folder only when it is such a run folder holding nothing
but the listed files, and then replaces exactly those files: a project folder, the current
folder or one of its parents, the home folder, a folder with other files, or a file are refused
before any work, with the reason. Everything is written into a sibling temporary folder first,
so a failing or killed run leaves the previous run folder as it was.

A run holds a lock on its folder from before any work to its end (:class:`FolderLock`, a file
``.NAME.lock`` beside the folder): a second run into the same folder is refused at once, naming
the first. :func:`check_file_out` is the same care for a single file (``--json``).
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import tempfile
import time
from typing import Callable, Dict, List, Optional

from ._io import PathLike, atomic_write_json

__all__ = ["MANIFEST", "FolderLock", "check_file_out", "check_out", "write_run_folder"]

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


def _writable_ancestor(path: str, option: str = "--out") -> None:
    """Refuse ``path`` when nothing can be created or written where it would live."""
    parent = os.path.dirname(path)
    while parent and not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise ValueError(f"{option} {path}: {parent} is not a folder")
    try:  # a probe file is the only reliable test (os.access says yes to root everywhere)
        fd, probe = tempfile.mkstemp(dir=parent, prefix=".ddmetrics-probe-")
        os.close(fd)
        os.remove(probe)
    except OSError as err:
        raise ValueError(f"{option} {path}: cannot write in {parent} ({err.strerror or err})") from None


def check_file_out(path: PathLike, overwrite: bool, option: str) -> str:
    """Check, before any work, that a single file (``--json OUT``) may be written; return its absolute path.

    Raises
    ------
    ValueError
        ``path`` is a folder; exists without ``overwrite``; or nothing can be written where it
        would be. The message names ``option``.
    """
    full = os.path.abspath(os.fspath(path))
    if os.path.isdir(full):
        raise ValueError(f"{option} {path} is a folder, not a file")
    if os.path.lexists(full) and not overwrite:
        raise ValueError(f"{option} {path} exists; pass --overwrite to replace it")
    _writable_ancestor(full, option)
    return full


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


def _pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _read_lock(fd: int) -> Optional[dict]:
    """A lock file's record: ``None`` when empty, ``{}`` when unreadable."""
    data = os.pread(fd, 4096, 0)
    if not data:
        return None
    try:
        info = json.loads(data)
    except ValueError:
        return {}
    return info if isinstance(info, dict) else {}


def _holder(info: Optional[dict]) -> str:
    """The run a lock record names, in words."""
    if info is None:
        return "which is taking the lock right now"
    if not info:
        return "an unreadable lock record"
    return f"pid {info.get('pid')} on host {info.get('host')}, started {info.get('started')}"


class FolderLock:
    """An exclusive lock on a folder a run writes: the file ``.NAME.lock`` beside the folder.

    The lock file records the holder's pid, host and start time, and the holder keeps an
    exclusive ``flock`` on it, which the system drops when the process ends, however it ends.
    A lock file nobody holds was left by a run that was killed: when the pid it names is no
    longer alive on this host it is taken over (:attr:`note` says so); when it names another
    host, or a pid still alive here, ddmetrics cannot tell and refuses, naming the file to remove.
    Folders created to hold the lock file are removed on release when they are empty.

    Parameters
    ----------
    folder : str or PathLike
        The folder to lock (it need not exist).
    option : str
        The option that named it ("--out"), for messages.

    Examples
    --------
    >>> with FolderLock("runs/x", "--out"):  # doctest: +SKIP
    ...     pass  # the run's work
    """

    def __init__(self, folder: PathLike, option: str):
        self.folder = os.path.abspath(os.fspath(folder))
        self.option, self._named = option, os.fspath(folder)  # messages name it as the user did
        self.file = os.path.join(os.path.dirname(self.folder), "." + os.path.basename(self.folder) + ".lock")
        self.note: Optional[str] = None
        self._fd: Optional[int] = None
        self._made: List[str] = []

    def acquire(self) -> "FolderLock":
        """Take the lock (a no-op when held).

        Raises
        ------
        ValueError
            Another run holds it (the message names its pid, host and start time), or a lock
            file left behind cannot be proven stale.
        """
        if self._fd is not None:
            return self
        missing, parent = [], os.path.dirname(self.file)
        while not os.path.isdir(parent):
            missing.append(parent)
            parent = os.path.dirname(parent)
        try:
            for folder in reversed(missing):
                os.mkdir(folder)
                self._made.append(folder)
            self._fd = self._take()
        except BaseException:
            self._remove_made()
            raise
        return self

    def _take(self) -> int:
        for _ in range(100):  # the holder may remove the file between our open and our flock: retry
            fd = os.open(self.file, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                info = _read_lock(fd)
                os.close(fd)
                if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise ValueError(f"{self.option} {self._named} is being written by another ddmetrics run "
                                     f"({_holder(info)}); wait for it to end or choose another {self.option}") from None
                raise
            try:
                current = os.stat(self.file)
            except FileNotFoundError:
                current = None
            if current is None or not os.path.samestat(os.fstat(fd), current):
                os.close(fd)  # we locked a file its holder has just removed
                continue
            try:
                self._check_left(_read_lock(fd))
                record = {"pid": os.getpid(), "host": socket.gethostname(),
                          "started": time.strftime("%Y-%m-%d %H:%M:%S")}
                os.ftruncate(fd, 0)
                os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
                os.fsync(fd)
            except BaseException:
                os.close(fd)
                raise
            return fd
        raise ValueError(f"{self.option} {self._named}: could not take {self.file}: other runs keep taking it")

    def _check_left(self, info: Optional[dict]) -> None:
        """Judge a lock file that nobody holds; refuse unless it provably belongs to an ended run."""
        if info is None:  # new (or its writer died before writing a word)
            return
        if info and info.get("host") != socket.gethostname():
            raise ValueError(f"{self.option} {self._named} is locked by a run on another host ({_holder(info)}), "
                             f"which cannot be checked from here; if it no longer runs, remove {self.file}")
        pid = info.get("pid")
        if isinstance(pid, int) and pid != os.getpid() and _pid_alive(pid):
            # flock says nobody holds it, yet the pid lives: a reused pid, or a file system without flock
            raise ValueError(f"{self.option} {self._named} is locked by {self.file} ({_holder(info)}) and that pid "
                             f"is alive; if it is not a ddmetrics run writing there, remove {self.file}")
        self.note = f"took over {self.file}, left by a run that ended without removing it ({_holder(info)})"

    def release(self) -> None:
        """Remove the lock file and let go of it (a no-op when not held)."""
        if self._fd is not None:
            try:
                if os.path.samestat(os.fstat(self._fd), os.stat(self.file)):  # still ours (not removed by hand)
                    os.remove(self.file)
            except FileNotFoundError:
                pass
            finally:
                os.close(self._fd)
                self._fd = None
        self._remove_made()

    def _remove_made(self) -> None:
        for folder in reversed(self._made):  # deepest first; a folder that now holds something stays
            try:
                os.rmdir(folder)
            except OSError:
                break
        self._made = []

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
