r"""Teacher matching (WMDD, SRe²L): synthetic images whose teacher features sit on the class barycenters.

For every class :math:`k`, the real features :math:`f_e(x_{k,i})` of a trained teacher are
summarised by ``loss.barycenter`` into :math:`m_k` = IPC atoms :math:`b_{kj}` with weights
:math:`w_{kj}`. Each optimisation batch (a :class:`~ddmetrics.distill._loop.Unit` of cells
(class, slot)) of synthetic images minimises

.. math::
    D\big(f_e(\mathcal{A}(\tilde X)), B\big) + \gamma\, \mathrm{CE}\big(h(\mathcal{A}(\tilde X)), y\big)
    + \lambda\, \mathcal{L}_{BN}

where :math:`\mathcal{A}` is a random augmentation, :math:`D` is the paper's
:math:`\sum_j \|f_j - b_j\|^2` (WMDD Eq. 12, ``feature_norm="squared"``) or the released code's
:math:`\|F - B\|_F` over the batch (``"frobenius"``), CE the teacher's mean cross-entropy
(weight ``ce_weight``; 1 in WMDD's released pipeline, the whole objective of SRe²L) and
:math:`\mathcal{L}_{BN}` the per-class (PCBN, WMDD Eq. 13) or all-class (SRe²L) BatchNorm
regulariser of :mod:`ddmetrics.distill.pcbn`. The weights travel with the synthetic set.

G-VBSM (``reg="gvbsm"``, :mod:`ddmetrics.distill.gvbsm`) replaces the regulariser: at step
:math:`t` one network :math:`g_t` of :math:`[h, g_1, \dots, g_B]` (the teacher and the
``backbones``, round-robin: :math:`t \bmod (B + 1)`, the release's counter) gives

.. math::
    \mathrm{CE}\big(g_t(\mathcal{A}(\tilde X)), y\big) + \lambda\, \mathcal{L}_{stat}(g_t)
    + \delta\, \mathcal{L}_{DD}(\mathcal{A}(\tilde X))

with :math:`\lambda` = ``reg_weight``, :math:`\delta` = ``densify_weight``; each network's EMA
states live in the unit's loss state (saved in checkpoints). The backbones are trained by the
teacher's recipe from the run's seed (an :class:`~ddmetrics.distill.pool.EmbedderPool` of one
member per architecture); each network's reference Conv statistics are taken once over the real
training set in batches of 64 under the recipe's augmentation, as the release does.

The teacher runs in eval mode and units do not share images, so units are independent: each has
its own random stream and optimiser, which lets the :class:`~ddmetrics.Distiller` shard them over
ranks and checkpoint them. A class's barycenter is computed once, the first time a unit needs
it (only one class's teacher features are held at a time).
"""
from __future__ import annotations

import copy
import time
from typing import Any, Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Subset

from ..augment import crop_scale_at, make_augment
from ..data import pixel_bounds
from ..distributed import class_seed
from ..losses import DistributionLoss
from ..utils import autocast, embed_batched, model_device
from ._loop import Strategy, Unit
from .checkpoint import Checkpoint
from .gvbsm import StatisticMatching, densification_loss, reference_conv_statistics
from .pcbn import BoundPCBN, PCBNLoss, per_class_bn_stats
from .pool import EmbedderPool
from .presets import DistillConfig


def class_features(model: nn.Module, train, indices: Tensor, batch_size: int = 512) -> Tensor:
    """``model.embed`` of the images ``train[indices]``, streamed through a DataLoader
    (only this class's features are ever held, never the whole data set's)."""
    return embed_batched(model, Subset(train, indices.tolist()), batch_size)


#: G-VBSM's random streams (class_seed's third coordinate; units and barycenters use 0-4; the backbones' pool
#: derives its own 10-12 from the seed drawn here)
_BACKBONE_STREAM, _REFERENCE_STREAM = 13, 14
#: the release's loader batch for the reference statistics (ds.py:71-95)
_REFERENCE_BATCH = 64
#: the densification temperature (ds.py:316, --tau 4)
_DD_TAU = 4.0


