"""Reading a saved ``state_dict`` (a ``teacher.pt``) into a model."""
from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Union

import torch
from torch import nn

__all__ = ["load_state_dict_file"]


def load_state_dict_file(model: nn.Module, path: Union[str, "os.PathLike[str]"]) -> nn.Module:
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
    FileNotFoundError
        ``path`` does not exist.
    ValueError
        The file is not a ``state_dict`` (not a torch file, not a mapping of parameter names, or
        it holds objects that ``weights_only`` refuses), or it does not fit ``model`` (missing,
        unexpected or misshapen entries). The message names ``path``.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such file: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except OSError:
        raise
    except Exception as err:  # not a torch file, or one that holds more than tensors
        raise ValueError(f"{path} is not a state_dict file readable with weights_only=True: {err}") from err
    if not isinstance(state, Mapping) or not all(isinstance(k, str) for k in state):
        raise ValueError(f"{path} is not a state_dict (a mapping of parameter names to tensors) "
                         f"but a {type(state).__name__}")
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise ValueError(f"{path} does not fit a {type(model).__name__}: {err}") from err
    return model
