#!/usr/bin/env python
"""Do the CPU-only code paths matter on the inputs users run? (issue 27, item 5)

Four places in ddmetrics took a different path on the CPU than on other devices, each added to
cut the time of a call on the embedded 8-px digits:

``pcbn_moments``
    PCBN's channel variance from uncentred sums :math:`E[f^2] - \\mu^2` (two reads, no write, a
    guard that recomputes a layer when :math:`\\mu^2 \\gg \\sigma^2`) instead of the centred
    :math:`E[(f - \\mu)^2]` that every other device computes.
``sliced_sort``
    ``numpy.sort`` instead of ``torch.sort`` for the sliced-Wasserstein sort of the real side.
``barycenter_plan``
    a scipy CSR product for ``plan.T @ x`` in the free-support barycenter instead of torch's
    gather + ``index_add_``.
``embedder_redraw``
    DM's new random embedder each step re-initialised in place (``reset_parameters``) instead of
    built anew.

Each is timed here on the input it meets where users run it, both ways, interleaved (``--repeats``
rounds, medians), beside the step it belongs to: the ratio "general / CPU-only" of the operation
and the share of the step the CPU-only path saves. Both ways are written out in this file (a few
lines each) so that the comparison stays runnable after a branch is removed.

Inputs (mnist's 28 px, 10 classes, IPC 10, the released settings):

- PCBN: the BatchNorm inputs of a ResNet-18 (WMDD's teacher) for 100 synthetic images (one
  step of the released batch), every layer; the step: the network's forward and backward.
- sliced: the ConvNet's 2048 features of 256 real images per class (DM's real batch), 256
  directions, 10 classes at once (a batched step); the step: the batched loss call.
- barycenter: one class of mnist (about 500 real images, ResNet-18's 512 features) against 10
  atoms; the step: one round of the barycenter (the transport plan and the product).
- embedder: the 28-px ConvNet; the step: its forward on one batched DM step's images (2560 real,
  100 synthetic) without gradient for the real side.

    python benchmarks/cpu_branches.py

Writes ``benchmarks/results/cpu_branches.{json,md}``.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Callable, Dict, List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

from _common import (RESULTS, command_line, interleaved_repeats, machine_info, markdown_table, median,  # noqa: E402
                     now_utc, stopwatch, write_json, write_lines)

#: a CPU-only path stays only if it saves at least this share of its step
KEEP_SHARE = 0.05


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=os.path.join(RESULTS, "cpu_branches"))
    return p.parse_args(argv)


def _timer(fn: Callable[[], Any]) -> Callable[[], float]:
    return lambda: stopwatch(fn)[0]


def pcbn_case(torch) -> Dict[str, Callable[[], float]]:
    from ddmetrics.models import get_model

    net = get_model("resnet18", 1, 10, 28)
    inputs: List[Any] = []
    hooks = [m.register_forward_pre_hook(lambda mod, args: inputs.append(args[0].detach()))
             for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    images = torch.randn(100, 1, 28, 28)
    net(images)
    for h in hooks:
        h.remove()
    flats = [f.reshape(f.shape[0], f.shape[1], -1).contiguous() for f in inputs]
    w = torch.full((100,), 1.0 / 100)

    def uncentred():  # E[f²] - μ², with the guard's check (a layer passes it here: no recompute)
        for flat in flats:
            mean = torch.addmv(flat[0, :, 0], flat.sum(2).t(), w, beta=0.0, alpha=1.0 / flat.shape[2])
            var = torch.addmv(mean.square(), torch.linalg.vector_norm(flat, dim=2).square_().t(), w,
                              beta=-1.0, alpha=1.0 / flat.shape[2])
            float(torch.add(mean.square(), var, alpha=-100.0).max())

    def centred():  # E[(f - μ)²]
        for flat in flats:
            mean = torch.addmv(flat[0, :, 0], flat.sum(2).t(), w, beta=0.0, alpha=1.0 / flat.shape[2])
            torch.addmv(mean, torch.linalg.vector_norm(flat - mean.unsqueeze(1), dim=2).square_().t(), w,
                        beta=0.0, alpha=1.0 / flat.shape[2])

    syn = images.clone().requires_grad_(True)

    def step():
        net(syn).sum().backward()

    return {"cpu_only": _timer(uncentred), "general": _timer(centred), "step": _timer(step)}


def sliced_case(torch) -> Dict[str, Callable[[], float]]:
    import numpy as np

    import ddmetrics as ddm
    from ddmetrics.models import get_model

    net = get_model("convnet", 1, 10, 28)
    with torch.no_grad():
        real = torch.stack([net.embed(torch.randn(256, 1, 28, 28)) for _ in range(10)])  # (10, 256, 2048)
    gen = torch.Generator().manual_seed(0)
    theta = torch.randn(10, 2048, 256, generator=gen)
    lines = (theta.mT @ real.mT).reshape(10 * 256, 256)  # each class's 256 directions: (B * L, n)
    syn = torch.randn(10, 10, 2048, requires_grad=True)
    loss = ddm.get_loss("sliced")

    def step():
        loss.batched(real, syn).sum().backward()

    return {"cpu_only": _timer(lambda: np.sort(lines.numpy(), axis=1)),
            "general": _timer(lambda: torch.sort(lines, dim=1)), "step": _timer(step)}


def barycenter_case(torch) -> Dict[str, Callable[[], float]]:
    from scipy.sparse import csr_matrix

    from ddmetrics.losses._emd import emd_arcs

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(500, 512, generator=gen, dtype=torch.float64)
    support = x[:10].clone() + 0.1
    a = torch.full((500,), 1.0 / 500, dtype=torch.float64)
    w = torch.full((10,), 0.1, dtype=torch.float64)
    cost = torch.cdist(x, support).square()
    arcs = emd_arcs(a, w, cost)

    def scipy_product():
        plan_t = csr_matrix((arcs.mass.numpy(), (arcs.cols.numpy(), arcs.rows.numpy())), shape=(10, 500))
        return torch.from_numpy(plan_t @ x.numpy())

    def index_add():
        return torch.zeros(10, 512, dtype=x.dtype).index_add_(0, arcs.cols, arcs.mass.unsqueeze(1) * x[arcs.rows])

    def step():  # one round: the cost, the plan, the product
        c = torch.addmm((x * x).sum(1, keepdim=True) + (support * support).sum(1), x, support.T, alpha=-2.0)
        emd_arcs(a, w, c.clamp_min_(0.0))
        index_add()

    assert torch.allclose(scipy_product(), index_add(), rtol=1e-12, atol=1e-14)
    return {"cpu_only": _timer(scipy_product), "general": _timer(index_add), "step": _timer(step)}


def embedder_case(torch) -> Dict[str, Callable[[], float]]:
    from ddmetrics.models import get_model
    from ddmetrics.utils import seeded

    with seeded(0):
        net = get_model("convnet", 1, 10, 28)
    real, syn = torch.randn(2560, 1, 28, 28), torch.randn(100, 1, 28, 28, requires_grad=True)

    def in_place():
        with seeded(1):
            for module in net.modules():
                if module is not net and hasattr(module, "reset_parameters"):
                    module.reset_parameters()

    def rebuild():
        with seeded(1):
            fresh = get_model("convnet", 1, 10, 28)
        for prm in fresh.parameters():
            prm.requires_grad_(False)

    def step():
        with torch.no_grad():
            net.embed(real)
        net.embed(syn).sum().backward()

    return {"cpu_only": _timer(in_place), "general": _timer(rebuild), "step": _timer(step)}


CASES = {"pcbn_moments": pcbn_case, "sliced_sort": sliced_case, "barycenter_plan": barycenter_case,
         "embedder_redraw": embedder_case}


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    rows: Dict[str, Dict[str, Any]] = {}
    for name, build in CASES.items():
        fns = build(torch)
        for fn in fns.values():  # warm up: first-call allocations and lazy imports
            fn()
        times = interleaved_repeats(fns, args.repeats)
        med = {k: median(v) for k, v in times.items()}
        saved = (med["general"] - med["cpu_only"]) / med["step"]
        rows[name] = {"seconds": times, "median": med, "ratio": med["general"] / med["cpu_only"],
                      "share_of_step_saved": saved, "keep": saved >= KEEP_SHARE}
        print(f"{name}: cpu-only {med['cpu_only'] * 1e3:.2f} ms, general {med['general'] * 1e3:.2f} ms, "
              f"step {med['step'] * 1e3:.1f} ms: saves {100 * saved:.1f} % of the step", flush=True)
    doc = {"experiment": "cpu_branches", "command": command_line(), "date": now_utc(), "machine": machine_info(),
           "threads": args.threads, "repeats": args.repeats, "keep_share": KEEP_SHARE, "cases": rows}
    write_json(args.out + ".json", doc)
    table = markdown_table(
        ["path", "CPU-only (ms)", "general (ms)", "general / CPU-only", "its step (ms)", "share of step saved",
         "kept"],
        [[name, f"{r['median']['cpu_only'] * 1e3:.2f}", f"{r['median']['general'] * 1e3:.2f}", f"{r['ratio']:.2f}",
          f"{r['median']['step'] * 1e3:.1f}", f"{100 * r['share_of_step_saved']:.1f} %", "yes" if r["keep"] else "no"]
         for name, r in rows.items()])
    write_lines(args.out + ".md", [
        "# CPU-only code paths on the inputs users run (issue 27, item 5)", "",
        f"Command: `{doc['command']}`. Machine: {doc['machine']['cpu_model']} ({doc['machine']['cpu_count']} CPUs, shared), {args.threads} thread(s), "
        f"medians of {args.repeats} interleaved repeats.", "",
        f"A path is kept when it saves at least {100 * KEEP_SHARE:.0f} % of the step it belongs to "
        "(see the script's docstring for the inputs and steps).", "", *table])
    print(f"wrote {args.out}.json, {args.out}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