class BarycenterMatching(Strategy):
    """WMDD's, SRe²L's, CDA's and G-VBSM's synthesis, one unit at a time (see the module docstring).

    Parameters
    ----------
    train : ArrayDataset or ImageFolder
        The real training set (features and BN statistics are read in batches).
    num_classes, ipc : int
        Classes and synthetic images per class.
    loss : DistributionLoss
        Whose ``barycenter`` gives the targets; copied per class.
    cfg : DistillConfig
        Synthesis settings.
    teacher : nn.Module
        Trained classifier with ``embed`` and ``classifier``, used in eval mode with frozen
        parameters (the Distiller restores the caller's flags afterwards).
    seed : int
        Seed of every random choice.
    checkpoint : Checkpoint, optional
        The run's checkpoint: G-VBSM's backbones are read back from it, or stored in it once trained.
    """

    needs_teacher = True
    summed_info = ("barycenter_seconds", "feature_loss_first", "feature_loss_last")
    description = "teacher matching"

    def __init__(self, train, num_classes: int, ipc: int, loss: DistributionLoss, cfg: DistillConfig,
                 seed: int, teacher: nn.Module, device: torch.device = torch.device("cpu"), amp: bool = False,
                 checkpoint: Optional[Checkpoint] = None):
        self.device, self.amp = torch.device(device), amp
        teacher.to(self.device).eval()
        for prm in teacher.parameters():
            prm.requires_grad_(False)
        self.train, self.num_classes, self.ipc, self.loss, self.cfg = train, num_classes, ipc, loss, cfg
        self.teacher, self.seed = teacher, seed
        self.augment = make_augment(cfg.augment, train.image_shape[0], train.image_shape[-1])
        self.bounds = pixel_bounds(train) if cfg.clamp == "pixel" else None
        self.uses_barycenter = cfg.feature_loss == "barycenter"
        # the barycenters are computed for the targets, or only for the nearest-real start
        self.needs_barycenter = self.uses_barycenter or cfg.init == "nearest"
        self.reg = None
        #: G-VBSM: the networks of the round-robin (teacher first), the backbones alone, their conv references
        self.networks: list = []
        self.backbones: list = []
        self._conv_references: list = []
        if cfg.reg == "gvbsm":
            self._build_gvbsm(train, num_classes, checkpoint)
        elif cfg.reg != "none":
            stats = None if cfg.bn_stats == "running" else per_class_bn_stats(
                teacher, train, num_classes, device=self.device, variance=cfg.bn_stats)
            self.reg = PCBNLoss(teacher, stats, mode=cfg.reg, norm=cfg.reg_norm, first_weight=cfg.first_bn_weight)
        self._targets: Dict[int, Tuple[Tensor, Tensor, Tensor, float]] = {}

    def _build_gvbsm(self, train, num_classes: int, checkpoint: Optional[Checkpoint] = None) -> None:
        """Train the backbones (the teacher's recipe, seeded from the run; read back from the run's
        checkpoint where an earlier attempt trained them) and take every network's reference Conv
        statistics over the real training set."""
        cfg = self.cfg
        if cfg.backbones:
            recipe = cfg.teacher_training()
            pool = EmbedderPool(len(cfg.backbones), list(cfg.backbones), recipe, recipe.epochs,
                                class_seed(self.seed, 0, _BACKBONE_STREAM), self.device).fit(train, num_classes,
                                                                                             checkpoint)
            self.backbones = [pool.trained(i) for i in range(len(pool))]
        self.networks = [self.teacher] + self.backbones
        recipe = cfg.teacher_training()
        self._conv_references = [self._reference(net, j, recipe.augment) for j, net in enumerate(self.networks)]

    def _reference(self, net: nn.Module, j: int, augment_spec: str) -> list:
        """Network ``j``'s reference Conv statistics: one pass over the training set in a seeded
        order, batches of 64 (the release's loader), each image augmented by ``augment_spec`` (the
        release: RandomCrop(pad 4) + flip, its teachers' training augmentation)."""
        gen = torch.Generator(device="cpu").manual_seed(class_seed(self.seed, j, _REFERENCE_STREAM))
        augment = make_augment(augment_spec, self.train.image_shape[0], self.train.image_shape[-1])
        n = len(self.train)
        order = torch.randperm(n, generator=gen, device="cpu")
        device = model_device(net)

        def batches():
            for start in range(0, n, _REFERENCE_BATCH):
                x = self.train.load(order[start:start + _REFERENCE_BATCH])
                if augment is not None:
                    x = augment(x, gen)
                yield x.to(device)

        return reference_conv_statistics(net, batches(), total=n)

    def targets(self, k: int) -> Tuple[Tensor, Tensor, Tensor, float]:
        """Class ``k``'s barycenter atoms, their weights, the indices of the distinct real images
        nearest to each atom (``init="nearest"``) and the seconds spent in ``loss.barycenter``;
        computed once per class."""
        if k in self._targets:
            return self._targets[k]
        indices = self.train.class_indices(k)
        feats = class_features(self.teacher, self.train, indices)
        init: Any = "kmeans++"
        if self.cfg.bary_init == "gaussian":  # WMDD's code: i.i.d. N(0, 1) atoms (recover/barycenter.py:8)
            gen = torch.Generator(device="cpu").manual_seed(class_seed(self.seed, k, stream=3))
            init = torch.randn(self.ipc, feats.shape[1], generator=gen, device="cpu").to(feats)
        start = time.perf_counter()
        bary = copy.deepcopy(self.loss).barycenter(feats, self.ipc, learn_weights=self.cfg.learn_weights,
                                                   iters=self.cfg.bary_iters, seed=self.seed + k, init=init)
        seconds = time.perf_counter() - start
        support = bary.support.to(feats.dtype)
        d2 = torch.cdist(support, feats)
        taken = torch.zeros(len(feats), dtype=torch.bool, device=feats.device)
        nearest = []
        for j in range(self.ipc):  # greedy: a distinct real image per atom
            i = int(d2[j].masked_fill(taken, float("inf")).argmin())
            taken[i] = True
            nearest.append(int(indices[i]))
        self._targets[k] = (support, bary.weights.to(feats.dtype), torch.tensor(nearest, device="cpu"), seconds)
        return self._targets[k]

    def start(self, unit: Unit, gen: torch.Generator) -> Tuple[Tensor, Dict[str, Any]]:
        cells, shape = unit.cells, self.train.image_shape
        fixed: Dict[str, Any] = {"barycenter_seconds": 0.0}
        if self.needs_barycenter:
            per_class = {k: self.targets(k) for k in unit.classes}
            fixed["barycenter_seconds"] = sum(t[3] for t in per_class.values())
        if self.uses_barycenter:
            fixed["targets"] = torch.stack([per_class[k][0][j] for k, j in cells])
            fixed["weights"] = torch.stack([per_class[k][1][j] for k, j in cells])
        else:
            fixed["weights"] = torch.full((len(cells),), 1.0 / self.ipc, device=self.device)
        if self.cfg.init == "nearest":
            idx = torch.stack([self._targets[k][2][j] for k, j in cells])
            init = self.train.load(idx)
        elif self.cfg.init == "real":  # random real images of each class (drawn on the CPU generator)
            picks = []
            for k in unit.classes:
                pool = self.train.class_indices(k)
                picks.append(pool[torch.randperm(len(pool), generator=gen, device="cpu")[:len(unit.slots)]])
            init = self.train.load(torch.cat(picks))
        else:  # noise, drawn on the CPU generator: the same start on every device
            init = torch.randn((len(cells),) + tuple(shape), generator=gen, device="cpu")
        return init.to(self.device), fixed

    def context(self, unit: Unit, fixed: Dict[str, Any]) -> Dict[str, Any]:
        labels = unit.labels(self.device)
        weights = fixed["weights"] if (self.cfg.reg_weighted and self.uses_barycenter) else None
        # the regulariser's checks and targets depend only on the unit's labels and weights: once per unit
        reg = self.reg.bind(labels, weights, fixed["weights"]) if self.reg is not None else None
        ctx = {**fixed, "unit": unit, "labels": labels, "reg": reg}
        if self.networks:  # G-VBSM: each network's EMA states start afresh in every unit
            cfg = self.cfg
            ctx["matching"] = [StatisticMatching(net, ref, momentum=cfg.stat_momentum, drop_rate=cfg.conv_drop,
                                                 first_multiplier=cfg.first_bn_weight)
                               for net, ref in zip(self.networks, self._conv_references)]
        return ctx

    def loss_state(self, ctx: Dict[str, Any]) -> Optional[Dict[str, Any]]:
        if "matching" not in ctx:
            return None
        return {"matching": [m.state_dict() for m in ctx["matching"]]}

    def load_loss_state(self, ctx: Dict[str, Any], state: Optional[Dict[str, Any]]) -> None:
        if state is None or "matching" not in ctx:
            return
        saved = state["matching"]
        if len(saved) != len(ctx["matching"]):
            raise ValueError(f"the checkpoint holds {len(saved)} networks' statistic states, the run has "
                             f"{len(ctx['matching'])}")
        for m, st in zip(ctx["matching"], saved):
            m.load_state_dict(st)

    def step(self, ctx: Dict[str, Any], syn: Tensor, it: int, gen: torch.Generator) -> Tuple[Tensor, Tensor]:
        cfg = self.cfg
        augment = self.augment
        if cfg.crop_curriculum != "none":  # CDA: the crop's area range at this step of the curriculum
            augment = augment.with_scale(crop_scale_at(cfg.crop_curriculum, it, cfg.effective_iterations,
                                                       cfg.crop_milestone))
        view = augment(syn, gen) if augment is not None else syn
        if "matching" in ctx:
            return self._gvbsm_step(ctx, view, it, gen)
        # the classifier head runs only where its logits are used
        feats, logits, reg_value = self._forward(view, ctx["reg"], logits=cfg.ce_weight > 0)
        total = view.new_zeros(())
        tracked = None
        if self.uses_barycenter:
            if cfg.feature_norm == "squared":  # Σ_j ||f_j - b_j||², WMDD Eq. 12
                tracked = F.mse_loss(feats, ctx["targets"], reduction="sum")
            else:  # ||F - B||_F over the batch, WMDD's data_synthesis_new.py:164
                tracked = torch.linalg.vector_norm(feats - ctx["targets"])
            total = tracked
        if cfg.ce_weight > 0:
            ce = F.cross_entropy(logits, ctx["labels"])
            total = torch.add(total, ce, alpha=cfg.ce_weight)
            tracked = ce if tracked is None else tracked
        if ctx["reg"] is not None:
            total = torch.add(total, reg_value, alpha=cfg.reg_weight)
            tracked = reg_value if tracked is None else tracked
        return total, tracked

    def _gvbsm_step(self, ctx: Dict[str, Any], view: Tensor, it: int, gen: torch.Generator) -> Tuple[Tensor, Tensor]:
        """G-VBSM's objective on network ``it mod (B + 1)`` (see the module docstring); tracked: its CE."""
        cfg = self.cfg
        # the release's global counter (ds.py:150-152) restarts here with each unit: the same networks while the
        # iterations are a multiple of the networks (4000 of 4 or 5), as in the released runs
        matching = ctx["matching"][it % len(ctx["matching"])]
        with autocast(self.device, self.amp):
            stat, logits = matching(view, gen)
        ce = F.cross_entropy(logits.float(), ctx["labels"])
        total = torch.add(cfg.ce_weight * ce, stat.float(), alpha=cfg.reg_weight)
        if cfg.densify_weight > 0:  # on the step's view (the release's jittered batch, ds.py:161-181)
            total = torch.add(total, densification_loss(view.float(), ctx["labels"], tau=_DD_TAU),
                              alpha=cfg.densify_weight)
        return total, ce

    def weights(self, ctx: Dict[str, Any]) -> Tensor:
        return ctx["weights"]

    def summary(self, ctx: Dict[str, Any], first: Optional[float], last: Optional[float]) -> Dict[str, Any]:
        return {"barycenter_seconds": ctx["barycenter_seconds"], "feature_loss_first": first,
                "feature_loss_last": last}

    def _forward(self, view: Tensor, reg: Optional[BoundPCBN], logits: bool = True):
        """Features, logits (``None`` unless ``logits``) and the BN regulariser from one teacher
        pass (bf16 autocast with ``amp`` on CUDA; what comes out is float32 for the losses)."""
        with autocast(self.device, self.amp):
            if reg is None:
                feats = self.teacher.embed(view)
                reg_value = view.new_zeros(())
            else:
                reg_value, feats = reg(view, forward=self.teacher.embed)
            out = self.teacher.classifier(feats).float() if logits else None
        return feats.float(), out, reg_value.float()
