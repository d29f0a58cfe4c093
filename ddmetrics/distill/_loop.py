"""The one synthesis loop both matching strategies run, one *unit* at a time.

A unit is one optimisation batch of the synthetic set: the cells (class, slot) whose images are
optimised together, by one optimiser, for the whole schedule. :func:`synthesis_units` cuts the
``num_classes × ipc`` cells the way a method's released code does (``DistillConfig.synthesis_batch``):

- ``"class"``: one unit per class, all its images (DM, M3D, KR-dual, NCFM: classes are independent);
  with ``class_batch`` B > 1 (``Distiller(class_batch=...)``), B consecutive classes per unit,
  each class keeping its own random stream and loss, so that the unit computes what B one-class
  units compute, in one embedder pass per step;
- ``"classes"``: all images of ``batch_images // ipc`` consecutive classes (WMDD's
  ``data_synthesis_new.py``: 100 images per batch);
- ``"slot"``: image j of up to ``batch_images`` consecutive classes, one unit per slot and chunk
  (SRe²L's ``ipc_id`` loop: one image of every class per batch);
- ``"all"``: one unit, every image of every class (CAFE: one loss over all classes).

A strategy supplies what differs — the starting images and the tensors that stay fixed for
the unit (:meth:`Strategy.start`), the per-unit working objects (:meth:`Strategy.context`),
one optimisation step (:meth:`Strategy.step`), the loss state that must survive a checkpoint,
and a summary of its own info — and :func:`synthesize_unit` does the rest: the unit's random
stream, the optimiser and its schedule, pixel clamping, resume, checkpoints every
``checkpoint_every`` steps and progress bars. One loop means one place where resume can be exact.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..distributed import class_seed
from .checkpoint import Checkpoint, loop_state, restore_loop

__all__ = ["Strategy", "Unit", "make_optimizer", "synthesis_units", "synthesize_unit"]


@dataclass(frozen=True)
class Unit:
    """One optimisation batch of the synthesis.

    Attributes
    ----------
    index : int
        Its position in :func:`synthesis_units`' list (the checkpoint key).
    classes : tuple of int
        The classes it holds.
    slots : tuple of int
        The image slots (0 .. ipc-1) it holds of each of them.
    kind : str
        ``DistillConfig.synthesis_batch`` of the run.
    """

    index: int
    classes: Tuple[int, ...]
    slots: Tuple[int, ...]
    kind: str = "class"

    @property
    def cells(self) -> List[Tuple[int, int]]:
        """``(class, slot)`` of each image, class-major: the order of the unit's image tensor."""
        return [(k, j) for k in self.classes for j in self.slots]

    def __len__(self) -> int:
        return len(self.classes) * len(self.slots)

    def labels(self, device: torch.device) -> Tensor:
        """The class of each image, ``(len(unit),)``."""
        return torch.tensor([k for k, _ in self.cells], dtype=torch.long, device=device)

    def seed(self, seed: int) -> int:
        """The seed of the unit's random stream: a class's own for one-class units (independent of
        sharding, as before units existed), else one per unit of this kind."""
        if self.kind == "class":
            return class_seed(seed, self.classes[0])
        # stream 3 is the barycenter's start (barycenter_matching.py): "all" takes 4
        return class_seed(seed, self.index, stream={"classes": 1, "slot": 2, "all": 4}[self.kind])

    def seeds(self, seed: int) -> List[int]:
        """The seeds of the unit's random streams: one per class for ``"class"`` units (a batch of
        classes draws what the classes draw one at a time), else the unit's one stream."""
        if self.kind == "class":
            return [class_seed(seed, k) for k in self.classes]
        return [self.seed(seed)]


