r"""Kernel sums in linear memory: :math:`a^\top K(x, y)\, b` through KeOps symbolic matrices.

The tensorized kernel losses (``mmd``, ``energy``) build dense :math:`(n+m)^2` matrices: about
:math:`2 \cdot 10^4` points per class is the memory wall of a 24 GiB machine. KeOps (the
``[sinkhorn]`` extra, already used by ``sinkhorn``'s ``"online"`` backend) evaluates the same
reductions tile by tile, on CPU and CUDA, with its own autograd: memory :math:`O((n+m)d)`.

References
----------
.. [1] B. Charlier, J. Feydy, J. Glaunès, F.-D. Collin, G. Durif. Kernel operations on the
   GPU, with autodiff, without memory overflows. JMLR 2021.
"""
from __future__ import annotations

import importlib.util
from typing import Sequence

from torch import Tensor

from ._keops_notice import import_holding_keops_notice, print_keops_notice
from .base import logger

KERNEL_BACKENDS = ("auto", "tensorized", "online")
#: ``auto`` stays dense while the largest kernel matrix has at most this many entries (GeomLoss's
#: threshold for ``sinkhorn``: a dense 5000² matrix is fast and small, 200 MB in float64)
TENSORIZED_MAX_ENTRIES = 5000 ** 2


def check_kernel_backend(backend: str) -> str:
    if backend not in KERNEL_BACKENDS:
        raise ValueError(f"backend must be one of {KERNEL_BACKENDS}, got {backend!r}")
    return backend


def resolve_kernel_backend(backend: str, n: int, m: int, name: str) -> str:
    """``"auto"``: ``"tensorized"`` while :math:`\\max(n, m)^2 \\le 5000^2`, else ``"online"``
    (``"tensorized"`` with a warning when pykeops is not installed); other values as given."""
    if backend != "auto":
        return backend
    if max(n, m) ** 2 <= TENSORIZED_MAX_ENTRIES:
        return "tensorized"
    if importlib.util.find_spec("pykeops") is None:
        logger.warning("ddmetrics: %s 'auto' would use 'online' for n=%d, m=%d but pykeops is not installed; "
                       "using 'tensorized' (memory O((n+m)^2)): pip install 'ddmetrics[sinkhorn]'", name, n, m)
        return "tensorized"
    return "online"


def _lazy(x: Tensor, y: Tensor, b: Tensor):
    LazyTensor = import_holding_keops_notice("pykeops.torch").LazyTensor
    print_keops_notice()
    return (LazyTensor(x[:, None, :].contiguous()), LazyTensor(y[None, :, :].contiguous()),
            LazyTensor(b.reshape(1, -1, 1).contiguous()))


def quadratic(x: Tensor, y: Tensor, a: Tensor, b: Tensor, kernel: str, bandwidths: Sequence[float] = ()) -> Tensor:
    r""":math:`\sum_{i,j} a_i b_j k(x_i, y_j)` without forming the matrix.

    ``kernel``: ``"gaussian"`` (:math:`\sum_\sigma e^{-\|x-y\|^2 / 2\sigma^2}`), ``"laplacian"``
    (:math:`\sum_\sigma e^{-\|x-y\|/\sigma}`) or ``"distance"`` (:math:`\|x - y\|`, the energy
    distance's). KeOps' square root has a zero derivative at 0, the subgradient the tensorized
    path uses where two points coincide.
    """
    X, Y, B = _lazy(x, y, b)
    if kernel == "gaussian":
        d2 = ((X - Y) ** 2).sum(-1)
        k = sum((-d2 / (2.0 * s * s)).exp() for s in bandwidths)
    elif kernel == "laplacian":
        d = ((X - Y) ** 2).sum(-1).sqrt()
        k = sum((-d / s).exp() for s in bandwidths)
    elif kernel == "distance":
        k = ((X - Y) ** 2).sum(-1).sqrt()
    else:  # pragma: no cover - the callers pass one of the three
        raise ValueError(f"no online form for kernel {kernel!r}")
    kb = (k * B).sum(dim=1)  # (n, 1): sum_j k(x_i, y_j) b_j
    return a @ kb.view(-1)
