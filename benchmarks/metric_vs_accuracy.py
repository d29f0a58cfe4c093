#!/usr/bin/env python
"""Distilled-set accuracy against the distribution distance, and the WMDD / M3D paper comparisons.

Experiments (``--experiment``):

``main`` (default)
    every registered backend (``--backends``, default all of ``ddm.available_losses()``) ×
    strategy {barycenter = ``method="wmdd"`` with that loss, distribution = ``method="dm"``
    with that loss} × IPC (``--ipc``, default 1 10 50); plus "random subset" and "full data"
    rows per IPC. Writes ``<out>.json``, ``<out>.md`` and ``<out>.png`` (accuracy vs IPC).
``wass_vs_mmd``
    WMDD Fig. 4: ``wasserstein`` vs ``mmd`` inside WMDD, with augmentation (the preset) and
    without (``augment=None``, hard-label evaluation), IPC 1 and 10.
``exact_vs_sliced``
    WMDD Table 4: accuracy and time of exact (``wasserstein``) vs ``sliced`` barycenters.
``ablation``
    WMDD Table 3: ``feature_loss`` {barycenter, ce} × ``reg`` {bn, pcbn}, IPC 10.
``lambda``
    WMDD Fig. 5a: ``reg_weight`` λ in 0.1, 1, 10, 100, 1000, IPC 10.
``moments``
    M3D Table 1: DM, M3D and WMDD sets (their presets) at IPC 10; distances between the
    synthetic and real *training* features of the trained WMDD teacher (1st, 2nd, 3rd moments
    and every backend, :func:`ddmetrics.diagnose.diagnose`), next to a random real subset.

Every cell distils the digits training split (``Distiller(...).fit``) and trains ``--runs``
fresh students on the result, tested on the test split (``ddm.evaluate`` with the preset's
protocol, model, epochs and learning rate read from ``Distiller.config``). Settings not named
by an experiment are the presets' (``ddmetrics/distill/presets.py``).

Resuming: each cell is keyed by a hash of (backend, strategy, method, IPC, seed, runs, the
full resolved ``DistillConfig`` and the evaluation settings). Cells (and baselines) already in
the JSON are skipped; the JSON is rewritten atomically after every finished cell or baseline
part, so an interrupted run (Ctrl-C included) resumes where it stopped. Cells whose settings
changed (e.g. a retuned preset) are recomputed; old ones stay in the JSON but leave the tables.

Shared work: the teacher is trained once per distinct (teacher, epochs, augmentation, seed)
and handed to every barycenter cell that uses it (training is seeded, so this gives the same
teacher each cell would train itself; its time is reported separately, not in a cell's
"distill" time). The random-subset and full-data baselines are computed once per (IPC,
evaluation protocol/settings), as tasks of their own: the random subset under the cell's
protocol (``--runs`` seeds), for the soft protocol also with hard labels (the papers' baseline),
and the full-data model; a part two baselines share (e.g. the full-data model, or the hard-label
random subset of the soft and the hard protocol) is computed once.

Parallel runs (``--jobs N``, default 1): with N = 1 everything runs in this process, in plan
order (each cell, then the baseline parts it is the first to need), with ``--threads`` torch
threads (default: torch's). With N > 1 the teachers are trained first in this process (all
threads; their ``state_dict`` goes to a temporary directory, removed at the end), then cells and
baseline parts go to N spawned worker processes with ``max(1, threads // N)`` torch threads each,
most expensive first (IPC descending, barycenter cells, distribution cells, baselines). Only this
process writes the JSON and the progress bar; a failing task is recorded under ``errors`` and the
others go on. Each task is seeded on its own and every worker loads a fresh copy of its teacher,
so a cell's numbers do not depend on which worker ran it or in which order. They do depend on
the torch thread count (CPU kernels sum in a thread-dependent order; on digits a 1- and a
2-thread run differ by a few test images), so ``--jobs 2`` on 2 cores (1 thread per worker) is
not bit-identical to ``--jobs 1`` (2 threads), while with ``--threads 1`` every N gives the
same numbers (tested). Cell keys include neither the thread count nor N: a resumed run keeps
what earlier runs computed. On 2 cores two 1-thread workers do ~1.3–1.6× the work of one
2-thread process (these small ConvNets scale poorly with threads): use ``--jobs 2`` there.

Usage::

    .venv/bin/python benchmarks/metric_vs_accuracy.py                    # main, all backends
    .venv/bin/python benchmarks/metric_vs_accuracy.py --jobs 2           # the same, 2 worker processes
    .venv/bin/python benchmarks/metric_vs_accuracy.py --quick            # smoke test, < 3 min
    .venv/bin/python benchmarks/metric_vs_accuracy.py --experiment ablation --runs 5
    .venv/bin/python benchmarks/metric_vs_accuracy.py --backends wasserstein sliced --ipc 1 10

``--quick``: IPC 1 only, 1 run, ``iterations=20``, ``eval_epochs=50``, ``teacher_epochs=3``,
3 full-data epochs, 5 critic steps for ``krdual``; accuracies are then only a smoke signal (a
3-epoch teacher gives poor soft labels); its default output prefix gets a ``_quick`` suffix so that it never mixes
with the real results.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import io
import json
import multiprocessing
import os
import platform
import shlex
import signal
import statistics
import sys
import tempfile
import time
import traceback
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from tqdm.auto import tqdm

import ddmetrics as ddm
from ddmetrics._io import atomic_write_bytes, atomic_write_json
from ddmetrics.evaluate import full_data_accuracy, random_subset, train_student
from ddmetrics.models import accuracy, get_model

SCHEMA = 1
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
EXPERIMENTS = ("main", "wass_vs_mmd", "exact_vs_sliced", "ablation", "lambda", "moments")
DEFAULT_IPC = {"main": [1, 10, 50], "wass_vs_mmd": [1, 10], "exact_vs_sliced": [1, 10, 50], "ablation": [10],
               "lambda": [10], "moments": [10]}
#: the --quick overrides (DistillConfig fields) and evaluate()'s full-data epochs
QUICK_OVERRIDES = {"iterations": 20, "eval_epochs": 50, "teacher_epochs": 3}
QUICK_FULL_EPOCHS = 3
#: --quick only: per-backend loss settings that keep the smoke test short (the KR critic's 100
#: default steps per call dominate everything else: ~300 s of a ~60 s smoke run)
QUICK_LOSS_KWARGS = {"krdual": {"steps": 5}}
LAMBDAS = (0.1, 1.0, 10.0, 100.0, 1000.0)
STRATEGY_METHOD = {"barycenter": "wmdd", "distribution": "dm"}


# --------------------------------------------------------------------------- small helpers
def settings_key(settings: Dict[str, Any]) -> str:
    """A short stable hash of a JSON-able settings dict."""
    blob = json.dumps(settings, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


def mean_std(values: Sequence[float]) -> Tuple[Optional[float], Optional[float]]:
    """Mean and population standard deviation (``None`` for no values)."""
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.pstdev(values) if len(values) > 1 else 0.0)


def pm(values: Sequence[float]) -> str:
    """``"mean ± std"`` in percent."""
    m, s = mean_std(values)
    return "-" if m is None else f"{100 * m:.2f} ± {100 * s:.2f}"


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


# --------------------------------------------------------------------------- cells
@dataclass
class Cell:
    """One distillation + evaluation to run.

    ``overrides`` are the DistillConfig overrides passed to :class:`ddmetrics.Distiller`;
    ``label`` names the row in the experiment's table.
    """

    experiment: str
    label: str
    backend: str
    strategy: str
    method: str
    ipc: int
    overrides: Dict[str, Any] = field(default_factory=dict)
    loss: Optional[str] = None  # None: the preset's own loss
    diagnose: bool = False

    def distiller(self, seed: int) -> ddm.Distiller:
        return ddm.Distiller(method=self.method, loss=self.loss, ipc=self.ipc, seed=seed, **self.overrides)


def plan(experiment: str, backends: Sequence[str], ipcs: Sequence[int], overrides: Dict[str, Any],
         loss_kwargs: Optional[Dict[str, Dict[str, Any]]] = None) -> List[Cell]:
    """The cells of ``experiment``.

    ``overrides`` (e.g. the --quick settings) apply to every cell; ``loss_kwargs`` maps a backend
    name to ``loss_kwargs`` for the cells that name that backend explicitly.
    """
    cells: List[Cell] = []
    loss_kwargs = loss_kwargs or {}

    def add(label, backend, strategy, method, ipc, extra=None, loss="same", diagnose=False):
        loss = backend if loss == "same" else loss
        settings = {**overrides, **(extra or {})}
        if loss is not None and loss in loss_kwargs:
            settings["loss_kwargs"] = dict(loss_kwargs[loss])
        cells.append(Cell(experiment, label, backend, strategy, method, ipc, settings, loss=loss, diagnose=diagnose))

    for ipc in ipcs:
        if experiment == "main":
            for backend in backends:
                for strategy, method in STRATEGY_METHOD.items():
                    add(f"{backend} / {strategy}", backend, strategy, method, ipc)
        elif experiment == "wass_vs_mmd":
            for variant, extra in (("augmented, soft labels", {}),
                                   ("no augmentation, hard labels", {"augment": None, "eval_protocol": "hard"})):
                for backend in ("wasserstein", "mmd"):
                    add(f"{backend} ({variant})", backend, "barycenter", "wmdd", ipc, extra)
        elif experiment == "exact_vs_sliced":
            for backend in ("wasserstein", "sliced"):
                add(backend, backend, "barycenter", "wmdd", ipc)
        elif experiment == "ablation":
            for feature in ("barycenter", "ce"):
                for reg in ("pcbn", "bn"):
                    add(f"feature={feature}, reg={reg}", "wasserstein", "barycenter", "wmdd", ipc,
                        {"feature_loss": feature, "reg": reg})
        elif experiment == "lambda":
            for lam in LAMBDAS:
                add(f"lambda={lam:g}", "wasserstein", "barycenter", "wmdd", ipc, {"reg_weight": lam})
        elif experiment == "moments":
            for method in ("dm", "m3d", "wmdd"):
                probe = ddm.Distiller(method=method, ipc=ipc, seed=0, **overrides)
                add(method.upper(), probe.config.loss, probe.config.strategy, method, ipc, loss=None, diagnose=True)
        else:
            raise ValueError(f"unknown experiment {experiment!r}; valid: {', '.join(EXPERIMENTS)}")
    return cells


# --------------------------------------------------------------------------- tasks
def full_epochs_of(args: argparse.Namespace) -> Optional[int]:
    """The full-data model's epochs (``None``: :func:`ddmetrics.evaluate.full_data_accuracy`'s default)."""
    return QUICK_FULL_EPOCHS if args.quick else None


def eval_settings(cfg, args: argparse.Namespace) -> Dict[str, Any]:
    """The evaluation settings of a cell (part of its key and of its baselines' key)."""
    return {"model": cfg.eval_model, "protocol": cfg.eval_protocol, "epochs": cfg.eval_epochs, "lr": cfg.eval_lr,
            "temperature": cfg.temperature, "runs": args.runs, "seed": args.seed,
            "full_epochs": full_epochs_of(args)}


def teacher_settings(cfg, args: argparse.Namespace) -> Dict[str, Any]:
    """What a trained teacher depends on (``Distiller.train_teacher`` is seeded)."""
    return {"teacher": cfg.teacher, "teacher_epochs": cfg.teacher_epochs, "augment": cfg.augment,
            "seed": args.seed, "dataset": args.dataset}


@dataclass
class Task:
    """One unit of work for the parent loop or a worker process.

    ``kind`` is ``"cell"`` (distil + evaluate ``cell``), ``"random"`` (``params["runs"]``
    students on seeded random real subsets: a baseline's ``random_runs`` or ``random_hard_runs``)
    or ``"full"`` (the full-data model). ``key`` is the cell key, or for the baseline parts a
    hash of exactly what they compute, so that two baselines needing the same part share it.
    """

    kind: str
    key: str
    ipc: int
    label: str
    rank: int  # submission order within an IPC: barycenter cells, distribution cells, random, full
    cell: Optional[Cell] = None
    params: Dict[str, Any] = field(default_factory=dict)
    teacher_key: Optional[str] = None  # the (parent-trained) teacher the task needs
    own_teacher: bool = False  # cell: the teacher is the distiller's own (else only for diagnose)
    baseline_key: Optional[str] = None  # cell: its baselines' key


class _Context:
    """What a task runs against: the splits, the arguments and a teacher lookup."""

    def __init__(self, args: argparse.Namespace, splits, teacher: Callable[[str], torch.nn.Module]):
        self.args, self.splits, self.teacher = args, splits, teacher


def execute(task: Task, ctx: _Context) -> Dict[str, Any]:
    """Run ``task``; the result is a cell entry or a baseline part (plain JSON-able data)."""
    args, splits = ctx.args, ctx.splits
    if task.kind == "cell":
        return _cell_entry(task, ctx)
    if task.kind == "random":
        p = task.params
        teacher = ctx.teacher(task.teacher_key) if p["protocol"] == "soft" else None
        start = time.perf_counter()
        accs = [accuracy(train_student(random_subset(splits.train, p["ipc"], p["seed"] + r), model=p["model"],
                                       protocol=p["protocol"], teacher=teacher, epochs=p["epochs"], lr=p["lr"],
                                       temperature=p.get("temperature", 4.0), seed=p["seed"] + r), splits.test)
                for r in range(p["runs"])]
        return {"runs": accs, "seconds": time.perf_counter() - start}
    if task.kind == "full":
        p = task.params
        kw = {} if p["epochs"] is None else {"epochs": p["epochs"]}
        start = time.perf_counter()
        acc = full_data_accuracy(splits.train, splits.test, model=p["model"], lr=p["lr"], seed=p["seed"], **kw)
        return {"full": acc, "seconds": time.perf_counter() - start}
    raise ValueError(f"unknown task kind {task.kind!r}")


def _cell_entry(task: Task, ctx: _Context) -> Dict[str, Any]:
    """Distil ``task.cell`` and train ``runs`` students on it; ``teacher_seconds`` is filled by the parent."""
    args, splits, cell = ctx.args, ctx.splits, task.cell
    distiller = cell.distiller(args.seed)
    cfg = distiller.config
    teacher = ctx.teacher(task.teacher_key) if task.teacher_key is not None else None
    if task.own_teacher:
        distiller.teacher_ = teacher
    start = time.perf_counter()
    syn = distiller.fit(splits.train, progress=False)
    distill_seconds = time.perf_counter() - start
    report = ddm.evaluate(syn, splits.test, model=cfg.eval_model, runs=args.runs, protocol=cfg.eval_protocol,
                          teacher=distiller.teacher_ if cfg.eval_protocol == "soft" else None,
                          epochs=cfg.eval_epochs, lr=cfg.eval_lr, temperature=cfg.temperature, seed=args.seed,
                          progress=False)
    rep = report.to_dict()
    bary = (syn.meta.get("info") or {}).get("barycenter_seconds")
    entry = {
        "key": task.key, "experiment": cell.experiment, "label": cell.label, "backend": cell.backend,
        "strategy": cell.strategy, "method": cell.method, "loss": syn.meta.get("loss"), "ipc": cell.ipc,
        "seed": args.seed, "runs": args.runs, "overrides": cell.overrides, "config": cfg.to_dict(),
        "eval": eval_settings(cfg, args), "baseline_key": task.baseline_key,
        "accuracies": rep["runs"], "mean": rep["mean"], "std": rep["std"],
        "distill_seconds": distill_seconds, "barycenter_seconds": bary,
        "barycenter_share": (bary / distill_seconds) if bary is not None and distill_seconds > 0 else None,
        "teacher_key": task.teacher_key, "teacher_seconds": None,
        "eval_seconds": rep["seconds"].get("evaluate"), "timings": syn.meta.get("timings"),
        "info": syn.meta.get("info"), "finished": now(),
    }
    if cell.diagnose:
        from ddmetrics.diagnose import diagnose

        start = time.perf_counter()
        entry["diagnosis"] = diagnose(syn, splits.train, teacher).to_dict()
        entry["diagnose_seconds"] = time.perf_counter() - start
    return entry


def _failure(err: BaseException) -> Dict[str, Any]:
    return {"error": repr(err), "traceback": traceback.format_exc(limit=6)}


# --------------------------------------------------------------------------- worker processes (--jobs > 1)
_WORKER: Dict[str, Any] = {}


def _worker_init(args: argparse.Namespace, threads: int, teacher_files: Dict[str, Tuple[str, str]]) -> None:
    """Pool initializer: leave Ctrl-C to the parent, set the thread count, load the splits once."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(threads)
    splits = ddm.data.load(args.dataset, seed=args.seed)

    def teacher(key: str) -> torch.nn.Module:
        # a fresh copy per task: nothing a task does to its teacher reaches the next one
        path, name = teacher_files[key]
        images = splits.train.images
        model = get_model(name, images.shape[1], splits.num_classes, images.shape[-1])
        model.load_state_dict(torch.load(path, weights_only=True))
        return model.eval()  # as train_model returns it

    _WORKER["ctx"] = _Context(args, splits, teacher)


def _worker_run(task: Task) -> Dict[str, Any]:
    try:
        return {"value": execute(task, _WORKER["ctx"])}
    except Exception as err:  # reported by the parent; the worker goes on with the next task
        return _failure(err)


# --------------------------------------------------------------------------- the runner
class TeacherBank:
    """The teachers of the planned tasks, trained once each (lazily) in this process."""

    def __init__(self, splits):
        self.splits = splits
        self.sources: Dict[str, ddm.Distiller] = {}  # key -> a distiller with the teacher's settings
        self.trained: Dict[str, Tuple[torch.nn.Module, float]] = {}

    def register(self, key: str, source: ddm.Distiller) -> str:
        self.sources.setdefault(key, source)
        return key

    def get(self, key: str) -> torch.nn.Module:
        if key not in self.trained:
            start = time.perf_counter()
            teacher = self.sources[key].train_teacher(self.splits.train, self.splits.num_classes, progress=False)
            self.trained[key] = (teacher, time.perf_counter() - start)
        return self.trained[key][0]

    def seconds(self, key: Optional[str]) -> Optional[float]:
        return self.trained[key][1] if key in self.trained else None


class Runner:
    """Runs cells and baselines with resume, sharing teachers and baseline parts; owns the JSON document.

    With ``--jobs 1`` the tasks run here, in plan order (each cell followed by the baseline parts
    it is the first to need). With ``--jobs N > 1`` the teachers are trained here first, then the
    tasks go to N spawned worker processes, most expensive first. Either way only this process
    writes the JSON (after every finished task) and the progress bar.
    """

    def __init__(self, args: argparse.Namespace, command: str):
        self.args = args
        self.json_path = args.out + ".json"
        torch.set_num_threads(args.threads)
        self.threads_per_job = args.threads if args.jobs == 1 else max(1, args.threads // args.jobs)
        self.splits = ddm.data.load(args.dataset, seed=args.seed)
        self.full_epochs = full_epochs_of(args)
        self.doc = self._load()
        self.doc["command"] = command
        self.doc["environment"] = {
            "python": platform.python_version(), "torch": torch.__version__, "machine": platform.machine(),
            "cpus": os.cpu_count(), "threads": torch.get_num_threads(), "platform": platform.platform(),
            "jobs": args.jobs, "threads_per_job": self.threads_per_job}
        self.run_log = {"command": command, "argv": sys.argv[1:], "started": now(), "jobs": args.jobs,
                        "threads_per_job": self.threads_per_job, "new_cells": 0, "skipped_cells": 0,
                        "failed_cells": 0, "new_baselines": 0, "failed_baselines": 0}
        self.doc.setdefault("runs_log", []).append(self.run_log)
        self.teachers = TeacherBank(self.splits)
        self._baselines: Dict[str, Dict[str, Any]] = {}  # baseline key -> its pending entry and parts
        self._parts: Dict[str, Dict[str, Any]] = {}  # finished baseline parts by task key

    def _load(self) -> Dict[str, Any]:
        if os.path.exists(self.json_path):
            with open(self.json_path) as fh:
                doc = json.load(fh)
            if doc.get("schema") != SCHEMA:
                raise SystemExit(f"{self.json_path}: schema {doc.get('schema')!r}, expected {SCHEMA}; "
                                 "move it away to start afresh")
            if doc.get("experiment") != self.args.experiment:
                raise SystemExit(f"{self.json_path} holds experiment {doc.get('experiment')!r}, not "
                                 f"{self.args.experiment!r}; choose another --out")
            return doc
        return {"schema": SCHEMA, "experiment": self.args.experiment, "dataset": self.args.dataset,
                "cells": {}, "baselines": {}, "errors": {}}

    def save(self) -> None:
        self.run_log["finished"] = now()
        atomic_write_json(self.json_path, self.doc)

    # -- keys
    def eval_settings(self, cfg) -> Dict[str, Any]:
        return eval_settings(cfg, self.args)

    def teacher_settings(self, cfg) -> Dict[str, Any]:
        return teacher_settings(cfg, self.args)

    def cell_key(self, cell: Cell, distiller: ddm.Distiller) -> str:
        return settings_key({"backend": cell.backend, "strategy": cell.strategy, "method": cell.method,
                             "ipc": cell.ipc, "dataset": self.args.dataset, "config": distiller.config.to_dict(),
                             "eval": self.eval_settings(distiller.config), "diagnose": cell.diagnose})

    def baseline_key(self, ipc: int, cfg) -> str:
        settings = {"ipc": ipc, "dataset": self.args.dataset, "eval": self.eval_settings(cfg)}
        if cfg.eval_protocol == "soft":
            settings["teacher"] = self.teacher_settings(cfg)
        return settings_key(settings)

    def teacher_key(self, distiller: ddm.Distiller) -> str:
        """Register ``distiller``'s teacher settings with the bank; returns their key."""
        return self.teachers.register(settings_key(self.teacher_settings(distiller.config)), distiller)

    def needs_teacher(self, distiller: ddm.Distiller, cell: Cell) -> bool:
        cfg = distiller.config
        return cfg.strategy == "barycenter" or cfg.eval_protocol == "soft" or cell.diagnose

    # -- planning
    def tasks(self, cells: List[Cell]) -> Tuple[List[str], List[Task]]:
        """The cell keys of ``cells`` (plan order) and the tasks still to run, in ``--jobs 1`` order."""
        args = self.args
        keys: List[str] = []
        tasks: List[Task] = []
        parts: Dict[str, Task] = {}
        seen = set()
        for cell in cells:
            distiller = cell.distiller(args.seed)
            cfg = distiller.config
            key = self.cell_key(cell, distiller)
            keys.append(key)
            bkey = self.baseline_key(cell.ipc, cfg)
            baseline = [] if bkey in self.doc["baselines"] or bkey in self._baselines else \
                self._plan_baseline(bkey, cell.ipc, distiller, parts)  # also for a finished cell
            if key in self.doc["cells"] or key in seen:
                self.run_log["skipped_cells"] += 1
                tasks += baseline
                continue
            seen.add(key)
            tkey, own = None, False
            if self.needs_teacher(distiller, cell):
                # the preset's own teacher: a DM/M3D cell (no teacher of its own) is diagnosed with WMDD's
                own = cfg.strategy == "barycenter" or cfg.eval_protocol == "soft"
                source = distiller if own else ddm.Distiller(
                    method="wmdd", ipc=cell.ipc, seed=args.seed,
                    **{k: v for k, v in cell.overrides.items() if k in ("teacher_epochs",)})
                tkey = self.teacher_key(source)
            rank = 0 if cfg.strategy == "barycenter" else 1
            tasks.append(Task("cell", key, cell.ipc, f"{cell.label}, IPC {cell.ipc}", rank, cell=cell,
                              teacher_key=tkey, own_teacher=own, baseline_key=bkey))
            tasks += baseline
        return keys, tasks

    def _plan_baseline(self, bkey: str, ipc: int, distiller: ddm.Distiller, parts: Dict[str, Task]) -> List[Task]:
        """Register baseline ``bkey`` and return its parts not planned yet: the random subset under the
        cell's protocol, for the soft protocol also with hard labels (the papers' baseline), the full data."""
        args, cfg = self.args, distiller.config
        soft = cfg.eval_protocol == "soft"
        tkey = self.teacher_key(distiller) if soft else None
        common = {"ipc": ipc, "model": cfg.eval_model, "epochs": cfg.eval_epochs, "lr": cfg.eval_lr,
                  "runs": args.runs, "seed": args.seed}
        specs = [("random", "random", {**common, "protocol": cfg.eval_protocol,
                                       **({"temperature": cfg.temperature} if soft else {})}, tkey, 2)]
        if soft:
            specs.append(("random_hard", "random", {**common, "protocol": "hard"}, None, 2))
        specs.append(("full", "full", {"model": cfg.eval_model, "epochs": self.full_epochs, "lr": cfg.eval_lr,
                                       "seed": args.seed}, None, 3))
        new: List[Task] = []
        names: Dict[str, str] = {}
        for name, kind, params, teacher, rank in specs:
            pkey = settings_key({"part": kind, "dataset": args.dataset, "teacher": teacher, **params})
            names[name] = pkey
            if pkey in parts:
                parts[pkey].ipc = max(parts[pkey].ipc, ipc)
                continue
            what = {"random": "random subset", "full": "full data"}[kind]
            label = what + (f" ({params['protocol']} labels), IPC {ipc}" if kind == "random" else "")
            parts[pkey] = Task(kind, pkey, ipc, label, rank, params=params, teacher_key=teacher)
            new.append(parts[pkey])
        self._baselines[bkey] = {"ipc": ipc, "protocol": cfg.eval_protocol, "eval": self.eval_settings(cfg),
                                 "teacher_key": tkey, "parts": names}
        return new

    # -- results
    def _error_key(self, label: str, ipc: int) -> str:
        return f"error:{label}:{ipc}"

    def record(self, task: Task, result: Dict[str, Any]) -> None:
        """Store one finished task's result (or its error) in the document and save it."""
        if task.kind == "cell":
            cell = task.cell
            ekey = self._error_key(cell.label, cell.ipc)
            if "error" in result:
                self.doc["errors"][ekey] = {"label": cell.label, "ipc": cell.ipc, "error": result["error"],
                                            "traceback": result["traceback"], "when": now()}
                self.run_log["failed_cells"] += 1
                tqdm.write(f"cell {cell.label!r} IPC {cell.ipc} failed: {result['error']}")
            else:
                entry = result["value"]
                entry["teacher_seconds"] = self.teachers.seconds(task.teacher_key)
                self.doc["cells"][task.key] = entry
                self.doc["errors"].pop(ekey, None)
                self.run_log["new_cells"] += 1
        else:
            self._parts[task.key] = result
            for bkey, b in list(self._baselines.items()):
                if task.key not in b["parts"].values():
                    continue
                label = f"baselines ({b['protocol']} protocol)"
                ekey = self._error_key(label, b["ipc"])
                if "error" in result:
                    del self._baselines[bkey]
                    self.doc["errors"][ekey] = {"label": label, "ipc": b["ipc"], "error": result["error"],
                                                "traceback": result["traceback"], "when": now()}
                    self.run_log["failed_baselines"] += 1
                    tqdm.write(f"{task.label} failed: {result['error']}")
                elif all(k in self._parts for k in b["parts"].values()):
                    del self._baselines[bkey]
                    self.doc["baselines"][bkey] = self._baseline_entry(b)
                    self.doc["errors"].pop(ekey, None)
                    self.run_log["new_baselines"] += 1
        self.save()

    def _baseline_entry(self, b: Dict[str, Any]) -> Dict[str, Any]:
        random = self._parts[b["parts"]["random"]]["value"]
        hard = self._parts[b["parts"]["random_hard"]]["value"] if "random_hard" in b["parts"] else None
        full = self._parts[b["parts"]["full"]]["value"]
        return {"ipc": b["ipc"], "protocol": b["protocol"], "eval": b["eval"], "teacher_key": b["teacher_key"],
                "random_runs": random["runs"], "random_hard_runs": hard["runs"] if hard else [],
                "full": full["full"],
                "seconds": {"random_subset": random["seconds"] + (hard["seconds"] if hard else 0.0),
                            "full_data": full["seconds"]}, "finished": now()}

    # -- running
    def run(self, cells: List[Cell]) -> List[str]:
        """Run every missing cell and baseline (resuming), then the moments experiment's random reference."""
        keys, tasks = self.tasks(cells)
        bar = tqdm(total=len(tasks), desc=f"{self.args.experiment} tasks", disable=self.args.no_progress,
                   unit="task")
        try:
            if self.args.jobs == 1 or not tasks:
                self._run_here(tasks, bar)
            else:
                self._run_pool(tasks, bar)
        except KeyboardInterrupt:
            self.save()
            raise
        finally:
            bar.close()
        if self.args.experiment == "moments":
            self._random_reference(cells)
        self.save()
        failed = {t.key for t in tasks if t.kind == "cell" and t.key not in self.doc["cells"]}
        return [k for k in keys if k not in failed]

    def _run_here(self, tasks: List[Task], bar) -> None:
        ctx = _Context(self.args, self.splits, self.teachers.get)
        for task in tasks:
            bar.set_postfix_str(task.label)
            try:
                result = {"value": execute(task, ctx)}
            except Exception as err:  # one broken backend must not lose the other tasks
                result = _failure(err)
            self.record(task, result)
            bar.update()

    def _run_pool(self, tasks: List[Task], bar) -> None:
        args = self.args
        order = sorted(tasks, key=lambda t: (-t.ipc, t.rank))  # most expensive first
        needed = list(dict.fromkeys(t.teacher_key for t in order if t.teacher_key is not None))
        with tempfile.TemporaryDirectory(prefix="mva_teachers_") as folder:
            files: Dict[str, Tuple[str, str]] = {}
            for key in needed:  # trained here, with all threads, before the workers start
                bar.set_postfix_str(f"teacher {key}")
                try:
                    teacher = self.teachers.get(key)
                except Exception as err:
                    failure = _failure(err)
                    for task in [t for t in order if t.teacher_key == key]:
                        order.remove(task)
                        self.record(task, failure)
                        bar.update()
                    continue
                files[key] = (os.path.join(folder, key + ".pt"), self.teachers.sources[key].config.teacher)
                torch.save(teacher.state_dict(), files[key][0])
            pool = ProcessPoolExecutor(max_workers=args.jobs, mp_context=multiprocessing.get_context("spawn"),
                                       initializer=_worker_init, initargs=(args, self.threads_per_job, files))
            try:
                futures = {pool.submit(_worker_run, task): task for task in order}
                for future in as_completed(futures):
                    task = futures[future]
                    try:
                        result = future.result()
                    except Exception as err:  # e.g. a worker killed by the OS: BrokenProcessPool
                        result = {"error": repr(err), "traceback": "".join(traceback.format_exception(err))}
                    self.record(task, result)
                    bar.set_postfix_str(task.label)
                    bar.update()
            except BaseException:
                # Ctrl-C (the workers ignore it) or a bug here: drop the queue, stop the running tasks
                # (the processes are looked up first: shutdown() forgets them)
                procs = list((getattr(pool, "_processes", None) or {}).values())
                pool.shutdown(wait=False, cancel_futures=True)
                for proc in procs:
                    proc.terminate()
                raise
            finally:
                pool.shutdown(wait=True, cancel_futures=True)

    def _random_reference(self, cells: List[Cell]) -> None:
        """Moment distances of a same-size random real subset (the floor any method should beat)."""
        from ddmetrics.diagnose import diagnose

        refs = self.doc.setdefault("references", {})
        for ipc in sorted({c.ipc for c in cells}):
            probe = ddm.Distiller(method="wmdd", ipc=ipc, seed=self.args.seed,
                                  **{k: v for k, v in cells[0].overrides.items() if k == "teacher_epochs"})
            key = settings_key({"random": ipc, "seed": self.args.seed, "teacher": self.teacher_settings(probe.config)})
            if key in refs:
                continue
            tkey = self.teacher_key(probe)
            teacher = self.teachers.get(tkey)
            subset = random_subset(self.splits.train, ipc, self.args.seed)
            refs[key] = {"label": "random subset", "ipc": ipc, "teacher_key": tkey,
                         "diagnosis": diagnose(subset, self.splits.train, teacher).to_dict()}
            self.save()


# --------------------------------------------------------------------------- outputs
def _rows(doc: Dict[str, Any], keys: Sequence[str]) -> List[Dict[str, Any]]:
    return [doc["cells"][k] for k in keys if k in doc["cells"]]


def _fmt_s(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.1f}"


def _fmt_share(value: Optional[float]) -> str:
    return "-" if value is None else f"{100 * value:.1f} %"


def _baseline_rows(doc: Dict[str, Any], rows: List[Dict[str, Any]]) -> List[Tuple[int, str, str, str]]:
    """(ipc, label, accuracy, note) for the random-subset / full-data rows of the baselines in use."""
    out, seen = [], set()
    for r in rows:
        b = doc["baselines"].get(r["baseline_key"])
        if b is None or r["baseline_key"] in seen:
            continue
        seen.add(r["baseline_key"])
        ev = b["eval"]
        note = f"{ev['model']}, {ev['epochs'] or 'default'} epochs"
        if b["protocol"] == "soft":
            out.append((b["ipc"], "random subset (teacher soft labels)", pm(b["random_runs"]), note))
            if b["random_hard_runs"]:
                out.append((b["ipc"], "random subset (hard labels)", pm(b["random_hard_runs"]), note))
        else:
            out.append((b["ipc"], "random subset (hard labels)", pm(b["random_runs"]), note))
        out.append((b["ipc"], "full data", "-" if b["full"] is None else f"{100 * b['full']:.2f}",
                    f"hard labels, {ev['full_epochs'] or 'default'} epochs"))
    # identical rows from two protocols with the same settings collapse
    uniq, keys = [], set()
    for row in out:
        if (row[0], row[1], row[2]) not in keys:
            keys.add((row[0], row[1], row[2]))
            uniq.append(row)
    return uniq


def _header(doc: Dict[str, Any], title: str) -> List[str]:
    env = doc["environment"]
    jobs = env.get("jobs", 1)  # older documents predate --jobs
    workers = (f"; `--jobs {jobs}`: {jobs} worker processes × {env.get('threads_per_job')} threads, so per-task "
               "times are not comparable with a `--jobs 1` run" if jobs > 1 else "; `--jobs 1`")
    return [f"# {title}", "",
            f"Command: `{doc['command']}`", "",
            f"Dataset: {doc['dataset']} (train split distilled, test split evaluated). Machine: {env['machine']}, "
            f"{env['cpus']} CPUs, torch {env['torch']}, {env['threads']} threads{workers} (latest run). Accuracy in "
            "%, mean ± std (population) over the evaluation runs. Times in seconds, wall clock, shared machine.", ""]


TIME_NOTE = ("\"distill (s)\" is `Distiller.fit` with the teacher already trained (teachers are trained once and "
             "shared; see \"teacher (s)\"); \"barycenter share\" is the part of it spent in `loss.barycenter` "
             "(barycenter strategy only).")


def write_markdown(path: str, doc: Dict[str, Any], keys: Sequence[str], experiment: str) -> None:
    """The experiment's table(s) as Markdown, atomically."""
    rows = _rows(doc, keys)
    titles = {"main": "Distance backend vs distilled-set accuracy",
              "wass_vs_mmd": "Wasserstein vs MMD inside WMDD (WMDD paper, Fig. 4)",
              "exact_vs_sliced": "Exact vs sliced Wasserstein barycenters (WMDD paper, Table 4)",
              "ablation": "Feature loss × BN regulariser (WMDD paper, Table 3)",
              "lambda": "PCBN weight λ (WMDD paper, Fig. 5a)",
              "moments": "Moment distances of the synthetic sets (M3D paper, Table 1)"}
    lines = _header(doc, titles[experiment])
    if experiment == "moments":
        lines += _moments_table(doc, rows)
    else:
        lines += ["| backend | strategy | setting | IPC | protocol | accuracy | distill (s) | barycenter share "
                  "| teacher (s) |",
                  "|---|---|---|---:|---|---:|---:|---:|---:|"]
        for r in sorted(rows, key=lambda r: (r["ipc"], keys.index(r["key"]))):
            lines.append(f"| {r['backend']} | {r['strategy']} | {r['label']} | {r['ipc']} | {r['config']['eval_protocol']} "
                         f"| {pm(r['accuracies'])} | {_fmt_s(r['distill_seconds'])} | "
                         f"{_fmt_share(r['barycenter_share'])} | {_fmt_s(r['teacher_seconds'])} |")
        base = _baseline_rows(doc, rows)
        if base:
            lines += ["", "Baselines (same evaluation settings and seeds):", "",
                      "| IPC | row | accuracy | notes |", "|---:|---|---:|---|"]
            lines += [f"| {ipc} | {label} | {acc} | {note} |" for ipc, label, acc, note in sorted(base)]
        lines += ["", TIME_NOTE]
    missing = [e for e in doc.get("errors", {}).values()]
    if missing:
        lines += ["", "Failed cells (re-run to retry):", ""] + [f"- {e['label']}, IPC {e['ipc']}: `{e['error']}`"
                                                                 for e in missing]
    atomic_write_bytes(path, ("\n".join(lines) + "\n").encode())


def _moments_table(doc: Dict[str, Any], rows: List[Dict[str, Any]]) -> List[str]:
    lines = ["Distances between synthetic and real training features of the trained WMDD teacher, mean over "
             "classes (per class: synthetic weighted, real uniform). moment1 = ||mean_s − mean_r||, moment2 = "
             "||cov_s − cov_r||_F, moment3 = ||E(x−μ)³_s − E(x−μ)³_r|| over the diagonal of the 3rd central "
             "moment tensor (not standardised); see `ddmetrics/diagnose.py`.", ""]
    sample = next((r["diagnosis"] for r in rows if "diagnosis" in r), None)
    if sample is None:
        return lines
    metrics = sample["metrics"]
    moment_cols = [m for m in metrics if m.startswith("moment")]
    loss_cols = [m for m in metrics if not m.startswith("moment")]
    cols = moment_cols + loss_cols
    lines += ["| method | loss | IPC | " + " | ".join(cols) + " | accuracy | distill (s) |",
              "|---|---|---:|" + "---:|" * len(cols) + "---:|---:|"]

    def vals(diag):
        return " | ".join("-" if diag["mean_over_classes"].get(c) is None else f"{diag['mean_over_classes'][c]:.4g}"
                          for c in cols)

    for ref in doc.get("references", {}).values():
        lines.append(f"| {ref['label']} | - | {ref['ipc']} | {vals(ref['diagnosis'])} | - | - |")
    for r in rows:
        lines.append(f"| {r['label']} | {r['loss']} | {r['ipc']} | {vals(r['diagnosis'])} | {pm(r['accuracies'])} "
                     f"| {_fmt_s(r['distill_seconds'])} |")
    lines += ["", "Pooled (all classes at once, class proportions of the real data):", "",
              "| method | IPC | " + " | ".join(cols) + " |", "|---|---:|" + "---:|" * len(cols)]
    for ref in doc.get("references", {}).values():
        d = ref["diagnosis"]["overall"]
        lines.append(f"| {ref['label']} | {ref['ipc']} | " + " | ".join(
            "-" if d.get(c) is None else f"{d[c]:.4g}" for c in cols) + " |")
    for r in rows:
        d = r["diagnosis"]["overall"]
        lines.append(f"| {r['label']} | {r['ipc']} | " + " | ".join(
            "-" if d.get(c) is None else f"{d[c]:.4g}" for c in cols) + " |")
    return lines


def write_plot(path: str, doc: Dict[str, Any], keys: Sequence[str]) -> None:
    """Accuracy vs IPC, one line per backend × strategy, plus random subset and full data (PNG, atomic)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = _rows(doc, keys)
    fig, ax = plt.subplots(figsize=(9.5, 4.5), dpi=100)
    lines: Dict[str, List[Tuple[int, float, float]]] = {}
    for r in rows:
        m, s = mean_std(r["accuracies"])
        lines.setdefault(f"{r['backend']} / {r['strategy']}", []).append((r["ipc"], 100 * m, 100 * s))
    for i, (name, pts) in enumerate(sorted(lines.items())):
        pts.sort()
        x, y, e = zip(*pts)
        ax.errorbar(x, y, yerr=e, marker="o", ms=4, capsize=2, label=name,
                    linestyle="-" if name.endswith("barycenter") else "--")
    base: Dict[str, List[Tuple[int, float]]] = {}
    for ipc, label, acc, _ in _baseline_rows(doc, rows):
        if acc != "-":
            base.setdefault(label, []).append((ipc, float(acc.split(" ")[0])))
    for label, pts in sorted(base.items()):
        pts.sort()
        x, y = zip(*pts)
        color = {"full data": "black", "random subset (hard labels)": "dimgrey"}.get(label, "darkgrey")
        ax.plot(x, y, color=color, marker="s", linestyle=":" if label == "full data" else "-.", label=label)
    ipcs = sorted({r["ipc"] for r in rows})
    if len(ipcs) > 1:
        ax.set_xscale("log")
    ax.set_xticks(ipcs)
    ax.set_xticklabels([str(i) for i in ipcs])
    ax.set_xlabel("images per class (IPC)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"{doc['dataset']}: distance backend × matching strategy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


# --------------------------------------------------------------------------- CLI
def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--experiment", choices=EXPERIMENTS, default="main", help="which comparison (default: main)")
    p.add_argument("--backends", nargs="+", default=None, metavar="NAME",
                   help="registered losses for 'main' (default: all of ddm.available_losses())")
    p.add_argument("--ipc", nargs="+", type=int, default=None,
                   help="images per class (default per experiment: main 1 10 50, wass_vs_mmd 1 10, ...)")
    p.add_argument("--runs", type=int, default=None, help="evaluation runs per cell (default 3; --quick: 1)")
    p.add_argument("--seed", type=int, default=0, help="seed of the splits, distillation and evaluation")
    p.add_argument("--dataset", default="digits", help="'digits' or a path accepted by ddm.data.load")
    p.add_argument("--quick", action="store_true",
                   help="IPC 1, 1 run, iterations=20, eval_epochs=50, teacher_epochs=3, krdual steps=5 (smoke test)")
    p.add_argument("--out", default=None, metavar="PREFIX",
                   help="output prefix for .json/.md(/.png) (default benchmarks/results/metric_vs_accuracy for "
                        "main, benchmarks/results/<experiment> otherwise; '_quick' appended with --quick)")
    p.add_argument("--jobs", type=int, default=1, metavar="N",
                   help="worker processes (default 1: everything in this process, in plan order); N > 1: "
                        "teachers trained here first, then cells and baselines in N spawned workers")
    p.add_argument("--threads", type=int, default=None, metavar="T",
                   help="torch threads of this process (default: torch's, %d here); each of the --jobs workers "
                        "gets max(1, T // N)" % torch.get_num_threads())
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    if args.jobs < 1:
        p.error("--jobs must be positive")
    if args.threads is None:
        args.threads = torch.get_num_threads()
    if args.threads < 1:
        p.error("--threads must be positive")
    known = list(ddm.available_losses())
    if args.backends is None:
        args.backends = known
    unknown = [b for b in args.backends if b not in known]
    if unknown:
        p.error(f"unknown backend(s) {', '.join(unknown)}; registered: {', '.join(known)}")
    if args.ipc is None:
        args.ipc = [1] if args.quick else DEFAULT_IPC[args.experiment]
    if any(i < 1 for i in args.ipc):
        p.error("--ipc values must be positive")
    if args.runs is None:
        args.runs = 1 if args.quick else 3
    if args.runs < 1:
        p.error("--runs must be positive")
    if args.out is None:
        name = "metric_vs_accuracy" if args.experiment == "main" else args.experiment
        args.out = os.path.join(RESULTS, name + ("_quick" if args.quick else ""))
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    command = " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]) if argv is None else \
        " ".join(shlex.quote(a) for a in [sys.executable, os.path.relpath(__file__), *argv])
    overrides = dict(QUICK_OVERRIDES) if args.quick else {}
    cells = plan(args.experiment, args.backends, args.ipc, overrides, QUICK_LOSS_KWARGS if args.quick else None)
    start = time.perf_counter()
    runner = Runner(args, command)
    keys = runner.run(cells)
    write_markdown(args.out + ".md", runner.doc, keys, args.experiment)
    if args.experiment == "main":
        write_plot(args.out + ".png", runner.doc, keys)
    log = runner.run_log
    print(f"{args.experiment}: {log['new_cells']} new cells, {log['skipped_cells']} skipped, "
          f"{log['failed_cells']} failed, {log['new_baselines']} new baselines"
          + (f", {log['failed_baselines']} failed" if log["failed_baselines"] else "")
          + f" in {time.perf_counter() - start:.1f} s (--jobs {args.jobs}); wrote {args.out}.json, "
          f"{args.out}.md" + (f", {args.out}.png" if args.experiment == "main" else ""))
    return 1 if log["failed_cells"] or log["failed_baselines"] else 0


if __name__ == "__main__":
    sys.exit(main())
