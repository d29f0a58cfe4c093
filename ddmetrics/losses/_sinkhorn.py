"""Debiased Sinkhorn divergence through GeomLoss (KeOps kernels on CUDA)."""
from __future__ import annotations

import importlib.util
from typing import Optional

import torch
from torch import Tensor

from ._keops_notice import import_holding_keops_notice, print_keops_notice
from .base import DistributionLoss, logger, register_loss

_BACKENDS = ("auto", "tensorized", "online", "multiscale")


def keops_available() -> bool:
    """True when pykeops is installed (it is imported, and compiles, only when used)."""
    return importlib.util.find_spec("pykeops") is not None


# GeomLoss's own "auto" thresholds (SamplesLoss, geomloss 0.3): a dense kernel up to 5000 x 5000
# entries; KeOps' multiscale (kernel truncation) only pays off in low dimension at large sizes.
TENSORIZED_MAX_ENTRIES = 5000 ** 2
MULTISCALE_MIN_ENTRIES = 10000 ** 2
MULTISCALE_MAX_DIM = 3


def resolve_backend(backend: str, n: int, m: int, d: int, p: int = 2) -> str:
    """The GeomLoss backend a call on ``n`` and ``m`` points in dimension ``d`` runs with.

    ``"auto"`` chooses by size, with GeomLoss's rule: ``"tensorized"`` (dense ``n × m``
    matrices, fastest while they are small) when ``n·m <= 5000²``; else ``"multiscale"`` when
    ``d <= 3``, ``p = 2`` and ``n·m > 10000²``; else ``"online"`` (KeOps: memory O(n + m), on
    CPU and CUDA alike). Without pykeops the KeOps backends are unavailable and ``"auto"``
    stays ``"tensorized"`` (logged). Any other value is returned as given.
    """
    if backend != "auto":
        return backend
    if n * m <= TENSORIZED_MAX_ENTRIES:
        chosen = "tensorized"
    elif d <= MULTISCALE_MAX_DIM and p == 2 and n * m > MULTISCALE_MIN_ENTRIES:
        chosen = "multiscale"
    else:
        chosen = "online"
    if chosen != "tensorized" and not keops_available():
        logger.warning("ddmetrics: sinkhorn 'auto' would use %r for n=%d, m=%d but pykeops is not installed; "
                       "using 'tensorized' (memory O(n·m + n² + m²))", chosen, n, m)
        chosen = "tensorized"
    logger.debug("ddmetrics: sinkhorn backend 'auto' -> %r for n=%d, m=%d, d=%d", chosen, n, m, d)
    return chosen


