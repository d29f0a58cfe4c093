r"""Per-class BatchNorm statistics and the PCBN regulariser (WMDD §4.3, Eq. 13–14).

For every BatchNorm layer :math:`l` and class :math:`k`, the real class statistics
:math:`BN^{mean}_{k,l}, BN^{var}_{k,l}` are the exact per-channel mean and (biased) variance
of that layer's *input* over all of the class's images and spatial positions, collected in
one pass with forward hooks. The regulariser compares them with the weighted statistics
(Eq. 14) of the synthetic images' inputs to the same layers:

.. math::
    \mathcal{L}_{BN}(\tilde X) = \sum_{k} \sum_{l=1}^{L}
    \big\|\mathcal{A}_{mean}(F_{k,l}, w_k) - BN^{mean}_{k,l}\big\|_2^2
    + \big\|\mathcal{A}_{var}(F_{k,l}, w_k) - BN^{var}_{k,l}\big\|_2^2

where :math:`F_{k,l}` stacks :math:`f_l(\tilde x_{k,j})` over the synthetic images of class
:math:`k` and :math:`w_k` are their (barycenter) weights. ``mode="bn"`` is the all-class
variant of SRe²L (and of the BN rows of WMDD's Table 3): one term per layer, the statistics of
the batch given against all-class statistics. It means what SRe²L means only for a batch that
holds every class — the distiller's ``synthesis_batch="slot"`` (image j of every class), as
SRe²L's code optimises; a one-class batch would be pulled toward the statistics of all classes.

Norm forms (``norm``): the squared form above is the paper's; WMDD's and SRe²L's released code
use unsquared per-layer norms :math:`\|\Delta\mu\|_2 + \|\Delta\sigma^2\|_2`, averaged over the
batch's classes (``norm="l2"``), SRe²L with the first layer ×10 (``first_weight``).
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, List, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from ..losses import check_weight_vector
from ..models import capture
from ..utils import batches, model_device

__all__ = ["BNStats", "BoundPCBN", "PCBNLoss", "bn_inputs", "bn_layers", "per_class_bn_stats", "weighted_mean_var"]

_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def _no_batchnorm(model: nn.Module) -> ValueError:
    """The error for a model in which no BatchNorm layer can be hooked."""
    if isinstance(model, torch.jit.ScriptModule):
        # its layers run inside TorchScript: they are no nn.BatchNorm instances and take no hooks
        return ValueError("the model is a TorchScript module: its BatchNorm layers cannot be hooked, so PCBN/BN "
                          "regularisation needs an nn.Module teacher; use reg='none' (--set reg=none)")
    return ValueError("model has no BatchNorm layer: PCBN needs at least one")


def _flatten(features: Tensor, name: str = "features") -> Tensor:
    """(m, C, ...) -> (m, C, S) with S the number of spatial positions (1 without any)."""
    if not isinstance(features, Tensor):
        raise TypeError(f"{name} must be a Tensor, got {type(features).__name__}")
    if features.dim() < 2:
        raise ValueError(f"{name} must be (m, C) or (m, C, ...), got shape {tuple(features.shape)}")
    return features.reshape(features.shape[0], features.shape[1], -1)


def _group_weights(weights: Tensor, group: Tensor, num_groups: int) -> Tensor:
    """``weights`` normalised to sum 1 within each group, ``(m, 1)``; checks every group's sum is positive."""
    wsum = weights.new_zeros(num_groups).index_add(0, group, weights)
    if bool((wsum <= 0).any()):
        raise ValueError("weights must have a positive sum within every class (group)")
    return (weights / wsum[group]).unsqueeze(1)


def _moments(flat: Tensor, w: Tensor) -> Tuple[Tensor, Tensor]:
    r"""Weighted channel mean and variance ``(C,)`` of ``flat`` (m, C, S) for weights ``w`` (m,)
    summing to 1; the variance from the centred values :math:`E[(f - \mu)^2]` (no cancellation)."""
    per_position = 1.0 / flat.shape[2]
    mean = _weighted_rows(flat.sum(2), w, per_position)
    return mean, _weighted_rows(torch.linalg.vector_norm(flat - mean.unsqueeze(1), dim=2).square_(), w, per_position)


def _weighted_rows(rows: Tensor, w: Tensor, scale: float) -> Tensor:
    """``scale * (w @ rows)`` (C,) for ``rows`` (m, C), one ``addmv`` with ``scale`` a kernel
    argument (``beta`` = 0: the first operand is not read). Here, on the CPU, a tensor times a
    Python number first makes a tensor of the number (an allocation and a copy)."""
    return torch.addmv(rows[0], rows.t(), w, beta=0.0, alpha=scale)


