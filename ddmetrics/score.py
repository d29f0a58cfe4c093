r"""Score a synthetic set without training students: its distance to the real data.

:func:`score_set` compares a synthetic set with the real training data of each class under every
registered :class:`~ddmetrics.losses.DistributionLoss` (one registered by a plugin included) in
fixed reference feature spaces (:data:`SPACES`):

``teacher``
    the penultimate features of a trained network (``model.embed``);
``convnet``
    the features of a ConvNet initialised with a fixed seed and never trained;
``pixels``
    the raw (normalised) pixels, flattened.

A set's score under (distance, space) is the mean over classes of the per-class distances
(:func:`ddmetrics.diagnose.diagnose`, the set's weights renormalised per class); the per-class
values are kept. Whether a smaller score means a better training set, and for which distance,
is what ``benchmarks/metric_vs_accuracy.py --experiment study`` measures:
:data:`RECOMMENDED` is the pair it found to agree best with student accuracy on digits.

References
----------
.. [1] ``benchmarks/results/metric_vs_accuracy_study.md`` (rank agreement of every distance and
   space with the accuracy of 44 digits sets, and a controlled series; the commands that made it).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import torch
from torch import Tensor, nn

from .data import as_dataset
from .diagnose import LossSpec, diagnose
from .synset import SyntheticSet
from .utils import DeviceSpec, seeded

__all__ = ["SPACES", "RECOMMENDED", "PixelFeatures", "reference_models", "ScoreReport", "score_set"]

#: the reference feature spaces, in table order
SPACES = ("teacher", "convnet", "pixels")

#: (distance, space) the study found to agree best with accuracy on the validation split (see the module
#: docstring; ``tests/test_score.py`` checks it against the committed study): ``sinkhorn`` on the pixels,
#: pooled Spearman 0.91 (validation) and 0.88 [0.70, 0.93] (test) over 44 digits sets. ``wasserstein`` and
#: ``gaussian_w2`` on the pixels agree as well within the intervals, at a fifth of the time and in the core install.
RECOMMENDED = ("sinkhorn", "pixels")


class PixelFeatures(nn.Module):
    """The identity feature map: ``embed(x)`` is ``x`` flattened (no parameters)."""

    def embed(self, x: Tensor) -> Tensor:
        return x.flatten(1)

    def forward(self, x: Tensor) -> Tensor:
        return self.embed(x)


def reference_models(channels: int, num_classes: int, image_size: int, teacher: Optional[nn.Module] = None,
                     seed: int = 0, spaces: Sequence[str] = SPACES) -> Dict[str, nn.Module]:
    """The models of the reference spaces.

    Parameters
    ----------
    channels, num_classes, image_size
        Shape of the data.
    teacher : nn.Module, optional
        A trained model with ``embed``; needed for the ``teacher`` space (refused without it).
    seed : int
        Seed of the random ConvNet's initialisation.
    spaces : sequence of str
        Which of :data:`SPACES`.
    """
    from .models import get_model

    unknown = [s for s in spaces if s not in SPACES]
    if unknown or not spaces:
        raise ValueError(f"spaces must be a non-empty subset of {list(SPACES)}, got {list(spaces)!r}")
    if "teacher" in spaces and teacher is None:
        raise ValueError("the 'teacher' space needs teacher= (a trained model with embed)")
    if teacher is not None and not callable(getattr(teacher, "embed", None)):
        raise TypeError(f"teacher must have an embed(x) method, got {type(teacher).__name__}")
    models: Dict[str, nn.Module] = {}
    for space in spaces:
        if space == "teacher":
            models[space] = teacher
        elif space == "convnet":
            with seeded(seed):
                models[space] = get_model("convnet", channels, num_classes, image_size).eval()
        else:
            models[space] = PixelFeatures()
    return models


@dataclass
class ScoreReport:
    """Per (space, distance): the mean over classes, the per-class values and the seconds.

    Attributes
    ----------
    mean : dict
        ``{space: {distance: value or None}}`` (``None``: the distance failed on every class).
    per_class : dict
        ``{space: {distance: [value or None per class]}}``.
    seconds : dict
        ``{space: {distance: seconds}}``: time of that distance over all classes, plus
        ``"embed"``: the embedding of both sides in that space.
    failed : dict
        ``{space: {distance: {where: error}}}`` for the distances that raised.
    """

    mean: Dict[str, Dict[str, Optional[float]]]
    per_class: Dict[str, Dict[str, List[Optional[float]]]]
    seconds: Dict[str, Dict[str, float]]
    failed: Dict[str, Dict[str, Dict[str, str]]] = field(default_factory=dict)

    def to_dict(self) -> Dict[str, Any]:
        return {"mean": self.mean, "per_class": self.per_class, "seconds": self.seconds, "failed": self.failed}

    def table(self, precision: int = 4) -> str:
        """One row per distance, one column per space."""
        spaces = list(self.mean)
        names: List[str] = []
        for s in spaces:
            names += [n for n in self.mean[s] if n not in names]
        rows = [["distance"] + spaces]
        for n in names:
            rows.append([n] + ["-" if self.mean[s].get(n) is None else f"{self.mean[s][n]:.{precision}g}"
                               for s in spaces])
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        return "\n".join("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
                         for r in rows)


def score_set(synset: SyntheticSet, real_set, models: Mapping[str, nn.Module], losses: LossSpec = None,
              moments: bool = True, max_real: Optional[int] = 4096, seed: int = 0, batch_size: int = 512,
              device: DeviceSpec = None, on_error: str = "skip") -> ScoreReport:
    r"""Distances between ``synset`` and ``real_set`` in each space of ``models``, per class.

    .. math::

        \mathrm{score}_{D,\phi}(S) = \frac{1}{K}\sum_{k=1}^{K} D\big(\phi_\#\,\mu^{\mathrm{real}}_k,
        \ \phi_\#\,\nu^{S}_k\big)

    with :math:`\phi` the space's feature map, :math:`\mu_k` the real class-:math:`k` images
    (uniform) and :math:`\nu_k` the set's (its weights renormalised).

    Parameters
    ----------
    synset : SyntheticSet
    real_set : Dataset
        The real training data (never the test split: a score used to choose a set must not see
        it). Same classes and image shape as the set (refused otherwise, naming the mismatch).
    models : dict
        ``{space name: model with embed}`` (:func:`reference_models`).
    losses : optional
        As :func:`ddmetrics.diagnose.diagnose` (default: every registered, installed loss).
    moments : bool
        Keep the moment distances (``moment1..3``) as distances too.
    max_real, seed, batch_size, device
        As :func:`~ddmetrics.diagnose.diagnose`.
    on_error : {"skip", "raise"}
        ``"skip"`` (default): a distance that fails on a class is ``None`` there, named in
        ``failed``, and the others go on.
    """
    from .evaluate import check_fits

    if not isinstance(synset, SyntheticSet):
        raise TypeError(f"synset must be a SyntheticSet, got {type(synset).__name__}")
    if not isinstance(models, Mapping) or not models:
        raise ValueError("models must be a non-empty dict {space: model} (see reference_models)")
    real = as_dataset(real_set)
    check_fits(synset, real, "real_set")
    mean: Dict[str, Dict[str, Optional[float]]] = {}
    per_class: Dict[str, Dict[str, List[Optional[float]]]] = {}
    seconds: Dict[str, Dict[str, float]] = {}
    failed: Dict[str, Dict[str, Dict[str, str]]] = {}
    for space, model in models.items():
        start = time.perf_counter()
        report = diagnose(synset, real, model, losses=losses, batch_size=batch_size, max_real=max_real, seed=seed,
                          device=device, on_error=on_error, overall=False)
        total = time.perf_counter() - start
        names = [m for m in report.metrics if moments or not m.startswith("moment")]
        mean[space] = {m: report.mean_over_classes[m] for m in names}
        per_class[space] = {m: [report.per_class[k][m] for k in sorted(report.per_class)] for m in names}
        spent = {m: float(report.meta["seconds"].get(m, 0.0)) for m in names if not m.startswith("moment")}
        if moments:
            for m in names:
                if m.startswith("moment"):
                    spent[m] = float(report.meta["seconds"]["moments"]) / 3.0
        spent["embed"] = max(0.0, total - sum(report.meta["seconds"].values()))
        seconds[space] = spent
        if report.meta["failed_losses"]:
            failed[space] = report.meta["failed_losses"]
    return ScoreReport(mean=mean, per_class=per_class, seconds=seconds, failed=failed)
