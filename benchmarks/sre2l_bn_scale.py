#!/usr/bin/env python
"""Why SRe²L's recovery gives chance-level sets from a ResNet-18 teacher on 8-px digits: the balance of its
two terms.

SRe²L's recovery minimises, per batch of image j of every class, the teacher's cross-entropy plus r_bn (0.01) x
the unsquared distances of the batch's BatchNorm-input moments to the teacher's running statistics (first layer
x10; :class:`ddmetrics.distill.pcbn.PCBNLoss` with ``mode="bn"``, ``norm="l2"``). The weight was set for the
release's teachers; the distances scale with the teacher's activations. For each teacher this script measures:

- the two terms on real batches of one training image per class (``--draws`` of them): where the recovery
  would stand at real images, and which term dominates there;
- the teacher's accuracy on the set its own recovery produced (``iterations`` of the preset), and on the set
  recovered with the cross-entropy alone (``reg_weight=0``): whether the recovery reaches the teacher's classes;
- the two terms on the recovered set's slot batches;
- the teacher's accuracy in train mode (SRe²L's small-data relabelling runs it so) on one batch of real images and
  on each recovered set: whether the soft labels the students learn from name the classes;
- how peaked those labels are at the relabelling's temperature (30) on that batch of real images: the mean
  probability on the true class and on the largest class (0.1 for flat labels over ten classes);
- another network's reading of each recovered set: the accuracy on it of a reader trained apart (the ConvNet-BN
  teacher of the last row, trained first, with the same seed as the rows' teachers; eval mode): whether the class
  a recovered image was optimised toward is visible to a network other than its teacher, or only to that teacher;
- for the 40-epoch ResNet-18 teacher (the fidelity option row "CE only"), students learning the set recovered with
  the cross-entropy alone under the fidelity rows' protocol (``sre2l_small`` at ``--student-epochs``, seeds 0, 1,
  ...) as it is, with the classes the images were optimised toward as hard labels instead of the teacher's soft
  labels (mixup kept, as the fidelity report's "random, hard labels" column trains random real images), and with
  the teacher labelling in eval mode instead of train mode, each paired with the protocol's run by seed: whether
  the students' chance level on that set is the images or the labels the teacher gives their augmented views.

Every number is the teacher's in eval mode (as the recovery runs it). A diagnosis, not a method: no setting is
tuned here. ::

    python benchmarks/sre2l_bn_scale.py            # digits; writes results/sre2l_bn_scale.{json,md}
    python benchmarks/sre2l_bn_scale.py --student-runs 0   # without the students (minutes less)
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import os
import sys
import time
from typing import Any, Dict, List, Optional, Sequence

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import ddmetrics as ddm  # noqa: E402
from ddmetrics.data import ArrayDataset  # noqa: E402
from ddmetrics.evaluate import random_hard_variant  # noqa: E402
from ddmetrics.distill.pcbn import PCBNLoss  # noqa: E402
from ddmetrics.models import accuracy  # noqa: E402
from ddmetrics.protocols import Protocol, get_protocol  # noqa: E402
from ddmetrics.utils import model_device  # noqa: E402

import _common  # noqa: E402
from _runner import load_splits  # noqa: E402

#: the teachers compared: the released row's, the 40-epoch one of the fidelity option row, the ConvNet-BN one
TEACHERS: Dict[str, Dict[str, Any]] = {
    "ResNet-18, SRe²L's recipe, 10 epochs": dict(teacher_epochs=10),
    "ResNet-18, SRe²L's recipe, 40 epochs": dict(teacher_epochs=40),
    "ConvNet-BN, 'ours' recipe, 30 epochs": dict(teacher_arch="convnet_bn", teacher_recipe="ours", teacher_epochs=30),
}
#: the row whose CE-only set students learn: the teacher of the fidelity option row "teacher 40 epochs, CE only"
#: (13.83 % there; here, trained with one thread, another network of the same recipe)
STUDENT_ROWS = ("ResNet-18, SRe²L's recipe, 40 epochs",)


def slot_batches(labels: torch.Tensor, num_classes: int, draws: int, generator: torch.Generator) -> List[torch.Tensor]:
    """``draws`` index batches of ``labels``, each holding one index of every class, in class order (SRe²L's slot
    batches of real images); each class's index drawn uniformly, independently per batch."""
    members = [torch.nonzero(labels == k).flatten() for k in range(num_classes)]
    if any(len(m) == 0 for m in members):
        raise ValueError("labels must hold every class at least once")
    return [torch.stack([m[torch.randint(len(m), (1,), generator=generator)[0]] for m in members])
            for _ in range(draws)]