def _moments_input_grad(flat: Tensor, mean: Tensor, w: Tensor, g_mean: Tensor, g_var: Tensor) -> Tensor:
    r"""The gradient on ``flat`` of a loss with gradients ``g_mean``, ``g_var`` on :func:`_moments`.

    With :math:`\omega_i = w_i / S` and :math:`\delta = f - \mu`:

    .. math::
        \frac{\partial L}{\partial f_{ics}} = \omega_i \Big(\frac{\partial L}{\partial \mu_c}
        + 2 \frac{\partial L}{\partial \sigma^2_c}\, \delta_{ics}\Big) = A_{ic} f_{ics} + B_{ic}

    (the variance's dependence through :math:`\mu` vanishes, since :math:`\sum \omega \delta = 0`),
    :math:`A_{ic} = 2\omega_i \partial L/\partial\sigma^2_c`,
    :math:`B_{ic} = \omega_i(\partial L/\partial\mu_c - 2\mu_c\,\partial L/\partial\sigma^2_c)`:
    one product over ``flat`` and an in-place add.
    """
    slope, offset = _slope_offset(flat.shape[2], mean, w, g_mean, g_var)
    # a product, then an in-place add on its output: addcmul with two (m, C, 1) operands broadcast
    # over S takes a slower CPU loop than the product with one
    return (flat * slope.unsqueeze(2)).add_(offset.unsqueeze(2))


def _slope_offset(positions: int, mean: Tensor, w: Tensor, g_mean: Tensor, g_var: Tensor) -> Tuple[Tensor, Tensor]:
    """:math:`A` and :math:`B` ``(m, C)`` of :func:`_moments_input_grad` for ``positions`` = S."""
    per_position = 1.0 / positions
    # addr with beta = 0 (the first operand is not read): the 1/S a kernel argument (see _weighted_rows)
    slope = torch.addr(g_var, w, g_var, beta=0.0, alpha=2.0 * per_position)
    offset = torch.addr(g_var, w, torch.addcmul(g_mean, g_var, mean, value=-2.0), beta=0.0, alpha=per_position)
    return slope, offset


class _OneGroupMoments(torch.autograd.Function):
    """:func:`_moments` with the hand-written backward :func:`_moments_input_grad`.

    Autograd through the same formulas records ~160 small operations per BatchNorm layer and
    iteration; this records two (checked against it in ``tests/distill/test_pcbn.py``). The
    weights ``w`` (m,) are constants here (no gradient).
    """

    @staticmethod
    def forward(ctx, flat: Tensor, w: Tensor):
        mean, var = _moments(flat, w)
        ctx.save_for_backward(flat, mean, w)
        return mean, var

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_mean: Tensor, g_var: Tensor):
        flat, mean, w = ctx.saved_tensors
        return _moments_input_grad(flat, mean, w, g_mean, g_var), None


class _OneGroupPCBN(torch.autograd.Function):
    r"""Eq. 13 for one group with constant weights ``w`` (m,), every layer in one autograd node:
    :math:`\sum_l \|\mu_l - \bar\mu_l\|^2 + \|\sigma^2_l - \bar\sigma^2_l\|^2` and, backward,
    :func:`_moments_input_grad` with :math:`\partial L/\partial\mu_l = 2g(\mu_l - \bar\mu_l)`,
    :math:`\partial L/\partial\sigma^2_l = 2g(\sigma^2_l - \bar\sigma^2_l)`. Per layer that
    is the two reads of :func:`_moments` and one pass of :func:`_moments_input_grad`; the term's own arithmetic runs
    on ``(C,)`` vectors outside autograd (about 20 recorded operations per layer otherwise), the
    differences of every layer in one vector. ``refs``: one ``(mean, var)`` pair of ``(C,)``
    tensors per tensor of ``flats``.
    """

    @staticmethod
    def forward(ctx, w: Tensor, refs, *flats: Tensor):
        means, diffs = [], []
        for flat, (ref_mean, ref_var) in zip(flats, refs):
            mean, var = _moments(flat, w)
            means.append(mean)
            diffs += [mean - ref_mean, var - ref_var]
        diff = torch.cat(diffs)
        ctx.save_for_backward(w, diff, *flats, *means)
        ctx.channels = [len(m) for m in means]
        return diff.dot(diff)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g: Tensor):
        w, diff, *rest = ctx.saved_tensors
        layers = len(ctx.channels)
        flats, means = rest[:layers], rest[layers:]
        # per layer: (2g (mu - ref_mu), 2g (var - ref_var)), the gradients on the mean and the variance
        parts = (diff * (g + g)).split([c for c in ctx.channels for _ in (0, 1)])
        grads = [_moments_input_grad(flat, mean, w, parts[2 * i], parts[2 * i + 1])
                 for i, (flat, mean) in enumerate(zip(flats, means))]
        return (None, None, *grads)


def _affine_rows(flat: Tensor, slope: Tensor, offset: Tensor) -> Tensor:
    """``slope[i, c] * flat[i, c, :] + offset[i, c]`` for ``flat`` (m, C, S), as one pass: an
    eval-mode batch norm of the (1, m·C, S) view with unit statistics (the kernel applies one
    scale and one shift per channel; a broadcast product and add take two passes)."""
    m, c, s = flat.shape
    ones = flat.new_ones(m * c)
    return F.batch_norm(flat.reshape(1, m * c, s), ones.new_zeros(m * c), ones, slope.reshape(-1),
                        offset.reshape(-1), False, 0.0, 0.0).view(m, c, s)


