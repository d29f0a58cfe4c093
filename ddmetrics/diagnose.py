r"""How far is a synthetic set from the real data, in a model's feature space?

:func:`diagnose` embeds the real images and the (decoded) synthetic images with
``model.embed`` and compares the two feature clouds, per class and overall, under

- every registered :class:`~ddmetrics.losses.DistributionLoss` (``ddm.available_losses()``)
  whose extra is installed (the others are listed in ``meta["skipped_losses"]``), the synthetic
  side weighted by the synthetic set's weights (renormalised per class), the real side uniform;
- three moment distances (the M3D paper's Table 1 diagnostic):

  ``moment1``
      :math:`\|\mu_s - \mu_r\|_2`, the distance between the (weighted) feature means;
  ``moment2``
      :math:`\|\Sigma_s - \Sigma_r\|_F`, the Frobenius distance between the (weighted,
      population) covariance matrices — the 2nd central moment;
  ``moment3``
      :math:`\|m^{(3)}_s - m^{(3)}_r\|_2` with :math:`m^{(3)}_j = E[(x_j - \mu_j)^3]`, the
      *diagonal of the 3rd central moment tensor* (per-dimension third central moment, not
      standardised). The unstandardised diagonal is used because the standardised skewness
      :math:`m^{(3)}_j / \sigma_j^3` is undefined where a synthetic class has zero variance
      (one image per class, or a dead ReLU unit).

"Overall" compares the pooled clouds: all real features (uniform) against all synthetic
features, each class's synthetic mass scaled to that class's share of the real data, so the
two mixtures have the same class proportions and only the within-class shapes differ.
``mean_over_classes`` is the plain average of the per-class values.

>>> report = diagnose(syn, splits.train, teacher)          # doctest: +SKIP
>>> print(report.table())                                  # doctest: +SKIP
"""
from __future__ import annotations

import math
import inspect
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from .data import as_dataset
from .distill.presets import LOSS_SETTINGS
from .losses.base import DistributionLoss, available_losses, get_loss, missing_losses
from .synset import SyntheticSet
from .utils import DeviceSpec, embed_batched, frozen, resolve_device

__all__ = ["DiagnosisReport", "diagnose", "moment_distances", "run_loss_settings", "MOMENTS"]

#: names of the moment distances, in table order
MOMENTS = ("moment1", "moment2", "moment3")

LossSpec = Union[None, Sequence[Union[str, DistributionLoss]], Mapping[str, Union[DistributionLoss, Dict[str, Any]]]]


@dataclass
class DiagnosisReport:
    """Distances between synthetic and real features.

    Attributes
    ----------
    metrics : list of str
        Column names: the loss names, then ``moment1``, ``moment2``, ``moment3``.
    per_class : dict
        ``{class index: {metric: value}}``; a class without synthetic samples maps every
        metric to ``None``.
    overall : dict
        ``{metric: value}`` between the pooled clouds (see the module docstring).
    mean_over_classes : dict
        ``{metric: value}``, the mean of the per-class values over the classes that have them.
    meta : dict
        Feature dimension, sample counts, loss settings, seconds per loss, definitions.
    """

    metrics: List[str]
    per_class: Dict[int, Dict[str, Optional[float]]]
    overall: Dict[str, Optional[float]]
    mean_over_classes: Dict[str, Optional[float]]
    meta: Dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> Dict[str, Any]:
        """A JSON-able dict (class indices become strings, non-finite values ``None``)."""
        def clean(row: Mapping[str, Optional[float]]) -> Dict[str, Optional[float]]:
            return {k: (float(v) if v is not None and math.isfinite(v) else None) for k, v in row.items()}

        return {
            "metrics": list(self.metrics),
            "per_class": {str(k): clean(v) for k, v in self.per_class.items()},
            "overall": clean(self.overall),
            "mean_over_classes": clean(self.mean_over_classes),
            "meta": self.meta,
        }

    def table(self, precision: int = 4) -> str:
        """Fixed-width text table: one row per class, then ``mean`` and ``overall``.

        Parameters
        ----------
        precision : int
            Significant digits of each value.
        """
        header = ["class"] + list(self.metrics)
        rows = [[str(k)] + [_fmt(self.per_class[k].get(m), precision) for m in self.metrics]
                for k in sorted(self.per_class)]
        rows.append(["mean"] + [_fmt(self.mean_over_classes.get(m), precision) for m in self.metrics])
        rows.append(["overall"] + [_fmt(self.overall.get(m), precision) for m in self.metrics])
        widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]

        def line(cells: List[str]) -> str:
            return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

        sep = "  ".join("-" * w for w in widths)
        return "\n".join([line(header), sep] + [line(r) for r in rows[:-2]] + [sep] + [line(r) for r in rows[-2:]])


