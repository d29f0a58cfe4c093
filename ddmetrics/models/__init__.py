"""Models (ConvNet-3, ResNetAP-10, ResNet-18; no torchvision) and seeded training.

Every model has ``forward(x) -> logits``, ``embed(x) -> (N, feature_dim)`` features and a
``feature_dim`` attribute, for any channel count, class count and image size.

>>> from ddmetrics.models import get_model
>>> net = get_model("convnet", channels=1, num_classes=10, image_size=8)
"""
from __future__ import annotations

from functools import partial
from typing import Any, Callable, Dict

from torch import nn

from ._convnet import ConvNet
from ._io import load_state_dict_file
from ._resnet import ResNet, ResNet18, ResNetAP10
from ._train import accuracy, train_model

__all__ = ["ConvNet", "ResNet", "ResNet18", "ResNetAP10", "MODELS", "available_models", "get_model",
           "train_model", "accuracy", "load_state_dict_file"]

MODELS: Dict[str, Callable[..., nn.Module]] = {
    "convnet": ConvNet,
    "convnet_bn": partial(ConvNet, norm="batch"),
    "resnetap10": ResNetAP10,
    "resnet18": ResNet18,
}


def available_models() -> list:
    """Names accepted by :func:`get_model`."""
    return sorted(MODELS)


def get_model(name: str, channels: int, num_classes: int, image_size: int, **kw: Any) -> nn.Module:
    """Build model ``name`` for ``channels``-channel ``image_size`` images and ``num_classes`` classes.

    Parameters
    ----------
    name : str
        One of :func:`available_models` (case-insensitive).
    channels, num_classes, image_size : int
        Input channels, number of classes, image side length.
    **kw
        Extra constructor arguments (e.g. ``width``, ``depth``, ``norm``).

    Raises
    ------
    KeyError
        If ``name`` is unknown (the message lists the known names).
    """
    key = name.lower() if isinstance(name, str) else name
    if key not in MODELS:
        raise KeyError(f"unknown model {name!r}; available: {', '.join(available_models())}")
    return MODELS[key](channels, num_classes, image_size, **kw)