class _EvalBatchNormMoments(torch.autograd.Function):
    r"""An eval-mode BatchNorm layer and the weighted moments (:func:`_moments`) of its input, one node.

    Forward: the layer's output, exactly as ``layer(x)`` computes it (``F.batch_norm`` with
    the running statistics), and :math:`\mu, \sigma^2` of ``x`` for weights ``w`` (m,).
    Backward: the layer's gradient :math:`k_c\,\partial L/\partial y` (:math:`k_c` =
    weight / √(running var + eps)) plus :func:`_moments_input_grad`'s :math:`A f + B`, in two
    passes over ``x``'s size (:func:`_affine_rows`, then an in-place ``addcmul``) where the
    layer's own backward, the moments' gradient (two) and autograd's sum of the two took four;
    the layer's own node is not recorded. The layer's parameters and
    running statistics are constants here (no gradient; checked by the caller).
    """

    @staticmethod
    def forward(ctx, x: Tensor, w: Tensor, layer: nn.Module):
        y = F.batch_norm(x, layer.running_mean, layer.running_var, layer.weight, layer.bias, False, 0.0, layer.eps)
        flat = _flatten(x)
        mean, var = _moments(flat, w)
        scale = torch.rsqrt(layer.running_var + layer.eps)
        if layer.weight is not None:
            scale = scale * layer.weight
        ctx.save_for_backward(flat, mean, w, scale)
        ctx.shape = x.shape
        return y, mean, var

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_y: Tensor, g_mean: Tensor, g_var: Tensor):
        flat, mean, w, scale = ctx.saved_tensors
        grad = _affine_rows(flat, *_slope_offset(flat.shape[2], mean, w, g_mean, g_var))
        grad.addcmul_(_flatten(g_y), scale.view(1, -1, 1))
        return grad.view(ctx.shape), None, None


class _Discrepancy(torch.autograd.Function):
    r""":math:`\sum_l \|\mu_l - \bar\mu_l\|^2 + \|\sigma^2_l - \bar\sigma^2_l\|^2` of
    ``moments`` (``mean_1, var_1, mean_2, ...``) against ``refs`` (the same order), one node."""

    @staticmethod
    def forward(ctx, refs, *moments: Tensor):
        diff = torch.cat(moments) - refs
        ctx.save_for_backward(diff)
        ctx.sizes = [len(t) for t in moments]
        return diff.dot(diff)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g: Tensor):
        diff, = ctx.saved_tensors
        return (None, *(diff * (g + g)).split(ctx.sizes))


def _fusable(layer: nn.Module, dtype: torch.dtype) -> bool:
    """Whether ``layer`` can run as :class:`_EvalBatchNormMoments`: eval mode with running
    statistics, no parameter in autograd, statistics and parameters in ``dtype``."""
    tensors = [layer.running_mean, layer.running_var, layer.weight, layer.bias]
    return (not layer.training and layer.running_mean is not None and layer.running_var is not None
            and not any(t is not None and (t.requires_grad or t.dtype != dtype) for t in tensors))


#: the fewest elements of a BatchNorm input for which :class:`_EvalBatchNormMoments` takes its
#: layer's place: below, a node per layer costs more than the passes over the input it saves
FUSE_MIN_ELEMENTS = 1 << 18


@contextmanager
def _eval_bn_moments(layers: List[nn.Module], w: Tensor, min_elements: int
                     ) -> Iterator[Tuple[List[Optional[Tuple[Tensor, Tensor]]], List[Optional[Tensor]]]]:
    """Inside the block, a layer of ``layers`` whose input has ``w``'s dtype and at least
    ``min_elements`` elements runs as :class:`_EvalBatchNormMoments` with weights ``w``; any
    other runs as itself and its input is kept. Yields ``(moments, inputs)``, one slot per
    layer each: the ``(mean, var)`` or the input of its last call (the other slot ``None``).
    The layers' ``forward`` is restored on exit."""
    moments: List[Optional[Tuple[Tensor, Tensor]]] = [None] * len(layers)
    inputs: List[Optional[Tensor]] = [None] * len(layers)
    saved = []

    def forward_for(i: int, layer: nn.Module, plain: Callable) -> Callable:
        def forward(x: Tensor) -> Tensor:
            if x.dtype != w.dtype or x.numel() < min_elements:
                moments[i], inputs[i] = None, x
                return plain(x)
            y, mean, var = _EvalBatchNormMoments.apply(x, w, layer)
            moments[i], inputs[i] = (mean, var), None
            return y
        return forward

    try:
        for i, layer in enumerate(layers):
            saved.append((layer, "forward" in layer.__dict__, layer.__dict__.get("forward")))
            layer.forward = forward_for(i, layer, layer.forward)
        yield moments, inputs
    finally:
        for layer, had, own in saved:
            if had:
                layer.forward = own
            else:
                del layer.forward