def synthesis_units(num_classes: int, ipc: int, kind: str = "class", batch_images: int = 100,
                    class_batch: int = 1) -> List[Unit]:
    """The units of a run (see the module docstring), in a fixed order.

    Parameters
    ----------
    num_classes, ipc : int
        Classes and stored images per class.
    kind : {"class", "classes", "slot", "all"}
        ``DistillConfig.synthesis_batch``.
    batch_images : int
        Images per unit for ``"classes"`` (``max(1, batch_images // ipc)`` classes per unit) and
        classes per unit for ``"slot"``.
    class_batch : int
        Classes per ``"class"`` unit (each with its own stream: see :meth:`Unit.seeds`).
    """
    if kind == "class":
        groups = [tuple(range(s, min(s + class_batch, num_classes))) for s in range(0, num_classes, class_batch)]
        return [Unit(i, g, tuple(range(ipc)), kind) for i, g in enumerate(groups)]
    if kind == "classes":
        per = max(1, min(num_classes, batch_images // ipc))
        groups = [tuple(range(s, min(s + per, num_classes))) for s in range(0, num_classes, per)]
        return [Unit(i, g, tuple(range(ipc)), kind) for i, g in enumerate(groups)]
    if kind == "slot":
        per = max(1, min(num_classes, batch_images))
        chunks = [tuple(range(s, min(s + per, num_classes))) for s in range(0, num_classes, per)]
        cells = [(chunk, (j,)) for j in range(ipc) for chunk in chunks]
        return [Unit(i, c, s, kind) for i, (c, s) in enumerate(cells)]
    if kind == "all":
        return [Unit(0, tuple(range(num_classes)), tuple(range(ipc)), kind)]
    raise ValueError(f"synthesis_batch must be 'class', 'classes', 'slot' or 'all', got {kind!r}")


#: Adam's betas for synthetic images (WMDD, SRe²L: (0.5, 0.9)); AdamW keeps torch's (NCFM)
_ADAM_BETAS = (0.5, 0.9)
#: the plateau schedule of NCFM's condenser (Condenser.py:212-214): x0.5 after 500 steps without improvement
_PLATEAU = dict(mode="min", factor=0.5, patience=500)
#: CAFE's image schedule (distill.py:39-45): x0.5 from iterations 1200, 1600 and 1800 of 2000
_STEP_MILESTONES = (0.6, 0.8, 0.9)


def step_factor(t: int, iterations: int) -> float:
    """The ``"step"`` schedule's learning-rate factor at step ``t`` of ``iterations``: ×0.5 from each
    milestone (60 %, 80 %, 90 % of the iterations) on."""
    return 0.5 ** sum(t >= round(m * iterations) for m in _STEP_MILESTONES)


def make_optimizer(params, name: str, lr: float, iterations: int, schedule: Optional[str] = None,
                   weight_decay: float = 0.0):
    """The synthetic images' optimiser and schedule.

    ``name``: ``"adam"`` (betas (0.5, 0.9), WMDD / SRe²L), ``"sgd"`` (momentum 0.5, DM) or
    ``"adamw"`` (torch's betas, NCFM). ``schedule``: ``"cosine"`` (to 0 over ``iterations``,
    stepped after every step), ``"constant"``, ``"plateau"`` (×0.5 after 500 steps without a
    relative improvement of 1e-4, stepped with the step's loss), ``"step"`` (:func:`step_factor`)
    or ``None``: the optimiser's former pairing (cosine for Adam, constant otherwise).

    Returns
    -------
    (optimizer, scheduler or None)
    """
    if name == "adam":
        opt = torch.optim.Adam(params, lr=lr, betas=_ADAM_BETAS, weight_decay=weight_decay)
    elif name == "sgd":
        opt = torch.optim.SGD(params, lr=lr, momentum=0.5, weight_decay=weight_decay)
    elif name == "adamw":
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    else:
        raise ValueError(f"optimizer must be 'adam', 'sgd' or 'adamw', got {name!r}")
    schedule = schedule or ("cosine" if name == "adam" else "constant")
    if schedule == "cosine":
        total = max(iterations, 1)
        return opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 0.5 * (1 + math.cos(math.pi * t / total)))
    if schedule == "step":
        return opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda t: step_factor(t, iterations))
    if schedule == "plateau":
        return opt, torch.optim.lr_scheduler.ReduceLROnPlateau(opt, **_PLATEAU)
    if schedule == "constant":
        return opt, None
    raise ValueError(f"lr_schedule must be 'cosine', 'constant', 'plateau' or 'step', got {schedule!r}")


class Strategy:
    """What a matching strategy tells the synthesis loop (see the module docstring).

    Subclasses set ``cfg``, ``ipc`` and ``seed`` and implement the methods below. Class
    attributes: ``needs_teacher`` (the Distiller supplies a trained teacher), ``summed_info``
    (the per-unit ``info`` entries summed over units in the synthetic set's meta) and
    ``description`` (progress-bar label). ``bounds``: the per-channel ``(low, high)`` pixel range
    the images are clamped to after every step (``None``: no clamp).
    """

    needs_teacher: bool = False
    #: where the unit's tensors live (set by the strategy's constructor)
    device: torch.device = torch.device("cpu")
    #: sub-images per side of each stored image (M3D's factor technique)
    factor: int = 1
    summed_info: Tuple[str, ...] = ()
    description: str = "synthesis"
    bounds: Optional[Tuple[Tensor, Tensor]] = None

    def start(self, unit: Unit, gen: torch.Generator) -> Tuple[Tensor, Dict[str, Any]]:
        """The unit's starting images (``len(unit)``, C, H, W) and the fixed per-unit values (saved in checkpoints)."""
        raise NotImplementedError

    def context(self, unit: Unit, fixed: Dict[str, Any]) -> Dict[str, Any]:
        """The per-unit working objects of the steps (labels, a copy of the loss, ...)."""
        return {"unit": unit, **fixed}

    def step(self, ctx: Dict[str, Any], syn: Tensor, it: int, gen: torch.Generator) -> Tuple[Tensor, Tensor]:
        """One step's objective (to differentiate) and the value tracked as first/last."""
        raise NotImplementedError

    def extra_steps(self, ctx: Dict[str, Any], syn: Tensor, it: int, gen: torch.Generator):
        """Further objectives to take an optimiser step on after the main one, in order (NCFM's
        calibration); none by default."""
        return ()

    def loss_state(self, ctx: Dict[str, Any]) -> Optional[Dict[str, Any]]:
        """State of the loss that evolves between steps (``None``: nothing to save)."""
        return None

    def load_loss_state(self, ctx: Dict[str, Any], state: Optional[Dict[str, Any]]) -> None:
        pass

    def weights(self, ctx: Dict[str, Any]) -> Tensor:
        """The unit's synthetic-sample weights, within each class summing to its slots' share
        (uniform 1/ipc unless the strategy learns them)."""
        return torch.full((len(ctx["unit"]),), 1.0 / self.ipc, device=self.device)

    def summary(self, ctx: Dict[str, Any], first: Optional[float], last: Optional[float]) -> Dict[str, Any]:
        """The unit's numeric info."""
        raise NotImplementedError

    def run_unit(self, unit: Unit, ckpt: Optional[Checkpoint] = None, progress: bool = False) -> Dict[str, Any]:
        """Synthesise ``unit``: ``images``, ``weights`` and ``info``."""
        return synthesize_unit(self, unit, ckpt, progress)


