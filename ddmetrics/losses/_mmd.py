"""Kernel maximum mean discrepancy (squared), V- or U-statistic."""
from __future__ import annotations

from typing import Callable, Dict, Sequence, Union

import torch
from torch import Tensor

from . import _online
from ._cost import quadratic_form, safe_sqrt, squared_distances, weighted_mean
from .base import DistributionLoss, register_loss

Bandwidth = Union[float, Sequence[float], str]


# squared_distances expands |x|^2 + |y|^2 - 2 x.y, which is off by a few eps * (|x|^2 + |y|^2)
# (at most 3 eps measured for d up to 3072). Below this many eps the value is rounding noise:
# coincident points would sit ~sqrt(eps) |x| apart, and the median heuristic would turn that
# noise into a bandwidth and the kernel values into noise (MMD^2 of a cloud against copies of
# itself came out at -1.9 in float32).
_NOISE_EPS = 16.0


def _clean_sq_distances(x: Tensor, y: Tensor) -> Tensor:
    """Squared distances, set to exactly 0 (with a zero gradient) where they are rounding noise."""
    d2 = squared_distances(x, y)
    scale = ((x * x).sum(-1, keepdim=True) + (y * y).sum(-1).unsqueeze(-2)).detach()
    return torch.where(d2 > _NOISE_EPS * torch.finfo(d2.dtype).eps * scale, d2, torch.zeros_like(d2))


def _clean_distances(x: Tensor, y: Tensor) -> Tensor:
    """Distances from :func:`_clean_sq_distances`, with a zero (not NaN) gradient where they vanish."""
    return safe_sqrt(_clean_sq_distances(x, y))


def _gaussian(x: Tensor, y: Tensor, bw: Tensor, **_) -> Tensor:
    d2 = _clean_sq_distances(x, y)
    return sum(torch.exp(-d2 / (2.0 * s * s)) for s in bw)


def _laplacian(x: Tensor, y: Tensor, bw: Tensor, **_) -> Tensor:
    d = _clean_distances(x, y)
    return sum(torch.exp(-d / s) for s in bw)


def _linear(x: Tensor, y: Tensor, bw: Tensor, **_) -> Tensor:
    return x @ y.mT


def _polynomial(x: Tensor, y: Tensor, bw: Tensor, degree: int = 3, coef0: float = 1.0, **_) -> Tensor:
    return (x @ y.mT / x.shape[-1] + coef0) ** degree


#: kernel name -> k(x, y, bandwidths, **params), shape (n, m)
KERNELS: Dict[str, Callable[..., Tensor]] = {
    "gaussian": _gaussian,
    "laplacian": _laplacian,
    "linear": _linear,
    "polynomial": _polynomial,
}
_MEDIAN_SCALES = (0.5, 1.0, 2.0)
#: kernels that depend on x - y only
_TRANSLATION_INVARIANT = ("gaussian", "laplacian")


_MEDIAN_POINTS = 1024


def median_bandwidths(x: Tensor, y: Tensor) -> list:
    """Median-heuristic bandwidths: the median pairwise distance of the pooled (detached)
    samples times 0.5, 1 and 2. Above 1024 pooled points the median is taken over 1024
    evenly strided ones (deterministic), which keeps it O(n) instead of O(n²). Distances below
    the rounding noise of their computation count as 0; if the median is 0 it is replaced by 1.

    Batched ``(B, n, d)`` / ``(B, m, d)`` clouds: one median per problem, and each bandwidth a
    ``(B, 1, 1)`` tensor (it broadcasts over the problems' kernel matrices) instead of a float."""
    z = torch.cat([x, y], dim=-2).detach()
    k = z.shape[-2]
    if k > _MEDIAN_POINTS:
        z = z[..., torch.linspace(0, k - 1, _MEDIAN_POINTS, device=z.device).long(), :]
        k = _MEDIAN_POINTS
    z = z - z.mean(-2, keepdim=True)  # distances do not change; their rounding shrinks to the spread's
    d = _clean_distances(z, z)
    off = d[..., ~torch.eye(k, dtype=torch.bool, device=z.device)]
    if off.shape[-1] == 0:
        med = d.new_ones(d.shape[:-2])
    else:
        med = off.median(dim=-1).values  # the lower median, as Tensor.median()
        med = torch.where(med > 0, med, torch.ones_like(med))
    if med.dim() == 0:
        return [s * float(med) for s in _MEDIAN_SCALES]
    return [s * med.view(-1, 1, 1) for s in _MEDIAN_SCALES]


