r"""Train-from-scratch evaluation of a synthetic set, next to a random real subset and the full data.

Two protocols, those of the papers the presets come from:

- ``"hard"`` (DM/M3D): the student (ConvNet) trains on the synthetic images and their labels,
  SGD momentum 0.9, weight decay 5e-4, lr ×0.1 at half, DSA augmentation; lr 0.05 (DM uses 0.01;
  0.05 was better on the digits validation split).
- ``"soft"`` (WMDD/SRe²L, FKD-style): every augmented view is relabelled by the teacher; the
  student minimises :math:`T^2\,\mathrm{KL}(\mathrm{softmax}(t/T)\,\|\,\mathrm{softmax}(s/T))`
  per sample, weighted by the synthetic set's weights (normalised to mean 1), same optimiser.

Each protocol is repeated ``runs`` times with seeds ``seed, seed+1, ...``; the same-size random
real subset is trained under the same protocol and seeds, and the full-data model once.

References
----------
.. [1] B. Zhao, H. Bilen. Dataset condensation with distribution matching. WACV 2023 (DM).
.. [2] H. Liu et al. Dataset distillation via the Wasserstein metric. ICCV 2025 (WMDD).
.. [3] Z. Yin, E. Xing, Z. Shen. Squeeze, recover and relabel: dataset condensation at ImageNet
   scale from a new perspective. NeurIPS 2023 (SRe²L).
"""
from __future__ import annotations

import math
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .data import ArrayDataset, ImageDataset, as_dataset
from . import distributed
from .augment import make_augment
from .utils import DeviceSpec, frozen, resolve_device, seeded
from .models import accuracy, check_outputs, get_model, train_model
from .synset import SyntheticSet

__all__ = ["EvalReport", "evaluate", "full_data_accuracy", "train_student", "random_subset"]


@dataclass
class EvalReport:
    """Test accuracies (fractions in [0, 1]) and wall times of one evaluation."""

    method: str
    loss: str
    ipc: int
    protocol: str
    runs: List[float]
    random_runs: List[float] = field(default_factory=list)
    #: the papers' random baseline: random real images with hard labels (filled for the soft protocol)
    random_hard_runs: List[float] = field(default_factory=list)
    full: Optional[float] = None
    seconds: Dict[str, float] = field(default_factory=dict)

    @property
    def mean(self) -> float:
        return mean_std(self.runs)[0]

    @property
    def std(self) -> float:
        return mean_std(self.runs)[1]

    def to_dict(self) -> dict:
        out = asdict(self)
        out["mean"], out["std"] = mean_std(self.runs)
        out["random_mean"], out["random_std"] = mean_std(self.random_runs)
        out["random_hard_mean"], out["random_hard_std"] = mean_std(self.random_hard_runs)
        return out

    def summary(self) -> str:
        """A small fixed-width table of the report (percentages)."""
        pm = format_mean_std
        rows = [
            ("method", self.method), ("loss", self.loss), ("IPC", str(self.ipc)), ("protocol", self.protocol),
            ("accuracy (%)", pm(self.runs)), (f"random subset, {self.protocol} labels (%)", pm(self.random_runs)),
        ] + ([("random subset, hard labels (%)", pm(self.random_hard_runs))] if self.random_hard_runs else []) + [
            ("full data (%)", "-" if self.full is None else f"{100 * self.full:.2f}"),
        ] + [(f"time {k} (s)", f"{v:.1f}") for k, v in self.seconds.items()]
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


def check_fits(synset: SyntheticSet, data: ImageDataset, name: str) -> None:
    """Refuse ``data`` that ``synset`` cannot be evaluated on: other image shape, channels or classes."""
    syn_shape = tuple(synset.images.shape[1:])  # factor tiles decode to the stored size
    real_shape = tuple(data.image_shape)
    if syn_shape != real_shape:
        raise ValueError(f"the synthetic images are {'x'.join(map(str, syn_shape))} (channels x height x width) but "
                         f"{name}'s are {'x'.join(map(str, real_shape))}: they were distilled from other data")
    if synset.num_classes != data.num_classes:
        raise ValueError(f"the synthetic set has {synset.num_classes} classes but {name} has {data.num_classes}: "
                         "they were distilled from other data")


def mean_std(values: Sequence[float]) -> Tuple[Optional[float], Optional[float]]:
    """Mean and population standard deviation of ``values`` (``(None, None)`` when empty)."""
    if not values:
        return None, None
    return statistics.fmean(values), statistics.pstdev(values) if len(values) > 1 else 0.0


def format_mean_std(values: Sequence[float], scale: float = 100.0, digits: int = 2) -> str:
    """``"mean ± std"`` of ``values`` times ``scale`` (accuracies in %), ``"-"`` when empty."""
    m, s = mean_std(values)
    return "-" if m is None else f"{scale * m:.{digits}f} ± {scale * s:.{digits}f}"


