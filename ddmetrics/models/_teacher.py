"""Any trained classifier as a teacher: the ``embed`` / ``classifier`` protocol by a forward hook."""
from __future__ import annotations

from typing import Callable, Optional, Union

import torch
from torch import Tensor, nn

from ..utils import frozen, model_device

__all__ = ["Teacher", "as_teacher", "check_outputs"]


class Teacher(nn.Module):
    """A classifier seen through the ``embed`` / ``classifier`` protocol (see :func:`as_teacher`).

    The wrapped model is a submodule: its parameters and BatchNorm layers are the teacher's own,
    shared, never copied (PCBN finds the model's BatchNorm2d layers through this module).
    """

    def __init__(self, model: nn.Module, head: Union[str, Callable[[Tensor], Tensor]] = "fc",
                 classifier: Optional[Callable[[Tensor], Tensor]] = None):
        super().__init__()
        self.model = model
        self._features: Optional[Callable[[Tensor], Tensor]] = None
        if isinstance(head, str):
            modules = dict(model.named_modules())
            if head not in modules or head == "":
                linear = [n for n, m in modules.items() if isinstance(m, nn.Linear)]
                raise ValueError(f"head={head!r}: the model has no submodule of that name; its linear layers are "
                                 f"{', '.join(linear) or 'none'} (pass head=<name> or a callable returning features)")
            self.head: Optional[nn.Module] = modules[head]
            self.head_name = head
        elif callable(head):
            self.head, self.head_name, self._features = None, getattr(head, "__name__", "features"), head
        else:
            raise TypeError(f"head must be the name of the final linear layer or a callable, got {type(head).__name__}")
        self._classifier = classifier

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)

    def embed(self, x: Tensor) -> Tensor:
        """The features the head receives, flattened to ``(N, d)``."""
        if self._features is not None:
            return self._features(x).flatten(1)
        captured = []
        handle = self.head.register_forward_pre_hook(lambda module, inputs: captured.append(inputs[0]))
        try:
            self.model(x)
        finally:
            handle.remove()
        if not captured:
            raise ValueError(f"the head {self.head_name!r} was not called by the model's forward")
        return captured[-1].flatten(1)

    def classifier(self, features: Tensor) -> Tensor:
        """Logits from features (the head itself, or the ``classifier`` given with a callable head)."""
        if self.head is not None:
            return self.head(features)
        if self._classifier is None:
            raise ValueError("this teacher has a callable head and no classifier: logits need classifier=...")
        return self._classifier(features)


def as_teacher(model: nn.Module, head: Union[str, Callable[[Tensor], Tensor]] = "fc",
               classifier: Optional[Callable[[Tensor], Tensor]] = None) -> nn.Module:
    """``model`` with the ``embed`` / ``classifier`` protocol the distiller and PCBN use.

    A model that already has ``embed`` and ``classifier`` (ddmetrics' own) is returned as it is.
    Otherwise a :class:`Teacher` wraps it: ``embed(x)`` runs the model and returns what its final
    layer ``head`` receives (a forward pre-hook; no weight is copied), ``classifier`` is that
    layer. ``head`` is the layer's name in ``model.named_modules()`` (``"fc"`` for torchvision's
    ResNets, ``"classifier.6"`` for VGG, ``"head"`` for many ViTs), or a callable ``x -> features``
    (then ``classifier`` gives the logits, where needed).

    Raises
    ------
    ValueError
        ``head`` names no submodule (the message lists the model's linear layers).
    TypeError
        ``model`` is not an ``nn.Module``, or ``head`` is neither a name nor a callable.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if hasattr(model, "embed") and hasattr(model, "classifier"):
        return model
    return Teacher(model, head, classifier)


def check_outputs(model: nn.Module, image_shape, num_classes: int, name: str = "the teacher") -> None:
    """Refuse a classifier whose logits do not have one entry per class, before any work.

    One zero image of ``image_shape`` ``(C, H, W)`` goes through ``model`` on its own device,
    without gradient and in eval mode (:func:`~ddmetrics.utils.frozen`: BatchNorm statistics are
    not updated, and the model's modes are restored).

    Raises
    ------
    ValueError
        ``model`` cannot run on such an image, or does not return ``(1, num_classes)`` logits;
        the message names ``name``, its outputs and the classes.
    """
    shape = "x".join(str(int(v)) for v in image_shape)
    try:
        with frozen(model), torch.no_grad():
            out = model(torch.zeros((1, *image_shape), device=model_device(model)))
    except Exception as err:  # any error of the user's model: say which model and which images
        raise ValueError(f"{name} cannot run on {shape} images: {' '.join(str(err).split())}") from None
    if not isinstance(out, Tensor) or out.dim() != 2:
        got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(f"{name} returns {got} for one {shape} image; a classifier returns logits of shape "
                         f"(N, {num_classes})")
    if out.shape[1] != num_classes:
        raise ValueError(f"{name} has {out.shape[1]} outputs but the data has {num_classes} classes: use a teacher "
                         f"trained on these {num_classes} classes (one output per class)")
