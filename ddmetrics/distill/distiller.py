"""The generic :class:`Distiller`: any method preset, any :class:`DistributionLoss`."""
from __future__ import annotations

import os
import time
from typing import Any, Dict, List, Optional, Sequence, Type, Union

import torch
from torch import nn

from ..data import as_dataset
from ..losses import DistributionLoss
from ..models import as_teacher, check_image_size, check_outputs, get_model, train_model
from ..synset import SyntheticSet
from .. import distributed
from ..augment import make_augment
from ..losses.base import logger
from ..utils import DeviceSpec, frozen, resolve_device, seeded
from .barycenter_matching import BarycenterMatching
from ._loop import Strategy, synthesis_units
from .checkpoint import Checkpoint, data_fingerprint
from .coresets import CoresetSelection
from .distribution_matching import DistributionMatching
from .presets import DistillConfig, applies, make_loss, needs_teacher, preset, uses_teacher

LossSpec = Union[str, DistributionLoss, None]

#: ``class_batch="auto"``: images (real and synthetic) per step through the embedder a batch of classes aims at
AUTO_STEP_IMAGES = 4096


#: strategy name -> its class (a :class:`~ddmetrics.distill._loop.Strategy`): the two matching
#: strategies, and the coreset baselines' selection of real images
STRATEGIES: Dict[str, Type[Strategy]] = {"barycenter": BarycenterMatching, "distribution": DistributionMatching,
                                         "coreset": CoresetSelection}