def recovered_slots(labels: torch.Tensor, num_classes: int) -> List[torch.Tensor]:
    """The slot batches of a synthetic set: batch j holds the j-th image of every class."""
    members = [torch.nonzero(labels == k).flatten() for k in range(num_classes)]
    return [torch.stack([m[j] for m in members]) for j in range(min(len(m) for m in members))]


def term_balance(teacher: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor,
                 batches: Sequence[torch.Tensor], r_bn: float, first_weight: float) -> Dict[str, float]:
    """The cross-entropy and r_bn x SRe²L's BN distance on each batch of ``batches`` (indices into ``images``),
    averaged over the batches; the teacher in eval mode."""
    teacher.eval()
    device = model_device(teacher)
    bn = PCBNLoss(teacher, None, mode="bn", norm="l2", first_weight=first_weight)
    ce, reg = [], []
    with torch.no_grad():
        for idx in batches:
            x, y = images[idx].to(device), labels[idx].to(device)
            value, logits = bn(x, y)
            reg.append(float(value))
            ce.append(float(F.cross_entropy(logits, y)))
    ce_mean, bn_mean = sum(ce) / len(ce), sum(reg) / len(reg)
    return {"ce": ce_mean, "bn": bn_mean, "weighted_bn": r_bn * bn_mean, "ratio": r_bn * bn_mean / ce_mean}


