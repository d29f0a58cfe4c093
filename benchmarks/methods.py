"""The four method presets (WMDD, DM, M3D, KR-dual) on digits: test accuracy against the random subset.

Each cell distils the digits training split with the preset's own loss and settings
(chosen on the validation split, see README), then trains ``--runs`` fresh students and
tests them on the test split. Writes ``benchmarks/results/methods.{json,md}``; cells already
in the JSON are skipped, so an interrupted run resumes.

    python benchmarks/methods.py --ipc 1 10 --runs 3
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import torch

import ddmetrics as ddm
from ddmetrics._io import atomic_write_bytes, atomic_write_json
from ddmetrics.evaluate import full_data_accuracy


def _pm(values):
    if not values:
        return "-"
    t = torch.tensor(values) * 100
    return f"{float(t.mean()):.2f} ± {float(t.std(unbiased=False)):.2f}"


def run_cell(method: str, ipc: int, runs: int, seed: int, splits) -> dict:
    distiller = ddm.Distiller(method=method, ipc=ipc, seed=seed)
    start = time.perf_counter()
    syn = distiller.fit(splits.train, progress=False)
    seconds = time.perf_counter() - start
    cfg = distiller.config
    report = ddm.evaluate(syn, splits.test, train_set=splits.train, model=cfg.eval_model, runs=runs,
                          protocol=cfg.eval_protocol, teacher=distiller.teacher_, epochs=cfg.eval_epochs,
                          lr=cfg.eval_lr, temperature=cfg.temperature, seed=seed, random_hard=True,
                          progress=False)
    return {"method": method, "loss": syn.meta["loss"], "ipc": ipc, "distill_seconds": seconds,
            "config": cfg.to_dict(), "evaluation": report.to_dict()}


def write_markdown(path: str, cells: list, command: str, full_command=None) -> None:
    lines = [
        "# Method presets on digits (test split)", "",
        f"Command: `{command}`" + (f"; full-data row: `{full_command}`" if full_command else ""), "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads. Accuracy in %, mean ± std over the runs.", "",
        "| method | loss | IPC | protocol | accuracy | random (same protocol) | random (hard labels) | full data | distill (s) |",
        "|---|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for c in sorted(cells, key=lambda c: (c["ipc"], c["method"])):
        e = c["evaluation"]
        full = "-" if e["full"] is None else f"{100 * e['full']:.2f}"
        hard = e["random_hard_runs"] if e["random_hard_runs"] else e["random_runs"] if e["protocol"] == "hard" else []
        lines.append(f"| {c['method']} | {c['loss']} | {c['ipc']} | {e['protocol']} | {_pm(e['runs'])} | "
                     f"{_pm(e['random_runs'])} | {_pm(hard)} | {full} | {c['distill_seconds']:.0f} |")
    atomic_write_bytes(path, ("\n".join(lines) + "\n").encode())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--methods", nargs="+", default=["wmdd", "dm", "m3d", "krdual"])
    p.add_argument("--ipc", nargs="+", type=int, default=[1, 10])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="benchmarks/results/methods")
    p.add_argument("--refresh-full", action="store_true",
                   help="recompute only the full-data row with evaluate's current defaults")
    args = p.parse_args(argv)
    command = "python benchmarks/methods.py " + " ".join(sys.argv[1:] if argv is None else argv)
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    path = args.out + ".json"
    saved = json.load(open(path)) if os.path.exists(path) else {}
    cells = saved.get("cells", [])
    if args.refresh_full:  # keep the command that made the cells; note the one that refreshed the row
        saved["full_command"], command = command, saved.get("command", command)
    done = {(c["method"], c["ipc"]) for c in cells}
    splits = ddm.data.load("digits", seed=args.seed)
    if args.refresh_full:
        full = full_data_accuracy(splits.train, splits.test, seed=args.seed)
        for c in cells:
            c["evaluation"]["full"] = full
        saved.update(command=command, cells=cells)
        atomic_write_json(path, saved)
    for ipc in args.ipc:
        for method in args.methods:
            if (method, ipc) in done:
                continue
            print(f"{method} ipc={ipc} ...", flush=True)
            cells.append(run_cell(method, ipc, args.runs, args.seed, splits))
            saved.update(command=command, cells=cells)
            atomic_write_json(path, saved)
            write_markdown(args.out + ".md", cells, command, saved.get("full_command"))
            e = cells[-1]["evaluation"]
            print(f"  {100 * e['mean']:.2f} ± {100 * e['std']:.2f} (random {100 * e['random_mean']:.2f})", flush=True)
    write_markdown(args.out + ".md", cells, command, saved.get("full_command"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