def _fmt(value: Optional[float], precision: int) -> str:
    if value is None or not math.isfinite(value):
        return "-"
    return f"{value:.{precision}g}"




def moment_distances(x: Tensor, y: Tensor, a: Optional[Tensor] = None, b: Optional[Tensor] = None) -> Dict[str, float]:
    """The three moment distances between ``x`` (weights ``a``) and ``y`` (weights ``b``).

    Parameters
    ----------
    x, y : Tensor
        ``(n, d)`` and ``(m, d)`` samples.
    a, b : Tensor, optional
        Non-negative weights (normalised here); uniform when ``None``.

    Returns
    -------
    dict
        ``moment1`` (mean, L2), ``moment2`` (covariance, Frobenius), ``moment3`` (diagonal of
        the 3rd central moment tensor, L2); see the module docstring.
    """
    def stats(z: Tensor, w: Optional[Tensor]):
        z = z.to(torch.float64)
        w = (torch.full((len(z),), 1.0 / len(z), dtype=torch.float64, device=z.device) if w is None
             else w.to(torch.float64))
        w = w / w.sum()
        mu = w @ z
        c = z - mu
        cov = (c * w.unsqueeze(1)).T @ c
        m3 = w @ c.pow(3)
        return mu, cov, m3

    mx, cx, tx = stats(x, a)
    my, cy, ty = stats(y, b)
    return {"moment1": float((mx - my).norm()), "moment2": float((cx - cy).norm()), "moment3": float((tx - ty).norm())}


def _named_settings(name: str, seed: int) -> Dict[str, Any]:
    """The distiller's settings for loss ``name`` (:data:`ddmetrics.distill.presets.LOSS_SETTINGS`),
    plus ``seed`` for a loss that draws random numbers (sliced directions, a KR critic)."""
    settings = dict(LOSS_SETTINGS.get(name, {}))
    if "seed" in inspect.signature(type(get_loss(name, **settings)).__init__).parameters:
        settings["seed"] = seed
    return settings


def run_loss_settings(meta: Mapping[str, Any]) -> Optional[Tuple[str, Dict[str, Any]]]:
    """The loss a synthetic set was distilled with and its settings, from its ``meta``: the
    config's ``loss_kwargs`` over :data:`~ddmetrics.distill.presets.LOSS_SETTINGS` (as the
    distiller built it), else the recorded ``loss_config``; ``None`` when the meta records neither."""
    name = meta.get("loss")
    config = meta.get("config") or {}
    if not isinstance(name, str) or not name:
        return None
    if isinstance(config.get("loss_kwargs"), Mapping) and config.get("loss", name) == name:
        return name, {**LOSS_SETTINGS.get(name, {}), **config["loss_kwargs"]}
    recorded = meta.get("loss_config")
    if isinstance(recorded, Mapping) and recorded.get("name") == name:
        return name, {k: v for k, v in recorded.items() if k not in ("name", "class")}
    return None


def _loss_factories(losses: LossSpec, seed: int = 0, run: Optional[Tuple[str, Dict[str, Any]]] = None
                    ) -> Tuple[Dict[str, Callable[[], DistributionLoss]], Dict[str, str]]:
    """name -> zero-argument factory giving a fresh, identically seeded loss for every comparison;
    and, for the default ``losses=None``, the registered losses left out because their extra is not
    installed (name -> its ``pip install`` command). A loss asked for by name is refused instead.
    A name given as a string that is ``run``'s loss gets ``run``'s settings (the seed, if it has
    none, is ``seed``)."""
    skipped: Dict[str, str] = {}
    if losses is None:
        skipped = missing_losses()
        losses = [name for name in available_losses() if name not in skipped]
    factories: Dict[str, Callable[[], DistributionLoss]] = {}
    if isinstance(losses, Mapping):
        items = list(losses.items())
    else:
        items = []
        for spec in losses:
            if isinstance(spec, DistributionLoss):
                items.append((spec.name or type(spec).__name__, spec))
            elif isinstance(spec, str) and run is not None and spec == run[0]:
                settings = dict(run[1])
                if "seed" in _named_settings(spec, seed):  # a loss that draws: the run's seed, else ours
                    settings.setdefault("seed", seed)
                items.append((spec, settings))
            elif isinstance(spec, str):
                items.append((spec, _named_settings(spec, seed)))
            else:
                raise TypeError(f"losses must hold names or DistributionLoss instances, got {type(spec).__name__}")
    for name, spec in items:
        if isinstance(spec, DistributionLoss):
            factories[name] = (lambda s=spec: s)
        elif isinstance(spec, Mapping):
            registered = name
            get_loss(registered, **spec)  # fail now on an unknown name or bad settings
            factories[name] = (lambda n=registered, kw=dict(spec): get_loss(n, **kw))
        else:
            raise TypeError(f"losses[{name!r}] must be a DistributionLoss or a dict of settings, "
                            f"got {type(spec).__name__}")
    return factories, skipped


