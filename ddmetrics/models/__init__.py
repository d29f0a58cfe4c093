"""Models (ConvNet-3, ResNetAP-10, ResNet-18; no torchvision) and seeded training by a recipe.

Every model has ``forward(x) -> logits``, ``embed(x) -> (N, feature_dim)`` features and a
``feature_dim`` attribute, for any channel count, class count and image size.

>>> from ddmetrics.models import get_model
>>> net = get_model("convnet", channels=1, num_classes=10, image_size=8)
"""
from __future__ import annotations

from functools import partial
from typing import Any, Callable, Dict, Optional, Union

from torch import nn

from ..utils import Plugins
from ._convnet import ConvNet
from ._io import load_state_dict_file, load_teacher_file
from ._resnet import ResNet, ResNet18, ResNetAP10
from ._teacher import Teacher, as_teacher
from ._train import (WEIGHT_NORMS, accuracy, check_recipe, lr_factor, make_optimizer, optimizer_rebuilds,
                     parameter_groups, train_model)

__all__ = ["ConvNet", "ResNet", "ResNet18", "ResNetAP10", "MODELS", "Teacher", "as_teacher", "available_models",
           "get_model", "load_state_dict_file", "load_teacher_file", "register_model", "train_model", "accuracy",
           "lr_factor", "optimizer_rebuilds", "parameter_groups", "make_optimizer", "check_recipe", "WEIGHT_NORMS"]

#: A model builder: ``builder(channels, num_classes, image_size, **kw) -> nn.Module``.
ModelBuilder = Callable[..., nn.Module]

#: name -> builder; :func:`register_model` adds to it, so do packages through the entry-point
#: group ``ddmetrics.models``
MODELS: Dict[str, ModelBuilder] = {
    "convnet": ConvNet,
    "convnet_bn": partial(ConvNet, norm="batch"),
    "resnetap10": ResNetAP10,
    "resnet18": ResNet18,
}
_PLUGINS = Plugins("ddmetrics.models", "model")


def register_model(name: str, builder: Optional[ModelBuilder] = None, override: bool = False):
    """Make ``builder(channels, num_classes, image_size, **kw)`` available as model ``name``.

    Use as a function (``register_model("vit", build_vit)``) or as a decorator. A registered
    name can be a teacher (``teacher_arch``), a DM-style embedder (``embedder``, built afresh at
    every redraw) or the evaluation model (``eval_model``).

    Raises
    ------
    ValueError
        ``name`` is empty, or already registered and ``override`` is False.
    TypeError
        ``builder`` is not callable.
    """
    if not isinstance(name, str) or not name:
        raise ValueError("name must be a non-empty string")
    key = name.lower()

    def add(fn: ModelBuilder) -> ModelBuilder:
        if not callable(fn):
            raise TypeError(f"register_model({name!r}) needs a callable builder, got {type(fn).__name__}")
        if key in MODELS and MODELS[key] is not fn and not override:
            raise ValueError(f"model {name!r} is already registered; pass override=True to replace it")
        MODELS[key] = fn
        return fn

    return add if builder is None else add(builder)


def _load_entry_points() -> None:
    """Register third-party model builders advertised under the ``ddmetrics.models`` entry-point group."""
    def accept(name: str, fn: Any) -> None:
        if callable(fn) and name.lower() not in MODELS:
            MODELS[name.lower()] = fn

    _PLUGINS.load(accept)


def available_models() -> list:
    """Names accepted by :func:`get_model` (built-in, registered and from entry points)."""
    _load_entry_points()
    return sorted(MODELS)


def get_model(name: Union[str, ModelBuilder], channels: int, num_classes: int, image_size: int,
              **kw: Any) -> nn.Module:
    """Build model ``name`` for ``channels``-channel ``image_size`` images and ``num_classes`` classes.

    Parameters
    ----------
    name : str or callable
        One of :func:`available_models` (case-insensitive), or a builder
        ``fn(channels, num_classes, image_size, **kw) -> nn.Module``.
    channels, num_classes, image_size : int
        Input channels, number of classes, image side length.
    **kw
        Extra constructor arguments (e.g. ``width``, ``depth``, ``norm``).

    Raises
    ------
    KeyError
        If ``name`` is unknown (the message lists the known names).
    """
    if callable(name) and not isinstance(name, str):
        model = name(channels, num_classes, image_size, **kw)
        if not isinstance(model, nn.Module):
            raise TypeError(f"the model builder {name!r} returned {type(model).__name__}, not an nn.Module")
        return model
    key = name.lower() if isinstance(name, str) else name
    if key not in available_models():
        raise KeyError(f"unknown model {name!r}; available: {', '.join(available_models())}")
    return MODELS[key](channels, num_classes, image_size, **kw)
