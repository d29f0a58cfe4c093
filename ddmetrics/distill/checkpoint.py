"""Checkpoints of a distillation run: per finished synthesis unit, and every ``every`` steps within a unit.

Units (:func:`ddmetrics.distill._loop.synthesis_units`) are numbered in a fixed order that depends
only on the run's settings (recorded in ``run.json``); a file ``class_NNNN`` holds unit ``NNNN``
(class ``NNNN`` when units are classes, as for DM, M3D, KR-dual and NCFM).

A checkpoint folder holds

``run.json``
    what the run is (method, settings, seed, IPC, a fingerprint of the data): a resume with
    anything else is refused.
``teacher.pt``
    the trained teacher's ``state_dict`` (barycenter matching).
``network_00.pt``
    the run's other trained networks, each a ``state_dict``: NCFM's pool members, G-VBSM's
    backbones (a resume trains none of them again).
``class_0003.pt``
    a finished unit: its synthetic images, weights and numeric info.
``class_0003.progress.pt``
    a unit in progress: everything its loop needs to continue exactly (images, optimiser,
    scheduler, random generators, the loss's state, the iteration).

``.ddmetrics-checkpoint.json``
    the manifest: whether ddmetrics created the folder, and every file it wrote there. A name
    is added (and the manifest atomically rewritten) *before* its file is created, so a process
    killed at any moment leaves no file of ours unlisted. Under ``torchrun`` rank ``r > 0``
    lists its own class files in ``.ddmetrics-checkpoint.rank<r>.json`` (no two processes ever
    write one manifest).

Only a new folder, an empty one, or one with such a manifest is used: a folder holding other
files is refused before any work, naming them, and a file that looks like a checkpoint file but
is not listed (``teacher.pt``, ``network_00.pt``, ``run.json``, ``class_0000.pt``) is refused too, so a user's file
is never read, overwritten or deleted. :func:`remove_checkpoint` removes the listed files (and
temporary files of listed names), then the manifests, then the folder if ddmetrics created it
and it is empty. Folders written before manifests existed are not resumed: nothing in them
shows which files ddmetrics wrote.

Every file is written to a temporary name and renamed (:mod:`ddmetrics._io`), so a process
killed at any moment leaves either the previous complete file or the new one, never a part.
Files are read with ``torch.load(..., weights_only=True)``: a checkpoint cannot run code.
Class files are keyed by unit, not by rank, so a run may resume with another number of ranks.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
from typing import Any, Dict, List, Optional, Set

import torch
from torch import Tensor, nn

from .._io import atomic_write_bytes, atomic_write_json, load_tensors
from ..models import load_state_dict_file

__all__ = ["Checkpoint", "MANIFEST", "check_checkpoint_folder", "data_fingerprint", "loop_state", "remove_checkpoint",
           "restore_loop"]

RUN_FILE = "run.json"
TEACHER_FILE = "teacher.pt"
MANIFEST = ".ddmetrics-checkpoint.json"
_KIND = "ddmetrics checkpoint folder"
_CLASS_FILE = re.compile(r"class_\d{4,}(\.progress)?\.pt")
_NETWORK_FILE = re.compile(r"network_\d{2,}\.pt")
_RANK_MANIFEST = re.compile(r"\.ddmetrics-checkpoint\.rank\d+\.json")


def _manifest_name(rank: int) -> str:
    """The manifest rank ``rank`` writes (rank 0: the folder's own)."""
    return MANIFEST if rank == 0 else f".ddmetrics-checkpoint.rank{rank}.json"


def _checkpoint_like(name: str) -> bool:
    """A name a checkpoint writes (which a user's file may also have)."""
    return name in (RUN_FILE, TEACHER_FILE) or any(p.fullmatch(name) for p in (_CLASS_FILE, _NETWORK_FILE))


def _read_manifest(folder: str, name: str) -> Optional[Dict[str, Any]]:
    """A manifest's content; ``None`` when there is none; ValueError when it is not ours."""
    path = os.path.join(folder, name)
    if not os.path.exists(path):
        return None
    try:
        with open(path) as fh:
            manifest = json.load(fh)
    except (OSError, ValueError):
        manifest = None
    files = manifest.get("files") if isinstance(manifest, dict) and manifest.get("kind") == _KIND else None
    if not isinstance(files, list) or not all(isinstance(f, str) and f and os.path.basename(f) == f for f in files):
        raise ValueError(f"{path} is not a ddmetrics checkpoint manifest; nothing was read or deleted")
    return manifest


def _manifests(folder: str) -> Optional[Dict[str, Any]]:
    """``{"created_folder": bool, "files": set, "manifests": list}`` over the folder's manifests;
    ``None`` when it has no manifest of its own (rank 0's)."""
    main = _read_manifest(folder, MANIFEST)
    if main is None:
        return None
    names = [MANIFEST] + sorted(n for n in os.listdir(folder) if _RANK_MANIFEST.fullmatch(n))
    files: Set[str] = set()
    for name in names:
        files.update((main if name == MANIFEST else _read_manifest(folder, name) or {"files": []})["files"])
    return {"created_folder": main.get("created_folder") is True, "files": files, "manifests": names}


def _is_temp_of(name: str, targets) -> bool:
    """Whether ``name`` is a temporary file :func:`ddmetrics._io.atomic_write` made for one of ``targets``."""
    return name.startswith(".") and name.endswith(".tmp") and any(name.startswith(f".{t}.") for t in targets)


def _shown(names: List[str]) -> str:
    return ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")


def check_checkpoint_folder(folder: str, resume: bool) -> None:
    """Check, before any work, that ``folder`` may hold a run's checkpoints.

    A new folder, an empty folder, or a ddmetrics checkpoint folder (it holds
    ``.ddmetrics-checkpoint.json``) without a previous run (unless ``resume``) is accepted.

    Raises
    ------
    ValueError
        ``folder`` is a file; holds files but no manifest (files ddmetrics did not write, or
        a checkpoint from before manifests); holds a checkpoint-like file (``teacher.pt``,
        ``network_NN.pt``, ``run.json``, ``class_NNNN.pt``) its manifest does not list; or holds a previous run
        and ``resume`` is false. Nothing is read, written or deleted.
    """
    folder = os.fspath(folder)
    if os.path.lexists(folder) and not os.path.isdir(folder):
        raise ValueError(f"checkpoint folder {folder} is a file")
    if not os.path.isdir(folder):
        return
    listing = sorted(os.listdir(folder))
    ours = _manifests(folder)
    if ours is None:
        # a run killed while writing its first manifest leaves only that manifest's temporary file
        if all(_is_temp_of(n, [MANIFEST]) for n in listing):
            return
        if resume and RUN_FILE in listing:
            raise ValueError(f"checkpoint folder {folder} ({_shown(listing)}) has no {MANIFEST}: it was written by "
                             "an older ddmetrics, or not by ddmetrics, so which files are ddmetrics' cannot be told; "
                             "it is not resumed and nothing was touched (remove it and start again)")
        raise ValueError(f"checkpoint folder {folder} holds files ddmetrics did not write ({_shown(listing)}); "
                         "pass a new or empty folder (nothing was touched)")
    foreign = [n for n in listing if _checkpoint_like(n) and n not in ours["files"]]
    if foreign:
        raise ValueError(f"checkpoint folder {folder} holds {_shown(foreign)}, which ddmetrics did not write there; "
                         "move it away (nothing was touched)")
    if not resume and any(n in ours["files"] for n in listing):
        raise ValueError(f"checkpoint folder {folder} holds a previous run; resume it or remove it")


def data_fingerprint(images: Tensor, labels: Tensor) -> str:
    """A short hash of a data set's shape, labels and a strided sample of its pixels."""
    h = hashlib.sha1()
    h.update(repr(tuple(images.shape)).encode())
    h.update(labels.to(torch.int64).contiguous().numpy().tobytes())
    step = max(1, len(images) // 1024)
    h.update(images[::step].to(torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _on_cpu(obj: Any) -> Any:
    """``obj`` with every tensor moved to the CPU (checkpoints load on any device)."""
    if isinstance(obj, Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _on_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_on_cpu(v) for v in obj)
    return obj


def _save(path: str, obj: Any) -> None:
    buf = io.BytesIO()
    torch.save(_on_cpu(obj), buf)
    atomic_write_bytes(path, buf.getvalue())


def _load(path: str) -> Any:
    return load_tensors(path, "a ddmetrics checkpoint file")


class Checkpoint:
    """A checkpoint folder for one distillation run.

    Parameters
    ----------
    folder : str
        Where the files live: a new folder (created by :meth:`start`), an empty one, or a
        ddmetrics checkpoint folder.
    run : dict
        JSON-able description of the run; must equal the stored one on resume.
    every : int, optional
        Save a unit's progress every ``every`` iterations (``None``: only finished units).
    resume : bool
        ``True``: continue from the folder's files (the folder may also be new). ``False``: the
        folder must not hold a previous run's files.
    rank : int
        This process's rank: rank 0 owns the folder's manifest, rank ``r > 0`` lists its own
        files in ``.ddmetrics-checkpoint.rank<r>.json``.

    Raises
    ------
    ValueError
        ``every`` is not a positive int; the folder is refused by
        :func:`check_checkpoint_folder`; it holds another run (resume).

    Notes
    -----
    The constructor only reads (every rank checks the folder); :meth:`start`, on rank 0,
    creates the folder and its manifest before any file is written.
    """

    def __init__(self, folder: str, run: Dict[str, Any], every: Optional[int] = None, resume: bool = False,
                 rank: int = 0):
        if every is not None and (isinstance(every, bool) or not isinstance(every, int) or every < 1):
            raise ValueError(f"checkpoint_every must be a positive int or None, got {every!r}")
        self.folder, self.every, self.rank = os.fspath(folder), every, rank
        self.run = json.loads(json.dumps(run, sort_keys=True, default=str))
        check_checkpoint_folder(self.folder, resume)
        ours = _manifests(self.folder) if os.path.isdir(self.folder) else None
        self._created = not os.path.isdir(self.folder)  # by this run, in start()
        self._created_folder = ours is not None and ours["created_folder"]  # by this run or the one it continues
        mine = _read_manifest(self.folder, _manifest_name(rank)) if ours is not None else None
        self._listed: List[str] = sorted(mine["files"]) if mine is not None else []
        path = os.path.join(self.folder, RUN_FILE)
        if os.path.exists(path):
            with open(path) as fh:
                stored = json.load(fh)
            if stored != self.run:
                diff = sorted(k for k in set(stored) | set(self.run) if stored.get(k) != self.run.get(k))
                raise ValueError(f"checkpoint folder {self.folder} holds a different run (differs in: "
                                 f"{', '.join(diff)})")
        elif os.path.isdir(self.folder) and any(_CLASS_FILE.fullmatch(f) for f in os.listdir(self.folder)):
            raise ValueError(f"checkpoint folder {self.folder} holds class files but no {RUN_FILE}")

    def start(self) -> None:
        """Create the folder and its manifest, clear what a killed run left half-written, record
        the run (rank 0 calls this, after every rank has checked the folder and before any file
        is written)."""
        if self._created:
            os.makedirs(os.path.dirname(os.path.abspath(self.folder)), exist_ok=True)
            os.mkdir(self.folder)  # FileExistsError if it appeared since the check: never adopt a folder
        ours = _manifests(self.folder)
        if ours is None:
            for name in os.listdir(self.folder):  # what a run killed in its first manifest write left
                if _is_temp_of(name, [MANIFEST]):
                    os.remove(self._path(name))
            self._created_folder = self._created
            self._list_all([])
        else:
            # a process killed inside a write leaves its temp file: clear those of listed names only
            for name in os.listdir(self.folder):
                if _is_temp_of(name, ours["files"] | set(ours["manifests"])):
                    os.remove(self._path(name))
        if not os.path.exists(self._path(RUN_FILE)):
            self._add(RUN_FILE)
            atomic_write_json(self._path(RUN_FILE), self.run)

    def _path(self, name: str) -> str:
        return os.path.join(self.folder, name)

    def _list_all(self, names: List[str]) -> None:
        """Rewrite this rank's manifest to list ``names`` (atomically)."""
        manifest: Dict[str, Any] = {"kind": _KIND, "files": sorted(names)}
        if self.rank == 0:
            manifest["created_folder"] = self._created_folder
        atomic_write_json(self._path(_manifest_name(self.rank)), manifest)
        self._listed = sorted(names)

    def _add(self, name: str) -> None:
        """List ``name`` in this rank's manifest; called before the file is created."""
        if name not in self._listed:
            self._list_all(self._listed + [name])

    # -- teacher
    def load_teacher(self, model: nn.Module) -> bool:
        """Load the stored teacher into ``model``; ``False`` when there is none."""
        path = self._path(TEACHER_FILE)
        if not os.path.exists(path):
            return False
        load_state_dict_file(model, path)
        return True

    def save_teacher(self, model: nn.Module) -> None:
        self._add(TEACHER_FILE)
        _save(self._path(TEACHER_FILE), model.state_dict())

    # -- the run's other trained networks (NCFM's pool, G-VBSM's backbones), by their index in the run
    def load_network(self, index: int, model: nn.Module) -> bool:
        """Load the stored network ``index`` into ``model``; ``False`` when there is none."""
        path = self._path(f"network_{index:02d}.pt")
        if not os.path.exists(path):
            return False
        load_state_dict_file(model, path)
        return True

    def save_network(self, index: int, model: nn.Module) -> None:
        self._add(f"network_{index:02d}.pt")
        _save(self._path(f"network_{index:02d}.pt"), model.state_dict())

    # -- units (the files keep their class_NNNN names: module docstring)
    def finished(self, k: int) -> Optional[Dict[str, Any]]:
        """Unit ``k``'s result (``images``, ``weights``, ``info``) or ``None``."""
        path = self._path(f"class_{k:04d}.pt")
        return _load(path) if os.path.exists(path) else None

    def finish(self, k: int, result: Dict[str, Any]) -> None:
        """Store unit ``k``'s result and drop its progress file."""
        self._add(f"class_{k:04d}.pt")
        _save(self._path(f"class_{k:04d}.pt"), result)
        try:
            os.remove(self._path(f"class_{k:04d}.progress.pt"))
        except FileNotFoundError:
            pass

    def progress(self, k: int) -> Optional[Dict[str, Any]]:
        """Unit ``k``'s in-progress state or ``None``."""
        path = self._path(f"class_{k:04d}.progress.pt")
        return _load(path) if os.path.exists(path) else None

    def due(self, iteration: int, total: int) -> bool:
        """Whether to save progress after ``iteration`` + 1 of ``total`` steps (never after the last)."""
        return self.every is not None and (iteration + 1) % self.every == 0 and iteration + 1 < total

    def save_progress(self, k: int, state: Dict[str, Any]) -> None:
        self._add(f"class_{k:04d}.progress.pt")
        _save(self._path(f"class_{k:04d}.progress.pt"), state)


def remove_checkpoint(folder: str) -> None:
    """Delete the files ddmetrics wrote in ``folder``, as its manifests list them, then the
    manifests, then ``folder`` if ddmetrics created it and it is empty; nothing else. A folder
    without a manifest is left as it is."""
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        return
    ours = _manifests(folder)
    if ours is None:
        return
    manifests = ours["manifests"]
    for name in sorted(os.listdir(folder)):  # the manifests go last: a kill in between leaves them listing the rest
        if name not in manifests and (name in ours["files"] or _is_temp_of(name, ours["files"] | set(manifests))):
            os.remove(os.path.join(folder, name))
    for name in manifests[::-1]:  # rank 0's (the folder's own) last
        os.remove(os.path.join(folder, name))
    if ours["created_folder"] and not os.listdir(folder):
        os.rmdir(folder)


def loop_state(opt: torch.optim.Optimizer, sched, gen) -> Dict[str, Any]:
    """The optimiser, scheduler and generator state a synthesis loop needs to continue exactly
    (``gen``: a generator, or a batch of classes' list of them)."""
    states = [g.get_state() for g in gen] if isinstance(gen, list) else gen.get_state()
    return {"optimizer": opt.state_dict(), "scheduler": sched.state_dict() if sched is not None else None,
            "generator": states}


def restore_loop(state: Dict[str, Any], opt: torch.optim.Optimizer, sched, gen) -> None:
    """Inverse of :func:`loop_state`, in place."""
    opt.load_state_dict(state["optimizer"])
    if sched is not None:
        sched.load_state_dict(state["scheduler"])
    if isinstance(gen, list):
        for g, st in zip(gen, state["generator"]):
            g.set_state(st)
    else:
        gen.set_state(state["generator"])
