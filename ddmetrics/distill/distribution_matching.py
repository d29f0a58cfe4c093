r"""Distribution matching (DM, M3D, KR-dual — and any other backend).

Every ``iters_per_model`` steps a freshly initialised embedding network :math:`\psi` is
drawn; the real batch and the synthetic images of each class go through the *same*
differentiable augmentation (siamese DSA), and the synthetic images minimise

.. math::
    \sum_k \mathcal{L}\big(\psi(\mathcal{A}_\omega(X_k)),\ \psi(\mathcal{A}_\omega(\tilde X_k))\big)

with :math:`\mathcal{L}` the chosen :class:`~ddmetrics.losses.DistributionLoss` (linear-kernel
MMD for DM, Gaussian MMD for M3D, the KR dual for KR-dual). With M3D's ``factor`` l, each
stored image holds l×l down-scaled sub-images that are up-sampled before matching.

The objective is a sum of per-class terms with per-class parameters, so
:class:`DistributionMatching` runs one unit (by default one class) at a time: its own random
stream, and for each class its own real batch, augmentation draw (siamese for that class, as in
DM's reference code) and copy of the loss (a critic, a direction generator); one optimiser per
unit. The embedder of step ``t`` depends only on ``(seed, t)`` and is the same for every class.
With ``normalize_features`` both feature clouds are projected on the unit sphere before the
loss (NCFM).

NCFM (``embedder_pool`` = P > 0): the embedder is drawn from an :class:`~.pool.EmbedderPool` of
P networks trained on the real data (mixed with their initialisation with ``pool_interpolate``),
trained once when the strategy is built, from the run's seed: a resumed run retrains the same
pool (the same weights on one machine). With ``calib_weight`` > 0, each step is followed by
NCFM's calibration step (``condenser/compute_loss.py:56-92``): ``calib_weight`` × the
cross-entropy of the drawn member's trained end on each class's (decoded) synthetic images,
under one draw of the matching augmentation per class, against the class label.

CAFE (``layer_weights``, ``discrimination_weight``, ``bilevel``; kaiwang960112/CAFE ``distill.py``):
the loss also compares each class's real and synthetic outputs of every ReLU of the embedder and
the embedding itself, weighted by ``layer_weights`` (with the linear-kernel MMD: the squared
distances of the class means, the release's summed MSE), and adds

.. math::
    \lambda \sum_i \mathrm{CE}\big(\psi(x_i)^\top [\bar s_1, \dots, \bar s_K],\ y_i\big),
    \qquad \bar s_k = \tfrac{1}{|S_k|} \textstyle\sum_{s \in S_k} \psi(s)

over the unit's real images :math:`x_i` (``discrimination_weight`` λ: the real images classified
by their inner products with the synthetic class centres). With ``bilevel`` every iteration is
one of CAFE's rounds on the step's new random network: after each image step the network's
accuracy on 128 real training images per class is probed and the round ends once the last 10
values span less than 0.04; otherwise the network is trained on the synthetic set (SGD lr 0.01,
batches of 256), one epoch at a time, until 10 consecutive probes span more than 0.03, and the
next image step follows. The watched value is the release's running one (each probe's mean
accuracy plus the previous value divided by the number of classes, ``distill.py:300-312``).
The release has no bound on either loop; here a round takes at most :data:`MAX_ROUND_STEPS`
image steps and a training phase at most :data:`MAX_INNER_EPOCHS` epochs (the run's info counts
the bounds reached).
"""
from __future__ import annotations

import copy
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import factor as factor_mod
from ..augment import make_augment
from ..distributed import class_seed
from ..data import pixel_bounds
from ..losses import DistributionLoss
from ..models import capture, get_model
from ..protocols import get_teacher_recipe
from ..utils import autocast, seeded
from ._loop import Strategy, Unit
from .checkpoint import Checkpoint
from .pool import EmbedderPool, EmbedderQueue
from .presets import DistillConfig

#: the teacher recipe that trains NCFM's embedder pool (pretrain/pretrain_script.py)
POOL_RECIPE = "ncfm"


