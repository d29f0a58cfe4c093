r"""G-VBSM's statistic matching and data densification (Shao et al., CVPR 2024) [1]_.

G-VBSM's recovery optimises synthetic images through a frozen teacher with three terms: the
cross-entropy of the teacher's logits (left to the caller), a statistic-matching term over
*every* BatchNorm2d and Conv2d layer, and the "data densification" (DD) term on the images.
This module builds the last two; which teacher runs at a step and how the terms are weighted
are the caller's (the release: one teacher per step, round-robin, ``r_loss`` on the statistics).

**Statistics.** A BatchNorm2d layer's input (the previous conv's output) is summarised by its
per-channel mean :math:`\mu` and biased variance :math:`\sigma^2` over (N, H, W) and compared
with the layer's running statistics. A Conv2d layer's input :math:`x` is summarised by four
statistics (:func:`conv_input_statistics`): the same channel mean and variance and the mean and
variance of each :math:`p \times p`-pixel cell location (over batch, channels and the cell's
:math:`p^2` pixels), compared with reference values averaged over the real training set
(:func:`reference_conv_statistics`).

**EMA trick.** Each statistic :math:`s_t` of step :math:`t` enters the loss as

.. math::
    \tilde s_t = e_t + s_t - \operatorname{sg}(s_t), \qquad
    e_t = \alpha\, e_{t-1} + (1 - \alpha)\, \operatorname{sg}(s_t)

(:func:`ema_statistic`; :math:`\operatorname{sg}` = stop-gradient, :math:`\alpha` = 0.8): its
value is the running average, its gradient that of the current statistic. The per-layer terms
are unsquared Euclidean norms,

.. math::
    r^{BN}_l = \|\sigma^2_{run} - \tilde\sigma^2\|_2 + \|\mu_{run} - \tilde\mu\|_2, \qquad
    r^{Conv}_l = \sum_{s \in \{\sigma^2_c, \mu_c, \mu_p, \sigma^2_p\}} \|s_{ref} - \tilde s\|_2,

and the statistic loss is :math:`\sum_l w_l\, d_l\, r_l` over the layers in ``named_modules``
order, with :math:`w_0` = ``first_multiplier`` (10) and :math:`w_l = 1` otherwise, and
:math:`d_l \sim \mathrm{Bernoulli}(1 - \beta)` for Conv layers (:math:`\beta` = ``drop_rate`` =
0.4; a dropped layer neither contributes nor advances its EMA), :math:`d_l = 1` for BN layers
(:class:`StatisticMatching`).

**Data densification** (:func:`densification_loss`): for each class, with :math:`\lambda` the
eigenvalues of the Gram matrix :math:`X X^\top` of that class's flattened images,

.. math::
    \mathcal{L}_{DD} = \sum_k \mathrm{KL}\big(\operatorname{sg}(\mathrm{softmax}(\lambda_k/\tau))
    \,\big\|\, \mathrm{softmax}(\lambda_k)\big),

which flattens each class's eigen-spectrum (more diverse images within a class).

Release behaviour followed here (shaoshitong/G_VBSM_Dataset_Condensation, commit 1ed80b0,
``Branch_CIFAR_10/recover/``; ``ut.py`` = ``utils.py``, ``ds.py`` =
``data_synthesis_with_svd_with_db_with_all_statistic.py``):

* hooks: every ``nn.BatchNorm2d`` and every ``nn.Conv2d`` in ``named_modules()`` order, one list
  (ds.py:53-65); ``rescale = [first_multiplier] + [1, ...]`` over that list (ds.py:157-159), so
  the ×10 lands on the stem conv (the image statistics) in stem-conv-first networks;
* the EMA is updated **before** it is used (ut.py:116-125, 218-232), and it starts from **zero**:
  the state is initialised to the float ``0.``, and the "first call" branch tests
  ``isinstance(state, int)``, which a float never passes, so the first step's value is
  :math:`(1 - \alpha) s_1` (ut.py:106, 117, 142, 219; the same in every branch of the release).
  ``ema_init="zero"`` (the default) reproduces this; ``ema_init="first"`` starts from the first
  statistic, as the branch evidently meant;
* a Conv hook is dropped when ``random.random() > 1 - drop_rate`` (probability ``drop_rate``),
  and it returns before computing anything, so its EMA is **not** updated (ut.py:204-207);
* patch cells: ``F.interpolate(x, [h', w'], mode="bilinear")`` up to the next multiple of 4
  (``div_four_mul``, ut.py:27-30, 212-213; ``align_corners`` and ``antialias`` at their defaults,
  i.e. ``False``), then ``"b c (u h) (v w) -> (u v) (b c h w)"`` with ``h = w = 4`` (ut.py:214);
* reference statistics: ``running += stat * bs / data_number`` over one pass of the training set
  (ut.py:187-202, ds.py:70-95);
* DD: ``torch.linalg.eigvals(X Xᵀ).real``, ``KLDivLoss(reduction="sum")(l.log_softmax(-1),
  (l / tau).softmax(-1).detach())`` per class present (ds.py:161-181).

References
----------
.. [1] S. Shao, Z. Yin, M. Zhou, X. Zhang, Z. Shen. Generalized large-scale data condensation via
   various backbone and statistical matching. CVPR 2024.
"""
from __future__ import annotations

