"""Models (ConvNet-3, ResNetAP-10, ResNet-18 under torchvision's names; torchvision's and timm's
models by name) and seeded training by a recipe.

Every built-in model has ``forward(x) -> logits``, ``embed(x) -> (N, feature_dim)`` features and a
``feature_dim`` attribute, for any channel count, class count and image size. ``"torchvision:NAME"``
and ``"timm:NAME"`` build that library's model when it is installed (``embed`` / ``classifier``
through :class:`Teacher`); see :mod:`ddmetrics.models._library`.

>>> from ddmetrics.models import get_model
>>> net = get_model("convnet", channels=1, num_classes=10, image_size=8)
"""
from __future__ import annotations

import inspect
from functools import partial
from typing import Any, Callable, Dict, Optional, Union

import torch
from torch import nn

from ..utils import Plugins
from ._capture import capture
from ._convnet import ConvNet
from ._io import load_state_dict_file, load_teacher_file
from ._library import LIBRARIES, build_library_model, check_library_input, library_of, require_library
from ._resnet import ResNet, ResNet18, ResNetAP10
from ._teacher import Teacher, as_teacher, check_outputs
from ._train import (WEIGHT_NORMS, accuracy, check_recipe, lr_factor, make_optimizer, optimizer_rebuilds,
                     parameter_groups, train_model)