def initial_class_images(train, k: int, ipc: int, factor: int, init: str, gen: torch.Generator) -> Tensor:
    """``ipc`` stored images of class ``k``: random real images of the class (``factor``² of them
    tiled into each stored image when ``factor`` > 1) or Gaussian noise."""
    c, h, w = train.image_shape
    if init == "noise":
        return torch.randn(ipc, c, h, w, generator=gen, device="cpu")
    if init != "real":
        raise ValueError(f"init must be 'real' or 'noise', got {init!r}")
    per = ipc * factor * factor
    idx = train.class_indices(k)
    pick = idx[torch.randperm(len(idx), generator=gen, device="cpu")[:per]]
    if len(pick) < per:  # small classes: repeat to fill the sub-images
        pick = pick[torch.arange(per, device="cpu") % len(pick)]
    images = train.load(pick)
    return factor_mod.encode(images, factor) if factor > 1 else images


#: the stream of :func:`~ddmetrics.distributed.class_seed` that seeds a unit's embedder queue
_QUEUE_STREAM = 15

# CAFE's watchers (distill.py:61-87, 300-350): probe size per class, window, the ranges that end a round
# (less than) and a training phase (more than), and the network's training on the synthetic set
PROBE_PER_CLASS, WATCH_WINDOW, ROUND_RANGE, INNER_RANGE = 128, 10, 0.04, 0.03
INNER_LR, INNER_BATCH = 0.01, 256
#: bounds of ours on CAFE's open loops: image steps per round, epochs per training phase
MAX_ROUND_STEPS, MAX_INNER_EPOCHS = 100, 100


def attention_layers(net: nn.Module) -> List[nn.Module]:
    """The activations whose outputs DataDAM turns into attention maps: the network's ReLU modules,
    in ``modules()`` order (the step uses every one but the last, as ``main_DataDAM.py`` does)."""
    return [m for m in net.modules() if isinstance(m, nn.ReLU)]


def attention_map(activation: Tensor, power: float = 1.0) -> Tensor:
    r"""DataDAM's spatial attention of an ``(N, C, ...)`` activation, ``(N, S)`` over its ``S`` positions:

    .. math:: a = \frac{\sum_c |f_c|^p}{\|\sum_c |f_c|^p\|_2}

    References
    ----------
    .. [1] A. Sajedi, S. Khaki, E. Amjadian, L. Z. Liu, Y. A. Lawryshyn, K. N. Plataniotis. DataDAM:
       Efficient dataset distillation with attention matching. ICCV 2023.
    """
    summed = activation.abs().pow(power).sum(1) if power != 1 else activation.abs().sum(1)
    return F.normalize(summed.reshape(activation.shape[0], -1).float(), p=2.0, dim=1)


def discrimination_loss(f_real: Tensor, f_syn: Tensor, n_real: List[int], n_syn: List[int]) -> Tensor:
    r"""CAFE's discrimination term: the summed cross-entropy of the real embeddings classified by their
    inner products with the synthetic class centres (``distill.py:283-289``, no temperature),

    .. math:: \sum_i -\log \frac{\exp(f_i^\top \bar s_{y_i})}{\sum_k \exp(f_i^\top \bar s_k)}

    ``f_real`` holds ``n_real[k]`` rows of the ``k``-th class in class order, ``f_syn`` ``n_syn[k]``.

    References
    ----------
    .. [1] K. Wang, B. Zhao, X. Peng, Z. Zhu, S. Yang, S. Wang, G. Huang, H. Bilen, X. Wang, Y. You.
       CAFE: Learning to condense dataset by aligning features. CVPR 2022.
    """
    centres = torch.stack([part.mean(0) for part in f_syn.split(n_syn)])
    targets = torch.cat([torch.full((n,), k, dtype=torch.long, device=f_real.device) for k, n in enumerate(n_real)])
    return F.cross_entropy(f_real @ centres.T, targets, reduction="sum")


def _per_class(gen, classes: int) -> list:
    """The generator of each of a unit's classes: a batch of classes has one each (a list); any
    other unit draws every class from its one stream, in class order."""
    return gen if isinstance(gen, list) else [gen] * classes


def embedder_at(cfg: DistillConfig, seed: int, iteration: int, channels: int, num_classes: int, size: int,
                device: torch.device = torch.device("cpu")) -> nn.Module:
    """The frozen random embedder used at ``iteration`` (redrawn every ``iters_per_model`` steps),
    initialised on the CPU (the same weights on every device), then moved to ``device``."""
    drawn_at = iteration - iteration % cfg.iters_per_model
    with seeded(seed * 1_000_003 + drawn_at):
        net = get_model(cfg.embedder, channels, num_classes, size)
    net.to(device).train()
    for prm in net.parameters():
        prm.requires_grad_(False)
    return net