def _grouped_mean_var(flat: Tensor, wn: Tensor, group: Tensor, num_groups: int) -> Tuple[Tensor, Tensor]:
    """Eq. 14 for several groups at once.

    ``flat`` (m, C, S), ``wn`` (m, 1) weights normalised within their group
    (:func:`_group_weights`), ``group`` (m,) int64 in ``0..num_groups-1``. Returns means and
    variances of shape (num_groups, C). The variance is computed from centred values (not
    E[x²] − E[x]²), which keeps it accurate and its gradient exact.

    One group with constant weights (a synthesis loop works class by class) goes through
    :class:`_OneGroupMoments`: two reads of ``flat`` and a hand-written backward;
    ``torch.var_mean`` (Welford) is several times slower on the CPU at these shapes.
    """
    c = flat.shape[1]
    if num_groups == 1 and not wn.requires_grad:
        mean, var = _OneGroupMoments.apply(flat, wn.view(-1))
        return mean.unsqueeze(0), var.unsqueeze(0)
    # several groups, or weights in autograd: plain autograd over per-image means
    mean = flat.new_zeros(num_groups, c).index_add(0, group, wn * flat.mean(2))
    dev2 = (flat - mean[group].unsqueeze(2)).square().mean(2)  # (m, C)
    var = flat.new_zeros(num_groups, c).index_add(0, group, wn * dev2)
    return mean, var


def _check_weights(weights: Tensor, m: int, name: str = "weights") -> None:
    # not normalised (any positive scale); the positive sum is checked per class by _grouped_mean_var
    check_weight_vector(weights, m, name)


def weighted_mean_var(features: Tensor, weights: Tensor) -> Tuple[Tensor, Tensor]:
    r"""Channel-wise weighted mean and (biased) variance — WMDD Eq. 14.

    .. math::
        \mathcal{A}_{mean}(F, w)_c = \frac{1}{HU \sum_j w_j} \sum_j w_j \sum_{h,u} F_{j,c,h,u},
        \qquad
        \mathcal{A}_{var}(F, w)_c = \frac{1}{HU \sum_j w_j} \sum_j w_j \sum_{h,u}
        \big(F_{j,c,h,u} - \mathcal{A}_{mean}(F, w)_c\big)^2

    Parameters
    ----------
    features : Tensor
        ``(m, C)`` or ``(m, C, *spatial)`` (e.g. ``(m, C, H, W)``); spatial positions are
        weighted uniformly.
    weights : Tensor
        ``(m,)`` non-negative, not necessarily normalised, with a positive sum.

    Returns
    -------
    mean, var : Tensor
        Shape ``(C,)`` each; differentiable in ``features`` (and ``weights``). Uniform
        weights give the ordinary biased mean and variance over batch and space.

    Raises
    ------
    ValueError
        On mismatched shapes, negative or non-finite weights, or a zero weight sum.
    """
    flat = _flatten(features)
    _check_weights(weights, flat.shape[0])
    group = torch.zeros(flat.shape[0], dtype=torch.long, device=flat.device)
    wn = _group_weights(weights.to(flat.device, flat.dtype), group, 1)
    mean, var = _grouped_mean_var(flat, wn, group, 1)
    return mean[0], var[0]


