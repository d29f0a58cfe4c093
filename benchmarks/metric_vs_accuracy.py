#!/usr/bin/env python
"""Distilled-set accuracy against the distribution distance, and the WMDD / M3D paper comparisons.

Experiments (``--experiment``):

``main`` (default; on ``--dataset mnist`` by default, ``--quick`` on digits)
    in named parts (``--part``, default all; :data:`MAIN_PARTS`):

    - ``ipc1`` / ``ipc10`` / ``ipc50``: every registered backend (``--backends``, default all of
      ``ddm.available_losses()``) × strategy {barycenter = ``method="wmdd"`` with that loss,
      distribution = ``method="dm"`` with that loss} at that IPC;
    - ``baselines``: coresets herding and k-center (greedy, on the WMDD teacher's features) ×
      {hard, soft} labels at IPC 1 10 50, with the random subsets (hard / soft) and the full-data model;
    - ``presets``: DM, M3D, KR-dual, WMDD and SRe²L presets, each under its paper's evaluation
      protocol (``hard``: DM's code; ``soft``: train_FKD; ``sre2l_small``: SRe²L's CIFAR relabelling)
      and under the protocol of the other labels (``soft`` for a hard-label paper, ``hard`` for a
      soft-label one), IPC 10: the soft-label gain and the method gain in one table;
    - ``ablation``: WMDD Table 3 as its release runs it (:data:`ABLATION`), IPC 10.

    Every cell gets ``--runs`` evaluation runs (default 3; ``--runs-ipc1``, default 5 on mnist, at
    IPC 1) with student seeds seed .. seed + n − 1 in every cell, so runs are paired. Writes
    ``<out>.json``, ``<out>.md`` (every part's finished cells, mean ± std and the paired difference
    with a 95 % t interval against the best row of the IPC and against the random subset with
    the same labels; partial results say so) and ``<out>.png`` (one panel per strategy). A part's
    run re-renders the others' cells from the JSON. On mnist the cells get
    :data:`DATASET_CUTS` (teacher 4 epochs, 100 synthesis iterations, students 300 / 60 / 20
    epochs at IPC 1 / 10 / 50, full-data model 5 epochs; each only where the cell's configuration
    uses it), measured by ``benchmarks/mnist_validation.py`` on the mnist validation split for the
    pipelines before issue 24 (ConvNet teachers and students), not re-measured for the released ones.
``wass_vs_mmd``
    WMDD Fig. 4: ``wasserstein`` vs ``mmd`` inside WMDD, with augmentation (the preset) and
    without (``augment=None``, hard-label evaluation), IPC 1 and 10.
``exact_vs_sliced``
    WMDD Table 4: accuracy and time of exact (``wasserstein``) vs ``sliced`` barycenters.
``ablation``
    WMDD Table 3 as its release runs it (:data:`ABLATION`): the PCBN rows by
    ``data_synthesis_new.py`` (the preset: barycenter term + cross-entropy; without ``--wb`` the
    cross-entropy alone, ``feature_loss="none"``), the BN rows by ``data_synthesis.py`` (slots of one
    image per class, the teacher's running statistics, first BN layer ×10; the barycenter term
    alone, or the cross-entropy alone), IPC 10.
``lambda``
    WMDD Fig. 5a: ``reg_weight`` λ in 0.1, 1, 10, 100, 1000, IPC 10.
``weight_rule``
    WMDD (the preset with learned barycenter weights, ``learn_weights=True``: the release keeps
    them uniform) with the exact barycenter's weights in closed form (``weight_update="exact"``,
    the default) and by the paper's mirror descent (``"mirror"``), paired, IPC 10 and 50 (at IPC 1
    a class has one atom, of weight 1, under both rules).
``study``
    The headline question: which distance between a synthetic set and the real data predicts the
    accuracy the set buys (``benchmarks/_study.py``: its own phases, options and JSON;
    ``--experiment study --help``).
``moments``
    M3D Table 1: DM, M3D and WMDD sets (their presets) at IPC 10; distances between the
    synthetic and real *training* features of the trained WMDD teacher (1st, 2nd, 3rd moments
    and every backend, :func:`ddmetrics.diagnose.diagnose`), next to a random real subset.

Every cell distils the training split of ``--dataset`` (digits unless said) (``Distiller(...).fit``) and trains ``--runs``
fresh students on the result, tested on the test split (``ddm.evaluate`` with
``Distiller.config.evaluation_kwargs()``: the preset's named protocol and its overrides).
Settings not named by an experiment are the presets' (``ddmetrics/distill/presets.py``: each
method's released pipeline; a backend that is not the preset's own loss gets its defaults).
A cut (``--quick``, :data:`DATASET_CUTS`) sets a field only in the cells whose configuration uses
it (a teacher's epochs are not given to DM under hard labels: the preset would refuse them).

This file is the plan (:data:`EXPERIMENTS`: which cells, which settings, which table) and the
command line; the cells run through ``_runner.py`` (resumable JSON store, teacher cache, shared
baselines, ``--jobs``) and the reports are written by ``_report.py``.

Resuming: each cell is keyed by a hash of (backend, strategy, method, IPC, seed, runs, the
full resolved ``DistillConfig``, its loss settings included, and the evaluation settings). Cells (and baselines) already in
the JSON are skipped; the JSON is rewritten atomically after every finished cell or baseline
part, so an interrupted run (Ctrl-C included) resumes where it stopped. Cells whose settings
changed (e.g. a retuned preset) are recomputed; old ones stay in the JSON but leave the tables.

Shared work: the teacher is trained once per distinct (teacher, recipe and its epochs, seed)
and handed to every cell that uses it (barycenter cells, and soft-label cells for their students'
labels; training is seeded, so this gives the same
teacher each cell would train itself; its time is reported separately, not in a cell's
"distill" time). The random-subset and full-data baselines are computed once per (IPC,
evaluation protocol/settings), as tasks of their own (with ``ddmetrics.evaluate``'s
``random_subset``, ``train_student`` and ``full_data_accuracy``, same seeds, so the numbers are
those ``evaluate(..., train_set=...)`` reports): the random subset under the cell's
protocol (``--runs`` seeds), for a soft-label protocol also with hard labels (the papers' baseline:
the same recipe, not the hard protocol's), and the full-data model; a part two baselines share
(e.g. the full-data model of two protocols with the same student model) is computed once.

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

    .venv/bin/python benchmarks/metric_vs_accuracy.py --jobs 2 --part baselines   # mnist, one part
    .venv/bin/python benchmarks/metric_vs_accuracy.py --jobs 2 --part ipc1
    .venv/bin/python benchmarks/metric_vs_accuracy.py --render-only                # re-write .md/.png
    .venv/bin/python benchmarks/metric_vs_accuracy.py --experiment ablation --dataset mnist
    .venv/bin/python benchmarks/metric_vs_accuracy.py                    # main, all parts, all backends
    .venv/bin/python benchmarks/metric_vs_accuracy.py --jobs 2           # the same, 2 worker processes
    .venv/bin/python benchmarks/metric_vs_accuracy.py --quick            # smoke test, < 3 min
    .venv/bin/python benchmarks/metric_vs_accuracy.py --experiment ablation --runs 5
    .venv/bin/python benchmarks/metric_vs_accuracy.py --backends wasserstein sliced --ipc 1 10

``--quick`` (:data:`QUICK`): IPC 1 only, 1 run, ``iterations=20``, ConvNet-BN students for
``eval_epochs=50`` (``eval_model="convnet_bn"``) and a ConvNet-BN teacher for ``teacher_epochs=3``
(the presets' soft-label pipelines: ResNet-18s), 3 full-data epochs, and one smoke-test cut of the loss settings: ``krdual`` with
``loss_kwargs={"steps": 5}`` (its other settings the loss's defaults). Accuracies are then only a
smoke signal (a 3-epoch teacher gives poor soft labels); the default output prefix gets a
``_quick`` suffix so that it never mixes with the real results.
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:  # the shared helpers sit next to this script (also when it is loaded by path)
    sys.path.insert(0, HERE)

import torch  # noqa: E402

import ddmetrics as ddm  # noqa: E402
from ddmetrics._extras import require_extra  # noqa: E402
from ddmetrics.distill.presets import applies, preset  # noqa: E402
from ddmetrics.protocols import get_protocol  # noqa: E402

from _common import RESULTS, command_line  # noqa: E402
from _report import write_markdown, write_plot  # noqa: E402
from _runner import Cell, ResultStore, Runner, RunSettings, cell_key  # noqa: E402


# --------------------------------------------------------------------------- the --quick cut
@dataclass(frozen=True)
class QuickSettings:
    """The smoke-test cut: what ``--quick`` changes, and nothing else.

    ``overrides`` are DistillConfig fields applied to every cell that uses them, ``full_epochs`` the
    full-data model's epochs, ``loss_kwargs`` explicit per-loss ``loss_kwargs`` for the cells that name
    that loss (the real runs use the loss's defaults there).
    """

    overrides: Dict[str, Any] = field(default_factory=dict)
    full_epochs: Optional[int] = None
    loss_kwargs: Dict[str, Dict[str, Any]] = field(default_factory=dict)


QUICK = QuickSettings(
    overrides={"iterations": 20, "eval_model": "convnet_bn", "eval_epochs": 50, "teacher_arch": "convnet_bn",
               "teacher_epochs": 3},
    full_epochs=3,
    # the KR critic's steps per call dominate everything else in a ~60 s smoke run
    loss_kwargs={"krdual": {"steps": 5}},
)


# --------------------------------------------------------------------------- the experiments
#: ``add(label, backend, strategy, method, extra=None, loss="same", diagnose=False)``: one cell
#: at the IPC being planned (``loss="same"``: the backend; ``None``: the preset's own loss)
AddCell = Callable[..., None]
STRATEGY_METHOD = {"barycenter": "wmdd", "distribution": "dm"}
LAMBDAS = (0.1, 1.0, 10.0, 100.0, 1000.0)


def _main_cells(add: AddCell, backends: Sequence[str], overrides: Dict[str, Any]) -> None:
    for backend in backends:
        for strategy, method in STRATEGY_METHOD.items():
            add(f"{backend} / {strategy}", backend, strategy, method)


def _coreset_cells(add: AddCell, backends: Sequence[str], overrides: Dict[str, Any]) -> None:
    # the random subset (hard and soft labels) comes with every cell's baselines
    for kind in CORESETS:
        for protocol in ("hard", "soft"):
            add(f"{kind} ({protocol} labels)", kind, "coreset", "wmdd", {"eval_protocol": protocol}, loss=None,
                kind=kind)


def _preset_label(method: str, protocol: str, paper_protocol: str) -> str:
    name = method.upper().replace("SRE2L", "SRe²L").replace("KRDUAL", "KR-dual")
    return f"{name} ({protocol} protocol{' = paper' if protocol == paper_protocol else ''})"


#: the protocol of the other labels a preset is also evaluated with: DM's code for a soft-label paper,
#: train_FKD's soft labels for a hard-label one
OTHER_LABELS = {"soft": "hard", "hard": "soft"}


def _preset_cells(add: AddCell, backends: Sequence[str], overrides: Dict[str, Any]) -> None:
    # each preset under the other labels' protocol is compared with itself under its paper's: the gain of the labels
    for method in PRESET_METHODS:
        own = preset(method)
        paper = _preset_label(method, own.eval_protocol, own.eval_protocol)
        for protocol in (own.eval_protocol, OTHER_LABELS[get_protocol(own.eval_protocol).labels]):
            label = _preset_label(method, protocol, own.eval_protocol)
            add(label, own.loss, own.strategy, method, {"eval_protocol": protocol}, loss=None,
                compare="" if label == paper else paper)


def _wass_vs_mmd_cells(add: AddCell, backends: Sequence[str], overrides: Dict[str, Any]) -> None:
    for variant, extra in (("augmented, soft labels", {}),
                           ("no augmentation, hard labels", {"augment": None, "eval_protocol": "hard"})):
        for backend in ("wasserstein", "mmd"):
            add(f"{backend} ({variant})", backend, "barycenter", "wmdd", extra)


def _exact_vs_sliced_cells(add: AddCell, backends: Sequence[str], overrides: Dict[str, Any]) -> None:
    for backend in ("wasserstein", "sliced"):
        add(backend, backend, "barycenter", "wmdd")


#: WMDD's ablation script (recover/data_synthesis.py, run.sh without -n): slots of one image per class
#: against the teacher's running BatchNorm statistics, the first BN layer x10
_BN_SCRIPT = {"reg": "bn", "bn_stats": "running", "synthesis_batch": "slot", "first_bn_weight": 10.0}
#: WMDD Table 3 as released (label, overrides of the wmdd preset): "Wass." is the barycenter term, with the
#: cross-entropy in the PCBN script (the preset) and without it in the BN script; "CE" is the cross-entropy alone
ABLATION = (("Wass. + PCBN (preset)", {}),
            ("CE + PCBN", {"feature_loss": "none", "ce_weight": 1.0}),
            ("Wass. + BN", {**_BN_SCRIPT, "ce_weight": 0.0}),
            ("CE + BN", {**_BN_SCRIPT, "feature_loss": "none", "ce_weight": 1.0}))


def _ablation_cells(add: AddCell, backends: Sequence[str], overrides: Dict[str, Any]) -> None:
    # every row against the preset's (barycenter + CE + PCBN), paired
    reference = ABLATION[0][0]
    for label, extra in ABLATION:
        # the CE rows compare no distributions: a loss given to them is refused (it would be ignored)
        loss = None if extra.get("feature_loss") == "none" else "wasserstein"
        add(label, "wasserstein", "barycenter", "wmdd", extra, loss=loss,
            compare="" if label == reference else reference)


def _weight_rule_cells(add: AddCell, backends: Sequence[str], overrides: Dict[str, Any]) -> None:
    # the exact barycenter's weights: closed form (the default) against the paper's mirror descent, paired
    closed = "closed-form weights (default)"
    for label, rule in ((closed, "exact"), ("mirror-descent weights (the paper's)", "mirror")):
        # the rules differ only where the weights are learned (the preset, as released, keeps them uniform)
        add(label, "wasserstein", "barycenter", "wmdd", {"learn_weights": True, "loss_kwargs": {"weight_update": rule}},
            compare="" if label == closed else closed)


def _lambda_cells(add: AddCell, backends: Sequence[str], overrides: Dict[str, Any]) -> None:
    for lam in LAMBDAS:
        add(f"lambda={lam:g}", "wasserstein", "barycenter", "wmdd", {"reg_weight": lam})


def _moments_cells(add: AddCell, backends: Sequence[str], overrides: Dict[str, Any]) -> None:
    for method in ("dm", "m3d", "wmdd"):
        cfg = preset(method)  # the preset's loss and strategy
        add(method.upper(), cfg.loss, cfg.strategy, method, loss=None, diagnose=True)


CORESETS = ("herding", "kcenter")
PRESET_METHODS = ("dm", "m3d", "krdual", "wmdd", "sre2l")


@dataclass(frozen=True)
class Part:
    """A named slice of an experiment's plan (``--part``): its cells, its IPCs and its table section."""

    description: str
    cells: Callable[[AddCell, Sequence[str], Dict[str, Any]], None]
    ipcs: Tuple[int, ...]
    section: str


@dataclass(frozen=True)
class DatasetCut:
    """Settings a dataset's cells get over the presets' (before the experiment's own and --quick's):
    ``overrides`` for every cell, ``eval_epochs`` by IPC. Chosen on that dataset's validation split."""

    overrides: Dict[str, Any] = field(default_factory=dict)
    eval_epochs: Dict[int, int] = field(default_factory=dict)
    full_epochs: Optional[int] = None  # the full-data model's (None: full_data_accuracy's 20)

    def settings(self, ipc: int) -> Dict[str, Any]:
        return {**self.overrides, **({"eval_epochs": self.eval_epochs[ipc]} if ipc in self.eval_epochs else {})}


#: ``--dataset`` -> its cut (``benchmarks/mnist_validation.py``, ``results/mnist_validation.md``, measured for
#: the pipelines before issue 24): mnist's 3,600 28×28 training images cost ~50× digits' per step; the
#: presets' teachers (50 epochs of WMDD's recipe), synthesis (1000 to 20 000 iterations) and students (300 to
#: 2000 epochs) do not fit a CPU. Each field reaches only the cells whose configuration uses it
DATASET_CUTS: Dict[str, DatasetCut] = {
    "mnist": DatasetCut(overrides={"teacher_epochs": 4, "iterations": 100},
                        eval_epochs={1: 300, 10: 60, 50: 20}, full_epochs=5),
}

#: the main experiment's parts (``--part``), in table order; without --part all run (--quick: the
#: backend × strategy cells at IPC 1 only)
MAIN_PARTS: Dict[str, Part] = {
    "ipc1": Part("every backend × strategy {barycenter, distribution}, IPC 1", _main_cells, (1,),
                 "Distance backend × matching strategy"),
    "ipc10": Part("every backend × strategy, IPC 10", _main_cells, (10,), "Distance backend × matching strategy"),
    "ipc50": Part("every backend × strategy, IPC 50", _main_cells, (50,), "Distance backend × matching strategy"),
    "baselines": Part("coresets herding / k-center (WMDD teacher features) × {hard, soft} labels, IPC 1 10 50; "
                      "their random subsets and the full-data model", _coreset_cells, (1, 10, 50),
                      "Coresets (real images; random subset = the baselines below)"),
    "presets": Part("DM / M3D / KR-dual / WMDD / SRe²L presets, each under its paper's protocol and the other "
                    "labels' (hard: DM's code, soft: train_FKD), IPC 10",
                    _preset_cells, (10,), "Method presets under their paper's protocol and the other labels'"),
    "ablation": Part("WMDD Table 3 as released: {Wass., CE} × {PCBN, BN}, IPC 10", _ablation_cells, (10,),
                     "WMDD ablation: feature loss × BN regulariser"),
}
BACKEND_PARTS = ("ipc1", "ipc10", "ipc50")


@dataclass(frozen=True)
class Experiment:
    """One comparison: its cells (``cells(add, backends, overrides)``, called once per IPC), its
    default IPCs, the Markdown title and table layout (``_report.TABLES``), whether it plots
    accuracy vs IPC, and whether it adds the random-subset diagnosis references."""

    title: str
    cells: Callable[[AddCell, Sequence[str], Dict[str, Any]], None]
    default_ipc: Tuple[int, ...]
    table: str = "cells"
    plot: bool = False
    references: bool = False
    out_name: Optional[str] = None  # default: the experiment's name
    parts: Dict[str, Part] = field(default_factory=dict)

    def outputs(self, prefix: str) -> List[str]:
        return [prefix + ".json", prefix + ".md"] + ([prefix + ".png"] if self.plot else [])


EXPERIMENTS: Dict[str, Experiment] = {
    "main": Experiment("Distance backend vs distilled-set accuracy", _main_cells, (1, 10, 50), table="ci",
                       plot=True, out_name="metric_vs_accuracy", parts=MAIN_PARTS),
    "wass_vs_mmd": Experiment("Wasserstein vs MMD inside WMDD (WMDD paper, Fig. 4)", _wass_vs_mmd_cells, (1, 10)),
    "exact_vs_sliced": Experiment("Exact vs sliced Wasserstein barycenters (WMDD paper, Table 4)",
                                  _exact_vs_sliced_cells, (1, 10, 50)),
    "ablation": Experiment("Feature loss × BN regulariser (WMDD paper, Table 3, as released)", _ablation_cells,
                           (10,)),
    "lambda": Experiment("PCBN weight λ (WMDD paper, Fig. 5a)", _lambda_cells, (10,)),
    "weight_rule": Experiment("WMDD with the exact barycenter's weights in closed form vs by mirror descent",
                              _weight_rule_cells, (10, 50), table="ci"),
    "moments": Experiment("Moment distances of the synthetic sets (M3D paper, Table 1)", _moments_cells, (10,),
                          table="moments", references=True),
}


def applying(method: str, loss: Optional[str], cut: Dict[str, Any], extra: Dict[str, Any]) -> Dict[str, Any]:
    """The settings of ``cut`` that the cell ``method`` with ``loss`` and its own settings ``extra`` uses
    (:func:`ddmetrics.distill.presets.applies`): a cut is a budget for every cell, and a field given
    to a configuration that does not use it is refused."""
    cfg = preset(method, loss=loss, **extra)
    return {name: value for name, value in cut.items() if name not in extra and applies(cfg, name)}


def plan(experiment: str, backends: Sequence[str], ipcs: Optional[Sequence[int]], overrides: Dict[str, Any],
         loss_kwargs: Optional[Dict[str, Dict[str, Any]]] = None, parts: Optional[Sequence[str]] = None,
         dataset: str = "digits") -> List[Cell]:
    """The cells of ``experiment``, IPC by IPC (part by part for an experiment with parts).

    ``overrides`` (e.g. the --quick settings) apply to every cell that uses them (:func:`applying`), over
    ``dataset``'s :data:`DATASET_CUTS`; ``loss_kwargs`` maps a loss name to explicit ``loss_kwargs`` for the cells
    that name that loss. ``parts`` (default: all) picks parts of an experiment that has them;
    ``ipcs`` (default: each part's, or the experiment's) restricts the IPCs.
    """
    if experiment not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {experiment!r}; valid: {', '.join(EXPERIMENTS)}")
    exp = EXPERIMENTS[experiment]
    cut = DATASET_CUTS.get(dataset, DatasetCut())
    if exp.parts:
        unknown = [p for p in (parts or ()) if p not in exp.parts]
        if unknown:
            raise ValueError(f"unknown part(s) {', '.join(unknown)}; valid: {', '.join(exp.parts)}")
        chosen = [(name, exp.parts[name]) for name in (parts or exp.parts)]
    else:
        if parts:
            raise ValueError(f"experiment {experiment!r} has no parts")
        chosen = [(experiment, Part(exp.title, exp.cells, exp.default_ipc, exp.title))]
    cells: List[Cell] = []
    loss_kwargs = loss_kwargs or {}
    for name, part in chosen:
        for ipc in (part.ipcs if ipcs is None else [i for i in ipcs if not exp.parts or i in part.ipcs]):
            def add(label, backend, strategy, method, extra=None, loss="same", diagnose=False, kind="distill",
                    compare="", ipc=ipc, part=name, section=part.section):
                loss = backend if loss == "same" else loss
                settings = {**applying(method, loss, {**cut.settings(ipc), **overrides}, extra or {}),
                            **(extra or {})}
                if loss is not None and loss in loss_kwargs:
                    settings["loss_kwargs"] = dict(loss_kwargs[loss])
                cells.append(Cell(experiment, label, backend, strategy, method, ipc, settings, loss=loss,
                                  diagnose=diagnose, kind=kind, part=part, section=section, compare=compare))

            part.cells(add, backends, overrides)
    return cells


# --------------------------------------------------------------------------- CLI
def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--experiment", choices=list(EXPERIMENTS), default="main", help="which comparison (default: main)")
    p.add_argument("--backends", nargs="+", default=None, metavar="NAME",
                   help="registered losses for 'main' (default: all of ddm.available_losses())")
    p.add_argument("--ipc", nargs="+", type=int, default=None,
                   help="images per class (default per experiment: main 1 10 50, wass_vs_mmd 1 10, ...)")
    p.add_argument("--runs", type=int, default=None, help="evaluation runs per cell (default 3; --quick: 1)")
    p.add_argument("--runs-ipc1", type=int, default=None, metavar="N",
                   help="evaluation runs per cell at IPC 1 (default 5 on mnist, else --runs; --quick: 1)")
    p.add_argument("--part", nargs="+", default=None, metavar="NAME",
                   help="parts of the main experiment (default: all; --quick: the backend cells): "
                        + "; ".join(f"{k}: {v.description}" for k, v in MAIN_PARTS.items()))
    p.add_argument("--seed", type=int, default=0, help="seed of the splits, distillation and evaluation")
    p.add_argument("--dataset", default=None,
                   help="'mnist', 'digits' or a path accepted by ddm.data.load (default: mnist for main, digits for "
                        "--quick and the other experiments); mnist cells get the cuts of DATASET_CUTS")
    p.add_argument("--quick", action="store_true",
                   help="IPC 1, 1 run, iterations=20, convnet_bn students for 50 epochs, a convnet_bn teacher for "
                        "3 epochs, krdual steps=5 (smoke test)")
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
    p.add_argument("--render-only", action="store_true",
                   help="run nothing: re-write the .md (and .png) from the existing .json, for the cells the "
                        "other options plan (give the options of the run that made it)")
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
    if args.dataset is None:
        args.dataset = "mnist" if args.experiment == "main" and not args.quick else "digits"
    # an extra that is missing fails now, not after hours of cells
    uninstalled = ddm.losses.missing_losses()
    needs = [f"backend {b}: {uninstalled[b]}" for b in args.backends if b in uninstalled]
    try:
        ddm.data.check_source(args.dataset)
        if EXPERIMENTS[args.experiment].plot:
            require_extra("plots", f"experiment {args.experiment!r} (its figure)")
    except ModuleNotFoundError as err:
        needs.append(str(err))
    if needs:
        p.error("not installed: " + "; ".join(needs) + " (install it, or choose other --backends / --dataset)")
    if args.part is not None:
        if not EXPERIMENTS[args.experiment].parts:
            p.error(f"--part: experiment {args.experiment!r} has no parts")
        unknown = [x for x in args.part if x not in MAIN_PARTS]
        if unknown:
            p.error(f"unknown part(s) {', '.join(unknown)}; valid: {', '.join(MAIN_PARTS)}")
    elif args.quick and EXPERIMENTS[args.experiment].parts:
        args.part = list(BACKEND_PARTS)
    if args.ipc is None and args.quick:
        args.ipc = [1]
    if args.ipc is not None and any(i < 1 for i in args.ipc):
        p.error("--ipc values must be positive")
    if args.runs is None:
        args.runs = 1 if args.quick else 3
    if args.runs < 1:
        p.error("--runs must be positive")
    if args.runs_ipc1 is None:
        args.runs_ipc1 = 1 if args.quick else (5 if args.dataset == "mnist" else args.runs)
    if args.runs_ipc1 < 1:
        p.error("--runs-ipc1 must be positive")
    if args.out is None:
        name = EXPERIMENTS[args.experiment].out_name or args.experiment
        if args.dataset != "digits":  # the committed digits results keep their names
            name = os.path.basename(os.path.normpath(args.dataset)) + "_" + name
        args.out = os.path.join(RESULTS, name + ("_quick" if args.quick else ""))
    return args


def write_reports(experiment: Experiment, prefix: str, doc: Dict[str, Any], cells: Sequence[Cell],
                  run: RunSettings) -> List[str]:
    """``<prefix>.md`` (and ``.png`` for a plotting experiment) from the document's results for the
    planned ``cells`` (all parts: a part's run re-renders what the others finished); their keys."""
    keys = [cell_key(c, c.distiller(run.seed).config, run) for c in cells]
    entries = [{"key": k, "label": c.label, "section": c.section, "part": c.part, "ipc": c.ipc,
                "compare": c.compare} for k, c in zip(keys, cells)]
    write_markdown(prefix + ".md", doc, keys, experiment.title, experiment.table, entries=entries)
    if experiment.plot:
        write_plot(prefix + ".png", doc, keys, entries=entries)
    return keys


def main(argv: Optional[Sequence[str]] = None) -> int:
    given = list(sys.argv[1:] if argv is None else argv)
    if given[:2] == ["--experiment", "study"] or given[:1] == ["--experiment=study"]:
        import _study  # the headline study keeps its own phases and JSON (see its docstring)
        return _study.main(given[2:] if given[0] == "--experiment" else given[1:])
    args = parse_args(argv)
    # relative to the repo root, as every benchmark records it (no machine folders in committed results)
    command = command_line() if argv is None else shlex.join(["python", "benchmarks/metric_vs_accuracy.py", *argv])
    experiment = EXPERIMENTS[args.experiment]
    quick = QUICK if args.quick else QuickSettings()
    cells = plan(args.experiment, args.backends, args.ipc, dict(quick.overrides), quick.loss_kwargs, args.part,
                 args.dataset)
    # the report covers every part at every IPC (of the same backends), finished or not
    everything = cells if not experiment.parts or args.quick else \
        plan(args.experiment, args.backends, None, dict(quick.overrides), quick.loss_kwargs, None, args.dataset)
    run = RunSettings(experiment=args.experiment, json_path=args.out + ".json", dataset=args.dataset, seed=args.seed,
                      runs=args.runs, full_epochs=quick.full_epochs if args.quick else
                      DATASET_CUTS.get(args.dataset, DatasetCut()).full_epochs, jobs=args.jobs, threads=args.threads,
                      progress=not args.no_progress, runs_ipc1=None if args.runs_ipc1 == args.runs else args.runs_ipc1)
    if args.render_only:
        if not os.path.exists(run.json_path):
            raise SystemExit(f"--render-only: no {run.json_path} to render")
        doc = ResultStore(run.json_path, run.experiment, run.dataset).doc
        keys = write_reports(experiment, args.out, doc, everything, run)
        print(f"{args.experiment}: {sum(k in doc['cells'] for k in set(keys))} of {len(set(keys))} planned cells in "
              f"{run.json_path}; wrote " + ", ".join(experiment.outputs(args.out)[1:]))
        return 0
    start = time.perf_counter()
    runner = Runner(run, command)
    runner.run(cells)
    if experiment.references:
        # the WMDD teacher of the references is the WMDD cell's (the cut's teacher fields reach only that cell)
        runner.random_references([c.ipc for c in cells], next((c.overrides for c in cells if c.method == "wmdd"), {}))
    write_reports(experiment, args.out, runner.doc, everything, run)
    log = runner.run_log
    print(f"{args.experiment}: {log['new_cells']} new cells, {log['skipped_cells']} skipped, "
          f"{log['failed_cells']} failed, {log['new_baselines']} new baselines"
          + (f", {log['failed_baselines']} failed" if log["failed_baselines"] else "")
          + f" in {time.perf_counter() - start:.1f} s (--jobs {args.jobs}); wrote "
          + ", ".join(experiment.outputs(args.out)))
    return 1 if log["failed_cells"] or log["failed_baselines"] else 0


if __name__ == "__main__":
    sys.exit(main())
