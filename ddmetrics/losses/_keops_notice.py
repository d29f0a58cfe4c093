"""Import POT and GeomLoss without KeOps' CUDA notice, and print that notice where KeOps is used.

``import ot`` imports GeomLoss (``ot.bregman``), which imports pykeops when it is installed, and
pykeops prints (to stdout, at import) a line such as ``[KeOps] Warning : CUDA libraries not found
or could not be loaded; Switching to CPU only.`` That line concerns KeOps' own kernels, which
only the Sinkhorn loss's ``"online"`` and ``"multiscale"`` backends run; printed at every
``import ot`` it appeared under every command of a ``[sinkhorn]`` or ``[dev]`` install, ``--quiet``
or not. :func:`import_holding_keops_notice` captures stdout during the import, passes every other
line through, and holds KeOps' CUDA lines; :func:`print_keops_notice` prints them (once) when a
KeOps backend is about to run.
"""
from __future__ import annotations

import contextlib
import importlib
import io
import re
import sys
from types import ModuleType
from typing import List

__all__ = ["import_holding_keops_notice", "print_keops_notice"]

# keopscore.config.cuda: "CUDA libraries not found or could not be loaded; ..." and "CUDA libraries
# detected, but no GPUs found on this system; ...", both through KeOps_Warning
_KEOPS_CUDA_LINE = re.compile(r"^\[KeOps\] Warning : .*\bCUDA\b")

# The held lines: a module is imported once per process, so what its import printed is
# captured once too; emptied when printed.
_held: List[str] = []


def import_holding_keops_notice(name: str) -> ModuleType:
    """``importlib.import_module(name)``, with KeOps' CUDA lines printed during it held back.

    Everything else the import prints reaches stdout unchanged (after the import). A module
    already imported is returned at once.
    """
    if name in sys.modules and sys.modules[name] is not None:
        return sys.modules[name]
    captured = io.StringIO()
    try:
        with contextlib.redirect_stdout(captured):
            return importlib.import_module(name)
    finally:
        for line in captured.getvalue().splitlines(keepends=True):
            if _KEOPS_CUDA_LINE.match(line):
                _held.append(line)
            else:
                sys.stdout.write(line)


def print_keops_notice() -> None:
    """Print (to stdout, as KeOps does) the CUDA lines held back at import, once."""
    while _held:
        sys.stdout.write(_held.pop(0))
