"""Checkpoints of a distillation run: per finished class, and every ``every`` steps within a class.

A checkpoint folder holds

``run.json``
    what the run is (method, settings, seed, IPC, a fingerprint of the data): a resume with
    anything else is refused.
``teacher.pt``
    the trained teacher's ``state_dict`` (barycenter matching).
``class_0003.pt``
    a finished class: its synthetic images, weights and numeric info.
``class_0003.progress.pt``
    a class in progress: everything its loop needs to continue exactly (images, optimiser,
    scheduler, random generators, the loss's state, the iteration).

Every file is written to a temporary name and renamed (:mod:`ddmetrics._io`), so a process
killed at any moment leaves either the previous complete file or the new one, never a part.
Files are read with ``torch.load(..., weights_only=True)``: a checkpoint cannot run code.
Class files are keyed by class, so a run may resume with another number of ranks.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
from typing import Any, Dict, Optional

import torch
from torch import Tensor, nn

from .._io import atomic_write_bytes, atomic_write_json, load_tensors
from ..models import load_state_dict_file

__all__ = ["Checkpoint", "data_fingerprint", "loop_state", "remove_checkpoint", "restore_loop"]

RUN_FILE = "run.json"
_CLASS_FILE = re.compile(r"class_\d{4,}(\.progress)?\.pt")


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
        Where the files live (created).
    run : dict
        JSON-able description of the run; must equal the stored one on resume.
    every : int, optional
        Save a class's progress every ``every`` iterations (``None``: only finished classes).
    resume : bool
        ``True``: continue from the folder's files (the folder may also be new). ``False``: the
        folder must not hold a previous run's files.

    Raises
    ------
    ValueError
        ``every`` is not a positive int; the folder holds another run (resume) or any run
        (no resume).
    """

    def __init__(self, folder: str, run: Dict[str, Any], every: Optional[int] = None, resume: bool = False):
        if every is not None and (isinstance(every, bool) or not isinstance(every, int) or every < 1):
            raise ValueError(f"checkpoint_every must be a positive int or None, got {every!r}")
        self.folder, self.every = os.fspath(folder), every
        self.run = json.loads(json.dumps(run, sort_keys=True, default=str))
        path = os.path.join(self.folder, RUN_FILE)
        if os.path.exists(path):
            if not resume:
                raise ValueError(f"checkpoint folder {self.folder} holds a previous run; resume it or remove it")
            with open(path) as fh:
                stored = json.load(fh)
            if stored != self.run:
                diff = sorted(k for k in set(stored) | set(self.run) if stored.get(k) != self.run.get(k))
                raise ValueError(f"checkpoint folder {self.folder} holds a different run (differs in: "
                                 f"{', '.join(diff)})")
        elif os.path.isdir(self.folder) and any(f.startswith("class_") for f in os.listdir(self.folder)):
            raise ValueError(f"checkpoint folder {self.folder} holds class files but no {RUN_FILE}")
        if resume and os.path.isdir(self.folder):
            # a process killed inside a write leaves its temp file (never a target file): clear them
            for name in os.listdir(self.folder):
                if name.startswith(".") and name.endswith(".tmp"):
                    try:
                        os.remove(os.path.join(self.folder, name))
                    except FileNotFoundError:  # another rank was faster
                        pass

    def start(self) -> None:
        """Record the run (rank 0 calls this before any class file is written)."""
        if not os.path.exists(os.path.join(self.folder, RUN_FILE)):
            atomic_write_json(os.path.join(self.folder, RUN_FILE), self.run)

    def _path(self, name: str) -> str:
        return os.path.join(self.folder, name)

    # -- teacher
    def load_teacher(self, model: nn.Module) -> bool:
        """Load the stored teacher into ``model``; ``False`` when there is none."""
        path = self._path("teacher.pt")
        if not os.path.exists(path):
            return False
        load_state_dict_file(model, path)
        return True

    def save_teacher(self, model: nn.Module) -> None:
        _save(self._path("teacher.pt"), model.state_dict())

    # -- classes
    def finished(self, k: int) -> Optional[Dict[str, Any]]:
        """Class ``k``'s result (``images``, ``weights``, ``info``) or ``None``."""
        path = self._path(f"class_{k:04d}.pt")
        return _load(path) if os.path.exists(path) else None

    def finish(self, k: int, result: Dict[str, Any]) -> None:
        """Store class ``k``'s result and drop its progress file."""
        _save(self._path(f"class_{k:04d}.pt"), result)
        try:
            os.remove(self._path(f"class_{k:04d}.progress.pt"))
        except FileNotFoundError:
            pass

    def progress(self, k: int) -> Optional[Dict[str, Any]]:
        """Class ``k``'s in-progress state or ``None``."""
        path = self._path(f"class_{k:04d}.progress.pt")
        return _load(path) if os.path.exists(path) else None

    def due(self, iteration: int, total: int) -> bool:
        """Whether to save progress after ``iteration`` + 1 of ``total`` steps (never after the last)."""
        return self.every is not None and (iteration + 1) % self.every == 0 and iteration + 1 < total

    def save_progress(self, k: int, state: Dict[str, Any]) -> None:
        _save(self._path(f"class_{k:04d}.progress.pt"), state)


def remove_checkpoint(folder: str) -> None:
    """Delete the files a checkpoint writes in ``folder`` (and ``folder``, once empty); nothing else."""
    if not os.path.isdir(folder):
        return
    for name in os.listdir(folder):
        if (name in (RUN_FILE, "teacher.pt") or _CLASS_FILE.fullmatch(name) is not None
                or (name.startswith(".") and name.endswith(".tmp"))):
            os.remove(os.path.join(folder, name))
    if not os.listdir(folder):
        os.rmdir(folder)


def loop_state(opt: torch.optim.Optimizer, sched, gen: torch.Generator) -> Dict[str, Any]:
    """The optimiser, scheduler and generator state a synthesis loop needs to continue exactly."""
    return {"optimizer": opt.state_dict(), "scheduler": sched.state_dict() if sched is not None else None,
            "generator": gen.get_state()}


def restore_loop(state: Dict[str, Any], opt: torch.optim.Optimizer, sched, gen: torch.Generator) -> None:
    """Inverse of :func:`loop_state`, in place."""
    opt.load_state_dict(state["optimizer"])
    if sched is not None:
        sched.load_state_dict(state["scheduler"])
    gen.set_state(state["generator"])