def bn_layers(model: nn.Module) -> List[nn.Module]:
    """The model's BatchNorm layers (1d, 2d, 3d), in ``model.modules()`` order."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    return [m for m in model.modules() if isinstance(m, _BN)]


@contextmanager
def bn_inputs(model: nn.Module) -> Iterator[List[Optional[Tensor]]]:
    """Capture the input of every BatchNorm layer during forward passes inside the block.

    Parameters
    ----------
    model : nn.Module
        The network; hooks go on every layer of :func:`bn_layers`
        (:func:`ddmetrics.models.capture`, the hook mechanism every method shares).

    Yields
    ------
    list of Tensor or None
        One slot per BN layer (in :func:`bn_layers` order), overwritten by each call of that
        layer with its input tensor (still attached to the autograd graph); ``None`` for a
        layer that has not run. The forward pre-hooks are removed on exit, even on error.

    Examples
    --------
    >>> with bn_inputs(model) as captured:          # doctest: +SKIP
    ...     logits = model(x)
    >>> [f.shape for f in captured]                 # doctest: +SKIP
    """
    with capture(bn_layers(model), "input") as captured:
        yield captured


@dataclass
class BNStats:
    """Per-class (and all-class) statistics of the inputs of a model's BatchNorm layers.

    Attributes
    ----------
    mean, var : list of Tensor
        ``mean[l]``, ``var[l]`` of shape ``(num_classes, C_l)``: exact per-channel mean and
        biased variance of BN layer ``l``'s input over the images of each class (zeros for
        a class without images).
    global_mean, global_var : list of Tensor
        ``(C_l,)``: the same over all images.
    counts : Tensor
        ``(num_classes,)`` int64, images per class.
    """

    mean: List[Tensor]
    var: List[Tensor]
    global_mean: List[Tensor]
    global_var: List[Tensor]
    counts: Tensor

    @property
    def num_layers(self) -> int:
        """Number of BatchNorm layers L."""
        return len(self.mean)

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return int(self.counts.shape[0])

    def to(self, device: Union[str, torch.device, None] = None, dtype: Optional[torch.dtype] = None) -> "BNStats":
        """A copy on ``device`` / in ``dtype`` (floating tensors only)."""
        mv = lambda ts: [t.to(device=device, dtype=dtype or t.dtype) for t in ts]  # noqa: E731
        return BNStats(mv(self.mean), mv(self.var), mv(self.global_mean), mv(self.global_var),
                       self.counts.to(device=device))



@torch.no_grad()
def per_class_bn_stats(model: nn.Module, dataset: Dataset, num_classes: int, batch_size: int = 256,
                       device: Optional[Union[str, torch.device]] = None, variance: str = "exact",
                       variance_batch: int = 100) -> BNStats:
    r"""Exact per-class channel mean and biased variance of every BN layer's input.

    One pass over ``dataset`` with the model in eval mode and no gradient. For layer
    :math:`l`, class :math:`k` and channel :math:`c` it accumulates, in float64, shifted
    sums :math:`\sum (x - s_c)`, :math:`\sum (x - s_c)^2` and the count :math:`n_{k}` of
    values (images × spatial positions), then

    .. math::
        \mu_{k,c} = s_c + \frac{\sum (x - s_c)}{n_k}, \qquad
        \sigma^2_{k,c} = \frac{\sum (x - s_c)^2}{n_k} - \Big(\frac{\sum (x - s_c)}{n_k}\Big)^2

    (:math:`s_c`: the first batch's channel mean, which keeps the subtraction well
    conditioned) — the exact statistics, not an average of per-batch variances.

    ``variance="batch_mean"`` gives what WMDD's released code computes instead
    (``recover/utils.py:229-243``): each class's images in dataset order, in batches of
    ``variance_batch``, the biased variance *within* each batch, averaged with the batches'
    sizes as weights (the mean is exact either way). It leaves out the spread between batch
    means, so it is below the exact variance.

    Parameters
    ----------
    model : nn.Module
        Network with at least one BatchNorm layer; its train/eval flags are restored.
    dataset : Dataset
        Any map-style or iterable Dataset of ``(image, label)`` pairs.
    num_classes : int
        Number of classes; labels must lie in ``0 .. num_classes - 1``.
    batch_size : int
        Batch size of the pass (the result does not depend on it).
    device : str or torch.device, optional
        Where the forward runs (default: the model's device).
    variance : {"exact", "batch_mean"}
        The variance above.
    variance_batch : int
        Images per batch for ``variance="batch_mean"``.

    Returns
    -------
    BNStats
        Statistics in float32 on ``device``.

    Raises
    ------
    ValueError
        If the model has no BatchNorm layer, the dataset is empty, a label is out of range,
        or ``num_classes`` / ``batch_size`` is not a positive int.
    """
    layers = bn_layers(model)
    if not layers:
        raise _no_batchnorm(model)
    for name, v in (("num_classes", num_classes), ("batch_size", batch_size)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    device = torch.device(device) if device is not None else model_device(model)
    if variance == "batch_mean":
        return _batch_mean_bn_stats(model, layers, dataset, num_classes, variance_batch, device)
    if variance != "exact":
        raise ValueError(f"variance must be 'exact' or 'batch_mean', got {variance!r}")
    modes = {m: m.training for m in model.modules()}
    model.eval()
    shift: List[Tensor] = []  # per layer (C,)
    sums: List[Tensor] = []   # per layer (K, C): sum of (x - shift)
    sq: List[Tensor] = []     # per layer (K, C): sum of (x - shift)^2
    values: List[Tensor] = []  # per layer (K,): number of values per channel
    images_per_class = torch.zeros(num_classes, dtype=torch.int64, device=device)
    try:
        with bn_inputs(model) as captured:
            for images, labels in batches(dataset, batch_size):
                labels = torch.as_tensor(labels, device=device).long().reshape(-1)
                if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
                    raise ValueError(f"dataset labels must lie in 0..{num_classes - 1}, got "
                                     f"{int(labels.min())}..{int(labels.max())}")
                for i in range(len(captured)):
                    captured[i] = None
                model(images.to(device))
                if any(f is None for f in captured):
                    raise ValueError("a BatchNorm layer did not run during the forward pass")
                images_per_class += torch.bincount(labels, minlength=num_classes)
                for i, f in enumerate(captured):
                    flat = _flatten(f).to(torch.float64)  # (B, C, S)
                    if i == len(shift):  # first batch: allocate
                        shift.append(flat.mean((0, 2)))
                        sums.append(torch.zeros(num_classes, flat.shape[1], dtype=torch.float64, device=device))
                        sq.append(torch.zeros_like(sums[-1]))
                        values.append(torch.zeros(num_classes, dtype=torch.float64, device=device))
                    d = flat - shift[i][None, :, None]
                    sums[i].index_add_(0, labels, d.sum(2))
                    sq[i].index_add_(0, labels, d.square().sum(2))
                    values[i].index_add_(0, labels, torch.full((len(labels),), float(flat.shape[2]),
                                                               dtype=torch.float64, device=device))
    finally:
        for m, flag in modes.items():
            m.train(flag)
    if not sums:
        raise ValueError("dataset is empty")
    mean, var, gmean, gvar = [], [], [], []
    for s0, s1, s2, n in zip(shift, sums, sq, values):
        nk = n.clamp_min(1)[:, None]
        d = s1 / nk
        mean.append(torch.where(n[:, None] > 0, s0 + d, torch.zeros_like(d)).float())
        var.append((s2 / nk - d.square()).clamp_min(0).float())
        total = n.sum()
        dg = s1.sum(0) / total
        gmean.append((s0 + dg).float())
        gvar.append((s2.sum(0) / total - dg.square()).clamp_min(0).float())
    return BNStats(mean, var, gmean, gvar, images_per_class)


@torch.no_grad()
def _batch_mean_bn_stats(model: nn.Module, layers: List[nn.Module], dataset, num_classes: int, batch: int,
                         device: torch.device) -> BNStats:
    """:func:`per_class_bn_stats` with ``variance="batch_mean"`` (see there)."""
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"variance_batch must be a positive int, got {batch!r}")
    if not hasattr(dataset, "class_indices") or not hasattr(dataset, "load"):
        raise TypeError("variance='batch_mean' reads each class in order: dataset must be an ImageDataset "
                        "(ArrayDataset or ImageFolder)")
    modes = {m: m.training for m in model.modules()}
    model.eval()
    counts = torch.zeros(num_classes, dtype=torch.int64, device=device)
    mean_sums: List[Tensor] = []  # per layer (K, C): sum over batches of size * batch mean
    var_sums: List[Tensor] = []   # per layer (K, C): sum over batches of size * within-batch variance
    try:
        with bn_inputs(model) as captured:
            for k in range(num_classes):
                idx = dataset.class_indices(k)
                for start in range(0, len(idx), batch):
                    chunk = idx[start:start + batch]
                    for i in range(len(captured)):
                        captured[i] = None
                    model(dataset.load(chunk).to(device))
                    if any(f is None for f in captured):
                        raise ValueError("a BatchNorm layer did not run during the forward pass")
                    counts[k] += len(chunk)
                    for i, f in enumerate(captured):
                        flat = _flatten(f).to(torch.float64)
                        if i == len(mean_sums):
                            mean_sums.append(torch.zeros(num_classes, flat.shape[1], dtype=torch.float64,
                                                         device=device))
                            var_sums.append(torch.zeros_like(mean_sums[-1]))
                        mean_sums[i][k] += len(chunk) * flat.mean((0, 2))
                        var_sums[i][k] += len(chunk) * flat.var((0, 2), unbiased=False)
    finally:
        for m, flag in modes.items():
            m.train(flag)
    if not mean_sums:
        raise ValueError("dataset is empty")
    n = counts.to(torch.float64).clamp_min(1)[:, None]
    total = counts.sum().to(torch.float64)
    mean = [(s / n).float() for s in mean_sums]
    var = [(s / n).float() for s in var_sums]
    gmean = [(s.sum(0) / total).float() for s in mean_sums]
    gvar = [(s.sum(0) / total).float() for s in var_sums]
    return BNStats(mean, var, gmean, gvar, counts)


#: the forms of the regulariser (``PCBNLoss(norm=...)``)
NORMS = ("squared", "l2")


class PCBNLoss:
    r"""The PCBN regulariser (WMDD Eq. 13) or its all-class BN variant.

    Parameters
    ----------
    model : nn.Module
        The (teacher) network whose BatchNorm inputs are matched. Its train/eval mode is the
        caller's choice; only the inputs of the BN layers are captured.
    stats : BNStats, optional
        Real statistics from :func:`per_class_bn_stats`. Required for ``mode="pcbn"``. For
        ``mode="bn"``: the all-class statistics are used, or, when ``stats`` is ``None``, the
        running statistics of the model's BN layers (SRe²L's target).
    mode : {"pcbn", "bn"}
        ``"pcbn"``: one term per class present in the synthetic labels and per layer;
        ``"bn"``: one term per layer, the weighted statistics of the whole synthetic batch.
    norm : {"squared", "l2"}
        ``"squared"`` (WMDD Eq. 13): :math:`\|\Delta\mu\|^2 + \|\Delta\sigma^2\|^2` summed over
        classes and layers. ``"l2"`` (the released code of WMDD, ``recover/utils.py:157``, and
        SRe²L, ``BNFeatureHook``): :math:`\|\Delta\mu\|_2 + \|\Delta\sigma^2\|_2` unsquared, averaged
        over the batch's classes, summed over layers.
    first_weight : float
        Factor on the first BatchNorm layer's term (SRe²L's ``first_bn_multiplier``, 10).

    Examples
    --------
    >>> stats = per_class_bn_stats(teacher, train, num_classes=10)     # doctest: +SKIP
    >>> reg, logits = PCBNLoss(teacher, stats)(syn, syn_labels, syn_weights)  # doctest: +SKIP
    """

    def __init__(self, model: nn.Module, stats: Optional[BNStats] = None, mode: str = "pcbn",
                 norm: str = "squared", first_weight: float = 1.0) -> None:
        if mode not in ("pcbn", "bn"):
            raise ValueError(f"mode must be 'pcbn' or 'bn', got {mode!r}")
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {', '.join(map(repr, NORMS))}, got {norm!r}")
        if isinstance(first_weight, bool) or not isinstance(first_weight, (int, float)) or not first_weight >= 0:
            raise ValueError(f"first_weight must be a non-negative number, got {first_weight!r}")
        layers = bn_layers(model)
        if not layers:
            raise _no_batchnorm(model)
        if stats is None:
            if mode == "pcbn":
                raise ValueError("stats is required for mode='pcbn' (use per_class_bn_stats)")
            if any(l.running_mean is None or l.running_var is None for l in layers):
                raise ValueError("stats is None and a BatchNorm layer tracks no running statistics")
        elif not isinstance(stats, BNStats):
            raise TypeError(f"stats must be BNStats, got {type(stats).__name__}")
        elif stats.num_layers != len(layers):
            raise ValueError(f"stats has {stats.num_layers} layers but model has {len(layers)} BatchNorm layers")
        self.model, self.stats, self.mode = model, stats, mode
        self.norm, self.first_weight = norm, float(first_weight)
        self._layers = layers

    def _targets(self, i: int, classes: Optional[Tensor], device: torch.device,
                 dtype: torch.dtype) -> Tuple[Tensor, Tensor]:
        """Layer ``i``'s real statistics in ``dtype`` on ``device``: (1, C) for ``"bn"``, one row per class else."""
        if self.mode == "bn":
            if self.stats is None:  # running statistics of the layer itself
                layer = self._layers[i]
                mean, var = layer.running_mean, layer.running_var
            else:
                mean, var = self.stats.global_mean[i], self.stats.global_var[i]
            return mean.to(device, dtype).unsqueeze(0), var.to(device, dtype).unsqueeze(0)
        return self.stats.mean[i].to(device)[classes].to(dtype), self.stats.var[i].to(device)[classes].to(dtype)

    def bind(self, syn_labels: Tensor, syn_weights: Optional[Tensor], like: Tensor) -> "BoundPCBN":
        """The regulariser for a fixed batch of labels and weights, validated and prepared once.

        A synthesis loop calls the returned object every iteration with the new images: the
        checks, the class lookup, the weight normalisation and the per-layer targets are done
        here, not per step. ``like`` is a tensor with the batch's size, dtype and device.
        """
        m = like.shape[0]
        if not isinstance(syn_labels, Tensor) or syn_labels.dim() != 1 or syn_labels.shape[0] != m:
            raise ValueError(f"syn_labels must be a ({m},) tensor, got "
                             f"{getattr(syn_labels, 'shape', type(syn_labels).__name__)}")
        if torch.is_floating_point(syn_labels) or syn_labels.dtype == torch.bool:
            raise TypeError(f"syn_labels must be integer, got dtype {syn_labels.dtype}")
        if syn_weights is None:
            syn_weights = torch.ones(m, dtype=like.dtype, device=like.device)
        _check_weights(syn_weights, m, "syn_weights")
        classes: Optional[Tensor] = None
        labels = syn_labels.to(like.device).long()
        if self.mode == "pcbn":
            classes, group = torch.unique(labels, sorted=True, return_inverse=True)
            if int(classes.min()) < 0 or int(classes.max()) >= self.stats.num_classes:
                raise ValueError(f"syn_labels must lie in 0..{self.stats.num_classes - 1}")
            empty = classes[self.stats.counts.to(classes.device)[classes] == 0]
            if len(empty):
                raise ValueError(f"syn_labels holds classes without real statistics: {empty.tolist()}")
            num_groups = len(classes)
        else:
            group, num_groups = torch.zeros_like(labels), 1
        dtype = torch.promote_types(like.dtype, torch.float32)  # statistics in float32 at least
        wn = _group_weights(syn_weights.to(like.device, dtype), group, num_groups)
        targets = [self._targets(i, classes, like.device, dtype) for i in range(len(self._layers))]
        return BoundPCBN(self.model, wn, group, num_groups, targets, self._layers, norm=self.norm,
                         first_weight=self.first_weight)

    def __call__(self, syn_images: Tensor, syn_labels: Tensor, syn_weights: Optional[Tensor] = None,
                 forward: Optional[Callable[[Tensor], Tensor]] = None) -> Tuple[Tensor, Tensor]:
        """Run one forward pass and return ``(regulariser, output)``.

        Parameters
        ----------
        syn_images : Tensor
            Synthetic batch (m, C, H, W); gradients flow back to it.
        syn_labels : Tensor
            (m,) integer class of each image.
        syn_weights : Tensor, optional
            (m,) non-negative weights (normalised within each class here); uniform if omitted.
        forward : callable, optional
            What to run instead of ``model(syn_images)`` (e.g. ``model.embed``); BN layers it
            does not reach are left out of the sum.

        Returns
        -------
        reg : Tensor
            0-dim regulariser, Eq. 13 (summed, not averaged, over classes and layers).
        output : Tensor
            The forward pass's output, for reuse by the caller.
        """
        return self.bind(syn_labels, syn_weights, syn_images)(syn_images, forward)


