"""The :class:`DistributionLoss` interface and the registry.

Every backend in :mod:`ddmetrics.losses` subclasses :class:`DistributionLoss` and
implements ``_loss(x, y, a, b)`` on already validated inputs. The public
``forward(x, y, a=None, b=None)`` flattens, validates and fills in uniform weights
once, here (with :func:`~ddmetrics.losses.check_inputs`), so all backends refuse bad
input in exactly the same way.
"""
from __future__ import annotations

import inspect
import logging
from typing import Any, Callable, Dict, List, Optional, Tuple, Type

import torch
from torch import Tensor, nn

from .._extras import install_command, missing_modules, require_extra
from ..utils import Plugins
from ._barycenter import Barycenter, gradient_flow_barycenter
from ._validate import check_batched, check_inputs, check_weights

logger = logging.getLogger("ddmetrics")

__all__ = [
    "DistributionLoss",
    "UnknownSettingError",
    "check_inputs",
    "check_weights",
    "register_loss",
    "get_loss",
    "loss_class",
    "available_losses",
    "missing_losses",
]

class DistributionLoss(nn.Module):
    r"""A divergence between two weighted point clouds.

    .. math::
        \mathcal{L}(\alpha, \beta), \quad \alpha = \sum_i a_i \delta_{x_i}, \
        \beta = \sum_j b_j \delta_{y_j}

    Subclasses implement :meth:`_loss` on validated ``(n, d)``/``(m, d)`` samples and
    simplex weights. Configuration goes in ``__init__``; data goes in ``forward``.
    ``x`` is the reference (real) cloud and ``y`` the one being optimised: the value is
    differentiable with respect to ``y`` (and ``b`` where the backend allows it).
    """

    #: registry name, set by :func:`register_loss`
    name: str = ""
    #: the ddmetrics extra (setup.cfg) the backend needs, e.g. ``"sinkhorn"``; ``None``: the core
    #: install. Checked at construction, so a missing one is refused before any work.
    extra: Optional[str] = None

    def __init__(self) -> None:
        if self.extra is not None:
            require_extra(self.extra, f"loss {self.name or type(self).__qualname__!r}")
        super().__init__()

    def forward(self, x: Tensor, y: Tensor, a: Optional[Tensor] = None, b: Optional[Tensor] = None) -> Tensor:
        """Return the loss between ``x`` (weights ``a``) and ``y`` (weights ``b``) as a 0-dim tensor."""
        x, y, a, b = check_inputs(x, y, a, b)
        return self._loss(x, y, a, b)

    def _loss(self, x: Tensor, y: Tensor, a: Tensor, b: Tensor) -> Tensor:  # pragma: no cover
        raise NotImplementedError

    def batched(self, x: Tensor, y: Tensor, a: Optional[Tensor] = None, b: Optional[Tensor] = None) -> Tensor:
        """The loss of ``B`` independent problems: ``x`` ``(B, n, d)``, ``y`` ``(B, m, d)``, weights
        ``a`` ``(B, n)`` and ``b`` ``(B, m)`` (uniform when omitted); returns ``(B,)``, entry ``i``
        equal to ``self(x[i], y[i], a[i], b[i])`` (to rounding: a vectorised backend sums in
        another order).

        Every problem is validated as a plain call validates it, all before the first is computed;
        then :meth:`_batched_loss` computes them.
        """
        return self._batched_loss(*check_batched(x, y, a, b))

    #: whether one instance gives every problem the value a fresh call would: no state that a
    #: call advances (a direction generator, a warm-started critic). The distiller then computes
    #: a batch of classes with one :meth:`batched` call instead of a copy of the loss per class.
    stateless: bool = False

    def _batched_loss(self, x: Tensor, y: Tensor, a: Tensor, b: Tensor) -> Tensor:
        """``(B,)`` losses of validated ``(B, n, d)`` / ``(B, m, d)`` clouds and ``(B, n)`` / ``(B, m)``
        simplex weights. This default computes the problems one after another with :meth:`_loss`;
        backends override it with a vectorised computation of the same values."""
        return torch.stack([self._loss(x[i], y[i], a[i], b[i]) for i in range(x.shape[0])])

    def barycenter(
        self,
        x: Tensor,
        m: int,
        a: Optional[Tensor] = None,
        learn_weights: bool = True,
        iters: Optional[int] = None,
        seed: int = 0,
        **kwargs,
    ) -> Barycenter:
        """Free-support barycenter of ``x`` with ``m`` atoms under this loss.

        The default is a gradient flow of the support (and of softmax-parametrised
        weights when ``learn_weights``) on ``self(x, support, b=weights)``; backends with
        a better algorithm override it. See :func:`ddmetrics.losses.gradient_flow_barycenter`.

        Returns
        -------
        Barycenter
            ``support`` of shape ``(m, d)`` and ``weights`` of shape ``(m,)``.
        """
        return gradient_flow_barycenter(
            self, x, m, a=a, learn_weights=learn_weights, iters=200 if iters is None else iters, seed=seed, **kwargs
        )

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self._config().items())

    def config(self) -> Dict[str, object]:
        """The registry name (``""`` for an unregistered class, with ``class``) and the settings
        this instance was built with, JSON-able: what a run records about its loss."""
        out: Dict[str, object] = {"name": self.name, "class": type(self).__qualname__}
        out.update({k: v if isinstance(v, (bool, int, float, str, type(None), list, tuple, dict)) else repr(v)
                    for k, v in self._config().items()})
        return out

    # State that evolves between calls (a direction generator, a warm-started critic) must
    # survive a checkpoint: it travels in ``state_dict()`` through PyTorch's extra-state hooks.
    def get_extra_state(self) -> Dict[str, object]:
        """Random-generator states of this loss (``torch.Generator`` attributes), for checkpoints."""
        return {"generators": {k: g.get_state() for k, g in vars(self).items() if isinstance(g, torch.Generator)}}

    def set_extra_state(self, state: Dict[str, object]) -> None:
        for name, g_state in dict(state or {}).get("generators", {}).items():
            getattr(self, name).set_state(g_state)

    def _config(self) -> Dict[str, object]:
        return {}