import math
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..models import capture
from ..utils import frozen, model_device

__all__ = ["CONV_STATISTICS", "EMA_INITS", "StatisticMatching", "conv_input_statistics", "densification_loss",
           "ema_statistic", "reference_conv_statistics"]

#: the four statistics of a Conv2d layer's input, in the order :func:`conv_input_statistics` returns them
CONV_STATISTICS = ("channel_mean", "channel_var", "patch_mean", "patch_var")
#: the two statistics of a BatchNorm2d layer's input
_BN_STATISTICS = ("channel_mean", "channel_var")
#: how an EMA state starts: "zero" (as released) or "first" (the first statistic)
EMA_INITS = ("zero", "first")


def _check_int(name: str, value, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
    return value


def _check_real(name: str, value, low: float, high: float, high_open: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if not (low <= value and (value < high if high_open else value <= high)):
        raise ValueError(f"{name} must be in [{low:g}, {high:g}{')' if high_open else ']'}, got {value!r}")
    return value


def _check_images(name: str, x) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a Tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"{name} must be 4-D (N, C, H, W), got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {x.dtype}")
    if x.numel() == 0:
        raise ValueError(f"{name} must not be empty, got shape {tuple(x.shape)}")
    return x


def _wide(x: Tensor) -> Tensor:
    """``x`` in at least float32: statistics of a half-precision (autocast) activation are taken in float32."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _channel_statistics(x: Tensor) -> Tuple[Tensor, Tensor]:
    """Per-channel mean and biased variance ``(C,)`` of ``x`` (N, C, H, W) over (N, H, W)."""
    var, mean = torch.var_mean(x, dim=(0, 2, 3), correction=0)
    return mean, var


def conv_input_statistics(x: Tensor, patch: int = 4) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    r"""G-VBSM's four statistics of a Conv2d layer's input: channel and patch mean and variance.

    Parameters
    ----------
    x : Tensor
        The layer's input ``(N, C, H, W)``.
    patch : int
        The side :math:`p` of a cell, in pixels (the release: 4).

    Returns
    -------
    channel_mean, channel_var : Tensor
        ``(C,)``: the mean and biased variance of each channel over (N, H, W).
    patch_mean, patch_var : Tensor
        ``(U V,)``: with :math:`H' = p\lceil H/p \rceil`, :math:`W' = p\lceil W/p \rceil`,
        :math:`U = H'/p`, :math:`V = W'/p`, the mean and biased variance of each cell location
        :math:`(u, v)` over the :math:`N C p^2` values

        .. math::
            \{\hat x_{n, c, u p + i, v p + j} : n, c, 0 \le i, j < p\},

        where :math:`\hat x` is ``x`` resized to :math:`H' \times W'` by
        ``F.interpolate(mode="bilinear", align_corners=False)`` (the release's call with its
        defaults; no resize when :math:`H, W` are already multiples of :math:`p`, where that call is
        the identity). Entry :math:`u V + v` is cell :math:`(u, v)`: the order of einops'
        ``"b c (u h) (v w) -> (u v) (b c h w)"``.

    Notes
    -----
    Half-precision inputs are summarised in float32. The cells are read from a view of ``x`` (no
    copy); all variances are biased (divided by the number of values), as in the release.
    """
    _check_int("patch", patch)
    x = _wide(_check_images("x", x))
    channel_mean, channel_var = _channel_statistics(x)
    n, c, h, w = x.shape
    rows, cols = -(-h // patch), -(-w // patch)
    if (rows * patch, cols * patch) != (h, w):
        x = F.interpolate(x, size=(rows * patch, cols * patch), mode="bilinear", align_corners=False)
    cells = x.reshape(n, c, rows, patch, cols, patch)
    patch_var, patch_mean = torch.var_mean(cells, dim=(0, 1, 3, 5), correction=0)  # (U, V)
    return channel_mean, channel_var, patch_mean.reshape(-1), patch_var.reshape(-1)


def ema_statistic(stat: Tensor, state: Optional[Tensor], momentum: float) -> Tuple[Tensor, Tensor]:
    r"""The EMA trick: a value that is the running average, with the current statistic's gradient.

    .. math::
        e_t = \alpha\, e_{t-1} + (1 - \alpha)\, \operatorname{sg}(s_t), \qquad
        \text{value} = e_t + \big(s_t - \operatorname{sg}(s_t)\big)

    The average is updated first, then used (the release's order, ``utils.py:116-125``).

    Parameters
    ----------
    stat : Tensor
        The current statistic :math:`s_t` (attached to the graph).
    state : Tensor or None
        The previous average :math:`e_{t-1}` (same shape; any device, moved to ``stat``'s);
        ``None``: none yet, :math:`e_t = \operatorname{sg}(s_t)`. (The release starts from a
        zero average instead: pass ``torch.zeros_like(stat)``, see :class:`StatisticMatching`.)
    momentum : float
        :math:`\alpha \in [0, 1)`; 0 is plain matching of the current statistic.

    Returns
    -------
    value : Tensor
        Equal to ``new_state`` in value (exactly: the added difference is an exact zero), with
        the gradient of ``stat`` (coefficient 1).
    new_state : Tensor
        :math:`e_t`, detached.
    """
    momentum = _check_real("momentum", momentum, 0.0, 1.0, high_open=True)
    if not isinstance(stat, Tensor):
        raise TypeError(f"stat must be a Tensor, got {type(stat).__name__}")
    current = stat.detach()
    if state is None:
        new_state = current.clone()
    else:
        if not isinstance(state, Tensor):
            raise TypeError(f"state must be a Tensor or None, got {type(state).__name__}")
        if state.shape != stat.shape:
            raise ValueError(f"state has shape {tuple(state.shape)}, the statistic {tuple(stat.shape)}: "
                             "a state of another layer or image size?")
        new_state = momentum * state.detach().to(current) + (1.0 - momentum) * current
    # (stat - stat.detach()) is an exact zero carrying stat's gradient; the release adds it as
    # (e + s) - sg(s), which is e only up to one rounding
    return new_state + (stat - current), new_state


def _conv_layers(model: nn.Module) -> List[Tuple[str, nn.Conv2d]]:
    return [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]


def reference_conv_statistics(model: nn.Module, batches: Iterable[Union[Tensor, Sequence[Tensor]]], total: int,
                              patch: int = 4) -> List[Dict[str, Tensor]]:
    r"""The reference statistics of every Conv2d layer's input over real images.

    For each ``nn.Conv2d`` of ``model`` (``modules()`` order) and each statistic :math:`s` of
    :func:`conv_input_statistics`, the batch-size-weighted average of the per-batch values

    .. math::
        s_{ref} = \sum_b \frac{|B_b|}{\text{total}}\, s(B_b),

    as the release accumulates it (``running += stat * bs / data_number``, ``utils.py:187-202``):
    the variances are averages of per-batch variances (the release's batches: 64 augmented CIFAR
    training images), not the variance of the whole set.

    Parameters
    ----------
    model : nn.Module
        The teacher; run in eval mode under ``torch.no_grad`` (its modes and ``requires_grad``
        flags are restored afterwards), on its own device.
    batches : iterable of Tensor
        Image batches ``(n, C, H, W)`` (or ``(images, labels, ...)`` tuples: the first item is
        used), all of one image size.
    total : int
        The number of images in ``batches`` (checked after the pass).
    patch : int
        The cell side of the patch statistics.

    Returns
    -------
    list of dict
        One dict per Conv2d layer with keys :data:`CONV_STATISTICS`, float32 CPU tensors
        (accumulated in float64).

    Raises
    ------
    ValueError
        ``model`` has no Conv2d layer, a batch is not 4-D, the images change size, a layer does
        not run, or the batches hold other than ``total`` images.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    _check_int("total", total)
    _check_int("patch", patch)
    layers = _conv_layers(model)
    if not layers:
        raise ValueError("model has no nn.Conv2d layer: there are no conv statistics to take")
    device = model_device(model)
    sums: List[Optional[List[Tensor]]] = [None] * len(layers)
    seen = 0
    with frozen(model), torch.no_grad(), capture([m for _, m in layers], "input") as inputs:
        for item in batches:
            images = item[0] if isinstance(item, (tuple, list)) else item
            images = _check_images("each batch", images)
            model(images.to(device))
            size = images.shape[0]
            for i, (name, _) in enumerate(layers):
                if inputs[i] is None:
                    raise ValueError(f"Conv2d layer {name!r} did not run in the model's forward pass")
                stats = [s.double() * size for s in conv_input_statistics(inputs[i], patch)]
                inputs[i] = None
                if sums[i] is None:
                    sums[i] = stats
                elif stats[2].shape != sums[i][2].shape:
                    raise ValueError("the batches must all have one image size (the patch statistics of "
                                     f"layer {name!r} changed length)")
                else:
                    sums[i] = [a + b for a, b in zip(sums[i], stats)]
            seen += size
    if seen != total:
        raise ValueError(f"total={total}, but the batches held {seen} images")
    return [{k: (s / total).float().cpu() for k, s in zip(CONV_STATISTICS, acc)} for acc in sums]


class StatisticMatching:
    r"""G-VBSM's BN + Conv statistic loss of one teacher, with its per-layer EMA states.

    Parameters
    ----------
    model : nn.Module
        The teacher, in eval mode (checked at each call). Its hooked layers: every
        ``nn.BatchNorm2d`` (with running statistics) and every ``nn.Conv2d``, in
        ``named_modules()`` order.
    conv_reference : sequence of mapping
        One mapping per Conv2d layer (``modules()`` order) with keys :data:`CONV_STATISTICS`:
        the output of :func:`reference_conv_statistics` for this model (any device; moved to the
        statistics' device and dtype at use). Empty for a model without Conv2d layers.
    momentum : float
        The EMA momentum :math:`\alpha \in [0, 1)` (the release: 0.8).
    drop_rate : float
        The probability :math:`\beta \in [0, 1]` that a Conv2d layer's term is dropped at a call
        (the release: 0.4; BN terms are never dropped).
    first_multiplier : float
        The weight of the first hooked layer's term (the release: 10).
    patch : int
        The cell side of the patch statistics (the release: 4).
    ema_init : {"zero", "first"}
        How each layer's EMA starts: from zero (the release's behaviour, see the module docstring)
        or from the layer's first statistic.

    Attributes
    ----------
    layers : list of (str, nn.Module)
        The hooked layers, in order.
    last_terms : Tensor or None
        The per-layer terms :math:`r_l` of the last call (detached, before weighting; 0 for a
        dropped layer).

    Notes
    -----
    The drop of each Conv2d layer is one uniform draw from the call's CPU generator, all layers'
    draws taken at once before the forward pass, in layer order (the release draws Python's
    ``random.random()`` in the order the layers run). A dropped layer's statistics are not
    computed and its EMA does not move. A layer called twice in one forward pass is summarised
    by its last call. States advance only when the whole call succeeds.

    Examples
    --------
    >>> ref = reference_conv_statistics(teacher, loader, total=len(train))          # doctest: +SKIP
    >>> match = StatisticMatching(teacher.eval(), ref)                              # doctest: +SKIP
    >>> stat_loss, logits = match(x, generator)                                    # doctest: +SKIP
    >>> loss = F.cross_entropy(logits, y) + 0.01 * stat_loss                        # doctest: +SKIP
    """

    def __init__(self, model: nn.Module, conv_reference: Sequence[Mapping[str, Tensor]], momentum: float = 0.8,
                 drop_rate: float = 0.4, first_multiplier: float = 10.0, patch: int = 4, ema_init: str = "zero"):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        self.momentum = _check_real("momentum", momentum, 0.0, 1.0, high_open=True)
        self.drop_rate = _check_real("drop_rate", drop_rate, 0.0, 1.0, high_open=False)
        if isinstance(first_multiplier, bool) or not isinstance(first_multiplier, (int, float)):
            raise TypeError(f"first_multiplier must be a real number, got {type(first_multiplier).__name__}")
        if not (math.isfinite(first_multiplier) and first_multiplier >= 0):
            raise ValueError(f"first_multiplier must be finite and >= 0, got {first_multiplier!r}")
        self.first_multiplier = float(first_multiplier)
        self.patch = _check_int("patch", patch)
        if ema_init not in EMA_INITS:
            raise ValueError(f"ema_init must be one of {EMA_INITS}, got {ema_init!r}")
        self.ema_init = ema_init
        self.model = model
        # BatchNorm2d is tested first, as the release does (a layer both would be a BN hook)
        self.layers: List[Tuple[str, nn.Module]] = [
            (name, m) for name, m in model.named_modules() if isinstance(m, (nn.BatchNorm2d, nn.Conv2d))]
        if not self.layers:
            raise ValueError("model has no nn.BatchNorm2d or nn.Conv2d layer: there is no statistic to match")
        self._kinds = ["bn" if isinstance(m, nn.BatchNorm2d) else "conv" for _, m in self.layers]
        for (name, m), kind in zip(self.layers, self._kinds):
            if kind == "bn" and (m.running_mean is None or m.running_var is None):
                raise ValueError(f"model's BatchNorm2d layer {name!r} keeps no running statistics "
                                 "(track_running_stats=False): there is nothing to match it to")
        self._reference = self._check_reference(conv_reference)
        self._cache: Dict[Tuple[torch.device, torch.dtype], List[Dict[str, Tensor]]] = {}
        self._states: List[Optional[Dict[str, Tensor]]] = [None] * len(self.layers)
        self.last_terms: Optional[Tensor] = None

    def _check_reference(self, conv_reference) -> List[Dict[str, Tensor]]:
        convs = [(name, m) for (name, m), kind in zip(self.layers, self._kinds) if kind == "conv"]
        if isinstance(conv_reference, (str, bytes, Mapping)) or not isinstance(conv_reference, Sequence):
            raise TypeError("conv_reference must be a sequence of mappings (one per Conv2d layer), "
                            f"got {type(conv_reference).__name__}")
        if len(conv_reference) != len(convs):
            raise ValueError(f"conv_reference has {len(conv_reference)} entries, the model {len(convs)} Conv2d layers")
        out = []
        for (name, conv), ref in zip(convs, conv_reference):
            if not isinstance(ref, Mapping) or set(ref) != set(CONV_STATISTICS):
                keys = sorted(ref) if isinstance(ref, Mapping) else type(ref).__name__
                raise ValueError(f"conv_reference of layer {name!r} must map exactly {CONV_STATISTICS}, got {keys}")
            for k in CONV_STATISTICS:
                t = ref[k]
                if not isinstance(t, Tensor) or t.dim() != 1 or not t.is_floating_point():
                    raise ValueError(f"conv_reference[{name!r}][{k!r}] must be a 1-D floating-point tensor")
            for k in ("channel_mean", "channel_var"):
                if ref[k].numel() != conv.in_channels:
                    raise ValueError(f"conv_reference[{name!r}][{k!r}] has {ref[k].numel()} entries, the layer "
                                     f"{conv.in_channels} input channels")
            out.append({k: ref[k].detach() for k in CONV_STATISTICS})
        return out

    def _references(self, like: Tensor) -> List[Dict[str, Tensor]]:
        """The references on ``like``'s device and dtype (moved once per device and dtype)."""
        key = (like.device, like.dtype)
        if key not in self._cache:
            self._cache[key] = [{k: t.to(like) for k, t in ref.items()} for ref in self._reference]
        return self._cache[key]

    def _term(self, stats: Sequence[Tensor], targets: Sequence[Tensor], names: Sequence[str],
              state: Optional[Dict[str, Tensor]]) -> Tuple[Tensor, Dict[str, Tensor]]:
        """Σ ‖target − EMA-trick value‖₂ over the statistics, and the new states."""
        total, new = None, {}
        for name, stat, target in zip(names, stats, targets):
            previous = state[name] if state is not None else (
                torch.zeros_like(stat.detach()) if self.ema_init == "zero" else None)
            value, new[name] = ema_statistic(stat, previous, self.momentum)
            r = torch.linalg.vector_norm(target.to(value) - value)
            total = r if total is None else total + r
        return total, new

    def __call__(self, images: Tensor, generator: torch.Generator) -> Tuple[Tensor, Tensor]:
        """Forward ``images`` through the model once and return ``(statistic_loss, logits)``.

        Parameters
        ----------
        images : Tensor
            The (augmented) synthetic batch ``(N, C, H, W)``, on the model's device.
        generator : torch.Generator
            A CPU generator: one uniform per Conv2d layer is drawn from it for the drops
            (always, whatever ``drop_rate``, so the stream advances the same way).

        Returns
        -------
        statistic_loss : Tensor
            :math:`\\sum_l w_l d_l r_l` (a scalar attached to ``images``' graph).
        logits : Tensor
            The model's output, for the caller's cross-entropy.
        """
        _check_images("images", images)
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        if generator.device.type != "cpu":
            raise ValueError(f"generator must be a CPU generator, got one on {generator.device}")
        training = [name or "<model>" for name, m in self.model.named_modules() if m.training]
        if training:
            raise ValueError(f"model must be in eval mode (call model.eval()); in training mode: {training[:3]}")
        convs = self._kinds.count("conv")
        dropped = (torch.rand(convs, generator=generator, dtype=torch.float64, device="cpu") < self.drop_rate).tolist()
        with capture([m for _, m in self.layers], "input") as inputs:
            logits = self.model(images)
        terms: List[Tensor] = []
        states = list(self._states)
        conv_index = 0
        references = None
        for h, ((name, layer), kind, x) in enumerate(zip(self.layers, self._kinds, inputs)):
            if x is None:
                raise ValueError(f"layer {name!r} did not run in the model's forward pass")
            x = _wide(x)
            if x.dim() != 4:
                raise ValueError(f"layer {name!r} got a {x.dim()}-D input; G-VBSM's statistics need (N, C, H, W)")
            if kind == "bn":
                mean, var = _channel_statistics(x)
                r, states[h] = self._term((mean, var), (layer.running_mean, layer.running_var), _BN_STATISTICS,
                                          states[h])
            else:
                i, conv_index = conv_index, conv_index + 1
                if dropped[i]:
                    terms.append(x.new_zeros(()))
                    continue
                if references is None:
                    references = self._references(x)
                ref = references[i]
                stats = conv_input_statistics(x, self.patch)
                if stats[2].shape != ref["patch_mean"].shape or stats[3].shape != ref["patch_var"].shape:
                    raise ValueError(f"layer {name!r}: {stats[2].numel()} patch cells, the reference "
                                     f"{ref['patch_mean'].numel()}: the reference was taken at another image size")
                r, states[h] = self._term(stats, [ref[k] for k in CONV_STATISTICS], CONV_STATISTICS, states[h])
            terms.append(r)
        stacked = torch.stack([t.to(terms[0].dtype) for t in terms])
        weights = torch.ones_like(stacked.detach())
        weights[0] = self.first_multiplier
        loss = (stacked * weights).sum()
        self._states = states
        self.last_terms = stacked.detach()
        return loss, logits

    def reset(self) -> None:
        """Forget every layer's EMA (the next call starts them as ``ema_init`` says)."""
        self._states = [None] * len(self.layers)

    def state_dict(self) -> Dict[str, object]:
        """The EMA states: ``{"layers": [names], "kinds": ["bn" | "conv"], "states": [None or
        {statistic: CPU tensor}]}`` — tensors, strings and plain containers only, loadable with
        ``torch.load(weights_only=True)``."""
        return {"layers": [name for name, _ in self.layers], "kinds": list(self._kinds),
                "states": [None if s is None else {k: t.detach().cpu().clone() for k, t in s.items()}
                           for s in self._states]}

    def load_state_dict(self, state: Mapping[str, object]) -> None:
        """Restore the EMA states of :meth:`state_dict` (for the same architecture; the tensors
        move to the statistics' device at the next call)."""
        if not isinstance(state, Mapping) or not {"kinds", "states"} <= set(state):
            raise ValueError("state must be a StatisticMatching.state_dict() (with 'kinds' and 'states')")
        kinds, states = list(state["kinds"]), list(state["states"])
        if kinds != self._kinds or len(states) != len(self.layers):
            raise ValueError(f"state holds {len(states)} layers {kinds}, this model {len(self.layers)} layers "
                             f"{self._kinds}: another architecture?")
        out: List[Optional[Dict[str, Tensor]]] = []
        for (name, layer), kind, s in zip(self.layers, kinds, states):
            keys = _BN_STATISTICS if kind == "bn" else CONV_STATISTICS
            if s is None:
                out.append(None)
                continue
            if not isinstance(s, Mapping) or set(s) != set(keys) or not all(isinstance(s[k], Tensor) for k in keys):
                raise ValueError(f"state of layer {name!r} must map {keys} to tensors")
            channels = layer.num_features if kind == "bn" else layer.in_channels
            if any(s[k].shape != (channels,) for k in ("channel_mean", "channel_var")):
                raise ValueError(f"state of layer {name!r}: channel statistics of another width than {channels}")
            out.append({k: s[k].detach().clone() for k in keys})
        self._states = out


def densification_loss(images: Tensor, labels: Tensor, tau: float = 4.0, size: Optional[int] = None) -> Tensor:
    r"""G-VBSM's data densification: flatten each class's Gram eigen-spectrum.

    For each class :math:`k` present in ``labels``, with :math:`X_k` (:math:`n_k \times D`) its
    flattened images and :math:`\lambda_k` the :math:`n_k` eigenvalues of :math:`X_k X_k^\top`,

    .. math::
        \mathcal{L} = \sum_k \sum_i q_{k,i} \big(\log q_{k,i} - \log p_{k,i}\big), \quad
        q_k = \operatorname{sg}\big(\mathrm{softmax}(\lambda_k/\tau)\big), \;
        p_k = \mathrm{softmax}(\lambda_k),

    i.e. ``KLDivLoss(reduction="sum")(log p, q)`` summed over classes (the release's
    ``ds.py:170-181``). A class with one image contributes exactly 0 (one eigenvalue: both
    distributions are 1), in the release too.

    Parameters
    ----------
    images : Tensor
        ``(N, C, H, W)``, floating point (kept in its dtype: the release casts the eigenvalues to
        float32).
    labels : Tensor
        ``(N,)`` integer class labels.
    tau : float
        The temperature of the (detached) target spectrum, > 0 (the release: 4).
    size : int, optional
        Average-pool the images to ``size × size`` first (``F.adaptive_avg_pool2d``, as the
        release's ``AdaptiveAvgPool2d((32, 32))``, a no-op at 32×32); ``None``: no pooling.

    Returns
    -------
    Tensor
        The scalar loss, attached to ``images``' graph (exactly 0, with a zero gradient, when no
        class has two images).

    Notes
    -----
    The Gram matrix is symmetric positive semi-definite, so its eigenvalues are real and
    ``torch.linalg.eigvalsh`` gives the same values as the release's
    ``torch.linalg.eigvals(...).real`` (and, for distinct eigenvalues, the same gradient
    :math:`V\,\mathrm{diag}(\partial L/\partial\lambda)\,V^\top`), with a symmetric solver:
    faster, no spurious imaginary parts, and a gradient that stays finite for repeated eigenvalues
    (the general one divides by eigenvalue gaps).
    """
    _check_images("images", images)
    if not isinstance(labels, Tensor):
        raise TypeError(f"labels must be a Tensor, got {type(labels).__name__}")
    if labels.dim() != 1 or labels.dtype == torch.bool or labels.is_floating_point() or labels.is_complex():
        raise ValueError(f"labels must be a 1-D integer tensor, got shape {tuple(labels.shape)} and {labels.dtype}")
    if labels.numel() != images.shape[0]:
        raise ValueError(f"labels has {labels.numel()} entries, images {images.shape[0]}")
    tau = float(tau) if not isinstance(tau, bool) and isinstance(tau, (int, float)) else tau
    if not isinstance(tau, float):
        raise TypeError(f"tau must be a real number, got {type(tau).__name__}")
    if not (math.isfinite(tau) and tau > 0):
        raise ValueError(f"tau must be finite and > 0, got {tau!r}")
    x = images
    if size is not None:
        _check_int("size", size)
        x = F.adaptive_avg_pool2d(x, size)
    flat = x.reshape(x.shape[0], -1)
    labels = labels.to(flat.device)
    loss = None
    for k in torch.unique(labels).tolist():
        members = flat[labels == k]
        # one image: one eigenvalue, both softmaxes are [1], the term is exactly 0 (kept, as in
        # the release, so that the loss stays attached to the images' graph)
        eigenvalues = torch.linalg.eigvalsh(members @ members.t())
        target = F.softmax(eigenvalues.detach() / tau, dim=0)
        term = F.kl_div(F.log_softmax(eigenvalues, dim=0), target, reduction="sum")
        loss = term if loss is None else loss + term
    return loss