def _subsample(z: Tensor, limit: Optional[int], seed: int) -> Tensor:
    if limit is None or len(z) <= limit:
        return z
    gen = torch.Generator(device="cpu").manual_seed(seed)
    return z[torch.randperm(len(z), generator=gen, device="cpu")[:limit].to(z.device)]


def diagnose(synset: SyntheticSet, real_set, model: nn.Module, losses: LossSpec = None, batch_size: int = 512,
             max_real: Optional[int] = 4096, seed: int = 0, device: DeviceSpec = None, on_error: str = "raise",
             overall: bool = True) -> DiagnosisReport:
    """Distances between a synthetic set and real data in ``model``'s feature space.

    Parameters
    ----------
    synset : SyntheticSet
        The synthetic set; its decoded images (:meth:`SyntheticSet.decoded`) are embedded,
        and its weights, renormalised within each class, weight its features.
    real_set : ArrayDataset or Dataset of (image, label)
        Real data with the same classes (normally the training split the set was distilled from).
    model : nn.Module
        Any model with ``embed(x) -> (N, d)`` features (the trained teacher, or a random ConvNet).
        Used in eval mode without parameter gradients; every module's mode and every
        parameter's ``requires_grad`` are restored afterwards.
    losses : list of str / DistributionLoss, or dict, optional
        Which distances to compute. Default: every registered backend whose extra is installed
        (the others are named in ``meta["skipped_losses"]``), with
        :data:`ddmetrics.distill.presets.LOSS_SETTINGS` (the distiller's own: 20 warm-started critic
        steps for ``krdual``), with ``seed`` for losses that take one (``sliced``, ``krdual``).
        The set's own loss (``synset.meta["loss"]``), named here or by default, gets the settings
        it was distilled with (:func:`run_loss_settings`: the config's ``loss_kwargs``).
        A dict maps a column name to a loss instance or to the settings of the registered loss of
        that name. Named losses get a fresh instance for every comparison, so the values do
        not depend on the order of the classes. A loss named here whose extra is not installed
        is refused before any work.
    batch_size : int
        Embedding batch size.
    max_real : int, optional
        At most this many real features per comparison (seeded random subset): keeps the O(nm)
        and O(n²) backends affordable on large data. ``None``: no limit. Digits never reaches it.
    seed : int
        Seed of that subsampling.
    device : str or torch.device, optional
        Where the model runs and the distances are computed (``None``/``"auto"``: CUDA when
        available); the model is moved there.
    on_error : {"raise", "skip"}
        What a loss that raises on one comparison does: stop the diagnosis (default), or leave
        ``None`` in that cell and name the loss, the comparison and the error in
        ``meta["failed_losses"]`` (a study scoring many sets goes on; the means then cover the
        classes that have the value).
    overall : bool
        Also compare the pooled clouds (default). ``False`` leaves ``overall`` ``None``: the
        pooled comparison is the costliest one and a per-class study does not use it.

    Returns
    -------
    DiagnosisReport

    Raises
    ------
    TypeError
        If ``synset`` is not a SyntheticSet or ``model`` has no ``embed``.
    ValueError
        If image shapes or class counts of the two sets disagree.
    ModuleNotFoundError
        If a loss named in ``losses`` needs an extra that is not installed (the message gives the
        ``pip install`` command).
    """
    if not isinstance(synset, SyntheticSet):
        raise TypeError(f"synset must be a SyntheticSet, got {type(synset).__name__}")
    if not callable(getattr(model, "embed", None)):
        raise TypeError(f"model must have an embed(x) method, got {type(model).__name__}")
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    run = run_loss_settings(synset.meta or {})
    try:  # an unknown or uninstalled loss fails here
        factories, skipped = _loss_factories(losses, seed, run)
    except (TypeError, ValueError) as err:
        if run is None:
            raise
        raise ValueError(f"the synthetic set's loss {run[0]!r} with its recorded settings {run[1]}: {err}") from None
    real = as_dataset(real_set)  # embedded batch by batch below: a streaming set stays streamed
    images, labels, weights = synset.decoded()
    images, labels, weights = images.detach().float(), labels.detach(), weights.detach().double()
    if tuple(images.shape[1:]) != tuple(real.image_shape):
        raise ValueError(f"synthetic images are {tuple(images.shape[1:])} but real images are "
                         f"{tuple(real.image_shape)}")
    if synset.num_classes != real.num_classes:
        raise ValueError(f"the synthetic set has {synset.num_classes} classes, the real set {real.num_classes}")
    device = resolve_device(device)
    metrics = list(factories) + list(MOMENTS)

    with frozen(model):  # every submodule's mode and requires_grad come back as they were
        model.to(device)
        f_real = embed_batched(model, real, batch_size).double()
        f_syn = embed_batched(model, images, batch_size).double()

    seconds = {name: 0.0 for name in list(factories) + ["moments"]}
    failed: Dict[str, Dict[str, str]] = {}

    def compare(x: Tensor, y: Tensor, b: Tensor, key: int) -> Dict[str, Optional[float]]:
        x = _subsample(x, max_real, seed + key)
        row: Dict[str, Optional[float]] = {}
        for name, make in factories.items():
            start = time.perf_counter()
            try:
                with torch.no_grad():
                    row[name] = float(make()(x, y, b=b))
            except Exception as err:  # noqa: BLE001 - any backend's failure, reported by name
                if on_error == "raise":
                    raise
                row[name] = None
                where = "overall" if key == 0 else f"class {key - 1}"
                failed.setdefault(name, {})[where] = f"{type(err).__name__}: {err}"
            seconds[name] += time.perf_counter() - start
        start = time.perf_counter()
        row.update(moment_distances(x, y, None, b))
        seconds["moments"] += time.perf_counter() - start
        return row

    per_class: Dict[int, Dict[str, Optional[float]]] = {}
    weights, labels = weights.to(device), labels.to(device)
    real_labels = real.labels.to(device)
    pooled_w = torch.zeros(len(f_syn), dtype=torch.float64, device=device)
    n_real = len(real)
    for k in range(real.num_classes):
        mask = labels == k
        xr = f_real[real_labels == k]
        if not bool(mask.any()) or len(xr) == 0:
            per_class[k] = {m: None for m in metrics}
            continue
        w = weights[mask]
        w = w / w.sum() if float(w.sum()) > 0 else torch.full_like(w, 1.0 / len(w))
        per_class[k] = compare(xr, f_syn[mask], w, key=k + 1)
        pooled_w[mask] = w * (len(xr) / n_real)
    present = [k for k, row in per_class.items() if row["moment1"] is not None]
    if present and overall:
        pooled_w = pooled_w / pooled_w.sum()
        keep = pooled_w > 0
        pooled = compare(f_real, f_syn[keep], pooled_w[keep], key=0)
    else:
        pooled = {m: None for m in metrics}

    def mean_of(m: str) -> Optional[float]:
        values = [per_class[k][m] for k in present if per_class[k][m] is not None]
        return sum(values) / len(values) if values else None

    mean = {m: mean_of(m) for m in metrics}
    meta = {
        "feature_dim": int(f_real.shape[1]),
        "n_real": int(n_real),
        "n_synthetic": int(len(f_syn)),
        "classes_without_synthetic": [k for k in per_class if k not in present],
        "losses": {name: repr(make()) for name, make in factories.items()},
        "skipped_losses": skipped,
        "moments": {"moment1": "||mean_s - mean_r||_2",
                    "moment2": "||cov_s - cov_r||_F (population covariance, weighted)",
                    "moment3": "||diag3_s - diag3_r||_2, diag3_j = E[(x_j - mean_j)^3] (3rd central moment "
                               "tensor diagonal, not standardised)"},
        "weights": "synthetic: synset weights renormalised per class; real: uniform",
        "max_real": max_real,
        "seconds": seconds,
        "failed_losses": failed,
    }
    return DiagnosisReport(metrics=metrics, per_class=per_class, overall=pooled, mean_over_classes=mean, meta=meta)