def _clamp_(syn: Tensor, bounds: Optional[Tuple[Tensor, Tensor]]) -> None:
    if bounds is not None:
        with torch.no_grad():
            lo, hi = bounds
            torch.maximum(syn, lo.view(1, -1, 1, 1), out=syn)
            torch.minimum(syn, hi.view(1, -1, 1, 1), out=syn)


def synthesize_unit(strategy: Strategy, unit: Unit, ckpt: Optional[Checkpoint] = None,
                    progress: bool = False) -> Dict[str, Any]:
    """Run ``strategy``'s synthesis of ``unit``, resuming from ``ckpt`` where it holds progress.

    Every step: the strategy's objective, one optimiser step (then the strategy's extra steps,
    each with its own backward and optimiser step), the schedule, then the pixel clamp.

    Returns
    -------
    dict
        ``images`` (len(unit), C, H, W), ``weights`` (len(unit),) and ``info``.
    """
    cfg = strategy.cfg
    iterations = cfg.effective_iterations
    # one stream per class of a batch of classes (a list), else the unit's one generator
    gens = [torch.Generator(device="cpu").manual_seed(s) for s in unit.seeds(strategy.seed)]
    gen: Any = gens[0] if len(gens) == 1 else gens
    state = ckpt.progress(unit.index) if ckpt is not None else None
    if state is None:
        images, fixed = strategy.start(unit, gen)
        first, begin = None, 0
    else:  # checkpoints hold CPU tensors: put them where the run is
        images, first, begin = state["images"].to(strategy.device), state["first"], state["iteration"]
        fixed = {key: v.to(strategy.device) if isinstance(v, Tensor) else v for key, v in state["fixed"].items()}
    ctx = strategy.context(unit, fixed)
    syn = images.clone().requires_grad_(True)
    bounds = None
    if strategy.bounds is not None:
        bounds = tuple(b.to(syn.device, syn.dtype) for b in strategy.bounds)
    opt, sched = make_optimizer([syn], cfg.optimizer, cfg.lr, iterations, cfg.lr_schedule, cfg.weight_decay)
    plateau = isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau)
    if state is not None:
        restore_loop(state, opt, sched, gen)
        strategy.load_loss_state(ctx, state["loss"])
    last = first
    for it in tqdm(range(begin, iterations), desc=f"{strategy.description}, unit {unit.index}",
                   disable=not progress, leave=False):
        objective, tracked = strategy.step(ctx, syn, it, gen)
        opt.zero_grad(set_to_none=True)
        objective.backward()
        opt.step()
        watched = float(tracked.detach())
        for extra in strategy.extra_steps(ctx, syn, it, gen):
            opt.zero_grad(set_to_none=True)
            extra.backward()
            opt.step()
            watched += float(extra.detach())
        if plateau:
            sched.step(watched)
        elif sched is not None:
            sched.step()
        _clamp_(syn, bounds)
        last = float(tracked.detach())
        first = last if first is None else first
        if ckpt is not None and ckpt.due(it, iterations):
            ckpt.save_progress(unit.index, {"iteration": it + 1, "images": syn.detach().clone(), "fixed": fixed,
                                            "first": first, "loss": strategy.loss_state(ctx),
                                            **loop_state(opt, sched, gen)})
    # results are CPU tensors whatever the device: units are combined, saved and sent on the CPU
    return {"images": syn.detach().cpu(), "weights": strategy.weights(ctx).detach().cpu(),
            "info": strategy.summary(ctx, first, last)}