@register_loss("sinkhorn")
class Sinkhorn(DistributionLoss):
    r"""Debiased Sinkhorn divergence (GeomLoss ``SamplesLoss("sinkhorn")``).

    .. math::
        S_\varepsilon(\alpha, \beta) = \mathrm{OT}_\varepsilon(\alpha, \beta)
        - \tfrac12 \mathrm{OT}_\varepsilon(\alpha, \alpha) - \tfrac12 \mathrm{OT}_\varepsilon(\beta, \beta),
        \qquad \varepsilon = \text{blur}^p

    Cost convention (GeomLoss): :math:`c(x, y) = \tfrac1p \|x - y\|^p`, so for ``p=2`` the
    ground cost is :math:`\tfrac12\|x-y\|^2` and :math:`S_\varepsilon \to \tfrac12 W_2^2` as
    ``blur`` → 0 (for ``p=1``, :math:`S_\varepsilon \to W_1`). ``debias=False`` gives the
    entropic OT cost :math:`\mathrm{OT}_\varepsilon(\alpha, \beta)` instead.

    Differentiable in ``x``, ``y`` and both weight vectors (GeomLoss's own backward).

    Parameters
    ----------
    blur : float
        Entropic length scale (default 0.05).
    scaling : float
        ε-scaling ratio in (0, 1); closer to 1 is more accurate and slower (default 0.5).
    p : int
        1 or 2 (default 2).
    debias : bool
        Debiased divergence (default) or plain entropic OT.
    reach : float, optional
        Unbalanced OT (GeomLoss ``reach``): the marginal constraints are relaxed into
        :math:`\rho\,\mathrm{KL}` penalties with :math:`\rho = \text{reach}^p`, so mass farther
        than about ``reach`` from the other cloud is destroyed rather than transported (outliers
        and class-proportion mismatch cost at most :math:`\rho` per unit of mass). ``None``
        (default): balanced OT.
    backend : str
        ``"auto"`` (by size, as GeomLoss chooses: see :func:`resolve_backend`),
        ``"tensorized"``, ``"online"`` or ``"multiscale"``.

    References
    ----------
    .. [1] J. Feydy, T. Séjourné, F.-X. Vialard, S. Amari, A. Trouvé, G. Peyré. Interpolating
       between optimal transport and MMD using Sinkhorn divergences. AISTATS 2019.
    .. [2] B. Charlier, J. Feydy, J. Glaunès, F.-D. Collin, G. Durif. Kernel operations on the
       GPU, with autodiff, without memory overflows. JMLR 2021.
    .. [3] T. Séjourné, J. Feydy, F.-X. Vialard, A. Trouvé, G. Peyré. Sinkhorn divergences for
       unbalanced optimal transport. arXiv:1910.12958, 2019.
    """

    extra = "sinkhorn"  # GeomLoss: refused at construction without it

    def __init__(self, blur: float = 0.05, scaling: float = 0.5, p: int = 2, debias: bool = True,
                 backend: str = "auto", reach: Optional[float] = None):
        super().__init__()
        if reach is not None and (isinstance(reach, bool) or not isinstance(reach, (int, float)) or not reach > 0):
            raise ValueError(f"reach must be a positive number or None (balanced OT), got {reach!r}")
        if not blur > 0:
            raise ValueError(f"blur must be positive, got {blur!r}")
        if not 0 < scaling < 1:
            raise ValueError(f"scaling must lie in (0, 1), got {scaling!r}")
        if p not in (1, 2):
            raise ValueError(f"p must be 1 or 2, got {p!r}")
        if backend not in _BACKENDS:
            raise ValueError(f"backend must be one of {_BACKENDS}, got {backend!r}")
        self.blur, self.scaling, self.p, self.debias, self.backend = blur, scaling, p, debias, backend
        self.reach = None if reach is None else float(reach)

    def _config(self):
        out = {"blur": self.blur, "scaling": self.scaling, "p": self.p, "debias": self.debias, "backend": self.backend}
        if self.reach is not None:  # recorded when set: a balanced run's record (and checkpoint) stays as it was
            out["reach"] = self.reach
        return out

    def samples_loss(self, backend: str, diameter: Optional[float] = None):
        """The GeomLoss ``SamplesLoss`` for a resolved ``backend`` (one of the three GeomLoss names).

        ``diameter`` fixes the start of GeomLoss's ε-schedule; ``None`` lets GeomLoss
        estimate it from the data at every call. Built per call: it holds only settings, and
        building one costs ~30 µs. A KeOps backend (``"online"``, ``"multiscale"``) first prints
        KeOps' CUDA notice, held back when POT or GeomLoss was imported.
        """
        SamplesLoss = import_holding_keops_notice("geomloss").SamplesLoss
        if backend != "tensorized":
            print_keops_notice()
        return SamplesLoss("sinkhorn", p=self.p, blur=self.blur, scaling=self.scaling, debias=self.debias,
                           backend=backend, diameter=diameter, reach=self.reach)

    stateless = True

    def _loss(self, x: Tensor, y: Tensor, a: Tensor, b: Tensor) -> Tensor:
        # written for a leading batch dimension too (GeomLoss takes (B, n, d) clouds); GeomLoss's own estimate of the diameter (the bounding box's diagonal), computed once
        # here and handed over, so GeomLoss does not compute it again (10 ms at n = 10⁴, d = 512)
        diameter = _spread(x, y)
        if not diameter > self.blur:
            # Every atom within blur of every other: GeomLoss would start its ε-schedule at
            # diameter^p, below the target blur^p (with every atom on one spot, log(0) and numpy's
            # arange fails, "Maximum allowed size exceeded"; on a denormal spread, ε ~ 1e-90 and
            # the softmin overflows to NaN). No annealing is needed at that scale: start at blur
            # (the schedule reduces to the target ε alone).
            diameter = self.blur
        backend = resolve_backend(self.backend, x.shape[-2], y.shape[-2], x.shape[-1], self.p)
        if x.dim() == 3 and backend == "multiscale":  # GeomLoss's multiscale backend takes one problem
            return torch.stack([self._loss(*p) for p in zip(x, y, a, b)])
        return self.samples_loss(backend, diameter)(a, x, b, y)

    def _batched_loss(self, x: Tensor, y: Tensor, a: Tensor, b: Tensor) -> Tensor:
        """One GeomLoss call for the batch. GeomLoss anneals ε from one diameter for all problems:
        the largest of theirs, so every problem's schedule starts at or above its own (the result
        differs from a separate call by the ε-scaling's convergence error, not by its target ε)."""
        return self._loss(x, y, a, b)


def _spread(x: Tensor, y: Tensor) -> float:
    """Diagonal length of the bounding box of both clouds, GeomLoss's diameter estimate (the
    largest over the problems of a batch)."""
    lo_x, hi_x = torch.aminmax(x.detach(), dim=-2)  # one pass over each cloud for both ends
    lo_y, hi_y = torch.aminmax(y.detach(), dim=-2)
    return float((torch.maximum(hi_x, hi_y) - torch.minimum(lo_x, lo_y)).norm(dim=-1).max())
