"""The one synthesis loop both matching strategies run, one class at a time.

A strategy supplies what differs — the starting images and the tensors that stay fixed for
the class (:meth:`Strategy.start`), the per-class working objects (:meth:`Strategy.context`),
one optimisation step (:meth:`Strategy.step`), the loss state that must survive a checkpoint,
and a summary of its own info — and :func:`synthesize_class` does the rest: the class's
random stream, the optimiser and its schedule, resume, checkpoints every ``checkpoint_every``
steps and progress bars. One loop means one place where resume can be exact.
"""
from __future__ import annotations

import math
from typing import Any, Dict, Optional, Tuple

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..distributed import class_seed
from .checkpoint import Checkpoint, loop_state, restore_loop

__all__ = ["Strategy", "make_optimizer", "synthesize_class"]


def make_optimizer(params, name: str, lr: float, iterations: int):
    """Adam (betas 0.5, 0.9) with a cosine schedule (WMDD), or SGD momentum 0.5 (DM/M3D)."""
    if name == "adam":
        opt = torch.optim.Adam(params, lr=lr, betas=(0.5, 0.9))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 0.5 * (1 + math.cos(math.pi * t / max(iterations, 1))))
        return opt, sched
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.5), None
    raise ValueError(f"optimizer must be 'adam' or 'sgd', got {name!r}")


class Strategy:
    """What a matching strategy tells the synthesis loop (see the module docstring).

    Subclasses set ``cfg``, ``ipc`` and ``seed`` and implement the methods below. Class
    attributes: ``needs_teacher`` (the Distiller supplies a trained teacher), ``summed_info``
    (the per-class ``info`` entries summed over classes in the synthetic set's meta) and
    ``description`` (progress-bar label).
    """

    needs_teacher: bool = False
    #: where the class's tensors live (set by the strategy's constructor)
    device: torch.device = torch.device("cpu")
    #: sub-images per side of each stored image (M3D's factor technique)
    factor: int = 1
    summed_info: Tuple[str, ...] = ()
    description: str = "synthesis"

    def start(self, k: int, gen: torch.Generator) -> Tuple[Tensor, Dict[str, Any]]:
        """Class ``k``'s starting images and the fixed per-class values (saved in checkpoints)."""
        raise NotImplementedError

    def context(self, k: int, fixed: Dict[str, Any]) -> Dict[str, Any]:
        """The per-class working objects of the steps (labels, a copy of the loss, ...)."""
        return {"k": k, **fixed}

    def step(self, ctx: Dict[str, Any], syn: Tensor, it: int, gen: torch.Generator) -> Tuple[Tensor, Tensor]:
        """One step's objective (to differentiate) and the value tracked as first/last."""
        raise NotImplementedError

    def loss_state(self, ctx: Dict[str, Any]) -> Optional[Dict[str, Any]]:
        """State of the loss that evolves between steps (``None``: nothing to save)."""
        return None

    def load_loss_state(self, ctx: Dict[str, Any], state: Optional[Dict[str, Any]]) -> None:
        pass

    def weights(self, ctx: Dict[str, Any]) -> Tensor:
        """The class's synthetic-sample weights (uniform unless the strategy learns them)."""
        return torch.full((self.ipc,), 1.0 / self.ipc, device=self.device)

    def summary(self, ctx: Dict[str, Any], first: Optional[float], last: Optional[float]) -> Dict[str, Any]:
        """The class's numeric info."""
        raise NotImplementedError

    def run_class(self, k: int, ckpt: Optional[Checkpoint] = None, progress: bool = False) -> Dict[str, Any]:
        """Synthesise class ``k``: ``images``, ``weights`` and ``info``."""
        return synthesize_class(self, k, ckpt, progress)


def synthesize_class(strategy: Strategy, k: int, ckpt: Optional[Checkpoint] = None,
                     progress: bool = False) -> Dict[str, Any]:
    """Run ``strategy``'s synthesis of class ``k``, resuming from ``ckpt`` where it holds progress.

    Returns
    -------
    dict
        ``images`` (ipc, C, H, W), ``weights`` (ipc,) and ``info``.
    """
    cfg = strategy.cfg
    gen = torch.Generator(device="cpu").manual_seed(class_seed(strategy.seed, k))
    state = ckpt.progress(k) if ckpt is not None else None
    if state is None:
        images, fixed = strategy.start(k, gen)
        first, begin = None, 0
    else:  # checkpoints hold CPU tensors: put them where the run is
        images, first, begin = state["images"].to(strategy.device), state["first"], state["iteration"]
        fixed = {key: v.to(strategy.device) if isinstance(v, Tensor) else v for key, v in state["fixed"].items()}
    ctx = strategy.context(k, fixed)
    syn = images.clone().requires_grad_(True)
    opt, sched = make_optimizer([syn], cfg.optimizer, cfg.lr, cfg.iterations)
    if state is not None:
        restore_loop(state, opt, sched, gen)
        strategy.load_loss_state(ctx, state["loss"])
    last = first
    for it in tqdm(range(begin, cfg.iterations), desc=f"{strategy.description}, class {k}", disable=not progress,
                   leave=False):
        objective, tracked = strategy.step(ctx, syn, it, gen)
        opt.zero_grad(set_to_none=True)
        objective.backward()
        opt.step()
        if sched is not None:
            sched.step()
        last = float(tracked.detach())
        first = last if first is None else first
        if ckpt is not None and ckpt.due(it, cfg.iterations):
            ckpt.save_progress(k, {"iteration": it + 1, "images": syn.detach().clone(), "fixed": fixed,
                                   "first": first, "loss": strategy.loss_state(ctx), **loop_state(opt, sched, gen)})
    # results are CPU tensors whatever the device: classes are combined, saved and sent on the CPU
    return {"images": syn.detach().cpu(), "weights": strategy.weights(ctx).detach().cpu(),
            "info": strategy.summary(ctx, first, last)}
