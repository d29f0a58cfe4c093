"""Reading a saved teacher: a ``state_dict`` file (``teacher.pt``) or a TorchScript file."""
from __future__ import annotations

import os
import zipfile
from collections.abc import Mapping
from typing import Callable, Union

import torch
from torch import nn

from .._io import load_tensors

__all__ = ["load_state_dict_file", "load_teacher_file"]

PathLike = Union[str, "os.PathLike[str]"]


def load_state_dict_file(model: nn.Module, path: PathLike) -> nn.Module:
    """Load the ``state_dict`` saved in ``path`` (by ``torch.save(model.state_dict(), path)``) into
    ``model``.

    The file is read with ``torch.load(path, map_location="cpu", weights_only=True)``: it cannot
    run code, and it loads on a machine without the GPU it was saved from.

    Parameters
    ----------
    model : nn.Module
        The model to fill; its architecture must match the file's (strict loading).
    path : str or PathLike
        The file.

    Returns
    -------
    nn.Module
        ``model`` itself, with the loaded parameters and buffers (its mode is left as it was).

    Raises
    ------
    ValueError
        The file is missing, is not a ``state_dict`` (not a torch file, not a mapping of parameter
        names, or it holds Python objects), or does not fit ``model`` (missing, unexpected or
        misshapen entries). The message names ``path``.
    """
    path = os.fspath(path)
    state = load_tensors(path, "a state_dict file")
    if isinstance(state, Mapping) and "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]  # the common {"state_dict": ..., "epoch": ...} training checkpoint
    if not isinstance(state, Mapping) or not all(isinstance(k, str) for k in state):
        raise ValueError(f"{path} is not a state_dict (a mapping of parameter names to tensors) "
                         f"but a {type(state).__name__}")
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        first = str(err).strip().splitlines()
        detail = " ".join(line.strip() for line in first[1:3]) if len(first) > 1 else first[0] if first else ""
        raise ValueError(f"{path} does not fit a {type(model).__name__}: {detail}") from None
    return model


def _is_torchscript(path: str) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return any("/code/" in name for name in zf.namelist())


def load_teacher_file(path: PathLike, build: Callable[[], nn.Module]) -> nn.Module:
    """A teacher from ``path``: a TorchScript file, or a ``state_dict`` loaded into ``build()``.

    A TorchScript file (``torch.jit.save``) is loaded as it is, onto the CPU, in eval mode; it must
    provide ``embed(x) -> features`` (a ``@torch.jit.export`` method) and ``classifier`` (a
    submodule or exported method from features to logits). A scripted classifier that has only
    a final linear layer such as ``fc`` is refused: :func:`as_teacher` reads the features with a
    forward pre-hook on that layer, and TorchScript modules take no Python hooks; save its
    ``state_dict`` and name the architecture instead. Any other file is read as a ``state_dict``
    (weights only) into ``build()`` and wrapped by :func:`as_teacher`.

    Parameters
    ----------
    path : str or PathLike
        The file.
    build : callable
        ``build() -> nn.Module``: the architecture a ``state_dict`` is loaded into (not called
        for a TorchScript file).

    Returns
    -------
    nn.Module
        The teacher in eval mode, with ``embed`` and ``classifier``. The BatchNorm layers of a
        TorchScript teacher cannot be hooked either: distil with it using ``reg="none"``.

    Raises
    ------
    ValueError
        The file is missing, not a state dict / TorchScript file, a TorchScript module without
        ``embed`` and ``classifier``, or a state dict that does not fit the model.
    """
    from ._teacher import as_teacher

    path = os.fspath(path)
    if os.path.isfile(path) and _is_torchscript(path):
        model = torch.jit.load(path, map_location="cpu")
        if hasattr(model, "embed") and hasattr(model, "classifier"):
            return model.eval()
        # as_teacher's forward hook on a final layer cannot be used: TorchScript takes no Python hooks
        raise ValueError(f"--teacher {path}: a TorchScript teacher must export embed(x) and classifier "
                         "(a scripted model's fc cannot be hooked); or save its state_dict and name the "
                         "architecture with --teacher-arch")
    return as_teacher(load_state_dict_file(build(), path)).eval()
