#!/usr/bin/env python
"""Synthesis speed: one class a step against a batch of classes a step.

DM, M3D and KR-dual synthesise one class at a time in their released code; ``class_batch``
advances several classes per step (one embedder pass over their real images and one over their
synthetic images, each class with its own random stream and loss: the same result up to float
rounding, ``tests/distill/test_class_batch.py``). WMDD's released code already optimises batches
of classes (``synthesis_batch="classes"``, 100 images a batch); its class-at-a-time setting
(``"class"``) is timed beside it.

Every configuration distils ``--classes`` classes of ``--dataset`` (mnist: 28 px) at IPC
``--ipc`` for ``--iterations`` steps; the configurations of one method run interleaved (the order reversed every other round),
``--repeats`` times, and the report gives the median seconds per step (all classes) and the
ratio. WMDD gets an untrained ResNet-18 as its teacher (speed does not depend on its weights).

    python benchmarks/batched_synthesis.py                    # mnist, 10 classes, IPC 10
    python benchmarks/batched_synthesis.py --device cuda      # the same on a GPU

Writes ``benchmarks/results/batched_synthesis.{json,md}`` (``--out``).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any, Dict, List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

from _common import (RESULTS, command_line, interleaved_repeats, machine_info, markdown_table, median,  # noqa: E402
                     now_utc, write_json, write_lines)

#: method -> [(label, Distiller settings)], timed interleaved
CONFIGS = {
    "dm": [("one class a step", {"class_batch": 1}), ("all classes a step", {"class_batch": "all"})],
    "m3d": [("one class a step", {"class_batch": 1}), ("all classes a step", {"class_batch": "all"})],
    "wmdd": [("one class a step", {"synthesis_batch": "class"}),
             ("released: 100 images a step", {"synthesis_batch": "classes"})],
}


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="mnist")
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--ipc", type=int, default=10)
    p.add_argument("--iterations", type=int, default=5)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--methods", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default=os.path.join(RESULTS, "batched_synthesis"))
    return p.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    import torch

    import ddmetrics as ddm
    from ddmetrics.models import get_model
    from ddmetrics.utils import resolve_device, seeded

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    data = ddm.data.load(args.dataset, seed=0).train
    keep = data.labels < args.classes
    train = ddm.data.ArrayDataset(data.images[keep], data.labels[keep], args.classes)
    shape = train.image_shape

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    rows: List[Dict[str, Any]] = []
    for method in args.methods:
        teacher = None
        if method == "wmdd":
            with seeded(0):
                teacher = get_model("resnet18", shape[0], args.classes, shape[-1])
        units: Dict[str, int] = {}

        def step_seconds(label: str, settings: Dict[str, Any], method: str = method, teacher=teacher):
            def once() -> float:
                d = ddm.Distiller(method=method, ipc=args.ipc, seed=0, device=device, iterations=args.iterations,
                                  teacher=teacher, **settings)
                sync()
                start = time.perf_counter()
                syn = d.fit(train, progress=False)
                sync()
                units[label] = syn.meta["units"]
                return (time.perf_counter() - start) / args.iterations
            return once

        times = interleaved_repeats({label: step_seconds(label, settings) for label, settings in CONFIGS[method]},
                                    args.repeats)
        base = median(times[CONFIGS[method][0][0]])
        for label, settings in CONFIGS[method]:
            t = median(times[label])
            rows.append({"method": method, "variant": label, "settings": settings, "units": units[label],
                         "seconds_per_step": t, "all": times[label], "speedup": base / t})
            print(f"{method:5s} {label:30s} {t:.3f} s/step  x{base / t:.2f}", flush=True)
    doc = {"command": command_line(), "date": now_utc(), "machine": machine_info(), "device": str(device),
           "threads": torch.get_num_threads(), "dataset": args.dataset, "classes": args.classes, "ipc": args.ipc,
           "iterations": args.iterations, "repeats": args.repeats, "rows": rows}
    write_json(args.out + ".json", doc)
    m = doc["machine"]
    lines = ["# Synthesis speed: one class a step against a batch of classes a step", "",
             f"Command: `{doc['command']}` — {doc['date']}", "",
             f"Machine: {m['cpu_model']}, {m['cpu_count']} CPUs, device {doc['device']}, {doc['threads']} torch "
             f"threads; {args.dataset}, {args.classes} classes × IPC {args.ipc}, {args.iterations} steps a run (the "
             "preset's other settings: DM / M3D 256 real images per class and step, WMDD's untrained ResNet-18 "
             f"teacher); median over {args.repeats} interleaved runs of the seconds per step (all classes), "
             "including the run's set-up (its first step draws the embedder, builds the optimiser). Speed-up: "
             "against the first row of the method.", ""]
    lines += markdown_table(["method", "variant", "units", "s / step", "speed-up"],
                            [[r["method"], r["variant"], r["units"], f"{r['seconds_per_step']:.3f}",
                              f"×{r['speedup']:.2f}"] for r in rows], "llrrr")
    write_lines(args.out + ".md", lines)
    print(f"wrote {args.out}.json, {args.out}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