# --------------------------------------------------------------------------- registry
_REGISTRY: Dict[str, Type[DistributionLoss]] = {}
_PLUGINS = Plugins("ddmetrics.losses", "loss")


def register_loss(name: str, override: bool = False) -> Callable[[Type[DistributionLoss]], Type[DistributionLoss]]:
    """Class decorator that makes a :class:`DistributionLoss` subclass available by ``name``.

    Registering a name that another class already has is refused unless ``override=True``
    (re-running the same definition, e.g. in a notebook, is allowed).

    Examples
    --------
    >>> @register_loss("energy")
    ... class Energy(DistributionLoss):
    ...     def _loss(self, x, y, a, b): ...
    """
    if not isinstance(name, str) or not name:
        raise ValueError("name must be a non-empty string")

    def decorate(cls: Type[DistributionLoss]) -> Type[DistributionLoss]:
        if not (isinstance(cls, type) and issubclass(cls, DistributionLoss)):
            raise TypeError(f"register_loss({name!r}) decorates DistributionLoss subclasses, got {cls!r}")
        old = _REGISTRY.get(name)
        same = old is not None and (old.__module__, old.__qualname__) == (cls.__module__, cls.__qualname__)
        if old is not None and not same and not override:
            raise ValueError(f"loss {name!r} is already registered ({old.__module__}.{old.__qualname__}); "
                             "pass override=True to replace it, or choose another name")
        _REGISTRY[name] = cls
        cls.name = name
        return cls

    return decorate


def _load_entry_points() -> None:
    """Register third-party losses advertised under the ``ddmetrics.losses`` entry-point group
    (one that is not registered gets a :class:`~ddmetrics.utils.PluginWarning` saying why)."""
    def accept(name: str, obj: Any) -> Optional[str]:
        if not (isinstance(obj, type) and issubclass(obj, DistributionLoss)):
            return f"it is {obj!r}, not a DistributionLoss subclass"
        old = _REGISTRY.get(name)
        if old is obj:  # the plugin's module registered it itself, under that name
            return None
        if old is not None:
            owner = _PLUGINS.source(name)
            return (f"the name is taken by {old.__module__}.{old.__qualname__}"
                    f"{f' (plugin {owner})' if owner else ''}")
        register_loss(name)(obj)
        return None

    _PLUGINS.load(accept)


def loss_class(name: str) -> Type[DistributionLoss]:
    """The class registered as ``name``, checked to be usable here; nothing is built.

    Raises
    ------
    KeyError
        ``name`` is not registered; the message lists the known names.
    ModuleNotFoundError
        (:class:`ddmetrics._extras.MissingExtraError`) the loss needs an extra that is not
        installed; the message gives the ``pip install`` command.
    """
    _load_entry_points()
    if name not in _REGISTRY:
        raise KeyError(f"unknown loss {name!r}; known losses: {', '.join(sorted(_REGISTRY))}")
    cls = _REGISTRY[name]
    if cls.extra is not None:
        require_extra(cls.extra, f"loss {name!r}")
    return cls


def get_loss(name, **kwargs) -> DistributionLoss:
    """Instantiate a registered loss by name (an instance is passed through unchanged).

    Raises
    ------
    KeyError
        if ``name`` is not registered; the message lists the known names.
    ModuleNotFoundError
        if the loss needs an extra that is not installed (see :func:`loss_class`).
    """
    if isinstance(name, DistributionLoss):
        if kwargs:
            raise TypeError("keyword arguments are only accepted with a loss name, not an instance")
        return name
    if not isinstance(name, str):
        raise TypeError(f"loss must be a name or a DistributionLoss, got {type(name).__name__}")
    cls = loss_class(name)
    settings, open_ended = _settings(cls)
    unknown = [] if open_ended else sorted(set(kwargs) - set(settings))
    if unknown:  # before building: the constructor's own TypeError would not say which loss or what is allowed
        raise UnknownSettingError(f"loss {name!r} has no setting {', '.join(map(repr, unknown))}; "
                                  f"its settings: {', '.join(settings) or 'none'}")
    return cls(**kwargs)


class UnknownSettingError(TypeError):
    """A keyword that a registered loss's constructor does not take."""


def _settings(cls: type) -> Tuple[List[str], bool]:
    """The keyword settings of ``cls``'s constructor, and whether it also takes ``**kwargs``
    (then it checks them itself)."""
    params = inspect.signature(cls.__init__).parameters.values()
    named = [p.name for p in params if p.name != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    return named, any(p.kind is p.VAR_KEYWORD for p in params)


def available_losses() -> Dict[str, str]:
    """Registered loss names with the first line of each class's docstring (installed or not:
    see :func:`missing_losses`)."""
    _load_entry_points()
    return {
        name: (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
        for name, cls in sorted(_REGISTRY.items())
    }


def missing_losses() -> Dict[str, str]:
    """The registered losses whose extra is not installed, each with the ``pip install`` command
    that adds it (``{"sinkhorn": "pip install 'ddmetrics[sinkhorn]'"}``); nothing is imported."""
    _load_entry_points()
    return {name: install_command(cls.extra) for name, cls in sorted(_REGISTRY.items())
            if cls.extra is not None and missing_modules(cls.extra)}
