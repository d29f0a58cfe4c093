r"""Per-class BatchNorm statistics and the PCBN regulariser (WMDD §4.3, Eq. 13–14).

For every BatchNorm layer :math:`l` and class :math:`k`, the real class statistics
:math:`BN^{mean}_{k,l}, BN^{var}_{k,l}` are the exact per-channel mean and (biased) variance
of that layer's input over all of the class's images (one pass, forward hooks). The
regulariser compares them with the barycenter-weighted statistics of the synthetic inputs:

.. math::
    \mathcal{L}_{BN} = \sum_k \sum_l \|\mathcal{A}_{mean}(F_{k,l}, w_k) - BN^{mean}_{k,l}\|^2
    + \|\mathcal{A}_{var}(F_{k,l}, w_k) - BN^{var}_{k,l}\|^2
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, List, Optional, Tuple

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def weighted_mean_var(features: Tensor, weights: Tensor) -> Tuple[Tensor, Tensor]:
    r"""Channel-wise weighted mean and variance (WMDD Eq. 14).

    .. math::
        \mathcal{A}_{mean}(F, w)_c = \frac{\sum_j w_j \sum_{h,u} F_{j,c,h,u}}{HU \sum_j w_j}, \quad
        \mathcal{A}_{var}(F, w)_c = \frac{\sum_j w_j \sum_{h,u} (F_{j,c,h,u} - \mathcal{A}_{mean,c})^2}{HU \sum_j w_j}

    ``features`` is ``(m, C, ...)`` (spatial dims optional), ``weights`` ``(m,)`` non-negative.
    Uniform weights give the ordinary biased mean and variance over batch and space.
    """
    if features.dim() < 2:
        raise ValueError(f"features must be (m, C, ...), got shape {tuple(features.shape)}")
    if weights.dim() != 1 or weights.shape[0] != features.shape[0]:
        raise ValueError(f"weights must have shape ({features.shape[0]},), got {tuple(weights.shape)}")
    flat = features.reshape(features.shape[0], features.shape[1], -1)  # (m, C, S)
    w = (weights / weights.sum()).to(flat.dtype)
    mean = torch.einsum("j,jcs->c", w, flat) / flat.shape[2]
    var = torch.einsum("j,jcs->c", w, (flat - mean[None, :, None]) ** 2) / flat.shape[2]
    return mean, var


def bn_layers(model: nn.Module) -> List[nn.Module]:
    """The model's BatchNorm layers, in registration order."""
    return [m for m in model.modules() if isinstance(m, _BN)]


@contextmanager
def bn_inputs(model: nn.Module) -> Iterator[List[Tensor]]:
    """Capture the input of every BatchNorm layer during the forward passes inside the block.

    Yields a list that is refilled, one tensor per BN layer in :func:`bn_layers` order, by
    each forward pass; the hooks are removed on exit.
    """
    layers = bn_layers(model)
    captured: List[Optional[Tensor]] = [None] * len(layers)

    def hook_for(i):
        def hook(module, inputs, output):
            captured[i] = inputs[0]
        return hook

    handles = [layer.register_forward_hook(hook_for(i)) for i, layer in enumerate(layers)]
    try:
        yield captured
    finally:
        for h in handles:
            h.remove()


@dataclass
class BNStats:
    """Per-class statistics: ``mean[l]`` and ``var[l]`` of shape (num_classes, C_l)."""

    mean: List[Tensor]
    var: List[Tensor]
    global_mean: List[Tensor]
    global_var: List[Tensor]


@torch.no_grad()
def per_class_bn_stats(model: nn.Module, dataset, num_classes: int, batch_size: int = 256,
                       device: Optional[torch.device] = None) -> BNStats:
    """Exact per-class (and all-class) channel mean and biased variance of every BN layer's input.

    One pass over ``dataset`` (any Dataset of (image, label) pairs), model in eval mode;
    sums of x and x² are accumulated in float64, so the result is exact, not an average of
    batch statistics.
    """
    if not bn_layers(model):
        raise ValueError("model has no BatchNorm layer: PCBN needs one")
    was_training = model.training
    model.eval()
    device = device or next(model.parameters()).device
    sums = sq = counts = None
    with bn_inputs(model) as captured:
        for images, labels in DataLoader(dataset, batch_size=batch_size, shuffle=False):
            model(images.to(device))
            labels = torch.as_tensor(labels, device=device)
            onehot = torch.nn.functional.one_hot(labels, num_classes).double()  # (B, K)
            if sums is None:
                sums = [torch.zeros(num_classes, f.shape[1], dtype=torch.float64, device=device) for f in captured]
                sq = [torch.zeros_like(s) for s in sums]
                counts = [torch.zeros(num_classes, dtype=torch.float64, device=device) for _ in captured]
            for i, f in enumerate(captured):
                flat = f.double().reshape(f.shape[0], f.shape[1], -1)  # (B, C, S)
                sums[i] += onehot.T @ flat.sum(2)
                sq[i] += onehot.T @ (flat ** 2).sum(2)
                counts[i] += onehot.sum(0) * flat.shape[2]
    model.train(was_training)
    if sums is None:
        raise ValueError("dataset is empty")
    mean = [s / c.clamp_min(1)[:, None] for s, c in zip(sums, counts)]
    var = [(q / c.clamp_min(1)[:, None] - m ** 2).clamp_min(0) for q, c, m in zip(sq, counts, mean)]
    gmean = [s.sum(0) / c.sum() for s, c in zip(sums, counts)]
    gvar = [(q.sum(0) / c.sum() - g ** 2).clamp_min(0) for q, c, g in zip(sq, counts, gmean)]
    f32 = lambda ts: [t.float() for t in ts]  # noqa: E731
    return BNStats(f32(mean), f32(var), f32(gmean), f32(gvar))


class PCBNLoss:
    """The PCBN regulariser (``mode="pcbn"``) or its all-class variant (``mode="bn"``: the
    weighted statistics of the whole synthetic batch against the all-class real statistics,
    the BN of SRe²L — the WMDD Table 3 ablation).

    Call it with the synthetic batch; it runs ``forward`` (default: the model) once with the
    hooks in place and returns ``(regulariser, output)`` so the caller reuses the pass.
    """

    def __init__(self, model: nn.Module, stats: BNStats, mode: str = "pcbn"):
        if mode not in ("pcbn", "bn"):
            raise ValueError(f"mode must be 'pcbn' or 'bn', got {mode!r}")
        self.model, self.stats, self.mode = model, stats, mode

    def __call__(self, images: Tensor, labels: Tensor, weights: Tensor,
                 forward: Optional[Callable[[Tensor], Tensor]] = None) -> Tuple[Tensor, Tensor]:
        forward = forward or self.model
        with bn_inputs(self.model) as captured:
            output = forward(images)
        weights = weights.to(images.dtype)
        total = images.new_zeros(())
        for i, f in enumerate(captured):
            if self.mode == "bn":
                m, v = weighted_mean_var(f, weights)
                total = total + ((m - self.stats.global_mean[i]) ** 2).sum() + ((v - self.stats.global_var[i]) ** 2).sum()
                continue
            for k in torch.unique(labels).tolist():
                sel = labels == k
                m, v = weighted_mean_var(f[sel], weights[sel])
                total = total + ((m - self.stats.mean[i][k]) ** 2).sum() + ((v - self.stats.var[i][k]) ** 2).sum()
        return total, output