def auto_class_batch(num_classes: int, images_per_class: int) -> int:
    """``class_batch="auto"`` on CUDA: the classes whose real and synthetic images (``images_per_class``
    each per step) come to about :data:`AUTO_STEP_IMAGES` through the embedder, at least one."""
    return max(1, min(num_classes, AUTO_STEP_IMAGES // images_per_class))


class Distiller:
    """Distil a labelled image set into ``ipc`` synthetic images per class.

    The synthetic set is synthesised one *unit* at a time (a class, or the batch of classes or
    image slots the method's released code optimises together: ``synthesis_batch``), each
    independently (its own random stream, loss copy and optimiser), which gives three things for
    free: with a ``torch.distributed`` process group initialised, each rank distils its share of
    the units and every rank returns the same :class:`SyntheticSet`, equal to the single-process
    one; a run can checkpoint per unit and every ``checkpoint_every`` steps and resume exactly;
    real features are computed one class at a time.

    Parameters
    ----------
    method : str
        A preset, its method's released pipeline: ``"wmdd"``, ``"dm"``, ``"m3d"``, ``"krdual"``,
        ``"ncfm"``, ``"sre2l"`` (see :data:`ddmetrics.distill.presets.PRESETS` and
        ``docs/fidelity.md``), or a coreset baseline of real images: ``"random"``,
        ``"herding"``, ``"kcenter"``, ``"kmeans"`` (:mod:`ddmetrics.distill.coresets`; all but
        ``"random"`` select in the teacher's feature space). Its budgets are the method's own;
        ``budget=0.1`` runs a tenth of every iteration and epoch count.
    loss : str or DistributionLoss, optional
        Overrides the preset's loss (``method="wmdd", loss="sliced"`` is WMDD's sliced ablation);
        refused by the coresets, which compare no distributions (their ``loss`` is ``None``).
    ipc : int
        Images per class.
    seed : int
        Seed of every random choice; same seed, same synthetic set on CPU.
    teacher : nn.Module or str, optional
        A trained classifier with ``embed``/``classifier`` for barycenter matching, used as
        given and borrowed, not changed: :meth:`fit` runs it in eval mode without parameter
        gradients and then restores every module's mode and parameter's ``requires_grad``
        (it is moved to ``device``, though); when omitted a ``teacher_arch`` model is trained on
        the real data (kept as
        ``teacher_``) when the method or a soft-label evaluation protocol needs one. A string is
        read as ``teacher_arch``.
    device : str or torch.device, optional
        Where the run's tensors live: ``None``/``"auto"``: CUDA when available (``cuda:LOCAL_RANK``
        under ``torchrun``), else the CPU; or any device string (``"cuda:1"``). Random draws come
        from CPU generators, so the same seed gives the same draws on every device.
    amp : bool
        bf16 autocast for the teacher/embedder passes on CUDA (off by default; losses compute in
        float32).
    class_batch : int, "all" or "auto"
        Classes advanced together by one step of a method that synthesises one class at a time
        (``synthesis_batch="class"``: DM, M3D, KR-dual, NCFM with a loss-free schedule): one
        embedder pass over the B classes' real images and one over their synthetic images per
        step, each class keeping its own random stream, loss copy and loss, so the result is
        the class-at-a-time one up to float rounding (the batched convolutions sum in another
        order). ``"auto"`` (default): on CUDA as many classes as put about :data:`AUTO_STEP_IMAGES`
        real and synthetic images through the embedder per step (15 classes of DM's 256 real images at
        IPC 10), elsewhere one (on the 2-core CPU a batch of 10 mnist classes ran at 0.94× (DM) and
        0.90× (M3D) the class-at-a-time speed: ``benchmarks/batched_synthesis.py``); more than the
        classes is clamped to them (logged). The exception is IDM's queue of trained embedders
        (``embedder_queue``), one per unit: its release trains one queue for all classes, so under
        ``"auto"`` the classes share a unit on every device, sized as on CUDA (every class of a
        10-class set); ``class_batch=1`` gives each class a queue of its own (ten times the
        queue's training). Refused for methods whose batches are their own (WMDD's ``"classes"``, SRe²L's
        slots), for the plateau schedule (it follows the unit's summed loss) and for an embedder
        with BatchNorm (its batch statistics would mix the classes). Recorded in the set's meta.
    **overrides
        Any :class:`~ddmetrics.distill.presets.DistillConfig` field.

    Examples
    --------
    >>> syn = Distiller(method="wmdd", loss="wasserstein", ipc=10, seed=0).fit(train)  # doctest: +SKIP
    >>> syn = Distiller(method="dm", ipc=10).fit(train, checkpoint="runs/ckpt", checkpoint_every=50,
    ...                                          resume=True)  # doctest: +SKIP
    """

    def __init__(self, method: str = "wmdd", loss: LossSpec = None, ipc: int = 10, seed: int = 0,
                 teacher: Union[nn.Module, str, None] = None, device: DeviceSpec = None, amp: bool = False,
                 class_batch: Union[int, str] = "auto", **overrides):
        if isinstance(teacher, str):  # an architecture name: the teacher to train
            if overrides.get("teacher_arch", teacher) != teacher:
                raise ValueError(f"teacher={teacher!r} and teacher_arch={overrides['teacher_arch']!r} disagree; "
                                 "give the architecture once (teacher_arch=...)")
            overrides["teacher_arch"], teacher = teacher, None
        elif teacher is not None and not isinstance(teacher, nn.Module):
            raise TypeError(f"teacher must be a trained nn.Module or an architecture name (teacher_arch), "
                            f"got {type(teacher).__name__}")
        elif teacher is not None:
            teacher = as_teacher(teacher)  # any classifier with a final layer "fc"; else wrap it yourself
        if not isinstance(ipc, int) or isinstance(ipc, bool) or ipc < 1:
            raise ValueError(f"ipc must be a positive integer, got {ipc!r}")
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise TypeError(f"seed must be an int, got {type(seed).__name__}")
        if not isinstance(amp, bool):
            raise TypeError(f"amp must be True or False, got {amp!r}")
        if class_batch not in ("auto", "all") and (not isinstance(class_batch, int) or isinstance(class_batch, bool)
                                                   or class_batch < 1):
            raise ValueError(f"class_batch must be a positive integer, 'all' or 'auto', got {class_batch!r}")
        self.class_batch = class_batch
        self.device: torch.device = resolve_device(device)
        self.amp = amp
        self.method = method
        self.ipc = ipc
        self.seed = seed
        if isinstance(loss, DistributionLoss):
            # used as given; the config records what it is, so the run's record is truthful
            settings = {k: v for k, v in loss.config().items() if k not in ("name", "class")}
            self.config: DistillConfig = preset(method, loss=loss.name or type(loss).__qualname__,
                                                loss_kwargs=settings, **overrides)
            self.loss: Optional[DistributionLoss] = loss
        else:
            self.config = preset(method, loss=loss, **overrides)
            # built once, now, so an unknown name fails before any work; a configuration that compares
            # no distributions (a coreset, SRe²L's recovery, G-VBSM) has none, and its record names none
            self.loss = make_loss(self.config.loss, **self.config.loss_kwargs) \
                if applies(self.config, "loss") else None
        if self.config.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {sorted(STRATEGIES)}, got {self.config.strategy!r}")
        self.teacher_ = teacher
        #: G-VBSM's trained backbones (``backbones``), kept after :meth:`fit` for the ensemble labels
        self.backbones_: List[nn.Module] = []
        self.timings_: Dict[str, float] = {}
        if class_batch not in ("auto", 1):
            why = self._unbatchable()
            if why:
                raise ValueError(f"class_batch={class_batch!r} does not apply: {why}")

    def _unbatchable(self) -> Optional[str]:
        """Why this configuration keeps one class a unit (``None``: it can batch classes)."""
        cfg = self.config
        if cfg.strategy != "distribution":
            return f"method {self.method!r} ({cfg.strategy} strategy) has its own batches (synthesis_batch)"
        if cfg.synthesis_batch != "class":
            return f"synthesis_batch={cfg.synthesis_batch!r} already sets what a batch holds"
        if cfg.lr_schedule == "plateau":
            return "the plateau schedule follows the unit's summed loss (lr_schedule='plateau')"
        return None

    def resolved_class_batch(self, channels: int, num_classes: int, image_size: int) -> int:
        """The classes per unit this run uses (see ``class_batch``)."""
        if self.class_batch == 1 or self._unbatchable() is not None:
            return 1
        if self.class_batch == "auto":
            # measured: no gain on a CPU at 28 px (benchmarks/batched_synthesis.py); but a unit has one IDM queue,
            # and the release trains one for all classes: there the batch is the method, not the speed
            if self.device.type != "cuda" and not self.config.embedder_queue:
                return 1
            per_class = self.config.batch_real + self.ipc * self.config.resolved_factor(image_size) ** 2
            batch = auto_class_batch(num_classes, per_class)
        elif self.class_batch == "all":
            batch = num_classes
        else:
            if self.class_batch > num_classes:
                logger.warning("ddmetrics: class_batch=%d is more than the %d classes: clamped to %d",
                               self.class_batch, num_classes, num_classes)
            batch = min(self.class_batch, num_classes)
        if batch > 1:  # one build of the embedder, only when classes would share its batches
            embedder = get_model(self.config.embedder, channels, num_classes, image_size)
            if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in embedder.modules()):
                if self.class_batch != "auto":
                    raise ValueError(f"class_batch={self.class_batch!r} does not apply: the embedder "
                                     f"{self.config.embedder!r} has BatchNorm, whose batch statistics would mix the "
                                     "classes")
                return 1
        return batch

    def train_teacher(self, train, num_classes: int, progress: bool = True) -> nn.Module:
        """Train the preset's teacher on the real training set (seeded) by its teacher recipe
        (:meth:`~ddmetrics.distill.presets.DistillConfig.teacher_training`: ``teacher_recipe``
        with ``teacher_epochs`` and ``budget``) and keep it as ``teacher_``."""
        start = time.perf_counter()
        model = self._new_teacher(train, num_classes)
        recipe = self.config.teacher_training()
        aug = make_augment(recipe.augment, train.image_shape[0], train.image_shape[-1])
        self.teacher_ = train_model(model, train, recipe, seed=self.seed, augment=aug, progress=progress,
                                    device=self.device)
        self.timings_["teacher_seconds"] = time.perf_counter() - start
        return self.teacher_

    def _new_teacher(self, train, num_classes: int) -> nn.Module:
        with seeded(self.seed):  # initialised on the CPU: the same teacher on every device
            model = get_model(self.config.teacher_arch, train.image_shape[0], num_classes, train.image_shape[-1])
        return model.to(self.device)

    def _teacher(self, train, num_classes: int, ckpt: Optional[Checkpoint]) -> nn.Module:
        """The teacher: given, checkpointed, or trained (on rank 0, then broadcast to every rank)."""
        if self.teacher_ is not None:
            return self.teacher_
        rank, _ = distributed.world()
        model = self._new_teacher(train, num_classes)
        if ckpt is not None and ckpt.load_teacher(model):
            self.teacher_ = model.eval()
        elif rank == 0:
            self.train_teacher(train, num_classes, progress=False)
            if ckpt is not None:
                ckpt.save_teacher(self.teacher_)
        else:
            self.teacher_ = model.eval()
        distributed.broadcast_module(self.teacher_)
        return self.teacher_

    def _check(self, train):
        train = as_dataset(train)  # an ImageFolder stays streamed: only its labels are read here
        num_classes = train.num_classes
        if num_classes < 2:
            # a one-class student is always right: its 100 % says nothing about the synthetic set
            raise ValueError(f"the training set has {num_classes} class; distillation and its evaluation need "
                             "at least 2 classes")
        counts = torch.bincount(train.labels, minlength=num_classes)
        empty = [k for k in range(num_classes) if int(counts[k]) == 0]
        if empty:
            shown = ", ".join(map(str, empty[:5])) + (", ..." if len(empty) > 5 else "")
            raise ValueError(f"{len(empty)} of the {num_classes} classes have no images (class {shown}): "
                             f"num_classes is {num_classes} because the largest label is {int(train.labels.max())}; "
                             "relabel the classes 0..K-1")
        smallest = int(counts.min())
        if self.ipc > smallest:
            raise ValueError(f"ipc={self.ipc} is larger than the smallest class ({smallest} images, "
                             f"class {int(counts.argmin())})")
        self._check_models(train.image_shape, num_classes)
        return train, num_classes

    def _check_models(self, image_shape, num_classes: int) -> None:
        """Refuse, before a teacher is trained or a feature computed, images a model of the run
        cannot take (the teacher to train or the embedders, and the evaluation model: each tried on
        the smallest batch the run gives it) and a given teacher without one output per class."""
        cfg, channels = self.config, image_shape[0]
        if uses_teacher(cfg) and self.teacher_ is not None:
            inner = getattr(self.teacher_, "model", self.teacher_)  # the classifier inside as_teacher's wrapper
            check_outputs(self.teacher_, image_shape, num_classes, f"the teacher ({type(inner).__name__})")
        elif uses_teacher(cfg):  # trained on batches of two images or more
            check_image_size(cfg.teacher_arch, channels, num_classes, image_shape, "teacher_arch", batch_size=2)
        if cfg.strategy == "distribution":  # a class's synthetic images (ipc of them) go through the embedder at once
            check_image_size(cfg.embedder, channels, num_classes, image_shape, "embedder",
                             batch_size=min(self.ipc, cfg.batch_real))
        if applies(cfg, "backbones"):  # G-VBSM's backbones: trained like the teacher, on batches of two or more
            for arch in cfg.backbones:
                check_image_size(arch, channels, num_classes, image_shape, "backbone", batch_size=2)
        check_image_size(cfg.protocol().model, channels, num_classes, image_shape, "eval_model", batch_size=2)

    def checkpoint_run(self, train, class_batch: Optional[int] = None) -> Dict[str, Any]:
        """What a checkpoint of this run must match to be resumed (``class_batch``: the run's resolved classes
        per unit, when the caller has resolved them already)."""
        # a streaming set hashes its file list (decoding it would be a pass over the data)
        data = train.fingerprint() if hasattr(train, "fingerprint") else data_fingerprint(train.images, train.labels)
        shape = train.image_shape
        batch = class_batch if class_batch is not None else \
            self.resolved_class_batch(shape[0], train.num_classes, shape[-1])
        return {"method": self.method, "loss": self._loss_name(),
                "loss_repr": repr(self.loss), "ipc": self.ipc, "seed": self.seed, "config": self.config.to_dict(),
                "data": data, "given_teacher": self.teacher_ is not None,
                # recorded when batched: a class-at-a-time checkpoint's record stays as it was
                **({"class_batch": batch} if batch > 1 else {})}

    def fit(self, train, progress: bool = True, checkpoint: Optional[Union[str, "os.PathLike[str]"]] = None,
            checkpoint_every: Optional[int] = None, resume: bool = False) -> SyntheticSet:
        """Distil ``train`` (an ``ArrayDataset``, a streaming ``ImageFolder`` or any Dataset of
        (image, label) pairs, which is materialised).

        Parameters
        ----------
        train : Dataset
            The real training set.
        progress : bool
            Progress bars (per unit).
        checkpoint : str, optional
            A folder for checkpoints (see :mod:`ddmetrics.distill.checkpoint`): every finished
            unit, plus the unit in progress every ``checkpoint_every`` steps. It must be new,
            empty, or a ddmetrics checkpoint folder; its files are listed in its manifest, and
            :func:`~ddmetrics.distill.checkpoint.remove_checkpoint` removes those alone.
        checkpoint_every : int, optional
            Steps between in-unit checkpoints (``None``: finished units only).
        resume : bool
            Continue from ``checkpoint``'s files (which must describe this same run).

        Returns
        -------
        SyntheticSet
            On every rank when a process group is initialised (units sharded over ranks).

        Raises
        ------
        ValueError
            Before any teacher is trained or feature computed: fewer than two classes, an empty
            class, ``ipc`` above the smallest class, images too small for a model of the run
            (teacher, embedder, ``eval_model``), or a given teacher without one output per class.
        """
        if checkpoint is None and (checkpoint_every is not None or resume):
            raise ValueError("checkpoint_every and resume need checkpoint=<folder>")
        # a teacher the caller gave is borrowed: frozen for the run, then as it was (also on an error)
        with frozen(self.teacher_):
            return self._fit(train, progress, checkpoint, checkpoint_every, resume)

    def _fit(self, train, progress: bool, checkpoint, checkpoint_every: Optional[int], resume: bool) -> SyntheticSet:
        train, num_classes = self._check(train)
        rank, world_size = distributed.world()
        shape = train.image_shape
        batch = self.resolved_class_batch(shape[0], num_classes, shape[-1])  # once: it may warn, and builds a model
        ckpt = None
        if checkpoint is not None:
            ckpt = Checkpoint(os.fspath(checkpoint), self.checkpoint_run(train, batch), every=checkpoint_every,
                              resume=resume, rank=rank)
            distributed.barrier()  # every rank has checked the folder before rank 0 writes in it
            if rank == 0:
                ckpt.start()
            distributed.barrier()
        start = time.perf_counter()
        strategy_cls = STRATEGIES[self.config.strategy]
        # trained for the synthesis, or for the soft-label protocol that evaluates the set
        teacher = self._teacher(train, num_classes, ckpt) if uses_teacher(self.config) else None
        if not needs_teacher(self.config):
            teacher = None  # the strategy does not use it
        runner = strategy_cls(train, num_classes, self.ipc, self.loss, self.config, self.seed, teacher=teacher,
                              device=self.device, amp=self.amp, checkpoint=ckpt)
        self.backbones_ = list(getattr(runner, "backbones", []))
        units = synthesis_units(num_classes, self.ipc, self.config.synthesis_batch, self.config.batch_images, batch)
        results: Dict[int, Dict[str, Any]] = {}
        for i in distributed.shard(len(units), rank, world_size):
            done = ckpt.finished(i) if ckpt is not None else None
            if done is None:
                done = runner.run_unit(units[i], ckpt, progress)
                if ckpt is not None:
                    ckpt.finish(i, done)
            results[i] = done
        images, weights, info = self._combine(results, units, num_classes, train.image_shape, runner.summed_info)
        self.timings_["distill_seconds"] = time.perf_counter() - start
        info["world_size"] = world_size
        meta = {
            "method": self.method,
            "loss": self._loss_name(),
            "loss_config": self.loss.config() if self.loss is not None else None,
            "ipc": self.ipc,
            "seed": self.seed,
            "factor": runner.factor,
            "config": self.config.to_dict(),
            # what this run took: the method's budget times ``budget`` (1 = the method's own)
            "budget": self.config.budget,
            "iterations": self.config.effective_iterations,
            "units": len(units),
            "class_batch": batch,
            "device": str(self.device),
            "amp": self.amp,
            "timings": dict(self.timings_),
            "info": info,
        }
        labels = torch.arange(num_classes, device="cpu").repeat_interleave(self.ipc)
        return SyntheticSet(images=images, labels=labels, weights=weights, meta=meta, num_classes=num_classes)

    def labelling_teacher(self) -> Optional[nn.Module]:
        """What labels the students' views of a soft-label evaluation: the teacher, or with G-VBSM's
        ``backbones`` (after :meth:`fit`) the mean raw logits of the teacher and the backbones
        (:class:`~ddmetrics.evaluate.LogitEnsemble`, the release's relabelling); ``None`` without a teacher."""
        if self.teacher_ is None or not self.backbones_:
            return self.teacher_
        from ..evaluate import LogitEnsemble

        return LogitEnsemble([self.teacher_] + list(self.backbones_))

    def _loss_name(self) -> Optional[str]:
        return None if self.loss is None else (self.loss.name or type(self.loss).__name__)

    def _combine(self, results: Dict[int, Dict[str, Any]], units, num_classes: int, image_shape,
                 summed: Sequence[str]):
        """Place the per-unit results in class-major order (class k's images ``k*ipc .. k*ipc + ipc - 1``),
        summing over ranks (zeros elsewhere: exact)."""
        some = next(iter(results.values()), None)
        shape = tuple(some["images"].shape[1:]) if some is not None else tuple(image_shape)
        images = torch.zeros((num_classes, self.ipc) + shape, device="cpu")
        weights = torch.zeros(num_classes, self.ipc, device="cpu")
        names: List[str] = list(summed)
        values = torch.zeros(len(units), len(names), dtype=torch.float64, device="cpu")
        present = torch.zeros(len(units), len(names), dtype=torch.float64, device="cpu")
        for i, res in results.items():
            for row, (k, j) in enumerate(units[i].cells):
                images[k, j] = res["images"][row]
                weights[k, j] = res["weights"][row]
            for col, name in enumerate(names):
                if res["info"].get(name) is not None:
                    values[i, col] = float(res["info"][name])
                    present[i, col] = 1.0
        images = distributed.all_reduce_sum(images)
        weights = distributed.all_reduce_sum(weights)
        values = distributed.all_reduce_sum(values)
        present = distributed.all_reduce_sum(present)
        info = {name: float(values[:, j].sum()) for j, name in enumerate(names) if bool(present[:, j].any())}
        return images.flatten(0, 1), weights.flatten(), info