__all__ = ["capture", "ConvNet", "ResNet", "ResNet18", "ResNetAP10", "MODELS", "LIBRARIES", "Teacher", "as_teacher",
           "available_models", "check_image_size", "check_model_name", "check_outputs", "get_model",
           "is_model_name", "load_state_dict_file", "load_teacher_file", "register_model", "train_model", "accuracy",
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
_PLUGINS = Plugins("ddmetrics.models", "model", key=str.lower)


def register_model(name: str, builder: Optional[ModelBuilder] = None, override: bool = False):
    """Make ``builder(channels, num_classes, image_size, **kw)`` available as model ``name``.

    Use as a function (``register_model("vit", build_vit)``) or as a decorator. A registered
    name can be a teacher (``teacher_arch``), a DM-style embedder (``embedder``, built afresh at
    every redraw) or the evaluation model (``eval_model``).

    Raises
    ------
    ValueError
        ``name`` is empty, has a library's prefix (``"timm:..."``: those names are the
        library's), or is already registered and ``override`` is False.
    TypeError
        ``builder`` is not callable.
    """
    if not isinstance(name, str) or not name:
        raise ValueError("name must be a non-empty string")
    if library_of(name) is not None:
        raise ValueError(f"model names {name.partition(':')[0]}:NAME are that library's; register {name!r} under "
                         "another name")
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
    """Register third-party model builders advertised under the ``ddmetrics.models`` entry-point group
    (one that is not registered gets a :class:`~ddmetrics.utils.PluginWarning` saying why)."""
    def accept(name: str, fn: Any) -> Optional[str]:
        if not callable(fn):
            return f"it is {fn!r}, not a model builder fn(channels, num_classes, image_size)"
        try:
            inspect.signature(fn).bind(1, 10, 32)
        except TypeError as err:
            return f"{fn!r} cannot be called as a model builder fn(channels, num_classes, image_size) ({err})"
        except ValueError:  # no signature to read (a builtin): its call will tell
            pass
        key = name.lower()
        old = MODELS.get(key)
        if old is fn:  # the plugin's module registered it itself, under that name
            return None
        if old is not None:
            owner = _PLUGINS.source(key)
            return f"the name {key!r} is taken by {old!r}{f' (plugin {owner})' if owner else ''}"
        MODELS[key] = fn
        return None

    _PLUGINS.load(accept)


def available_models() -> list:
    """Names accepted by :func:`get_model` (built-in, registered and from entry points), besides
    the library names ``"torchvision:NAME"`` and ``"timm:NAME"``."""
    _load_entry_points()
    return sorted(MODELS)


def _known_names() -> str:
    return ", ".join(available_models()) + ", or " + " / ".join(f"{p}:NAME" for p in LIBRARIES)


def is_model_name(name: Any) -> bool:
    """Whether ``name`` is a model name :func:`get_model` takes: a registered one (case-insensitive)
    or ``"PREFIX:NAME"`` with a prefix of :data:`LIBRARIES` (installed or not: see
    :func:`check_model_name`)."""
    return isinstance(name, str) and (name.lower() in available_models() or library_of(name) is not None)


def check_model_name(name: Any, what: str = "model") -> None:
    """Refuse, before any work, a model name :func:`get_model` cannot build.

    Parameters
    ----------
    name : str or callable
        A model name or builder (a builder is not checked here).
    what : str
        What the name is given as, for the message (``"teacher_arch='timm:vit'"``).

    Raises
    ------
    ValueError
        An unknown name (the message lists the names), or a library model the installed library
        does not have.
    ddmetrics._extras.MissingExtraError
        ``"torchvision:NAME"`` / ``"timm:NAME"`` without that library; the message has the
        ``pip install 'ddmetrics[...]'`` line.
    """
    if callable(name) and not isinstance(name, str):
        return
    if not is_model_name(name):
        raise ValueError(f"{what}: unknown model {name!r}; available: {_known_names()}")
    if library_of(name) is not None:
        require_library(name, what)


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
        Extra constructor arguments (e.g. ``width``, ``depth``, ``norm``; a library model's go
        to its constructor: ``img_size=32`` for a timm ViT).

    Raises
    ------
    KeyError
        If ``name`` is unknown (the message lists the known names).
    ddmetrics._extras.MissingExtraError
        A library model without its library.
    """
    if callable(name) and not isinstance(name, str):
        model = name(channels, num_classes, image_size, **kw)
        if not isinstance(model, nn.Module):
            raise TypeError(f"the model builder {name!r} returned {type(model).__name__}, not an nn.Module")
        return model
    key = name.lower() if isinstance(name, str) else name
    if key in available_models():
        return MODELS[key](channels, num_classes, image_size, **kw)
    if library_of(name) is not None:
        return build_library_model(name, channels, num_classes, image_size, **kw)
    raise KeyError(f"unknown model {name!r}; available: {_known_names()}")


#: the largest image side :func:`check_image_size` tries when it looks for the smallest that works
_LARGEST_PROBED = 4096


def _fails(name: Union[str, ModelBuilder], channels: int, num_classes: int, height: int, width: int,
           batch_size: int, training: bool, where: str) -> Optional[str]:
    """Why model ``name`` cannot be built for, or run on, a zero batch of ``batch_size``
    ``channels x height x width`` images (``None``: it can); the caller's random state is kept.

    ``where``: ``"empty"`` builds on the meta device (no weights drawn) and runs on zeroed CPU
    storage (only shapes are tested; a CPU forward of small images costs milliseconds, where
    PyTorch's first meta convolution imports its decompositions, a second); ``"meta"`` runs on the
    meta device (no memory at any size: the search for the smallest size); ``"cpu"`` builds on
    the CPU for real (a builder that cannot be built on meta)."""
    try:
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            with torch.device("cpu" if where == "cpu" else "meta"):
                model = get_model(name, channels, num_classes, width)
            if where == "empty":  # zeros: uninitialised storage can hold denormals, slow to compute with
                model = model.to_empty(device="cpu")
                for tensor in list(model.parameters()) + list(model.buffers()):
                    tensor.zero_()
            with torch.device("meta" if where == "meta" else "cpu"):
                model.train(training)(torch.zeros(batch_size, channels, height, width))
    except Exception as err:  # any error of any builder: the question is only whether it runs
        return " ".join(str(err).split()) or type(err).__name__
    return None


def check_image_size(name: Union[str, ModelBuilder], channels: int, num_classes: int, image_shape,
                     role: str = "model", batch_size: int = 2, training: bool = True) -> None:
    """Refuse images that model ``name`` cannot take, before any work, naming the smallest that it can.

    The model is built on the ``meta`` device (no weights drawn, the caller's random state
    untouched) and runs, on zeroed CPU storage, on a zero batch of ``batch_size`` images
    in training mode (``training``): a convolution with nothing left to convolve or a
    normalisation with a single value (instance norm on a 1x1 map, batch norm on one 1x1 sample)
    fails as it would in the run. The builder is called once more for that (twice, and more on
    the meta device to find the smallest size, when the images are refused); a builder that
    cannot be built on ``meta`` is built on the CPU before anything is refused.

    Parameters
    ----------
    name : str or callable
        A registered model name or a builder (see :func:`get_model`).
    channels, num_classes : int
        What the model is built for.
    image_shape : tuple of int
        ``(C, H, W)`` of the images.
    role : str
        What the model is in the run (``"embedder"``, ``"teacher"``...), for the message.
    batch_size : int
        The smallest batch the run passes through the model.
    training : bool
        Whether the run uses the model in training mode.

    Raises
    ------
    ValueError
        The model cannot run on such images; the message names the image size, the model and
        the smallest square size on which it runs (when one up to 4096 pixels is found). A
        library model that does not take ``channels`` channels is refused as such.
    """
    _, height, width = (int(v) for v in image_shape)
    check_library_input(name, channels)
    why = _fails(name, channels, num_classes, height, width, batch_size, training, "empty")
    if why is None or _fails(name, channels, num_classes, height, width, batch_size, training, "cpu") is None:
        return  # runs (a builder that cannot be built on meta is judged by a real build)
    # the smallest square side that runs: doubling, then bisection (the usual models are monotone)
    low, high = max(height, width), None
    size = low
    while size < _LARGEST_PROBED:
        size = min(2 * size, _LARGEST_PROBED)
        if _fails(name, channels, num_classes, size, size, batch_size, training, "meta") is None:
            high = size
            break
        low = size
    if high is not None:
        while high - low > 1:
            mid = (low + high) // 2
            if _fails(name, channels, num_classes, mid, mid, batch_size, training, "meta") is None:
                high = mid
            else:
                low = mid
    label = name if isinstance(name, str) else getattr(name, "__qualname__", repr(name))
    needs = f"it needs images of at least {high}x{high}" if high is not None else "no size up to 4096 px works"
    images = "one image" if batch_size == 1 else f"{batch_size} images"
    raise ValueError(f"images of {channels}x{height}x{width} are too small for the {role} {label!r}: {needs} "
                     f"(on {images} of {height}x{width}: {why}); use larger images (an image folder's image_size, "
                     "--image-size) or another model")
