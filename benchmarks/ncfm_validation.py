"""Synthesis learning rate of the ``ncfm`` preset, chosen on the digits *validation* split.

Distils the digits training split with ``method="ncfm"`` at IPC 1 and 10 for each candidate
learning rate and prints the validation accuracy (hard labels, mean of 2 student runs) — never
the test split. DM (the preset NCFM extends) is printed beside it for reference.

    python benchmarks/ncfm_validation.py [--lrs 0.01 0.05 0.2] [--ipcs 1 10]
"""
from __future__ import annotations

import argparse
import sys
import time

import torch

import ddmetrics as ddm
from ddmetrics.evaluate import train_student
from ddmetrics.models import accuracy


def val_accuracy(syn, splits) -> float:
    """Mean validation accuracy of 2 hard-label students (seeds 0 and 1)."""
    return sum(accuracy(train_student(syn, protocol="hard", seed=s), splits.val) for s in range(2)) / 2


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lrs", type=float, nargs="+", default=[0.01, 0.05, 0.2])
    p.add_argument("--ipcs", type=int, nargs="+", default=[1, 10])
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    splits = ddm.data.load("digits", seed=0)
    print("| method | IPC | synthesis lr | validation accuracy | distil s |")
    print("|---|---:|---:|---:|---:|")
    for ipc in args.ipcs:
        runs = [("dm", None)] + [("ncfm", lr) for lr in args.lrs]
        for method, lr in runs:
            start = time.perf_counter()
            kw = {} if lr is None else {"lr": lr}
            syn = ddm.Distiller(method=method, ipc=ipc, seed=0, **kw).fit(splits.train, progress=False)
            seconds = time.perf_counter() - start
            shown = ddm.distill.preset(method, **kw).lr
            print(f"| {method} | {ipc} | {shown:g} | {100 * val_accuracy(syn, splits):.2f} % | {seconds:.0f} |",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