def _largest(bandwidths: list):
    """The largest bandwidth: a float, or per problem (``(B, 1, 1)``) for batched bandwidths."""
    if isinstance(bandwidths[0], Tensor):
        return torch.stack(bandwidths).amax(0)
    return max(bandwidths)


@register_loss("mmd")
class MMD(DistributionLoss):
    r"""Squared kernel maximum mean discrepancy between weighted samples.

    .. math::
        \mathrm{MMD}^2_k(\alpha, \beta) = a^\top K_{xx} a + b^\top K_{yy} b - 2\, a^\top K_{xy} b

    (biased V-statistic, the default). ``unbiased=True`` drops the diagonals of
    :math:`K_{xx}` and :math:`K_{yy}` and renormalises by :math:`1 - \sum_i a_i^2` (the
    U-statistic; with uniform weights the classical :math:`1/(n(n-1))` estimator).

    Kernels (``bandwidth`` :math:`\sigma`, a float or a list whose kernels are summed):

    - ``gaussian``: :math:`\sum_\sigma \exp(-\|x-y\|^2 / 2\sigma^2)`
    - ``laplacian``: :math:`\sum_\sigma \exp(-\|x-y\| / \sigma)`
    - ``linear``: :math:`x^\top y` — then MMD² = :math:`\|\sum_i a_i x_i - \sum_j b_j y_j\|^2`,
      DM's mean matching (computed in O((n+m)d) without a kernel matrix)
    - ``polynomial``: :math:`(x^\top y / d + c_0)^{\text{degree}}`

    ``bandwidth="median"`` (default) uses the median pooled pairwise distance times 0.5, 1 and 2,
    recomputed (without gradient) at each call. Differentiable in ``x``, ``y``, ``a``, ``b``.

    ``backend``: ``"tensorized"`` builds the kernel matrices (memory :math:`O((n+m)^2)`),
    ``"online"`` sums them through KeOps without storing them (memory :math:`O((n+m)d)`, the
    ``[sinkhorn]`` extra; ``gaussian`` and ``laplacian``), ``"auto"`` (default) picks
    ``"online"`` above :math:`5000^2` entries (:func:`ddmetrics.losses._online.resolve_kernel_backend`).

    References
    ----------
    .. [1] A. Gretton, K. Borgwardt, M. Rasch, B. Schölkopf, A. Smola. A kernel two-sample test.
       JMLR 2012.
    .. [2] H. Zhang et al. M3D: Dataset condensation by minimizing maximum mean discrepancy. AAAI 2024.
    """

    def __init__(self, kernel: str = "gaussian", bandwidth: Bandwidth = "median", unbiased: bool = False,
                 degree: int = 3, coef0: float = 1.0, backend: str = "auto"):
        super().__init__()
        _online.check_kernel_backend(backend)
        if backend == "online" and kernel not in _TRANSLATION_INVARIANT:
            raise ValueError(f"backend='online' needs a kernel in {_TRANSLATION_INVARIANT} (the linear kernel's "
                             f"biased MMD needs no matrix at all), got kernel={kernel!r}")
        if kernel not in KERNELS:
            raise ValueError(f"kernel must be one of {sorted(KERNELS)}, got {kernel!r}")
        if isinstance(bandwidth, str):
            if bandwidth != "median":
                raise ValueError(f"bandwidth must be a positive float, a list of them or 'median', got {bandwidth!r}")
        else:
            bws = [bandwidth] if isinstance(bandwidth, (int, float)) else list(bandwidth)
            if not bws or any(not float(s) > 0 for s in bws):
                raise ValueError(f"bandwidth values must be positive, got {bandwidth!r}")
        self.kernel, self.bandwidth, self.unbiased = kernel, bandwidth, unbiased
        self.degree, self.coef0, self.backend = degree, coef0, backend

    def _config(self):
        out = {"kernel": self.kernel, "bandwidth": self.bandwidth, "unbiased": self.unbiased}
        if self.backend != "auto":  # recorded when set: earlier runs' records (and checkpoints) stay as they were
            out["backend"] = self.backend
        return out

    def _bandwidths(self, x: Tensor, y: Tensor) -> list:
        if self.bandwidth == "median":
            return median_bandwidths(x, y) if self.kernel in ("gaussian", "laplacian") else []
        return [float(self.bandwidth)] if isinstance(self.bandwidth, (int, float)) else [float(s) for s in self.bandwidth]

    stateless = True

    def _loss(self, x: Tensor, y: Tensor, a: Tensor, b: Tensor) -> Tensor:
        # written for leading batch dimensions: the same code serves one problem and a batch
        if self.kernel == "linear" and not self.unbiased:  # closed form: no kernel matrix needed
            diff = weighted_mean(x, a) - weighted_mean(y, b)
            return (diff * diff).sum(-1)
        k = KERNELS[self.kernel]
        bw = self._bandwidths(x, y)
        if self.kernel in _TRANSLATION_INVARIANT:
            # The kernel only sees (x - y) / bandwidth, so a (detached) shift to the pooled mean
            # and a change of length unit alter nothing but rounding: the shift makes the
            # rounding of squared_distances relative to the clouds' spread rather than to their
            # distance from the origin; measuring lengths in units of the largest bandwidth keeps
            # a tiny median (points ~1e-22 apart in float32) from making 2 s^2 underflow to 0
            # (d2 / (2 s^2) = 0/0 = NaN on the diagonal) and the gradient's 1/s^2 overflow.
            center = torch.cat([x, y], dim=-2).detach().mean(-2, keepdim=True)
            unit = _largest(bw)
            x, y, bw = (x - center) / unit, (y - center) / unit, [s / unit for s in bw]
            if _online.resolve_kernel_backend(self.backend, x.shape[-2], y.shape[-2], "mmd") == "online":
                if x.dim() == 3:  # one problem at a time: each one's KeOps reduction already fills the device
                    # median bandwidths are (B, 1, 1) tensors, given ones the same floats for every problem
                    per = [[float(s.flatten()[i]) if isinstance(s, Tensor) else s for s in bw]
                           for i in range(x.shape[0])]
                    return torch.stack([_online_mmd(x[i], y[i], a[i], b[i], self.kernel, per[i], self.unbiased)
                                        for i in range(x.shape[0])])
                return _online_mmd(x, y, a, b, self.kernel, bw, self.unbiased)
        params = {"degree": self.degree, "coef0": self.coef0}
        kxx, kyy, kxy = k(x, x, bw, **params), k(y, y, bw, **params), k(x, y, bw, **params)
        if not self.unbiased:
            return quadratic_form(a, kxx, a) + quadratic_form(b, kyy, b) - 2.0 * quadratic_form(a, kxy, b)
        return _offdiag(kxx, a) + _offdiag(kyy, b) - 2.0 * quadratic_form(a, kxy, b)

    _batched_loss = _loss


