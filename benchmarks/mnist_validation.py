"""The cuts of the mnist benchmark, chosen on the mnist *validation* split (never on test).

The mnist grid (``metric_vs_accuracy.py --dataset mnist``) must fit ≈ 2 h per ``--part`` with
``--jobs 2`` on 2 cores, so the teacher epochs, the student epochs per IPC and the synthesis
iterations are cut from the presets' values. Each comparison below trains on the mnist training
split and reports accuracy on the validation split (mean over 2 student seeds) and its cost
(seconds, wall clock, 1 torch thread, shared machine):

- teacher (``convnet_bn``) epochs 2 vs 4 (the cut: 4; preset 30): the teacher's own validation accuracy
- student epochs on a random real subset (hard labels): IPC 1 300 vs 1000 (cut 300, default
  1000), IPC 10 60 vs 150 (cut 60, default 300), IPC 50 20 vs 60 (cut 20, default 150; 1 seed)
- synthesis iterations 50 vs 100 (cut 100, preset 300; ``ITERATIONS=100,300`` for the preset's,
  > 40 min here), DM at IPC 1

Each row is the cut and a longer setting: the difference is the cut's validation cost.

    python benchmarks/mnist_validation.py      # prints, and writes benchmarks/results/mnist_validation.md
"""
from __future__ import annotations

import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import torch  # noqa: E402

import ddmetrics as ddm  # noqa: E402
from ddmetrics.evaluate import random_subset, train_student  # noqa: E402
from ddmetrics.models import accuracy  # noqa: E402

from _common import RESULTS, markdown_table, write_lines  # noqa: E402

OUT = os.path.join(RESULTS, "mnist_validation.md")
SEEDS = (0, 1)
#: group -> its comparisons; ``--group`` runs one (the groups are independent: run them side by side)
GROUPS = ("teacher", "students", "ipc50", "synthesis")
#: DM synthesis iterations compared (the preset's 300 took > 40 min on the shared machine: not run)
ITERATIONS = tuple(int(v) for v in os.environ.get("ITERATIONS", "50,100").split(","))


def _rows_file(group: str) -> str:
    return os.path.join(RESULTS, f".mnist_validation_{group}.json")


def _render() -> None:
    import json

    rows = []
    for group in GROUPS:
        if os.path.exists(_rows_file(group)):
            with open(_rows_file(group)) as fh:
                rows += [tuple(r) for r in json.load(fh)]
    lines = ["# mnist benchmark cuts, measured on the mnist validation split", "",
             "Command: `python benchmarks/mnist_validation.py [--group G]` (validation accuracy, mean over student "
             "seeds (n); seconds: wall clock of that row, 1 torch thread, 2-core machine shared with other jobs "
             "(load average 5-9), so times are 3-8x an idle core's). The test split is never used.", ""]
    lines += markdown_table(["comparison", "value", "validation accuracy", "n", "seconds"], rows, align="lrrrr")
    lines += ["", "The cuts in `metric_vs_accuracy.DATASET_CUTS[\"mnist\"]` and their validation cost (the longer "
              "setting minus the cut, points; n = 1 or 2 seeds, so differences under ~1 point are within noise):", "",
              "- teacher 4 epochs (preset 30): +5.5 points over 2 epochs, so not saturated; 30 not measured (≈ 30 min "
              "here). Soft-label rows use this weaker teacher.",
              "- students at IPC 1: 300 epochs (default 1000): 1000 gains 0.25 points.",
              "- students at IPC 10: 60 epochs (default 300): 150 gains 0.26 points.",
              "- students at IPC 50: 20 epochs (default 150): 60 gains 1.0 point (1 seed).",
              "- synthesis: 100 iterations (presets 300): DM IPC 1 at 50 vs 100 iterations differ by −0.5 points "
              "(no gain from doubling); 300 not measured (> 40 min here).",
              "- full-data model: 5 epochs (default 20): not validated (a reference row only; 97.9 % on test)."]
    write_lines(OUT, lines)


def main(argv=None) -> int:
    import argparse
    import json

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--group", choices=GROUPS, nargs="+", default=list(GROUPS))
    ap.add_argument("--render-only", action="store_true")
    args = ap.parse_args(argv)
    if args.render_only:
        _render()
        return 0
    torch.set_num_threads(int(os.environ.get("THREADS", "1")))
    splits = ddm.data.load("mnist", seed=0)
    for group in args.group:
        rows = []
        if os.path.exists(_rows_file(group)):  # resume: a row already measured is kept, not re-run
            with open(_rows_file(group)) as fh:
                rows = [tuple(r) for r in json.load(fh)]
        done = {(r[0].split(" (")[0], r[1]) for r in rows}

        def record(what, value, acc, n, seconds):
            rows.append((what, value, f"{100 * acc:.2f} %", n, f"{seconds:.0f}"))
            print(rows[-1], flush=True)
            with open(_rows_file(group), "w") as fh:
                json.dump(rows, fh)
            _render()

        def students(syn, teacher=None, protocol="hard", seeds=SEEDS, **kw):
            start = time.perf_counter()
            acc = sum(accuracy(train_student(syn, protocol=protocol, teacher=teacher, seed=s, **kw), splits.val)
                      for s in seeds) / len(seeds)
            return acc, len(seeds), time.perf_counter() - start

        if group == "teacher":
            for epochs in (2, 4):
                d = ddm.Distiller(method="wmdd", ipc=10, seed=0, teacher_epochs=epochs)
                start = time.perf_counter()
                t = d.train_teacher(splits.train, splits.num_classes, progress=False)
                record("teacher convnet_bn: epochs (the teacher's own accuracy)", epochs, accuracy(t, splits.val), 1,
                       time.perf_counter() - start)
        elif group == "students":
            for ipc, choices in ((1, (300, 1000)), (10, (60, 150))):
                sub = random_subset(splits.train, ipc, 0)
                for epochs in choices:
                    record(f"student epochs, IPC {ipc}, random subset, hard labels", epochs,
                           *students(sub, epochs=epochs))
        elif group == "ipc50":
            sub = random_subset(splits.train, 50, 0)
            for epochs in (20, 60):
                record("student epochs, IPC 50, random subset, hard labels", epochs,
                       *students(sub, epochs=epochs, seeds=(0,)))
        elif group == "synthesis":
            for iterations in ITERATIONS:
                if ("DM IPC 1: synthesis iterations", iterations) in done:
                    continue
                d = ddm.Distiller(method="dm", ipc=1, seed=0, iterations=iterations)
                start = time.perf_counter()
                syn = d.fit(splits.train, progress=False)
                made = time.perf_counter() - start
                acc, n, sec = students(syn, epochs=300)
                record(f"DM IPC 1: synthesis iterations (300 student epochs, hard labels; seconds: synthesis "
                       f"{made:.0f} + students)", iterations, acc, n, made + sec)
    return 0


if __name__ == "__main__":
    sys.exit(main())