class BoundPCBN:
    """:class:`PCBNLoss` for one fixed batch of labels and weights (see :meth:`PCBNLoss.bind`)."""

    def __init__(self, model: nn.Module, wn: Tensor, group: Tensor, num_groups: int,
                 targets: List[Tuple[Tensor, Tensor]], layers: Optional[List[nn.Module]] = None,
                 norm: str = "squared", first_weight: float = 1.0) -> None:
        self.model, self.wn, self.group, self.num_groups, self.targets = model, wn, group, num_groups, targets
        self.norm, self.first_weight = norm, first_weight
        # the one-group paths' operands, once: weights (m,), the targets as (C,) vectors and all
        # of them in one vector (mean, var of every layer in turn)
        self._w = wn.view(-1)
        self._flat_targets = [(mean.reshape(-1), var.reshape(-1)) for mean, var in targets]
        self._refs = torch.cat([t for pair in self._flat_targets for t in pair]) if targets else None
        self._layers = layers if layers is not None else bn_layers(model)  # PCBNLoss.bind hands over its own

    def __call__(self, syn_images: Tensor, forward: Optional[Callable[[Tensor], Tensor]] = None
                 ) -> Tuple[Tensor, Tensor]:
        """``(regulariser, output)`` of one forward pass of ``syn_images`` (see :meth:`PCBNLoss.__call__`)."""
        if syn_images.shape[0] != self.wn.shape[0]:
            raise ValueError(f"syn_images has {syn_images.shape[0]} images, the bound labels {self.wn.shape[0]}")
        paper_form = self.norm == "squared" and self.first_weight == 1.0
        one_group = paper_form and self.num_groups == 1 and not self.wn.requires_grad  # a synthesis loop's case
        if one_group and all(_fusable(layer, self._w.dtype) for layer in self._layers):
            # a frozen teacher in eval mode: each layer with a large input and its moments in one
            # node, the moments of the other inputs in one node for all
            with _eval_bn_moments(self._layers, self._w, FUSE_MIN_ELEMENTS) as (moments, inputs):
                output = (forward or self.model)(syn_images)
            fused = [(pair, ref) for pair, ref in zip(moments, self._flat_targets) if pair is not None]
            rest = [(_flatten(f).to(self._w.dtype), ref) for f, ref in zip(inputs, self._flat_targets)
                    if f is not None]
            terms = []
            if fused:
                refs = self._refs if len(fused) == len(moments) else torch.cat([t for _, ref in fused for t in ref])
                terms.append(_Discrepancy.apply(refs, *(t for pair, _ in fused for t in pair)))
            if rest:
                terms.append(_OneGroupPCBN.apply(self._w, [ref for _, ref in rest], *(flat for flat, _ in rest)))
            if not terms:
                raise ValueError("no BatchNorm layer ran during the forward pass")
            return (terms[0] if len(terms) == 1 else terms[0] + terms[1]), output
        with bn_inputs(self.model) as captured:
            output = (forward or self.model)(syn_images)
        if one_group:  # BatchNorm in training mode or with parameters in autograd: one node for the term
            ran = [(_flatten(f).to(self.wn.dtype), ref) for f, ref in zip(captured, self._flat_targets)
                   if f is not None]
            if not ran:
                raise ValueError("no BatchNorm layer ran during the forward pass")
            return _OneGroupPCBN.apply(self._w, [ref for _, ref in ran], *(flat for flat, _ in ran)), output
        total = None
        for i, (f, (ref_mean, ref_var)) in enumerate(zip(captured, self.targets)):
            if f is None:
                continue
            flat = _flatten(f).to(self.wn.dtype)  # bf16 BN inputs under autocast: statistics in float32
            mean, var = _grouped_mean_var(flat, self.wn, self.group, self.num_groups)
            if self.norm == "squared":
                term = (mean - ref_mean).square().sum() + (var - ref_var).square().sum()
            else:  # unsquared per class, averaged over the classes of the batch
                term = (torch.linalg.vector_norm(mean - ref_mean, dim=1)
                        + torch.linalg.vector_norm(var - ref_var, dim=1)).mean()
            if i == 0 and self.first_weight != 1.0:
                term = term * self.first_weight
            total = term if total is None else total + term
        if total is None:
            raise ValueError("no BatchNorm layer ran during the forward pass")
        return total, output
