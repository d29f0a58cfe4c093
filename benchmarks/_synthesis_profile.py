"""Where a synthesis iteration's time goes: the embedder's forward + backward (the floor) vs the rest.

One synthesis unit of a ``Distiller`` run (:func:`ddmetrics.distill._loop.synthesis_units`: a
class for DM / M3D, WMDD's batch of ``batch_images // ipc`` classes, ...) is set up exactly as
``fit`` sets it up (the unit's random stream, the strategy's ``start`` / ``context``, the loop's
optimiser and schedule), then iterations of the loop's body (``strategy.step``, ``zero_grad``,
``backward``, ``opt.step``, the strategy's extra steps, the schedule, the pixel clamp) run under
``torch.profiler``: the same operations in the same order as the loop, so the unit ends with the
images the loop gives. The floor is the same embedder's forward and backward on the same inputs,
also under the profiler, with nothing else: for WMDD ``teacher.embed`` of the augmented
synthetic batch (no PCBN hooks, no loss); for DM / M3D the random embedder's forward on each
class's augmented real batch and its forward + backward on the augmented synthetic images. The
floor's inputs are drawn from a generator of their own, so the unit's stream is the loop's.
Iterations and floors alternate (one of each, in turn), so both see the same machine.
Times are means over the profiled iterations. ``share outside`` = 1 − floor / iteration: the augmentation, the loss, the BatchNorm
regulariser, the data loading, the embedder redraw, the optimiser and the framework overhead.
The same share is also timed without the profiler (``share_outside_wall``: as many iterations
again, alternating with floors again), since the profiler charges every op and the iteration has several
times the floor's ops; :func:`bare_op_us` prices one aten call on a 1-element tensor.

The teacher is untrained (seeded ``get_model``): an iteration costs the same whatever its
weights. Used by ``metric_speed.py`` (section "Synthesis iteration profile").
"""
from __future__ import annotations

import bisect
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any, Callable, Dict

import torch
from torch.profiler import ProfilerActivity, profile, record_function

import ddmetrics as ddm
from ddmetrics.distill._loop import make_optimizer, synthesis_units
from ddmetrics.distill.distribution_matching import embedder_at
from ddmetrics.distill.distiller import STRATEGIES
from ddmetrics.models import get_model
from ddmetrics.utils import seeded


def _ranges_ms(events, name: str):
    """Wall time (ms) of every ``record_function(name)`` range among a profile's ``events``."""
    return [e.time_range.elapsed_us() / 1000 for e in events if e.name == name]


#: the profiler ranges of an iteration's parts and of the floor's
_PARTS = ("step", "augment", "backward", "extra", "optimizer", "floor forward", "floor backward")
#: the optimiser's part of the breakdown (the last key: ``metric_speed.py`` reads it so)
OPTIMISER = "optimiser (zero_grad, step, schedule, clamp, reading the loss)"


class _Ranged:
    """A strategy's augmentation whose calls go through ``ranged("augment")`` (those of a step;
    ``sample`` / ``apply``, NCFM's calibration, stay in the extra steps' range)."""

    def __init__(self, augment, ranged: Callable) -> None:
        self.augment, self.ranged = augment, ranged

    def __call__(self, *args):
        with self.ranged("augment"):
            return self.augment(*args)

    def pair(self, *args):
        with self.ranged("augment"):
            return self.augment.pair(*args)

    def sample(self, *args):
        return self.augment.sample(*args)

    def apply(self, *args):
        return self.augment.apply(*args)


