"""The method presets on digits (default WMDD, DM, M3D, KR-dual): test accuracy against the random subset.

Each cell distils the digits training split with the preset's own loss and settings (its method's
released pipeline, ``docs/fidelity.md``) at ``--budget`` (default 1: the method's own iteration and
epoch counts), then trains ``--runs`` fresh students by the preset's evaluation protocol and tests
them on the test split. Writes ``benchmarks/results/methods.{json,md}``.

The cells run through ``_runner.py``, as ``metric_vs_accuracy.py``'s do: finished cells are
skipped (an interrupted run resumes), teachers are trained once, the random-subset (same
protocol, and hard labels) and full-data baselines are computed once per IPC and protocol, and
``--jobs N`` runs them in N worker processes. A ``methods.json`` written before the runner (a
list of cells, no ``schema``) is read and converted; the next save writes the runner's layout.

    python benchmarks/methods.py --ipc 1 10 --runs 3
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from typing import Any, Dict, List, Optional, Sequence

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:  # the shared helpers sit next to this script (also when it is loaded by path)
    sys.path.insert(0, HERE)

import torch  # noqa: E402

import ddmetrics as ddm  # noqa: E402
from ddmetrics.distill.presets import PRESETS, DistillConfig  # noqa: E402
from ddmetrics.evaluate import full_data_accuracy  # noqa: E402

from _report import soft_protocol  # noqa: E402

from _common import machine_info, markdown_table, percent, pm, write_lines  # noqa: E402
from _runner import (SCHEMA, Cell, Runner, RunSettings, baseline_key, cell_key, eval_settings,  # noqa: E402
                     new_document, student_protocol)

EXPERIMENT = "methods"
METHODS = ("wmdd", "dm", "m3d", "krdual")  # the default --methods (any preset is accepted)


def plan(methods: Sequence[str], ipcs: Sequence[int], budget: float = 1.0) -> List[Cell]:
    """One cell per (IPC, method): the preset with its own loss and settings, at ``budget``."""
    cells = []
    overrides = {} if budget == 1.0 else {"budget": budget}  # the cells of the method's own budget keep their keys
    for ipc in ipcs:
        for method in methods:
            cfg = ddm.Distiller(method=method, ipc=ipc, seed=0, **overrides).config
            cells.append(Cell(EXPERIMENT, method, cfg.loss, cfg.strategy, method, ipc, dict(overrides), loss=None))
    return cells


# --------------------------------------------------------------------------- the pre-runner methods.json
def upgrade_legacy(old: Dict[str, Any]) -> Dict[str, Any]:
    """A document of the runner's schema from a ``methods.json`` of the earlier script (a list
    of cells, each with its ``ddm.evaluate(..., train_set=..., random_hard=True)`` report).

    The earlier script skipped a cell by (method, IPC) alone, so a converted cell gets the key of
    the current preset's cell with that method, IPC, seed and number of runs (its ``config`` stays
    the one it was made with: e.g. ``bary_iters=10`` where the preset now says ``None``, the same
    10 exact-barycenter rounds). Its ``distill_seconds`` include the teacher's training.
    """
    seed = parse_args(shlex.split(old.get("command", ""))[2:]).seed  # "python benchmarks/methods.py ..."
    doc = new_document(EXPERIMENT, "digits")
    doc.update(schema=SCHEMA, command=old.get("command"),
               runs_log=[{"command": old.get("command"), "note": "converted from the pre-runner methods.json"}])
    if "full_command" in old:
        doc["full_command"] = old["full_command"]
    for c in old.get("cells", []):
        stored = {("teacher_arch" if k == "teacher" else k): v for k, v in c["config"].items()}  # renamed field
        cfg, e = DistillConfig().replace(**stored), c["evaluation"]
        now = ddm.Distiller(method=c["method"], ipc=c["ipc"], seed=seed).config
        run = RunSettings(EXPERIMENT, "", dataset="digits", seed=seed, runs=len(e["runs"]))
        cell = Cell(EXPERIMENT, c["method"], now.loss, now.strategy, c["method"], c["ipc"], loss=None)
        key, bkey = cell_key(cell, now, run), baseline_key(c["ipc"], now, run)
        doc["cells"][key] = {
            "key": key, "experiment": EXPERIMENT, "label": c["method"], "backend": cfg.loss, "strategy": cfg.strategy,
            "method": c["method"], "loss": c["loss"], "ipc": c["ipc"], "seed": seed, "runs": run.runs,
            "overrides": {}, "config": c["config"], "eval": eval_settings(cfg, run), "baseline_key": bkey,
            "accuracies": e["runs"], "mean": e["mean"], "std": e["std"], "distill_seconds": c["distill_seconds"],
            "barycenter_seconds": None, "barycenter_share": None, "teacher_key": None, "teacher_seconds": None,
            "eval_seconds": e["seconds"].get("evaluate"), "timings": None, "info": None, "finished": None,
            "teacher_in_distill_seconds": True}
        doc["baselines"].setdefault(bkey, {
            "ipc": c["ipc"], "protocol": e["protocol"], "eval": eval_settings(cfg, run), "teacher_key": None,
            "random_runs": e["random_runs"], "random_hard_runs": e["random_hard_runs"], "full": e["full"],
            "seconds": {k: e["seconds"].get(k) for k in ("random_subset", "full_data")}, "finished": None})
    return doc


# --------------------------------------------------------------------------- report
def write_markdown(path: str, doc: Dict[str, Any], keys: Sequence[str]) -> None:
    """One row per cell: accuracy next to the random subsets and the full data of its baselines."""
    env = doc.get("environment") or {}
    if not env:  # a converted document not re-run yet: this machine, as the earlier script did
        m = machine_info()
        env = {"machine": m["machine"], "cpus": m["cpu_count"], "torch": m["torch"], "threads": m["threads"]}
    full_command = doc.get("full_command")
    rows = []
    cells = [doc["cells"][k] for k in keys if k in doc["cells"]]
    for c in sorted(cells, key=lambda c: (c["ipc"], c["method"])):
        b = doc["baselines"].get(c["baseline_key"]) or {"random_runs": [], "random_hard_runs": [], "full": None}
        protocol = c["config"]["eval_protocol"]
        hard = b["random_hard_runs"] if soft_protocol(protocol) else b["random_runs"]
        # the time Distiller.fit takes when it trains its own teacher (the runner trains it once, apart)
        seconds = c["distill_seconds"] + (c.get("teacher_seconds") or 0.0)
        rows.append((c["method"], c["loss"] or "—", c["ipc"], protocol, pm(c["accuracies"]), pm(b["random_runs"]),
                     pm(hard), percent(b["full"]), f"{seconds:.0f}"))
    lines = ["# Method presets on digits (test split)", "",
             f"Command: `{doc['command']}`" + (f"; full-data row: `{full_command}`" if full_command else ""), "",
             f"Machine: {env['machine']}, {env['cpus']} CPUs, torch {env['torch']}, {env['threads']} threads. "
             "Accuracy in %, mean ± std over the runs.", ""]
    lines += markdown_table(["method", "loss", "IPC", "protocol", "accuracy", "random (same protocol)",
                             "random (hard labels)", "full data", "distill (s)"], rows, align="llrlrrrrr")
    write_lines(path, lines)


def refresh_full(runner: Runner) -> None:
    """Recompute every baseline's full-data model with ``full_data_accuracy``'s current defaults, as the
    runner makes it: the students' model (the protocol's unless overridden), its own recipe."""
    done: Dict[str, Dict[str, float]] = {}
    splits, seed = runner.splits, runner.run_settings.seed
    for b in runner.doc["baselines"].values():
        # a baseline recorded before issue 24 names its model; its protocol then is "hard" or "soft"
        what = b["eval"].get("model") or student_protocol(b["eval"]).model
        if what not in done:
            start = time.perf_counter()
            acc = full_data_accuracy(splits.train, splits.test, model=what, seed=seed)
            done[what] = {"full": acc, "seconds": time.perf_counter() - start}
        b["full"], b["seconds"]["full_data"] = done[what]["full"], done[what]["seconds"]
    runner.save()


# --------------------------------------------------------------------------- CLI
def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=sorted(PRESETS))
    p.add_argument("--ipc", nargs="+", type=int, default=[1, 10])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--budget", type=float, default=1.0,
                   help="fraction in (0, 1] of every iteration and epoch count of each method (default 1: its own)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="benchmarks/results/methods")
    p.add_argument("--refresh-full", action="store_true",
                   help="recompute only the full-data row with evaluate's current defaults")
    p.add_argument("--jobs", type=int, default=1, metavar="N", help="worker processes (see metric_vs_accuracy.py)")
    p.add_argument("--threads", type=int, default=None, metavar="T", help="torch threads (default: torch's)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    if args.jobs < 1 or args.runs < 1 or any(i < 1 for i in args.ipc):
        p.error("--jobs, --runs and --ipc must be positive")
    if not 0 < args.budget <= 1:
        p.error("--budget must be in (0, 1]")
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    command = "python benchmarks/methods.py " + " ".join(sys.argv[1:] if argv is None else argv)
    start = time.perf_counter()
    run = RunSettings(EXPERIMENT, args.out + ".json", dataset="digits", seed=args.seed, runs=args.runs,
                      jobs=args.jobs, threads=args.threads or torch.get_num_threads(), progress=not args.no_progress)
    runner = Runner(run, command, upgrade=upgrade_legacy)
    if args.refresh_full:  # keep the command that made the cells; note the one that refreshed the row
        runner.doc["full_command"], runner.doc["command"] = command, runner.previous_command or command
        refresh_full(runner)
    keys = runner.run(plan(args.methods, args.ipc, args.budget))
    write_markdown(args.out + ".md", runner.doc, keys)
    log = runner.run_log
    print(f"{EXPERIMENT}: {log['new_cells']} new cells, {log['skipped_cells']} skipped, {log['failed_cells']} failed "
          f"in {time.perf_counter() - start:.1f} s; wrote {args.out}.json, {args.out}.md")
    return 1 if log["failed_cells"] or log["failed_baselines"] else 0


if __name__ == "__main__":
    sys.exit(main())