def train_mode_accuracy(teacher: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    """The accuracy of ``teacher`` run in train mode on ``images`` as one batch (its BatchNorm layers normalising by
    the batch's own statistics, as SRe²L's small-data relabelling runs the teacher), on a copy: the teacher's running
    statistics and mode are left as they were."""
    logits = train_mode_logits(teacher, images)
    return float((logits.argmax(1) == labels.to(logits.device)).float().mean())


def train_mode_logits(teacher: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The logits of a train-mode copy of ``teacher`` on ``images`` as one batch (the teacher is left alone)."""
    twin = copy.deepcopy(teacher).train()
    with torch.no_grad():
        return twin(images.to(model_device(teacher)))


def soft_label_peak(logits: torch.Tensor, labels: torch.Tensor, temperature: float) -> Dict[str, float]:
    """How peaked the relabelling's targets are: the mean probability the labels ``softmax(logits / temperature)``
    put on the true class and on their largest class (1/C for flat labels)."""
    probs = F.softmax(logits / temperature, dim=1)
    true = probs.gather(1, labels.to(probs.device).view(-1, 1)).mean()
    return {"true_probability": float(true), "max_probability": float(probs.max(1).values.mean())}


#: the reader of every recovered set: the ConvNet-BN teacher's settings (the last row's)
READER = "ConvNet-BN, 'ours' recipe, 30 epochs"


def train_reader(splits, seed: int) -> torch.nn.Module:
    """The network that reads every recovered set: trained as :data:`READER`'s row trains its teacher (same seed),
    so that row takes it as its teacher instead of training the same network twice."""
    source = ddm.Distiller(method="sre2l", ipc=10, seed=seed, **TEACHERS[READER])
    return source.train_teacher(splits.train, splits.num_classes, progress=False).eval()


def student_variants(protocol: Protocol) -> Dict[str, Protocol]:
    """The students' protocols on a CE-only set: ``protocol`` as it is, then one part of it changed (see the module
    docstring). The hard-label variant is the fidelity report's "random, hard labels" one: the labels alone
    swapped, the augmentation and the mixing kept."""
    return {"protocol": protocol,
            "hard_labels": random_hard_variant(protocol),
            "teacher_eval_mode": dataclasses.replace(protocol, teacher_mode="eval")}


def measure_students(synset, teacher: torch.nn.Module, protocol: Protocol, test, runs: int,
                     seed: int) -> Dict[str, Any]:
    """Test accuracies of ``runs`` students (seeds ``seed, seed + 1, ...``) of ``synset`` under each of
    :func:`student_variants`, and each variant's paired difference to the protocol's runs."""
    out: Dict[str, Any] = {}
    for key, variant in student_variants(protocol).items():
        start = time.perf_counter()
        report = ddm.evaluate(synset, test, protocol=variant, runs=runs, teacher=teacher, seed=seed,
                              progress=False, device=model_device(teacher))
        out[key] = {"runs": list(report.runs), "seconds": time.perf_counter() - start}
    for key in out:
        if key != "protocol":
            out[key]["vs_protocol"] = _common.paired_difference(out[key]["runs"], out["protocol"]["runs"])
    out["epochs"] = protocol.recipe.epochs
    return out


def measure(name: str, overrides: Dict[str, Any], splits, iterations: int, draws: int, seed: int,
            reader: torch.nn.Module, student_runs: int = 0, student_epochs: Optional[int] = None) -> Dict[str, Any]:
    """One teacher's row (see the module docstring); ``reader`` reads its recovered sets (and is the teacher of
    :data:`READER`'s row); with ``student_runs`` the rows of :data:`STUDENT_ROWS` train students on their
    CE-only set (:func:`measure_students`, ``student_epochs`` each)."""
    start = time.perf_counter()
    source = ddm.Distiller(method="sre2l", ipc=10, seed=seed, iterations=iterations, eval_epochs=student_epochs,
                           **overrides)
    teacher = reader if name == READER else source.train_teacher(splits.train, splits.num_classes, progress=False)
    row: Dict[str, Any] = {"teacher": name, "overrides": overrides, "teacher_seconds": time.perf_counter() - start,
                           "test_accuracy": accuracy(teacher, splits.test)}
    if name == READER:
        row["teacher_is_reader"] = True
    cfg = source.config
    gen = torch.Generator().manual_seed(seed)
    train_x, train_y = splits.train.images, splits.train.labels
    real = slot_batches(train_y, splits.num_classes, draws, gen)
    row["real"] = term_balance(teacher, train_x, train_y, real, cfg.reg_weight, cfg.first_bn_weight)
    # the relabelling's view of real images: one batch of ten images a class, the teacher in train mode
    tenfold = torch.cat(slot_batches(train_y, splits.num_classes, 10, gen))
    logits, tenfold_y = train_mode_logits(teacher, train_x[tenfold]), train_y[tenfold].to(model_device(teacher))
    row["real"]["train_mode_accuracy"] = float((logits.argmax(1) == tenfold_y).float().mean())
    row["temperature"] = get_protocol(cfg.eval_protocol).temperature
    row["real"]["soft_labels"] = soft_label_peak(logits, tenfold_y, row["temperature"])
    for key, extra in (("recovered", {}), ("recovered_ce_only", {"reg_weight": 0.0})):
        start = time.perf_counter()
        syn = ddm.Distiller(method="sre2l", ipc=10, seed=seed, teacher=teacher, iterations=iterations,
                            **extra).fit(splits.train, progress=False)
        recovered = ArrayDataset(syn.images, syn.labels, splits.num_classes)
        row[key] = {"teacher_accuracy": accuracy(teacher, recovered), "reader_accuracy": accuracy(reader, recovered),
                    "train_mode_accuracy": train_mode_accuracy(teacher, syn.images, syn.labels),
                    "seconds": time.perf_counter() - start,
                    **term_balance(teacher, syn.images, syn.labels, recovered_slots(syn.labels, splits.num_classes),
                                   cfg.reg_weight, cfg.first_bn_weight)}
        if key == "recovered_ce_only" and student_runs and name in STUDENT_ROWS:
            row["students_ce_only"] = measure_students(syn, teacher, cfg.protocol(), splits.test, student_runs, seed)
    return row


def report(doc: Dict[str, Any], path: str) -> None:
    lines = ["# SRe²L's two terms, per teacher (" + doc["dataset"] + ")", "",
             f"Command: `{doc['command']}`. Machine: {doc['environment'].get('cpu_model')}, "
             f"{doc['threads']} thread(s). The preset's recovery at {doc['iterations']} iterations, IPC 10, seed "
             f"{doc['seed']}; real: {doc['draws']} batches of one training image per class. CE: the teacher's "
             "cross-entropy (eval mode); r_bn·BN: 0.01 × SRe²L's BN distance (first layer ×10); ratio: r_bn·BN / CE. "
             "Train mode: the teacher's accuracy with its BatchNorm layers on the batch's own statistics, as SRe²L's "
             "small-data relabelling runs it, on one batch of 100 real training images (ten a class) or of the whole "
             "recovered set. Soft labels at T: the mean probability the teacher's train-mode labels at the "
             "relabelling's temperature put on the true class / on their largest class, on that batch of real images "
             f"(1/C = 0.1 for flat labels). Reader: the accuracy on a recovered set of a network trained apart (the "
             f"teacher of the row '{READER}', trained apart from the ResNet-18 teachers; eval mode).",
             ""]
    rows = []
    for r in doc["rows"]:
        rec, ce_only, real = r["recovered"], r["recovered_ce_only"], r["real"]
        rows.append((r["teacher"], f"{100 * r['test_accuracy']:.1f}", f"{real['ce']:.3f}",
                     f"{real['weighted_bn']:.3g}", f"{real['ratio']:.3g}", f"{100 * rec['teacher_accuracy']:.1f}",
                     f"{rec['ce']:.3f}", f"{rec['weighted_bn']:.3g}", f"{100 * ce_only['teacher_accuracy']:.1f}",
                     f"{100 * real['train_mode_accuracy']:.1f}", f"{100 * rec['train_mode_accuracy']:.1f}",
                     f"{100 * ce_only['train_mode_accuracy']:.1f}",
                     "{true_probability:.3f} / {max_probability:.3f}".format(**real["soft_labels"])
                     if "soft_labels" in real else "-",
                     *(f"{100 * s['reader_accuracy']:.1f}" if "reader_accuracy" in s else "-" for s in (rec, ce_only))))
    lines += _common.markdown_table(
        ["teacher", "test acc. (%)", "real: CE", "real: r_bn·BN", "real: ratio", "teacher on its recovered set (%)",
         "recovered: CE", "recovered: r_bn·BN", "teacher on the CE-only set (%)",
         "train mode: real (%)", "train mode: recovered (%)", "train mode: CE-only set (%)",
         "soft labels at T: true / largest", "reader on the recovered set (%)", "reader on the CE-only set (%)"], rows,
        align="lrrrrrrrrrrrrrr")
    studied = [r for r in doc["rows"] if "students_ce_only" in r]
    if studied:
        epochs = studied[0]["students_ce_only"]["epochs"]
        lines += ["", "## Students of the CE-only set", "",
                  f"Students of the CE-only set under the fidelity rows' protocol (`sre2l_small`, {epochs} epochs, "
                  f"seeds {doc['seed']}, {doc['seed'] + 1}, ...: mean ± the runs' population sd), then with the "
                  "classes the images were optimised toward as hard labels (mixup and augmentation kept), then with "
                  "the teacher labelling in eval mode; Δ: paired by seed against the protocol's runs, points, 95 % t "
                  "interval (* excludes 0).", ""]
        rows = []
        for r in studied:
            st = r["students_ce_only"]
            rows.append((r["teacher"], _common.pm(st["protocol"]["runs"]), _common.pm(st["hard_labels"]["runs"]),
                         _common.format_difference(st["hard_labels"]["vs_protocol"]),
                         _common.pm(st["teacher_eval_mode"]["runs"]),
                         _common.format_difference(st["teacher_eval_mode"]["vs_protocol"])))
        lines += _common.markdown_table(
            ["teacher", "protocol (%)", "hard labels (%)", "Δ hard − protocol", "teacher in eval mode (%)",
             "Δ eval mode − protocol"], rows, align="lrrrrr")
    _common.write_lines(path, lines + [""])


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="digits")
    p.add_argument("--iterations", type=int, default=200, help="recovery iterations (the fidelity rows' 200)")
    p.add_argument("--draws", type=int, default=10, help="real slot batches per teacher")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--student-runs", type=int, default=3,
                   help="students per variant on the 40-epoch teacher's CE-only set (0: none)")
    p.add_argument("--student-epochs", type=int, default=100, help="their epochs (the fidelity rows' 100)")
    p.add_argument("--out", default=None, help="output prefix (default results/sre2l_bn_scale[_<dataset>])")
    args = p.parse_args(argv)
    for name, least in (("iterations", 1), ("draws", 1), ("threads", 1), ("student_runs", 0),
                        ("student_epochs", 1)):
        if getattr(args, name) < least:
            print(f"sre2l_bn_scale.py: --{name.replace('_', '-')} must be at least {least}, got "
                  f"{getattr(args, name)}", file=sys.stderr)
            return 2
    out = args.out or os.path.join(_common.RESULTS, "sre2l_bn_scale" + ("" if args.dataset == "digits"
                                                                         else f"_{args.dataset}"))
    torch.set_num_threads(args.threads)
    splits = load_splits(args.dataset, args.seed)
    start = time.perf_counter()
    reader = train_reader(splits, args.seed)
    doc = {"dataset": args.dataset, "command": _common.command_line(), "environment": _common.machine_info(),
           "threads": args.threads, "iterations": args.iterations, "draws": args.draws, "seed": args.seed,
           "reader": READER, "reader_seconds": time.perf_counter() - start,
           "reader_test_accuracy": accuracy(reader, splits.test),
           "student_runs": args.student_runs, "student_epochs": args.student_epochs,
           "rows": [measure(name, extra, splits, args.iterations, args.draws, args.seed, reader,
                            args.student_runs, args.student_epochs) for name, extra in TEACHERS.items()]}
    _common.write_json(out + ".json", doc)
    report(doc, out + ".md")
    print(f"wrote {out}.json, {out}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