def _online_mmd(x: Tensor, y: Tensor, a: Tensor, b: Tensor, kernel: str, bw: list, unbiased: bool) -> Tensor:
    """The MMD² of :meth:`MMD._loss` through KeOps; a translation-invariant kernel's diagonal is
    ``len(bw)`` (``k(x, x) = 1`` per bandwidth), which gives the U-statistic without a matrix."""
    kxx = _online.quadratic(x, x, a, a, kernel, bw)
    kyy = _online.quadratic(y, y, b, b, kernel, bw)
    kxy = _online.quadratic(x, y, a, b, kernel, bw)
    if not unbiased:
        return kxx + kyy - 2.0 * kxy

    def offdiag(total: Tensor, w: Tensor) -> Tensor:
        norm = 1.0 - (w * w).sum()
        if float(norm.detach()) <= 0:
            return total.new_zeros(())
        return (total - len(bw) * (w * w).sum()) / norm

    return offdiag(kxx, a) + offdiag(kyy, b) - 2.0 * kxy


def _offdiag(k: Tensor, w: Tensor) -> Tensor:
    """Weighted mean of the off-diagonal kernel entries (0 for a single point); per problem for a batch."""
    norm = 1.0 - (w * w).sum(-1)
    positive = norm > 0
    value = quadratic_form(w, k, w) - (w * w * torch.diagonal(k, dim1=-2, dim2=-1)).sum(-1)
    # a safe denominator where the norm vanishes: that entry is 0, with a zero (not NaN) gradient
    return torch.where(positive, value / norm.where(positive, torch.ones_like(norm)), torch.zeros_like(value))