def profile_synthesis(train, method: str, ipc: int, iterations: int = 10, warmup: int = 3, seed: int = 0,
                      unit: int = 0, return_images: bool = False, **overrides) -> Dict[str, Any]:
    """Mean per-iteration time of ``method``'s loop and of its embedder floor (ms), on the CPU, and
    where the time outside the floor goes.

    ``unit``: the index of the profiled unit among the run's units; ``overrides``: settings of
    the ``Distiller`` (the preset's by default). The run is ``warmup + 2 * iterations`` steps
    long (warm-up, profiled, wall-clock timed); ``return_images``: also return the unit's images
    after them under ``"images"`` (the loop's own, step for step).
    """
    total = warmup + 2 * iterations
    distiller = ddm.Distiller(method=method, ipc=ipc, seed=seed, iterations=total, **overrides)
    cfg = distiller.config
    strategy_cls = STRATEGIES[cfg.strategy]
    num_classes = train.num_classes
    teacher = None
    if strategy_cls.needs_teacher:
        with seeded(seed):
            teacher = get_model(cfg.teacher_arch, train.image_shape[0], num_classes, train.image_shape[-1])
    strategy = strategy_cls(train, num_classes, ipc, distiller.loss, cfg, seed, teacher=teacher)
    the_unit = synthesis_units(num_classes, ipc, cfg.synthesis_batch, cfg.batch_images)[unit]
    gen = torch.Generator(device="cpu").manual_seed(the_unit.seed(seed))  # the unit's stream, as the loop's
    images, fixed = strategy.start(the_unit, gen)
    ctx = strategy.context(the_unit, fixed)
    syn = images.clone().requires_grad_(True)
    opt, sched = make_optimizer([syn], cfg.optimizer, cfg.lr, cfg.effective_iterations, cfg.lr_schedule,
                                cfg.weight_decay)
    plateau = isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau)
    bounds = strategy.bounds

    ranges_on = [False]  # the parts are profiler ranges while profiling, not in the wall-clock timing

    def _ranged(name: str):
        return record_function(name) if ranges_on[0] else contextlib.nullcontext()

    def iteration(it: int) -> None:
        # the loop's body (ddmetrics.distill._loop.synthesize_unit), op for op
        with _ranged("step"):
            objective, tracked = strategy.step(ctx, syn, it, gen)
        with _ranged("optimizer"):
            opt.zero_grad(set_to_none=True)
        with _ranged("backward"):
            objective.backward()
        with _ranged("optimizer"):
            opt.step()
            watched = float(tracked.detach())  # the loop reads the tracked value every iteration
        with _ranged("extra"):
            for extra in strategy.extra_steps(ctx, syn, it, gen):
                opt.zero_grad(set_to_none=True)
                extra.backward()
                opt.step()
                watched += float(extra.detach())
        with _ranged("optimizer"):
            if plateau:
                sched.step(watched)
            elif sched is not None:
                sched.step()
            if bounds is not None:
                with torch.no_grad():
                    torch.maximum(syn, bounds[0].view(1, -1, 1, 1), out=syn)
                    torch.minimum(syn, bounds[1].view(1, -1, 1, 1), out=syn)

    # the floor's inputs, built before the timed ranges as a step builds them, from a stream of
    # their own (the unit's stays the loop's)
    floor_gen = torch.Generator(device="cpu").manual_seed(seed + 1)
    if strategy_cls.needs_teacher:
        view = strategy.augment(syn.detach(), floor_gen) if strategy.augment is not None else syn.detach()
        embed, reals, views = teacher.embed, [], [view]
    else:
        if strategy.pool is not None:
            net = strategy.pool.draw(warmup - warmup % cfg.iters_per_model, interpolate=cfg.pool_interpolate)[0]
        else:
            net = embedder_at(cfg, seed, warmup, train.image_shape[0], num_classes, train.image_shape[-1])
        reals, views, per = [], [], len(the_unit.slots)
        for c, k in enumerate(the_unit.classes):
            indices = train.class_indices(k)
            take = min(cfg.batch_real, len(indices))
            real = train.load(indices[torch.randperm(len(indices), generator=floor_gen)[:take]])
            imgs = syn.detach()[c * per:(c + 1) * per]
            if strategy.factor > 1:
                from ddmetrics import factor as factor_mod

                imgs = factor_mod.decode(imgs, the_unit.labels(imgs.device)[c * per:(c + 1) * per], None,
                                         strategy.factor)[0]
            if strategy.augment is not None:
                real, imgs = strategy.augment.pair(real, imgs, floor_gen)
            reals.append(real)
            views.append(imgs)
        embed = net.embed

    def floor() -> None:
        with _ranged("floor forward"):
            for real in reals:
                embed(real)
            outs = [embed(v.detach().clone().requires_grad_(True)).sum() for v in views]
            out = outs[0] if len(outs) == 1 else torch.stack(outs).sum()
        with _ranged("floor backward"):
            out.backward()

    if strategy.augment is not None:  # its calls, from here on, are profiler ranges too
        strategy.augment = _Ranged(strategy.augment, _ranged)

    for it in range(warmup):
        iteration(it)
        floor()
    # iteration and floor alternate, so that both see the same state of the machine (its load and
    # memory drift over seconds: timed in separate blocks, the share moved by tens of points)
    ranges_on[0] = True
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for it in range(warmup, warmup + iterations):
            with record_function("iteration"):
                iteration(it)
            with record_function("floor"):
                floor()
    ranges_on[0] = False
    # the same again without the profiler (it adds a cost to every op, and the iteration has several
    # times the floor's ops): the plain wall-clock share
    it_wall, floor_wall = [], []
    for it in range(warmup + iterations, warmup + 2 * iterations):
        start = time.perf_counter()
        iteration(it)
        middle = time.perf_counter()
        floor()
        it_wall.append(middle - start)
        floor_wall.append(time.perf_counter() - middle)
    it_wall_ms, floor_wall_ms = 1000 * statistics.fmean(it_wall), 1000 * statistics.fmean(floor_wall)

    # means, not medians: an embedder redraw every few iterations (DM) is part of the cost
    events = prof.events()
    ranges = {name: sorted((e.time_range.start, e.time_range.end) for e in events if e.name == name)
              for name in ("iteration", "floor")}
    it_ms = statistics.fmean(_ranges_ms(events, "iteration"))
    floor_ms = statistics.fmean(_ranges_ms(events, "floor"))
    # ms per iteration of each part (the augmentation's calls inside the step)
    part = {name: sum(_ranges_ms(events, name)) / iterations for name in _PARTS}
    breakdown = {"augmentation": part["augment"],
                 "forward beyond the floor's": part["step"] - part["augment"] - part["floor forward"],
                 "backward beyond the floor's": part["backward"] - part["floor backward"]}
    if cfg.calib_weight > 0:  # NCFM's calibration: its own forward, backward and optimiser step
        breakdown["extra steps (calibration)"] = part["extra"]
    breakdown[OPTIMISER] = part["optimizer"]
    # per iteration, the time inside the iteration's range (and the floor's) but in none of its parts': the
    # loop's glue, a few Python calls between ranges. Its median over the iterations is what one preemption of
    # the process between two ranges (a loaded machine) cannot move; the mean of the parts can move by it
    counted = ("step", "backward", "optimizer") + (("extra",) if cfg.calib_weight > 0 else ())
    glue_ms = []
    for (start, end), (f_start, f_end) in zip(ranges["iteration"], ranges["floor"]):
        in_parts = sum(e.time_range.elapsed_us() for e in events
                       if e.name in counted and start <= e.time_range.start < end)
        in_floor_parts = sum(e.time_range.elapsed_us() for e in events
                             if e.name in ("floor forward", "floor backward") and f_start <= e.time_range.start < f_end)
        glue_ms.append(((end - start - in_parts) - (f_end - f_start - in_floor_parts)) / 1000)
    starts = {name: [start for start, _ in r] for name, r in ranges.items()}

    def inside(e, name: str) -> bool:
        i = bisect.bisect_right(starts[name], e.time_range.start) - 1
        return i >= 0 and e.time_range.start < ranges[name][i][1]

    self_us: Dict[str, float] = {}
    calls: Dict[str, int] = {}
    aten = {"iteration": 0, "floor": 0}
    for e in events:
        if e.name in ranges or e.name in _PARTS:
            continue
        for name in aten:
            if inside(e, name):
                aten[name] += e.name.startswith("aten::")
                if name == "iteration":
                    self_us[e.name] = self_us.get(e.name, 0.0) + e.self_cpu_time_total
                    calls[e.name] = calls.get(e.name, 0) + 1
                break
    top = [{"op": op, "self_ms_per_iteration": us / 1000 / iterations, "calls_per_iteration": calls[op] / iterations}
           for op, us in sorted(self_us.items(), key=lambda kv: kv[1], reverse=True)[:8]]
    aten_calls, floor_calls = aten["iteration"] / iterations, aten["floor"] / iterations
    record = {"method": method, "ipc": ipc, "iterations": iterations, "unit_images": len(the_unit),
              "iteration_ms": it_ms, "floor_ms": floor_ms,
              "share_outside": 1.0 - floor_ms / it_ms, "batch_real": int(reals[0].shape[0]) if reals else None,
              "outside_ms": breakdown, "glue_ms": glue_ms,
              "aten_calls_per_iteration": aten_calls, "floor_aten_calls": floor_calls, "top_ops": top,
              "iteration_wall_ms": it_wall_ms, "floor_wall_ms": floor_wall_ms,
              "share_outside_wall": 1.0 - floor_wall_ms / it_wall_ms,
              # what the time outside costs per aten call it adds (calls nested in others included)
              "outside_us_per_extra_call": 1000 * (it_ms - floor_ms) / max(aten_calls - floor_calls, 1)}
    if return_images:
        record["images"] = syn.detach().clone()
    return record


