"""The settings chosen on the digits *validation* split, re-measured with the current code.

Each comparison distils the digits training split and reports accuracy on the validation split
(mean of 2 student runs) — never the test split:

- student learning rate 0.01 vs 0.05 (WMDD, IPC 10, 300 epochs)
- student epochs 300 vs 1000 (WMDD, IPC 1, lr 0.05)
- student epochs 150 vs 300 at IPC 50 (WMDD soft labels, DM hard labels; 500 images = 2 batches
  per epoch, so 150 epochs = 300 SGD steps, as 300 epochs are at IPC 10)
- M3D factor 1 vs 2 (IPC 1)
- KR-dual synthesis lr 1 vs 100 (IPC 10)
- exact-barycenter mirror step 1 vs 10 (W2² objective on an 8-cluster mixture, n=400, d=64, m=12)

    python benchmarks/validation_choices.py        # writes benchmarks/results/validation_choices.md
"""
from __future__ import annotations

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:  # the shared helpers sit next to this script (also when it is loaded by path)
    sys.path.insert(0, HERE)

import torch  # noqa: E402

import ddmetrics as ddm  # noqa: E402
from ddmetrics.losses import exact_barycenter  # noqa: E402
from ddmetrics.evaluate import train_student  # noqa: E402
from ddmetrics.models import accuracy  # noqa: E402

from _common import RESULTS, markdown_table, write_lines  # noqa: E402


def _val(syn, splits, teacher=None, protocol="hard", **kw) -> float:
    return sum(accuracy(train_student(syn, protocol=protocol, teacher=teacher, seed=s, **kw), splits.val)
               for s in range(2)) / 2


def main() -> int:
    splits = ddm.data.load("digits", seed=0)
    rows = []
    for method, ipc, key, values, kw in [("wmdd", 10, "lr", (0.01, 0.05), {"epochs": 300}),
                                         ("wmdd", 1, "epochs", (300, 1000), {"lr": 0.05}),
                                         ("wmdd", 50, "epochs", (150, 300), {"lr": 0.05}),
                                         ("dm", 50, "epochs", (150, 300), {"lr": 0.05})]:
        d = ddm.Distiller(method=method, ipc=ipc, seed=0)
        syn = d.fit(splits.train, progress=False)
        protocol = d.config.eval_protocol
        for v in values:
            acc = _val(syn, splits, d.teacher_, protocol, **{key: v}, **kw)
            rows.append((f"{method.upper()} IPC {ipc}: student {key}", v, f"{100 * acc:.2f} %"))
            print(rows[-1], flush=True)
    for method, ipc, key, values in [("m3d", 1, "factor", (1, 2)), ("krdual", 10, "lr", (1.0, 100.0))]:
        for v in values:
            syn = ddm.Distiller(method=method, ipc=ipc, seed=0, **{key: v}).fit(splits.train, progress=False)
            rows.append((f"{method} IPC {ipc}: {key}", v, f"{100 * _val(syn, splits):.2f} %"))
            print(rows[-1], flush=True)
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(8, 64, generator=g, dtype=torch.float64) * 3
    mass = torch.rand(8, generator=g, dtype=torch.float64) + 0.2
    x = centers[torch.multinomial(mass / mass.sum(), 400, replacement=True, generator=g)]
    x = x + torch.randn(400, 64, generator=g, dtype=torch.float64)
    for step in (1.0, 10.0):
        rows.append(("exact barycenter: mirror step", step, f"W2² {exact_barycenter(x, 12, weight_step=step).objective:.2f}"))
        print(rows[-1], flush=True)
    lines = ["# Settings chosen on the digits validation split", "",
             "Command: `python benchmarks/validation_choices.py` (validation accuracy, mean of 2 student runs)", ""]
    lines += markdown_table(["comparison", "value", "result"], rows, align="lrr")
    write_lines(os.path.join(RESULTS, "validation_choices.md"), lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
