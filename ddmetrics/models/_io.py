"""Reading a saved teacher: a ``state_dict`` file (``teacher.pt``) or a TorchScript file."""
from __future__ import annotations

import os
import zipfile
from collections.abc import Mapping
from typing import Callable, Union

import torch
from torch import nn

from .._io import load_tensors
from ._resnet import ResNet, renamed_legacy_keys

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
        The model to fill; its architecture must match the file's (strict loading). A
        :class:`~ddmetrics.models.ResNet` takes torchvision's keys, the keys ddmetrics wrote
        before it used them (``stem.0``, ``stages.0.0.norm1``, ``classifier``...), and a ``conv1``
        of either stem (its stem is rebuilt to fit: see :class:`~ddmetrics.models.ResNet`).
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
        misshapen entries: how many of each and three examples). The message names ``path``; a
        file that does not fit is refused before anything is copied into ``model``.
    """
    path = os.fspath(path)
    state = load_tensors(path, "a state_dict file")
    # the common training checkpoints: {"state_dict": ..., "epoch": ...}, and torchvision's reference
    # scripts' {"model": ..., "epoch": ...} (SRe²L's CIFAR / Tiny-ImageNet teachers)
    if isinstance(state, Mapping):
        key = next((k for k in ("state_dict", "model") if isinstance(state.get(k), Mapping)), None)
        state = state if key is None else state[key]
    if not isinstance(state, Mapping) or not all(isinstance(k, str) for k in state):
        raise ValueError(f"{path} is not a state_dict (a mapping of parameter names to tensors) "
                         f"but a {type(state).__name__}")
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if isinstance(model, ResNet):
        state = renamed_legacy_keys(state)
        stem = ResNet.stem_of(state)
        if stem is not None and "conv1.weight" in expected:  # loading rebuilds the stem this conv1 is for
            expected["conv1.weight"] = model.stem_weight_shape(stem)
    # checked before loading: a strict load that fails has already copied the entries that fit
    mismatch = _mismatch(expected, state)
    if mismatch:
        raise ValueError(f"{path} does not fit a {type(model).__name__}: {mismatch}; save the state_dict of this "
                         "architecture built for the same channels, classes and image size (or a TorchScript "
                         "teacher)")
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        first = str(err).strip().splitlines()
        detail = " ".join(line.strip() for line in first[1:3]) if len(first) > 1 else first[0] if first else ""
        raise ValueError(f"{path} does not fit a {type(model).__name__}: {_cut(detail)}") from None
    return model


#: entries named per kind of mismatch in an error message
_EXAMPLES = 3


def _cut(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _examples(keys) -> str:
    return ", ".join(keys[:_EXAMPLES]) + (", ..." if len(keys) > _EXAMPLES else "")


def _mismatch(expected: Mapping, state: Mapping) -> str:
    """What keeps ``state`` from loading into a model whose ``state_dict`` has the entries and
    shapes ``expected`` (name -> shape), in a few words: how many entries are missing,
    unexpected or of another shape, three of each (empty when it fits)."""
    # BatchNorm fills in a missing num_batches_tracked itself (state dicts of older PyTorch)
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    shapes = [k for k in expected if k in state and isinstance(state[k], torch.Tensor)
              and tuple(state[k].shape) != expected[k]]
    parts = []
    if missing:
        parts.append(f"{len(missing)} entries of the model missing from the file ({_examples(missing)})")
    if unexpected:
        parts.append(f"{len(unexpected)} entries of the file unknown to the model ({_examples(unexpected)})")
    if shapes:
        shown = "; ".join(f"{k}: {tuple(state[k].shape)} in the file, {expected[k]} in the model"
                          for k in shapes[:_EXAMPLES])
        parts.append(f"{len(shapes)} of another shape ({shown}{'; ...' if len(shapes) > _EXAMPLES else ''})")
    return ", ".join(parts)


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
    (weights only) into ``build()`` and wrapped by :func:`as_teacher`; when ``build()`` gives a
    :class:`~ddmetrics.models.Teacher` (a torchvision or timm model), into the model it wraps,
    so the file holds the library's own keys.

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
    from ._teacher import Teacher, as_teacher

    path = os.fspath(path)
    if os.path.isfile(path) and _is_torchscript(path):
        model = torch.jit.load(path, map_location="cpu")
        if hasattr(model, "embed") and hasattr(model, "classifier"):
            return model.eval()
        # as_teacher's forward hook on a final layer cannot be used: TorchScript takes no Python hooks
        raise ValueError(f"--teacher {path}: a TorchScript teacher must export embed(x) and classifier "
                         "(a scripted model's fc cannot be hooked); or save its state_dict and name the "
                         "architecture with --teacher-arch")
    model = build()
    load_state_dict_file(model.model if isinstance(model, Teacher) else model, path)
    return as_teacher(model).eval()