class DistributionMatching(Strategy):
    """Distribution matching, one unit at a time (see the module docstring).

    Parameters
    ----------
    train : ArrayDataset or ImageFolder
        The real training set (read by index with ``load``).
    num_classes, ipc : int
        Classes and stored synthetic images per class.
    loss : DistributionLoss
        The matching loss; copied per class.
    cfg : DistillConfig
        Synthesis settings.
    seed : int
        Seed of every random choice.
    checkpoint : Checkpoint, optional
        The run's checkpoint: NCFM's pool members are read back from it, or stored in it once trained.

    Attributes
    ----------
    pool : EmbedderPool or None
        NCFM's trained embedders (``embedder_pool`` > 0), trained here by the ``"ncfm"`` teacher
        recipe for ``pool_epochs`` epochs (``None``: the recipe's) under ``budget``.
    """

    summed_info = ("matching_loss_first", "matching_loss_last", "image_steps", "inner_epochs", "bounds_reached")

    def __init__(self, train, num_classes: int, ipc: int, loss: DistributionLoss, cfg: DistillConfig, seed: int,
                 teacher: Optional[nn.Module] = None, device: torch.device = torch.device("cpu"), amp: bool = False,
                 checkpoint: Optional[Checkpoint] = None):
        self.device, self.amp = torch.device(device), amp
        self.description = f"{loss.name or type(loss).__name__} matching"
        self.train, self.num_classes, self.ipc, self.loss, self.cfg, self.seed = train, num_classes, ipc, loss, cfg, seed
        self.factor = cfg.resolved_factor(train.image_shape[-1])
        self.augment = make_augment(cfg.augment, train.image_shape[0], train.image_shape[-1])
        self.bounds = pixel_bounds(train) if cfg.clamp == "pixel" else None
        if cfg.layer_weights:  # one weight per activation and one for the embedding, checked before any step
            shape = train.image_shape
            acts = len(attention_layers(embedder_at(cfg, seed, 0, shape[0], num_classes, shape[-1])))
            if len(cfg.layer_weights) != acts + 1:
                raise ValueError(f"layer_weights has {len(cfg.layer_weights)} entries; the embedder "
                                 f"{cfg.embedder!r} has {acts} activations (ReLU), which with the embedding make "
                                 f"{acts + 1}")
        self.pool: Optional[EmbedderPool] = None
        if cfg.embedder_pool > 0:
            recipe = get_teacher_recipe(POOL_RECIPE)
            epochs = cfg.scaled(recipe.epochs if cfg.pool_epochs is None else cfg.pool_epochs)
            self.pool = EmbedderPool(cfg.embedder_pool, cfg.embedder, recipe, epochs, seed, self.device)
            self.pool.fit(train, num_classes, checkpoint)

    def start(self, unit: Unit, gen) -> Tuple[Tensor, Dict[str, Any]]:
        gens = _per_class(gen, len(unit.classes))
        parts = [initial_class_images(self.train, k, len(unit.slots), self.factor, self.cfg.init, g)
                 for k, g in zip(unit.classes, gens)]
        return torch.cat(parts).to(self.device), {}

    def context(self, unit: Unit, fixed: Dict[str, Any]) -> Dict[str, Any]:
        # a copy of the loss per class: a critic or a direction generator is per-class state
        per = len(unit.slots)
        return {"unit": unit, "losses": [copy.deepcopy(self.loss) for _ in unit.classes],
                "indices": [self.train.class_indices(k) for k in unit.classes],
                "labels": [torch.full((per,), k, dtype=torch.long, device=self.device) for k in unit.classes],
                "embedder": None, "trained": None, "queue": self._queue(unit), "accuracy": 0.0,
                "counts": {"image_steps": 0, "inner_epochs": 0, "bounds_reached": 0}}

    def _queue(self, unit: Unit) -> Optional[EmbedderQueue]:
        """IDM's queue of embedders trained alongside (``embedder_queue`` > 0), one per unit: seeded
        by the unit's first class, so a class's queue does not depend on the classes run before it."""
        cfg, shape = self.cfg, self.train.image_shape
        if cfg.embedder_queue == 0:
            return None
        return EmbedderQueue(cfg.embedder, shape[0], self.num_classes, shape[-1],
                             seed=class_seed(self.seed, unit.classes[0], _QUEUE_STREAM), device=self.device,
                             capacity=cfg.embedder_queue, push_every=cfg.queue_push_every,
                             train_steps=cfg.queue_train_steps)

    def step(self, ctx: Dict[str, Any], syn: Tensor, it: int, gen) -> Tuple[Tensor, Tensor]:
        cfg, train = self.cfg, self.train
        if ctx["queue"] is not None:
            # IDM: the networks trained after step it - 1 (deferred to here, so that a checkpoint between
            # steps holds the queue as the next step needs it), then step it's push and draw
            if it > 0:
                ctx["queue"].train(train)
            ctx["embedder"], ctx["accuracy"] = ctx["queue"].draw(it)
        elif ctx["embedder"] is None or it % cfg.iters_per_model == 0:
            ctx["embedder"], ctx["trained"] = self._draw(it, ctx["embedder"])
        total = self._objective(ctx, syn, gen)
        return total, total

    def _objective(self, ctx: Dict[str, Any], syn: Tensor, gen) -> Tensor:
        """One image step's objective through the step's embedder ``ctx["embedder"]``."""
        cfg, train = self.cfg, self.train
        gens = _per_class(gen, len(ctx["indices"]))
        reals, views, labels = [], [], []
        for c, indices in enumerate(ctx["indices"]):  # each class's draws, in the order of one class at a time
            take = min(cfg.batch_real, len(indices))
            # the batch is drawn on the CPU (the same draw on every device), then moved
            real = train.load(indices[torch.randperm(len(indices), generator=gens[c], device="cpu")[:take]])
            real = real.to(self.device)
            imgs, lab = self._class_images(ctx, syn, c)
            if self.augment is not None:  # siamese: one draw per class, shared by its real and synthetic images
                real, imgs = self.augment.pair(real, imgs, gens[c])
            reals.append(real)
            views.append(imgs)
            labels.append(lab)
        # one embedder pass over the unit's real images and one over its synthetic ones (the embedder
        # is per sample: instance norm, or no norm; a BatchNorm embedder keeps one class a unit)
        layers = attention_layers(ctx["embedder"]) if cfg.attention_weight > 0 or cfg.layer_weights else []
        with autocast(self.device, self.amp):
            with capture(layers) as acts:
                f_real = ctx["embedder"].embed(torch.cat(reals) if len(reals) > 1 else reals[0])
            acts_real = [a.detach() for a in acts]
            with capture(layers) as acts_syn:
                f_syn = ctx["embedder"].embed(torch.cat(views) if len(views) > 1 else views[0])
        f_real, f_syn = f_real.float(), f_syn.float()  # losses compute in float32 at least
        if cfg.normalize_features:  # NCFM/NCFM.py:72-73: per-sample unit vectors
            f_real, f_syn = F.normalize(f_real.flatten(1), dim=1), F.normalize(f_syn.flatten(1), dim=1)
        sizes = [len(r) for r in reals], [len(v) for v in views]
        total = self._matched(ctx, f_real, f_syn, *sizes)
        # DataDAM: the attention maps of every activation but the last, each layer a term of its own
        if cfg.attention_weight > 0:
            for a_real, a_syn in list(zip(acts_real, acts_syn))[:-1]:
                maps = attention_map(a_real, cfg.attention_power), attention_map(a_syn, cfg.attention_power)
                total = total + cfg.attention_weight * self._matched(ctx, *maps, *sizes)
        if cfg.layer_weights:
            # CAFE: every activation's output, then the embedding (beside its own term above)
            pairs = [(a.flatten(1).float(), b.flatten(1).float()) for a, b in zip(acts_real, acts_syn)]
            pairs.append((f_real, f_syn))
            for weight, (a_real, a_syn) in zip(cfg.layer_weights, pairs):
                if weight > 0:
                    total = total + weight * self._matched(ctx, a_real, a_syn, *sizes)
        if cfg.discrimination_weight > 0:
            total = total + cfg.discrimination_weight * discrimination_loss(f_real, f_syn, *sizes)
        if ctx["queue"] is not None and cfg.queue_ce_weight > 0:
            # IDM's class-aware term: the drawn network's cross-entropy on the synthetic views, weighted
            # by its running training accuracy in percent (IDM_cifar10.py:318-327)
            with autocast(self.device, self.amp):
                logits = ctx["embedder"](torch.cat(views) if len(views) > 1 else views[0]).float()
            ce = sum(F.cross_entropy(lg, lab) for lg, lab in zip(logits.split(sizes[1]), labels))
            total = total + cfg.queue_ce_weight * ctx["accuracy"] * ce
        return total

    def _matched(self, ctx: Dict[str, Any], f_real: Tensor, f_syn: Tensor, n_real: List[int], n_syn: List[int]
                 ) -> Tensor:
        """The sum over the unit's classes of the loss between each class's rows of ``f_real`` and
        ``f_syn`` (``n_real[c]`` and ``n_syn[c]`` rows of class ``c``, in class order)."""
        if len(n_real) > 1 and self.loss.stateless and len(set(n_real)) == 1 and len(set(n_syn)) == 1:
            # one call for the unit's classes: a stateless loss gives each problem what its own copy would
            return self.loss.batched(f_real.reshape(len(n_real), n_real[0], -1),
                                     f_syn.reshape(len(n_syn), n_syn[0], -1)).sum()
        total = None
        for loss, fr, fs in zip(ctx["losses"], f_real.split(n_real), f_syn.split(n_syn)):
            value = loss(fr, fs)
            total = value if total is None else total + value
        return total

    def extra_steps(self, ctx: Dict[str, Any], syn: Tensor, it: int, gen):
        if self.cfg.calib_weight > 0:
            yield self.cfg.calib_weight * self.calibration_loss(ctx, syn, gen)
        if self.cfg.bilevel:
            yield from self._round(ctx, syn, gen)

    def _round(self, ctx: Dict[str, Any], syn: Tensor, gen):
        """The rest of CAFE's round after its first image step (see the module docstring): the
        objectives of its further image steps, each after a training phase of the round's network."""
        net, counts = ctx["embedder"], ctx["counts"]
        opt = torch.optim.SGD(net.parameters(), lr=INNER_LR)  # distill.py:229: no momentum, a new one per round
        watched: List[float] = []
        value, steps = 0.0, 1
        while True:
            value = value / len(ctx["indices"]) + self._real_accuracy(ctx, net, gen)
            watched.append(value)
            if len(watched) == WATCH_WINDOW:
                if max(watched) - min(watched) < ROUND_RANGE:
                    break
                watched.pop(0)
            if steps >= MAX_ROUND_STEPS:
                counts["bounds_reached"] += 1
                break
            self._train_on_synthetic(ctx, net, opt, syn, gen)
            steps += 1
            yield self._objective(ctx, syn, gen)
        counts["image_steps"] += steps

    def _train_on_synthetic(self, ctx: Dict[str, Any], net: nn.Module, opt: torch.optim.Optimizer, syn: Tensor,
                            gen) -> None:
        """CAFE's inner loop: epochs of cross-entropy on the (decoded, detached) synthetic set until the
        network's real accuracy moves by more than :data:`INNER_RANGE` within :data:`WATCH_WINDOW` epochs."""
        gens = _per_class(gen, len(ctx["indices"]))
        with torch.no_grad():
            parts = [self._class_images(ctx, syn.detach(), c) for c in range(len(ctx["indices"]))]
        images, labels = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
        watched: List[float] = []
        value = 0.0
        for _ in range(MAX_INNER_EPOCHS):
            for prm in net.parameters():
                prm.requires_grad_(True)
            order = torch.randperm(len(images), generator=gens[0], device="cpu").to(images.device)
            for batch in order.split(INNER_BATCH):
                x = images[batch]
                if self.augment is not None:  # DC's epoch(): an augmentation draw per image (method DSA)
                    x = self.augment.apply(x, self.augment.sample(len(x), x.shape, gens[0], x.device))
                with autocast(self.device, self.amp):
                    logits = net(x)
                opt.zero_grad(set_to_none=True)
                F.cross_entropy(logits.float(), labels[batch]).backward()
                opt.step()
            for prm in net.parameters():
                prm.requires_grad_(False)
            ctx["counts"]["inner_epochs"] += 1
            value = value / len(ctx["indices"]) + self._real_accuracy(ctx, net, gen)
            watched.append(value)
            if len(watched) == WATCH_WINDOW:
                if max(watched) - min(watched) > INNER_RANGE:
                    return
                watched.pop(0)
        ctx["counts"]["bounds_reached"] += 1

    def _real_accuracy(self, ctx: Dict[str, Any], net: nn.Module, gen) -> float:
        """The mean over the unit's classes of ``net``'s accuracy on :data:`PROBE_PER_CLASS` real
        training images of each (drawn anew on the CPU; eval mode, no gradient)."""
        gens = _per_class(gen, len(ctx["indices"]))
        was_training = net.training
        net.eval()
        total = 0.0
        with torch.no_grad():
            for c, (indices, labels) in enumerate(zip(ctx["indices"], ctx["labels"])):
                pick = indices[torch.randperm(len(indices), generator=gens[c], device="cpu")[:PROBE_PER_CLASS]]
                with autocast(self.device, self.amp):
                    logits = net(self.train.load(pick).to(self.device))
                total += float((logits.argmax(1) == labels[0]).float().mean())
        net.train(was_training)
        return total / len(ctx["indices"])

    def calibration_loss(self, ctx: Dict[str, Any], syn: Tensor, gen) -> Tensor:
        """NCFM's calibration objective (without ``calib_weight``): the sum over the unit's classes
        of the mean cross-entropy of the step's trained network on the class's (decoded) images,
        augmented by one draw shared by the class's images (NCFM's batch-mode augmentation)."""
        total = None
        gens = _per_class(gen, len(ctx["indices"]))
        for c in range(len(ctx["indices"])):
            imgs, labels = self._class_images(ctx, syn, c)
            if self.augment is not None:
                imgs = self.augment.apply(imgs, self.augment.sample(1, imgs.shape, gens[c], self.device))
            with autocast(self.device, self.amp):
                logits = ctx["trained"](imgs)
            value = F.cross_entropy(logits.float(), labels)
            total = value if total is None else total + value
        return total

    def _draw(self, it: int, previous: Optional[nn.Module]) -> Tuple[nn.Module, Optional[nn.Module]]:
        """The embedder of step ``it`` and the trained network it comes from (``None`` without a pool)."""
        cfg, shape = self.cfg, self.train.image_shape
        if self.pool is None:
            return embedder_at(cfg, self.seed, it, shape[0], self.num_classes, shape[-1], self.device), None
        return self.pool.draw(it - it % cfg.iters_per_model, interpolate=cfg.pool_interpolate, reuse=previous)

    def _class_images(self, ctx: Dict[str, Any], syn: Tensor, c: int) -> Tuple[Tensor, Tensor]:
        """The images the losses see of the unit's ``c``-th class (decoded with ``factor``) and their labels."""
        per = len(ctx["unit"].slots)
        mine = syn[c * per:(c + 1) * per] if len(ctx["indices"]) > 1 else syn
        labels = ctx["labels"][c]
        if self.factor > 1:
            mine, labels, _ = factor_mod.decode(mine, labels, None, self.factor)
        return mine, labels

    def loss_state(self, ctx: Dict[str, Any]) -> Optional[Dict[str, Any]]:
        states = [loss.state_dict() for loss in ctx["losses"]]
        out: Dict[str, Any] = {"per_class": states}
        if ctx["queue"] is not None:  # IDM's queue is state of the unit's run, as a critic is
            out["queue"] = ctx["queue"].state_dict()
        if self.cfg.bilevel:  # CAFE's counts of steps, epochs and bounds so far
            out["counts"] = dict(ctx["counts"])
        return states[0] if len(out) == 1 and len(states) == 1 else out

    def load_loss_state(self, ctx: Dict[str, Any], state: Optional[Dict[str, Any]]) -> None:
        states = state["per_class"] if isinstance(state, dict) and "per_class" in state else [state]
        for loss, st in zip(ctx["losses"], states):
            loss.load_state_dict(st)
        if ctx["queue"] is not None:
            ctx["queue"].load_state_dict(state["queue"])
        if self.cfg.bilevel:
            ctx["counts"] = {key: int(v) for key, v in state["counts"].items()}

    def summary(self, ctx: Dict[str, Any], first: Optional[float], last: Optional[float]) -> Dict[str, Any]:
        out = {"matching_loss_first": first, "matching_loss_last": last}
        if self.cfg.bilevel:
            out.update(ctx["counts"])
        return out
