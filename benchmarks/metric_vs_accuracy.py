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
full resolved ``DistillConfig`` and the evaluation settings). Cells already in the JSON are
skipped; the JSON is rewritten atomically after every cell, so an interrupted run resumes
where it stopped. Cells whose settings changed (e.g. a retuned preset) are recomputed; old
ones stay in the JSON but leave the tables.

Shared work: the teacher is trained once per distinct (teacher, epochs, augmentation, seed)
and handed to every barycenter cell that uses it (training is seeded, so this gives the same
teacher each cell would train itself; its time is reported separately, not in a cell's
"distill" time). The random-subset and full-data baselines are computed once per (IPC,
evaluation protocol/settings), during the first cell that needs them.

Usage::

    .venv/bin/python benchmarks/metric_vs_accuracy.py                    # main, all backends
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
import inspect
import io
import json
import os
import platform
import shlex
import statistics
import sys
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from tqdm.auto import tqdm

import ddmetrics as ddm
from ddmetrics._io import atomic_write_bytes, atomic_write_json
from ddmetrics.evaluate import random_subset

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
EVALUATE_PARAMS = set(inspect.signature(ddm.evaluate).parameters)


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


# --------------------------------------------------------------------------- the runner
class Runner:
    """Runs cells with resume, sharing teachers and baselines; owns the JSON document."""

    def __init__(self, args: argparse.Namespace, command: str):
        self.args = args
        self.json_path = args.out + ".json"
        self.splits = ddm.data.load(args.dataset, seed=args.seed)
        self.full_epochs = QUICK_FULL_EPOCHS if args.quick else None
        self.doc = self._load()
        self.doc["command"] = command
        self.doc["environment"] = {
            "python": platform.python_version(), "torch": torch.__version__, "machine": platform.machine(),
            "cpus": os.cpu_count(), "threads": torch.get_num_threads(), "platform": platform.platform()}
        self.run_log = {"command": command, "argv": sys.argv[1:], "started": now(), "new_cells": 0,
                        "skipped_cells": 0, "failed_cells": 0}
        self.doc.setdefault("runs_log", []).append(self.run_log)
        self._teachers: Dict[str, Tuple[torch.nn.Module, float]] = {}

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
        return {"model": cfg.eval_model, "protocol": cfg.eval_protocol, "epochs": cfg.eval_epochs, "lr": cfg.eval_lr,
                "temperature": cfg.temperature, "runs": self.args.runs, "seed": self.args.seed,
                "full_epochs": self.full_epochs}

    def teacher_settings(self, cfg) -> Dict[str, Any]:
        return {"teacher": cfg.teacher, "teacher_epochs": cfg.teacher_epochs, "augment": cfg.augment,
                "seed": self.args.seed, "dataset": self.args.dataset}

    def cell_key(self, cell: Cell, distiller: ddm.Distiller) -> str:
        return settings_key({"backend": cell.backend, "strategy": cell.strategy, "method": cell.method,
                             "ipc": cell.ipc, "dataset": self.args.dataset, "config": distiller.config.to_dict(),
                             "eval": self.eval_settings(distiller.config), "diagnose": cell.diagnose})

    def baseline_key(self, ipc: int, cfg) -> str:
        settings = {"ipc": ipc, "dataset": self.args.dataset, "eval": self.eval_settings(cfg)}
        if cfg.eval_protocol == "soft":
            settings["teacher"] = self.teacher_settings(cfg)
        return settings_key(settings)

    # -- shared pieces
    def teacher_for(self, distiller: ddm.Distiller) -> Tuple[torch.nn.Module, float, str]:
        """The (cached) teacher of ``distiller``'s settings, its training seconds and key."""
        key = settings_key(self.teacher_settings(distiller.config))
        if key not in self._teachers:
            start = time.perf_counter()
            teacher = distiller.train_teacher(self.splits.train, self.splits.num_classes, progress=False)
            self._teachers[key] = (teacher, time.perf_counter() - start)
        return self._teachers[key][0], self._teachers[key][1], key

    def needs_teacher(self, distiller: ddm.Distiller, cell: Cell) -> bool:
        cfg = distiller.config
        return cfg.strategy == "barycenter" or cfg.eval_protocol == "soft" or cell.diagnose

    # -- one cell
    def run_cell(self, cell: Cell) -> Tuple[str, bool]:
        """Run ``cell`` unless its key is in the JSON; returns (key, ran)."""
        args = self.args
        distiller = cell.distiller(args.seed)
        key = self.cell_key(cell, distiller)
        if key in self.doc["cells"]:
            return key, False
        cfg = distiller.config
        teacher_seconds, teacher_key = None, None
        if self.needs_teacher(distiller, cell):
            # the preset's own teacher: a DM/M3D cell (no teacher of its own) is diagnosed with WMDD's
            source = distiller if cfg.strategy == "barycenter" or cfg.eval_protocol == "soft" else \
                ddm.Distiller(method="wmdd", ipc=cell.ipc, seed=args.seed,
                              **{k: v for k, v in cell.overrides.items() if k in ("teacher_epochs",)})
            teacher, teacher_seconds, teacher_key = self.teacher_for(source)
            if source is distiller:
                distiller.teacher_ = teacher
        else:
            teacher = None
        start = time.perf_counter()
        syn = distiller.fit(self.splits.train, progress=False)
        distill_seconds = time.perf_counter() - start
        bkey = self.baseline_key(cell.ipc, cfg)
        need_baseline = bkey not in self.doc["baselines"]
        kw: Dict[str, Any] = {} if self.full_epochs is None else {"full_epochs": self.full_epochs}
        if need_baseline and cfg.eval_protocol == "soft" and "random_hard" in EVALUATE_PARAMS:
            kw["random_hard"] = True  # the papers' baseline: random real images, hard labels
        report = ddm.evaluate(syn, self.splits.test, train_set=self.splits.train if need_baseline else None,
                              model=cfg.eval_model, runs=args.runs, protocol=cfg.eval_protocol,
                              teacher=distiller.teacher_ if cfg.eval_protocol == "soft" else None,
                              epochs=cfg.eval_epochs, lr=cfg.eval_lr, temperature=cfg.temperature, seed=args.seed,
                              progress=False, **kw)
        rep = report.to_dict()
        if need_baseline:
            self.doc["baselines"][bkey] = self._baseline_entry(cell.ipc, cfg, rep, teacher_key)
        bary = (syn.meta.get("info") or {}).get("barycenter_seconds")
        entry = {
            "key": key, "experiment": cell.experiment, "label": cell.label, "backend": cell.backend,
            "strategy": cell.strategy, "method": cell.method, "loss": syn.meta.get("loss"), "ipc": cell.ipc,
            "seed": args.seed, "runs": args.runs, "overrides": cell.overrides, "config": cfg.to_dict(),
            "eval": self.eval_settings(cfg), "baseline_key": bkey,
            "accuracies": rep["runs"], "mean": rep["mean"], "std": rep["std"],
            "distill_seconds": distill_seconds, "barycenter_seconds": bary,
            "barycenter_share": (bary / distill_seconds) if bary is not None and distill_seconds > 0 else None,
            "teacher_key": teacher_key, "teacher_seconds": teacher_seconds,
            "eval_seconds": rep["seconds"].get("evaluate"), "timings": syn.meta.get("timings"),
            "info": syn.meta.get("info"), "finished": now(),
        }
        if cell.diagnose:
            from ddmetrics.diagnose import diagnose

            start = time.perf_counter()
            entry["diagnosis"] = diagnose(syn, self.splits.train, teacher).to_dict()
            entry["diagnose_seconds"] = time.perf_counter() - start
        self.doc["cells"][key] = entry
        self.doc["errors"].pop(key, None)
        return key, True

    def _baseline_entry(self, ipc: int, cfg, rep: Dict[str, Any], teacher_key: Optional[str]) -> Dict[str, Any]:
        return {"ipc": ipc, "protocol": cfg.eval_protocol, "eval": self.eval_settings(cfg), "teacher_key": teacher_key,
                "random_runs": rep["random_runs"], "random_hard_runs": rep["random_hard_runs"], "full": rep["full"],
                "seconds": {k: v for k, v in rep["seconds"].items() if k != "evaluate"}, "finished": now()}

    def run(self, cells: List[Cell]) -> List[str]:
        """Run every cell (resuming), then fill the moments experiment's random-subset reference."""
        keys: List[str] = []
        bar = tqdm(cells, desc=f"{self.args.experiment} cells", disable=self.args.no_progress, unit="cell")
        for cell in bar:
            bar.set_postfix_str(f"{cell.label}, IPC {cell.ipc}")
            try:
                key, ran = self.run_cell(cell)
            except KeyboardInterrupt:
                self.save()
                raise
            except Exception as err:  # one broken backend must not lose the other cells
                key = f"error:{cell.label}:{cell.ipc}"
                self.doc["errors"][key] = {"label": cell.label, "ipc": cell.ipc, "error": repr(err),
                                           "traceback": traceback.format_exc(limit=6), "when": now()}
                self.run_log["failed_cells"] += 1
                tqdm.write(f"cell {cell.label!r} IPC {cell.ipc} failed: {err!r}")
                self.save()
                continue
            keys.append(key)
            if ran:
                self.run_log["new_cells"] += 1
                self.save()
            else:
                self.run_log["skipped_cells"] += 1
        if self.args.experiment == "moments":
            self._random_reference(cells)
        self.save()
        return keys

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
            teacher, _, tkey = self.teacher_for(probe)
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
        note = f"{ev['model']}, {ev['epochs']} epochs"
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
    return [f"# {title}", "",
            f"Command: `{doc['command']}`", "",
            f"Dataset: {doc['dataset']} (train split distilled, test split evaluated). Machine: {env['machine']}, "
            f"{env['cpus']} CPUs, torch {env['torch']}, {env['threads']} threads. Accuracy in %, mean ± std "
            "(population) over the evaluation runs. Times in seconds, wall clock, shared machine.", ""]


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
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
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
          f"{log['failed_cells']} failed in {time.perf_counter() - start:.1f} s; wrote {args.out}.json, "
          f"{args.out}.md" + (f", {args.out}.png" if args.experiment == "main" else ""))
    return 1 if log["failed_cells"] else 0


if __name__ == "__main__":
    sys.exit(main())
