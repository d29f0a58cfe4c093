"""ddmetrics: pluggable distribution distances for dataset distillation.

>>> import ddmetrics as ddm
>>> loss = ddm.get_loss("wasserstein")           # or "sliced", "sinkhorn", "krdual", "mmd"
>>> value = loss(x, y)                           # doctest: +SKIP
>>> syn = ddm.Distiller(method="wmdd", loss="sliced", ipc=10, seed=0).fit(train)  # doctest: +SKIP

``import ddmetrics`` imports no submodule (no torch, POT, GeomLoss, KeOps or matplotlib): the
names below, and every submodule (``ddmetrics.distill``, ``ddmetrics.utils``, ...), are
imported on first access (PEP 562), so ``ddmetrics --help`` starts in a fraction of a second.
"""
import importlib as _importlib
import importlib.util as _importlib_util
import sys as _sys
import types as _types
import typing as _typing

__version__ = "0.1.0"

#: public name -> the submodule that defines it
_EXPORTS: dict[str, str] = {
    "Barycenter": "losses",
    "Distiller": "distill",
    "EvalReport": "evaluate",
    "evaluate": "evaluate",
    "DistributionLoss": "losses",
    "available_losses": "losses",
    "get_loss": "losses",
    "register_loss": "losses",
    "SyntheticSet": "synset",
    "two_sample_test": "two_sample",
    "score_set": "score",
}
_SUBMODULES = ["data", "losses", "models"]

__all__ = [*_SUBMODULES, "Barycenter", "Distiller", "EvalReport", "evaluate", "DistributionLoss",
           "available_losses", "get_loss", "register_loss", "SyntheticSet", "two_sample_test", "score_set"]

if _typing.TYPE_CHECKING:  # what the lazy names are, for type checkers and IDEs
    from . import data, losses, models
    from .losses import Barycenter
    from .distill import Distiller
    from .evaluate import EvalReport, evaluate
    from .losses import DistributionLoss, available_losses, get_loss, register_loss
    from .synset import SyntheticSet
    from .two_sample import two_sample_test
    from .score import score_set


def __getattr__(name: str) -> _typing.Any:
    if name in _EXPORTS:
        value = getattr(_importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    elif not name.startswith("__") and _importlib_util.find_spec(f"{__name__}.{name}") is not None:
        value = _importlib.import_module(f".{name}", __name__)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(n for n in set(globals()) | set(__all__) if n.startswith("__") or not n.startswith("_"))


class _Package(_types.ModuleType):
    """``ddmetrics`` itself. Importing a submodule binds it as an attribute of its package; the
    function ``evaluate`` shares its name with the module ``ddmetrics.evaluate``, and
    ``ddmetrics.evaluate`` stays the function (as with ``from .evaluate import evaluate``)."""

    def __setattr__(self, name: str, value: _typing.Any) -> None:
        if isinstance(value, _types.ModuleType) and _EXPORTS.get(name) == name:
            value = getattr(value, name)
        super().__setattr__(name, value)


_sys.modules[__name__].__class__ = _Package
