"""Models of torchvision and timm by name: ``"torchvision:NAME"``, ``"timm:NAME"``.

Neither library is a dependency (setup.cfg's extras ``torchvision`` and ``timm`` install them).
A name is checked where it is given (a :class:`~ddmetrics.distill.DistillConfig` field, a
command-line option): a library that is not installed is refused there, naming the extra, and
an installed one is asked whether it has the model. The model is built with the library's own
constructor, untrained, and seen through the ``embed`` / ``classifier`` protocol
(:class:`~ddmetrics.models.Teacher`): its ``state_dict`` keeps the library's keys, so a checkpoint
of the library (an ImageNet ``resnet18.pth``) loads into it, and what ddmetrics saves loads back
into the library's model.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Tuple

from torch import Tensor, nn

from .._extras import MissingExtraError, install_command, require_extra
from ._teacher import Teacher, as_teacher

__all__ = ["LIBRARIES", "Library", "TimmTeacher", "build_library_model", "check_library_input", "library_of",
           "require_library"]


class TimmTeacher(Teacher):
    """A timm model through timm's own feature API: ``embed`` is
    ``forward_head(forward_features(x), pre_logits=True)`` (pooled, before the classifier),
    ``classifier`` is ``get_classifier()``; ``forward`` is the model's."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model, head=model.forward_features)

    def embed(self, x: Tensor) -> Tensor:
        """Pooled features before the classifier, ``(N, d)``."""
        return self.model.forward_head(self.model.forward_features(x), pre_logits=True).flatten(1)

    def classifier(self, features: Tensor) -> Tensor:
        """Logits from :meth:`embed`'s features (timm's ``get_classifier()``)."""
        return self.model.get_classifier()(features)


def _gray_to_rgb(module: nn.Module, args: Tuple[Any, ...]) -> Tuple[Any, ...]:
    """A forward pre-hook: one-channel images repeated into the three channels the model takes."""
    return (args[0].expand(-1, 3, -1, -1),) + tuple(args[1:])


def _final_linear(model: nn.Module, num_classes: int) -> str:
    """The name of the last ``nn.Linear`` with ``num_classes`` outputs (torchvision's ``fc``,
    ``classifier.6``, ``heads.head``...): the layer whose input are the features."""
    heads = [name for name, m in model.named_modules() if isinstance(m, nn.Linear) and m.out_features == num_classes]
    if not heads:
        raise ValueError(f"{type(model).__name__} has no final linear layer with {num_classes} outputs to read its "
                         "features from; wrap it with ddmetrics.models.as_teacher(model, head=...) and register a "
                         "builder (ddmetrics.models.register_model)")
    return heads[-1]


def _build_torchvision(lib: Any, name: str, channels: int, num_classes: int, image_size: int,
                       **kw: Any) -> nn.Module:
    model = lib.models.get_model(name, num_classes=num_classes, **kw)  # weights=None: untrained, no download
    if channels == 1:
        model.register_forward_pre_hook(_gray_to_rgb)
    return as_teacher(model, head=_final_linear(model, num_classes))


def _build_timm(lib: Any, name: str, channels: int, num_classes: int, image_size: int, **kw: Any) -> nn.Module:
    return TimmTeacher(lib.create_model(name, pretrained=False, num_classes=num_classes, in_chans=channels, **kw))


def _torchvision_has(lib: Any, name: str) -> Optional[bool]:
    listing = getattr(lib.models, "list_models", None)  # torchvision >= 0.14
    return None if listing is None else name.lower() in listing()


def _timm_has(lib: Any, name: str) -> Optional[bool]:
    is_model = getattr(lib, "is_model", None)
    return None if is_model is None else bool(is_model(name))


@dataclass(frozen=True)
class Library:
    """A model library: its import name, its extra, how a model is built and looked up.

    ``build(module, name, channels, num_classes, image_size, **kw) -> nn.Module`` (with
    ``embed`` / ``classifier``); ``has(module, name)``: whether the library knows ``name``
    (``None``: it cannot say); ``channels``: the channel counts it takes (``None``: any).
    """
    module: str
    extra: str
    build: Callable[..., nn.Module]
    has: Callable[[Any, str], Optional[bool]]
    channels: Optional[Tuple[int, ...]] = None
    hint: str = ""


#: prefix -> library; ``"PREFIX:NAME"`` is a model of that library wherever a model name is taken
LIBRARIES: Dict[str, Library] = {
    # torchvision's classifiers take RGB: one-channel images are repeated into three channels
    "torchvision": Library("torchvision", "torchvision", _build_torchvision, _torchvision_has, channels=(1, 3),
                           hint="use timm:NAME (in_chans) or register a builder"),
    "timm": Library("timm", "timm", _build_timm, _timm_has),
}


def library_of(name: Any) -> Optional[Tuple[str, str]]:
    """``(prefix, model name)`` of a ``"PREFIX:NAME"`` string whose prefix is a key of
    :data:`LIBRARIES` (case-insensitive); ``None`` for anything else."""
    if not isinstance(name, str) or ":" not in name:
        return None
    prefix, _, model = name.partition(":")
    prefix = prefix.strip().lower()
    return (prefix, model.strip()) if prefix in LIBRARIES else None


def _import(prefix: str, what: str) -> Any:
    """The library's module, or :class:`MissingExtraError` (not installed, or not importable)."""
    lib = LIBRARIES[prefix]
    require_extra(lib.extra, what)
    try:
        return importlib.import_module(lib.module)
    except Exception as err:  # installed but broken (torchvision built for another torch): say so, in one line
        raise MissingExtraError(f"{what} needs {lib.module}, which is installed but cannot be imported "
                                f"({' '.join(str(err).split())}); install one built for this torch: "
                                f"{install_command(lib.extra)}", name=lib.module) from None


def require_library(name: str, what: str) -> None:
    """Refuse a library model name before any work.

    Raises
    ------
    MissingExtraError
        The library is not installed (the message has its ``pip install`` line).
    ValueError
        The model name is empty, or the installed library does not know it.
    """
    prefix, model = library_of(name)
    if not model:
        raise ValueError(f"{what}: give the model after the prefix, e.g. {prefix}:resnet18")
    lib = _import(prefix, what)
    if LIBRARIES[prefix].has(lib, model) is False:
        raise ValueError(f"{what}: {prefix} has no model {model!r}")


def check_library_input(name: Any, channels: int) -> None:
    """Refuse images of ``channels`` channels that library model ``name`` cannot take (nothing
    for any other name)."""
    found = library_of(name)
    if found is None:
        return
    lib = LIBRARIES[found[0]]
    if lib.channels is not None and channels not in lib.channels:
        takes = " or ".join(map(str, lib.channels))
        raise ValueError(f"{name!r} takes images of {takes} channels, not {channels}; {lib.hint}")


def build_library_model(name: str, channels: int, num_classes: int, image_size: int, **kw: Any) -> nn.Module:
    """Build library model ``name`` (``"PREFIX:NAME"``), untrained, with ``embed`` and ``classifier``;
    ``**kw`` go to the library's constructor."""
    prefix, model = library_of(name)
    check_library_input(name, channels)
    lib = _import(prefix, f"model {name!r}")
    return LIBRARIES[prefix].build(lib, model, channels, num_classes, image_size, **kw)