def bare_op_us(calls: int = 20000) -> float:
    """Wall microseconds of one bare aten call (an add of two 1-element tensors), without the
    profiler: the per-call price that no arithmetic hides on tiny tensors."""
    t = torch.zeros(1)
    for _ in range(1000):
        torch.add(t, t)
    start = time.perf_counter()
    for _ in range(calls):
        torch.add(t, t)
    return (time.perf_counter() - start) * 1e6 / calls


def profile_in_fresh_process(dataset: str, method: str, ipc: int, iterations: int, seed: int) -> Dict[str, Any]:
    """:func:`profile_synthesis` of ``dataset``'s training split in a new interpreter, with
    :func:`bare_op_us` under the key ``bare_op_us``: an iteration of small ops is sensitive to
    the heap a long benchmark leaves behind (a DM digits iteration ran markedly slower right after the
    10⁴-point losses than alone), so each case starts from a clean one."""
    here = os.path.dirname(os.path.abspath(__file__))
    out = subprocess.run([sys.executable, os.path.join(here, "_synthesis_profile.py"), dataset, method, str(ipc),
                          str(iterations), str(seed)], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


if __name__ == "__main__":  # the child of profile_in_fresh_process: one JSON line on stdout
    name, which, images, steps, base_seed = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:6])
    record = profile_synthesis(ddm.data.load(name, seed=base_seed).train, which, ipc=images, iterations=steps,
                               seed=base_seed)
    record["bare_op_us"] = bare_op_us()
    print(json.dumps(record))