def random_subset(train: ImageDataset, ipc: int, seed: int) -> SyntheticSet:
    """``ipc`` random real images per class (seeded), uniform weights; only those are read."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    idx = torch.cat([train.class_indices(k)[torch.randperm(len(train.class_indices(k)), generator=gen,
                                                           device="cpu")[:ipc]]
                     for k in range(train.num_classes)])
    return SyntheticSet(images=train.load(idx), labels=train.labels[idx].clone(),
                        weights=torch.full((len(idx),), 1.0 / ipc, device="cpu"), meta={"method": "random", "ipc": ipc},
                        num_classes=train.num_classes)


def default_epochs(num_images: int, batch_size: int = 256) -> int:
    """Student epochs when none are given: 1000 under 50 images, else 300 SGD steps' worth.

    At batch 256 that is 300 epochs up to 256 images (IPC 10 on 10 classes) and 150 at 500
    (IPC 50). A cost choice, measured on the digits validation split
    (``benchmarks/results/validation_choices.md``): at IPC 50, DM 97.90 % either way, WMDD
    97.20 % at 150 epochs against 98.25 % at 300 — half the student time for about one point.
    """
    if num_images < 50:
        return 1000
    return max(1, 300 // math.ceil(num_images / batch_size))


def train_student(synset: SyntheticSet, model: str = "convnet", protocol: str = "hard",
                  teacher: Optional[nn.Module] = None, epochs: Optional[int] = None, lr: float = 0.05,
                  temperature: float = 4.0, augment="auto", seed: int = 0, progress: bool = False,
                  device: DeviceSpec = "cpu") -> nn.Module:
    """Train a fresh ``model`` on ``synset`` under ``protocol`` on ``device`` and return it (eval mode)."""
    device = resolve_device(device)
    images, labels, weights = synset.decoded()
    epochs = default_epochs(len(images)) if epochs is None else epochs
    channels, size = images.shape[1], images.shape[-1]
    with seeded(seed):
        student = get_model(model, channels, synset.num_classes, size)
    student.to(device)
    aug = make_augment(augment, channels)
    if protocol == "hard":
        data = ArrayDataset(images, labels, synset.num_classes)
        return train_model(student, data, epochs=epochs, lr=lr, seed=seed, augment=aug,
                           sample_weights=weights * len(weights) / weights.sum(), progress=progress, device=device)
    if protocol != "soft":
        raise ValueError(f"protocol must be 'hard' or 'soft', got {protocol!r}")
    if teacher is None:
        raise ValueError("teacher is required for the soft-label protocol")
    return _train_soft(student, teacher, images, weights, epochs, lr, temperature, aug, seed, progress, device)


def _train_soft(student, teacher, images, weights, epochs, lr, temperature, aug, seed, progress, device):
    teacher.to(device).eval()
    gen = torch.Generator(device="cpu").manual_seed(seed)  # the same draws on every device
    images, weights = images.to(device), weights.to(device)
    w = weights / weights.mean()
    batch = min(256, len(images))
    steps_per_epoch = (len(images) + batch - 1) // batch
    opt = torch.optim.SGD(student.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, [epochs * steps_per_epoch // 2], 0.1)
    student.train()
    for _ in tqdm(range(epochs), desc="student (soft labels)", disable=not progress, leave=False):
        order = torch.randperm(len(images), generator=gen, device="cpu").to(device)
        for i in range(0, len(images), batch):
            idx = order[i:i + batch]
            view = aug(images[idx], gen) if aug is not None else images[idx]
            with torch.no_grad():
                target = F.softmax(teacher(view) / temperature, dim=1)
            logp = F.log_softmax(student(view) / temperature, dim=1)
            kl = (target * (target.clamp_min(1e-12).log() - logp)).sum(1)
            loss = (w[idx] * kl).mean() * temperature ** 2
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return student.eval()


def full_data_accuracy(train_set, test_set, model: str = "convnet", epochs: int = 20, lr: float = 0.05,
                       seed: int = 0, device: DeviceSpec = "cpu") -> float:
    """Test accuracy of ``model`` trained on the whole training set (hard labels, DSA, batch 64)."""
    device = resolve_device(device)
    train_set, test_set = as_dataset(train_set), as_dataset(test_set)
    channels, size = train_set.image_shape[0], train_set.image_shape[-1]
    with seeded(seed):
        net = get_model(model, channels, train_set.num_classes, size)
    net = train_model(net, train_set, epochs=epochs, lr=lr, seed=seed, batch_size=64,
                      augment=make_augment("auto", channels), progress=False, device=device)
    return accuracy(net, test_set)


def evaluate(synset: SyntheticSet, test_set, train_set=None, model: str = "convnet", runs: int = 3,
             protocol: Optional[str] = None, teacher: Optional[nn.Module] = None, epochs: Optional[int] = None,
             lr: float = 0.05, temperature: float = 4.0, full_epochs: int = 20, seed: int = 0,
             random_hard: bool = False, augment="auto", progress: bool = True, full_data: bool = True,
             device: DeviceSpec = None) -> EvalReport:
    """Evaluate ``synset`` by training ``runs`` fresh students and testing them on ``test_set``.

    With ``train_set`` the report also holds the same-size random real subset (same protocol,
    same seeds; with ``random_hard`` and the soft protocol also with hard labels, the baseline
    the papers report). ``augment`` is the students' DSA strategy (``None``: no augmentation).
    and a model trained on the full training set (hard labels, ``full_epochs``).
    ``protocol`` defaults to the one stored in the synthetic set's config (else ``"hard"``).
    ``full_data=False`` skips the full-data model (most of an evaluation's time on small sets).
    The ``teacher`` is borrowed, not changed: it runs in eval mode without parameter gradients,
    and its modes and ``requires_grad`` flags are restored afterwards (it is moved to ``device``).
    Students, the teacher and every baseline train on ``device`` (``None``/``"auto"``: CUDA when
    available); their random draws come from CPU generators, the same on every device.
    With a ``torch.distributed`` process group, the trainings are spread over the ranks and
    every rank returns the same report.
    """
    if not isinstance(synset, SyntheticSet):
        raise TypeError(f"synset must be a SyntheticSet, got {type(synset).__name__}")
    if isinstance(runs, bool) or not isinstance(runs, int) or runs < 1:
        raise ValueError(f"runs must be a positive integer, got {runs!r}")
    device = resolve_device(device)
    test_set = as_dataset(test_set)  # a streaming ImageFolder stays streamed
    check_fits(synset, test_set, "test_set")
    if train_set is not None:
        train_set = as_dataset(train_set)
        check_fits(synset, train_set, "train_set")
    meta = synset.meta or {}
    protocol = protocol or meta.get("config", {}).get("eval_protocol", "hard")
    if protocol == "soft" and teacher is None:
        raise ValueError("the soft-label protocol needs the teacher (teacher=...)")
    if protocol == "soft":  # its logits are the students' targets: one per class
        check_outputs(teacher, tuple(synset.images.shape[1:]), synset.num_classes)
    kw = dict(model=model, protocol=protocol, teacher=teacher, epochs=epochs, lr=lr, temperature=temperature,
              augment=augment, device=device)
    # every training is a task (synthetic runs, random-subset runs, the full-data model); with a
    # process group the tasks are sharded over ranks and their results summed (zeros elsewhere)
    ipc = int(meta.get("ipc", 0)) or int(torch.bincount(synset.labels).max())
    tasks = [("evaluate", r) for r in range(runs)]
    if train_set is not None:
        tasks += [("random_subset", r) for r in range(runs)]
        if protocol == "soft" and random_hard:
            tasks += [("random_hard", r) for r in range(runs)]
        if full_data:
            tasks.append(("full_data", 0))

    def run(kind: str, r: int) -> float:
        if kind == "evaluate":
            return accuracy(train_student(synset, seed=seed + r, **kw), test_set)
        if kind == "full_data":
            return full_data_accuracy(train_set, test_set, model=model, epochs=full_epochs, lr=lr, seed=seed,
                                      device=device)
        extra = {"protocol": "hard", "teacher": None} if kind == "random_hard" else {}
        return accuracy(train_student(random_subset(train_set, ipc, seed + r), seed=seed + r, **{**kw, **extra}),
                        test_set)

    rank, world_size = distributed.world()
    values = torch.zeros(len(tasks), dtype=torch.float64, device="cpu")
    times = torch.zeros(len(tasks), dtype=torch.float64, device="cpu")
    with frozen(teacher):  # the caller's teacher is borrowed: its modes and requires_grad come back as they were
        for i in tqdm(distributed.shard(len(tasks), rank, world_size), desc="evaluate", disable=not progress,
                      leave=False):
            start = time.perf_counter()
            values[i] = run(*tasks[i])
            times[i] = time.perf_counter() - start
    values, times = distributed.all_reduce_sum(values), distributed.all_reduce_sum(times)
    result = {kind: [float(values[i]) for i, (k, _) in enumerate(tasks) if k == kind]
              for kind in ("evaluate", "random_subset", "random_hard", "full_data")}
    # seconds of training per kind, summed over ranks (= wall time in a single process)
    seconds = {kind: float(sum(float(times[i]) for i, (k, _) in enumerate(tasks) if k == kind))
               for kind in ("evaluate", "random_subset", "full_data") if result[kind]}
    if result["random_hard"]:
        seconds["random_subset"] += float(sum(float(times[i]) for i, (k, _) in enumerate(tasks) if k == "random_hard"))
    return EvalReport(method=meta.get("method", "?"), loss=meta.get("loss", "?"), ipc=int(meta.get("ipc", 0)),
                      protocol=protocol, runs=result["evaluate"], random_runs=result["random_subset"],
                      random_hard_runs=result["random_hard"],
                      full=result["full_data"][0] if result["full_data"] else None, seconds=seconds)
