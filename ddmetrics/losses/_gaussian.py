r"""W_2² between the Gaussians fitted to two weighted clouds (the Fréchet distance as a loss)."""
from __future__ import annotations

from typing import Dict

import torch
from torch import Tensor

from ._cost import centered_working_inputs, safe_sqrt, weighted_mean
from .base import DistributionLoss, register_loss


class _PSDSqrt(torch.autograd.Function):
    r"""Symmetric square root of a symmetric positive semi-definite matrix.

    Forward: an eigendecomposition :math:`\Sigma = V \Lambda V^\top`; eigenvalues below
    :math:`d \cdot \epsilon_{\text{dtype}} \cdot \max|\lambda|` (rounding noise: a rank-deficient
    :math:`\Sigma` has "zero" eigenvalues of either sign at that size) count as exactly zero.

    Backward: :math:`S = \Sigma^{1/2}` solves :math:`S\, dS + dS\, S = d\Sigma`, so in the
    eigenbasis :math:`\partial S'_{ij} = \partial \Sigma'_{ij} / (s_i + s_j)`: a divided
    difference, with no :math:`1/(\lambda_i - \lambda_j)` term, so repeated eigenvalues are
    harmless (autograd through ``eigh`` would divide by their gaps). Where both
    :math:`s_i = s_j = 0` the derivative is infinite; that block is set to zero. It is the
    null-space block, which a covariance :math:`P^\top P` does not move to first order
    (:math:`d\Sigma = P^\top dP + dP^\top P` vanishes on it), so the gradient of the points
    stays exact.
    """

    @staticmethod
    def forward(ctx, sigma: Tensor) -> Tensor:
        lam, vec = torch.linalg.eigh(sigma)  # a batch of matrices: one threshold per matrix
        noise = lam.shape[-1] * torch.finfo(lam.dtype).eps * lam.abs().amax(-1, keepdim=True)
        s = torch.where(lam > noise, lam, torch.zeros_like(lam)).sqrt()
        ctx.save_for_backward(s, vec)
        return (vec * s.unsqueeze(-2)) @ vec.mT

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        s, vec = ctx.saved_tensors
        g = vec.mT @ (0.5 * (grad + grad.mT)) @ vec
        den = s.unsqueeze(-1) + s.unsqueeze(-2)
        positive = den > 0
        g = torch.where(positive, g / den.where(positive, torch.ones_like(den)), torch.zeros_like(g))
        return vec @ g @ vec.mT


def psd_sqrt(sigma: Tensor) -> Tensor:
    """Symmetric PSD square root of ``sigma`` (or of each matrix of a ``(..., d, d)`` batch) with a
    backward that is finite for singular and repeated spectra (see :class:`_PSDSqrt`)."""
    return _PSDSqrt.apply(sigma)


def covariance_factor(z: Tensor, w: Tensor) -> Tensor:
    r"""A matrix :math:`F` with :math:`F^\top F = \Sigma = \sum_i w_i z_i z_i^\top` for centred ``z``.

    With ``k <= d`` points it is :math:`\mathrm{diag}(\sqrt{w}) z` itself (``(k, d)``: no
    matrix function at all); with more points than dimensions the ``(d, d)`` symmetric root
    :math:`\Sigma^{1/2}` (:func:`psd_sqrt`), which is smaller. Batched ``(B, k, d)`` / ``(B, k)`` inputs give one
    factor per problem.
    """
    p = safe_sqrt(w).unsqueeze(-1) * z  # safe: a zero weight has a zero (not infinite) gradient
    if z.shape[-2] <= z.shape[-1]:
        return p
    return psd_sqrt(p.mT @ p)


@register_loss("gaussian_w2")
class GaussianW2(DistributionLoss):
    r"""Squared 2-Wasserstein distance between the Gaussians fitted to both weighted clouds.

    .. math::
        \mathcal{L}(\alpha, \beta) = \|m_x - m_y\|^2 + \mathrm{tr}\Big(\Sigma_x + \Sigma_y
        - 2 \big(\Sigma_x^{1/2} \Sigma_y \Sigma_x^{1/2}\big)^{1/2}\Big),
        \qquad m_x = \sum_i a_i x_i, \quad \Sigma_x = \sum_i a_i (x_i - m_x)(x_i - m_x)^\top

    (likewise :math:`m_y, \Sigma_y` with ``b``): the Fréchet distance of FID, as a loss. The
    covariances are those of the weighted measures (FID's ``np.cov`` divides by
    :math:`n - 1` instead). By Gelbrich's bound it is a lower bound of :math:`W_2^2(\alpha, \beta)`,
    with equality when both clouds are Gaussian in the large-sample limit; it only sees the first
    two moments.

    How the matrix square root is computed: for any factors with :math:`F_x^\top F_x = \Sigma_x`
    and :math:`F_y^\top F_y = \Sigma_y`, the eigenvalues of :math:`\Sigma_x^{1/2}\Sigma_y\Sigma_x^{1/2}`
    are the squared singular values of :math:`F_x F_y^\top`, so the cross term is a nuclear norm,

    .. math::
        \mathrm{tr}\big(\Sigma_x^{1/2}\Sigma_y\Sigma_x^{1/2}\big)^{1/2} = \|F_x F_y^\top\|_*,

    computed with ``torch.linalg.svdvals``, whose backward :math:`U V^\top` involves no gaps between
    singular values: finite for rank-deficient covariances and duplicated points. The factor of a
    cloud with at most ``d`` points is its weighted centred data (no eigendecomposition: the
    ``n < d`` regime of distillation features costs :math:`O(nmd)`); a cloud with more points uses
    the symmetric root from an eigendecomposition with eigenvalues clamped at zero below
    :math:`d\,\epsilon\,\lambda_{\max}` and a divided-difference backward (:func:`psd_sqrt`).
    No ``eps`` is added to the covariances. Where a weight is zero its gradient is the
    one-sided (zero) one. Differentiable in ``x``, ``y``, ``a``, ``b``; the value can be
    negative by rounding (a few :math:`\epsilon\,\mathrm{tr}\Sigma`).

    References
    ----------
    .. [1] D. C. Dowson, B. V. Landau. The Fréchet distance between multivariate normal
       distributions. Journal of Multivariate Analysis 12(3), 1982.
    .. [2] M. Gelbrich. On a formula for the L2 Wasserstein metric between measures on Euclidean
       and Hilbert spaces. Mathematische Nachrichten 147, 1990.
    .. [3] M. Heusel, H. Ramsauer, T. Unterthiner, B. Nessler, S. Hochreiter. GANs trained by a two
       time-scale update rule converge to a local Nash equilibrium (FID). NeurIPS 2017.
    """

    def _config(self) -> Dict[str, object]:
        return {}

    stateless = True

    def _loss(self, x: Tensor, y: Tensor, a: Tensor, b: Tensor) -> Tensor:
        # written for leading batch dimensions: the same code serves one problem and a batch
        out_dtype = x.dtype
        x, y, a, b = centered_working_inputs(x, y, a, b)  # a shift changes nothing but the rounding
        mx, my = weighted_mean(x, a), weighted_mean(y, b)
        zx, zy = x - mx.unsqueeze(-2), y - my.unsqueeze(-2)
        trace_x = (a * (zx * zx).sum(-1)).sum(-1)
        trace_y = (b * (zy * zy).sum(-1)).sum(-1)
        cross = torch.linalg.svdvals(covariance_factor(zx, a) @ covariance_factor(zy, b).mT).sum(-1)
        diff = mx - my
        return ((diff * diff).sum(-1) + trace_x + trace_y - 2.0 * cross).to(out_dtype)

    _batched_loss = _loss
