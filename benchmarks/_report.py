"""Markdown tables and the accuracy-vs-IPC plot of a runner document (``_runner``, schema 1).

Everything is rendered from the JSON document alone (plus the plan's cell keys, which pick and
order the rows), so a committed results file re-renders without re-running anything.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

from _common import markdown_table, mean_std, pm, percent, pyplot, save_png, write_lines

TIME_NOTE = ("\"distill (s)\" is `Distiller.fit` with the teacher already trained (teachers are trained once and "
             "shared; see \"teacher (s)\"); \"barycenter share\" is the part of it spent in `loss.barycenter` "
             "(barycenter strategy only).")


def cell_rows(doc: Dict[str, Any], keys: Sequence[str]) -> List[Dict[str, Any]]:
    """The finished cells among ``keys``, in that order (cells of older settings stay out)."""
    return [doc["cells"][k] for k in keys if k in doc["cells"]]


def _seconds(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.1f}"


def _share(value: Optional[float]) -> str:
    return "-" if value is None else f"{100 * value:.1f} %"


def baseline_rows(doc: Dict[str, Any], rows: Sequence[Dict[str, Any]]) -> List[Tuple[int, str, str, str]]:
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
        out.append((b["ipc"], "full data", percent(b["full"]), f"hard labels, {ev['full_epochs'] or 'default'} epochs"))
    # identical rows from two protocols with the same settings collapse
    uniq, keys = [], set()
    for row in out:
        if row[:3] not in keys:
            keys.add(row[:3])
            uniq.append(row)
    return uniq


def header(doc: Dict[str, Any], title: str) -> List[str]:
    """Title, command and the machine of the latest run."""
    env = doc["environment"]
    jobs = env.get("jobs", 1)  # older documents predate --jobs
    workers = (f"; `--jobs {jobs}`: {jobs} worker processes × {env.get('threads_per_job')} threads, so per-task "
               "times are not comparable with a `--jobs 1` run" if jobs > 1 else "; `--jobs 1`")
    machine = env["machine"]
    if env.get("cpu_model"):  # older documents name the architecture only
        machine += f" ({env['cpu_model']}, {env['mem_total_gib']:.0f} GiB RAM)"
    return [f"# {title}", "",
            f"Command: `{doc['command']}`", "",
            f"Dataset: {doc['dataset']} (train split distilled, test split evaluated). Machine: {machine}, "
            f"{env['cpus']} CPUs, torch {env['torch']}, {env['threads']} threads{workers} (latest run). Accuracy in "
            "%, mean ± std (population) over the evaluation runs. Times in seconds, wall clock, shared machine.", ""]


def cells_table(doc: Dict[str, Any], rows: Sequence[Dict[str, Any]], keys: Sequence[str]) -> List[str]:
    """One row per cell (IPC, then plan order), then the baselines they use and the timing note."""
    ordered = sorted(rows, key=lambda r: (r["ipc"], keys.index(r["key"])))
    lines = markdown_table(
        ["backend", "strategy", "setting", "IPC", "protocol", "accuracy", "distill (s)", "barycenter share",
         "teacher (s)"],
        [(r["backend"], r["strategy"], r["label"], r["ipc"], r["config"]["eval_protocol"], pm(r["accuracies"]),
          _seconds(r["distill_seconds"]), _share(r["barycenter_share"]), _seconds(r["teacher_seconds"]))
         for r in ordered], align="lllrlrrrr")
    base = baseline_rows(doc, rows)
    if base:
        lines += ["", "Baselines (same evaluation settings and seeds):", ""]
        lines += markdown_table(["IPC", "row", "accuracy", "notes"], sorted(base), align="rlrl")
    return lines + ["", TIME_NOTE]


def moments_table(doc: Dict[str, Any], rows: Sequence[Dict[str, Any]], keys: Sequence[str] = ()) -> List[str]:
    """The M3D Table 1 layout: moment and loss distances per method, mean over classes and pooled."""
    lines = ["Distances between synthetic and real training features of the trained WMDD teacher, mean over "
             "classes (per class: synthetic weighted, real uniform). moment1 = ||mean_s − mean_r||, moment2 = "
             "||cov_s − cov_r||_F, moment3 = ||E(x−μ)³_s − E(x−μ)³_r|| over the diagonal of the 3rd central "
             "moment tensor (not standardised); see `ddmetrics/diagnose.py`.", ""]
    sample = next((r["diagnosis"] for r in rows if "diagnosis" in r), None)
    if sample is None:
        return lines
    metrics = sample["metrics"]
    cols = [m for m in metrics if m.startswith("moment")] + [m for m in metrics if not m.startswith("moment")]

    def vals(values: Dict[str, Any]) -> List[str]:
        return ["-" if values.get(c) is None else f"{values[c]:.4g}" for c in cols]

    refs = list(doc.get("references", {}).values())
    lines += markdown_table(
        ["method", "loss", "IPC", *cols, "accuracy", "distill (s)"],
        [(ref["label"], "-", ref["ipc"], *vals(ref["diagnosis"]["mean_over_classes"]), "-", "-") for ref in refs]
        + [(r["label"], r["loss"], r["ipc"], *vals(r["diagnosis"]["mean_over_classes"]), pm(r["accuracies"]),
            _seconds(r["distill_seconds"])) for r in rows],
        align="llr" + "r" * len(cols) + "rr")
    lines += ["", "Pooled (all classes at once, class proportions of the real data):", ""]
    lines += markdown_table(
        ["method", "IPC", *cols],
        [(ref["label"], ref["ipc"], *vals(ref["diagnosis"]["overall"])) for ref in refs]
        + [(r["label"], r["ipc"], *vals(r["diagnosis"]["overall"])) for r in rows],
        align="lr" + "r" * len(cols))
    return lines


#: table layout name -> ``lines(doc, rows, keys)``
TABLES = {"cells": cells_table, "moments": moments_table}


def write_markdown(path: str, doc: Dict[str, Any], keys: Sequence[str], title: str, table: str = "cells") -> None:
    """The experiment's table(s) under ``title`` as Markdown, atomically; failed cells listed last."""
    lines = header(doc, title) + TABLES[table](doc, cell_rows(doc, keys), keys)
    missing = list(doc.get("errors", {}).values())
    if missing:
        lines += ["", "Failed cells (re-run to retry):", ""] + [f"- {e['label']}, IPC {e['ipc']}: `{e['error']}`"
                                                                 for e in missing]
    write_lines(path, lines)


def write_plot(path: str, doc: Dict[str, Any], keys: Sequence[str]) -> None:
    """Accuracy vs IPC, one line per backend × strategy, plus random subset and full data (PNG, atomic)."""
    plt = pyplot()
    rows = cell_rows(doc, keys)
    fig, ax = plt.subplots(figsize=(9.5, 4.5), dpi=100)
    lines: Dict[str, List[Tuple[int, float, float]]] = {}
    for r in rows:
        m, s = mean_std(r["accuracies"])
        lines.setdefault(f"{r['backend']} / {r['strategy']}", []).append((r["ipc"], 100 * m, 100 * s))
    for name, pts in sorted(lines.items()):
        pts.sort()
        x, y, e = zip(*pts)
        ax.errorbar(x, y, yerr=e, marker="o", ms=4, capsize=2, label=name,
                    linestyle="-" if name.endswith("barycenter") else "--")
    base: Dict[str, List[Tuple[int, float]]] = {}
    for ipc, label, acc, _ in baseline_rows(doc, rows):
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
    save_png(fig, path)
