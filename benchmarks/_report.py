"""Markdown tables and the accuracy-vs-IPC plot of a runner document (``_runner``, schema 1).

Everything is rendered from the JSON document alone (plus the plan's cell keys, which pick and
order the rows), so a committed results file re-renders without re-running anything.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

from ddmetrics.protocols import PROTOCOLS

from _common import (format_difference, markdown_table, mean_std, paired_difference, pm, percent, pyplot, save_png,
                     write_lines)

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


def soft_protocol(name: Optional[str]) -> bool:
    """Whether the evaluation protocol ``name`` recorded in a document trains students on the teacher's
    soft labels (a name this version does not know: only ``"soft"`` did, before issue 24)."""
    known = PROTOCOLS.get(name) if isinstance(name, str) else None
    return known.labels == "soft" if known is not None else name == "soft"


def students(ev: Dict[str, Any]) -> str:
    """The students of evaluation settings ``ev`` (a cell's ``eval``): protocol, model and epochs, the
    protocol's own where ``ev`` does not override them, and the budget when it is not 1."""
    known = PROTOCOLS.get(ev.get("protocol")) if isinstance(ev.get("protocol"), str) else None
    model = ev.get("model") or (known.model if known is not None else "default")
    epochs = ev.get("epochs") or (known.recipe.epochs if known is not None and known.recipe.epochs else "default")
    budget = ev.get("budget", 1.0)
    return (f"{ev['protocol']} protocol, " if ev.get("protocol") else "") + f"{model}, {epochs} epochs" + \
        (f" x budget {budget:g}" if budget != 1.0 else "")


def random_labels(b: Dict[str, Any]) -> List[Tuple[str, List[float]]]:
    """(row label, runs) of baseline ``b``'s random subsets: under its protocol, and for a soft-label
    protocol also with hard labels (the papers' baseline; the same recipe, not the hard protocol's)."""
    out = [(f"random subset ({b['protocol']} protocol)", list(b["random_runs"]))]
    if soft_protocol(b["protocol"]) and b["random_hard_runs"]:
        out.append((f"random subset ({b['protocol']} protocol, hard labels)", list(b["random_hard_runs"])))
    return out


def baseline_rows(doc: Dict[str, Any], rows: Sequence[Dict[str, Any]]) -> List[Tuple[int, str, str, str]]:
    """(ipc, label, accuracy, note) for the random-subset / full-data rows of the baselines in use."""
    out, seen = [], set()
    for r in rows:
        b = doc["baselines"].get(r["baseline_key"])
        if b is None or r["baseline_key"] in seen:
            continue
        seen.add(r["baseline_key"])
        ev = b["eval"]
        note = students(ev)
        out += [(b["ipc"], label, pm(runs), note) for label, runs in random_labels(b)]
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


def _random_runs(doc: Dict[str, Any], row: Dict[str, Any]) -> List[float]:
    """The random-subset runs with the same labels (protocol) and student seeds as cell ``row``."""
    b = doc["baselines"].get(row["baseline_key"])
    return list(b["random_runs"]) if b else []


def _diff(a: Sequence[float], b: Sequence[float]) -> Optional[Dict[str, Any]]:
    """:func:`_common.paired_difference` when ``a`` and ``b`` are paired runs (same count), else None."""
    return paired_difference(list(a), list(b)) if a and b and len(a) == len(b) else None


CI_NOTE = ("Accuracy: mean ± std (population) over the evaluation runs; student seed r is the same in every row "
           "of an IPC (runs are paired). Δ: paired difference in points, mean of the per-seed differences, with "
           "its 95 % confidence interval (t distribution, n − 1 dof); `*` marks an interval that excludes 0. "
           "\"Δ vs best\": against the row of that IPC with the highest mean (chosen on these same test runs, so "
           "its intervals are somewhat optimistic); \"Δ vs random\": against the random real subset of the same "
           "size under the same evaluation protocol (its labels, hard or the teacher's soft ones) and seeds.")


def ci_tables(doc: Dict[str, Any], entries: Sequence[Dict[str, Any]]) -> List[str]:
    """Sections of the plan (``entries``: key, label, section, ipc in plan order) with mean ± std, the
    paired difference (95 % CI) against the best row of its IPC and against the random subset with
    the same labels; then the baselines; then which planned cells are missing."""
    seen, planned = set(), []
    for e in entries:
        if (e["key"], e["section"]) not in seen:
            seen.add((e["key"], e["section"]))
            planned.append(e)
    done = [(e, doc["cells"][e["key"]]) for e in planned if e["key"] in doc["cells"]]
    rows = [r for _, r in done]
    base = _baseline_runs(doc, rows)
    best: Dict[int, Tuple[str, List[float]]] = {}
    for label, ipc, runs in [(e["label"], r["ipc"], r["accuracies"]) for e, r in done] + \
            [(label, ipc, runs) for (ipc, label), runs in base.items()]:
        if ipc not in best or mean_std(runs)[0] > mean_std(best[ipc][1])[0]:
            best[ipc] = (label, runs)
    lines: List[str] = []
    total = len({e["key"] for e in planned})
    finished = len({e["key"] for e, _ in done})
    if finished < total:
        lines += [f"**Partial results: {finished} of {total} planned cells finished** (the missing ones are listed "
                  "at the end; re-run the missing `--part`s to complete the table).", ""]
    lines += [CI_NOTE, ""]
    commands = list(dict.fromkeys(r["command"] for r in doc.get("runs_log", []) if r.get("new_cells") or
                                  r.get("new_baselines")))
    if len(commands) > 1:
        lines += ["Made by these runs (one per part):", ""] + [f"- `{c}`" for c in commands] + [""]
    if best:
        lines += ["Best row per IPC: " + "; ".join(f"IPC {ipc}: {label} ({pm(runs)})"
                                                     for ipc, (label, runs) in sorted(best.items())), ""]
    sections = list(dict.fromkeys(e["section"] for e in planned))
    for section in sections:
        mine = sorted([(e, r) for e, r in done if e["section"] == section],
                      key=lambda er: (er[1]["ipc"], planned.index(er[0])))
        if not mine:
            continue
        lines += [f"## {section}", ""]
        # a section whose rows name a reference row gets the paired difference against it
        compared = any(e.get("compare") for e, _ in mine)
        by_label = {(r["ipc"], e["label"]): r["accuracies"] for e, r in mine}
        table = []
        for e, r in mine:
            runs = r["accuracies"]
            blabel, bruns = best[r["ipc"]]
            vs_best = "best" if blabel == e["label"] and bruns == runs else format_difference(_diff(runs, bruns))
            row = [r["ipc"], e["label"], r["config"]["eval_protocol"], len(runs), pm(runs), vs_best,
                   format_difference(_diff(runs, _random_runs(doc, r)))]
            if compared:
                ref = by_label.get((r["ipc"], e.get("compare")), [])
                row.append("reference" if not e.get("compare") else
                           format_difference(_diff(runs, ref)) if ref else "-")
            table.append(row + [_seconds(r["distill_seconds"]), _share(r["barycenter_share"])])
        lines += markdown_table(["IPC", "row", "labels", "runs", "accuracy", "Δ vs best [95 % CI]",
                                 "Δ vs random [95 % CI]"] + (["Δ vs reference row [95 % CI]"] if compared else [])
                                + ["distill (s)", "barycenter share"], table,
                                align="rllrrrr" + ("r" if compared else "") + "rr")
        if compared:
            refs = list(dict.fromkeys(e["compare"] for e, _ in mine if e.get("compare")))
            lines += ["", "Δ vs reference row: paired difference against " + "; ".join(
                f"{label}" for label in refs) + " (the row marked reference), same IPC and student seeds."]
        lines.append("")
    if base:
        lines += ["## Baselines (same evaluation settings and seeds)", ""]
        table = []
        for (ipc, label), runs in sorted(base.items()):
            blabel, bruns = best[ipc]
            vs_best = "best" if blabel == label else format_difference(_diff(runs, bruns))
            table.append((ipc, label, len(runs), pm(runs), vs_best))
        lines += markdown_table(["IPC", "row", "runs", "accuracy", "Δ vs best [95 % CI]"], table, align="rlrrr")
        fulls = {(b["full"], b["eval"]["full_epochs"]) for b in _used_baselines(doc, rows)}
        for full, epochs in sorted(fulls, key=str):
            lines += ["", f"- full data (whole training split, hard labels, {epochs or 20} epochs, 1 run): "
                          f"{percent(full)} %"]
        lines.append("")
    lines.append(TIME_NOTE)
    missing = [e for e in planned if e["key"] not in doc["cells"]]
    if missing:
        parts = sorted({e["part"] for e in missing if e.get("part")})
        lines += ["", f"Not yet run ({len(missing)} rows" + (f"; parts {', '.join(parts)}" if parts else "") + "): "
                  + "; ".join(f"{e['label']} IPC {e['ipc']}" for e in missing)]
    return lines


def _used_baselines(doc: Dict[str, Any], rows: Sequence[Dict[str, Any]]) -> List[Dict[str, Any]]:
    keys = list(dict.fromkeys(r["baseline_key"] for r in rows))
    return [doc["baselines"][k] for k in keys if k in doc["baselines"]]


def _baseline_runs(doc: Dict[str, Any], rows: Sequence[Dict[str, Any]]) -> Dict[Tuple[int, str], List[float]]:
    """(ipc, random-subset row label, :func:`random_labels`) -> its runs, for the baselines ``rows`` use."""
    out: Dict[Tuple[int, str], List[float]] = {}
    for b in _used_baselines(doc, rows):
        for label, runs in random_labels(b):
            out.setdefault((b["ipc"], label), runs)
    return out


#: table layout name -> ``lines(doc, rows, keys)``
TABLES = {"cells": cells_table, "moments": moments_table}


def write_markdown(path: str, doc: Dict[str, Any], keys: Sequence[str], title: str, table: str = "cells",
                   entries: Optional[Sequence[Dict[str, Any]]] = None) -> None:
    """The experiment's table(s) under ``title`` as Markdown, atomically; failed cells listed last.
    ``table="ci"`` needs the plan's ``entries`` (see :func:`ci_tables`)."""
    if table == "ci":
        lines = header(doc, title) + ci_tables(doc, entries if entries is not None else
                                               [{"key": k, "label": doc["cells"][k]["label"], "section": "cells",
                                                 "ipc": doc["cells"][k]["ipc"]} for k in keys if k in doc["cells"]])
    else:
        lines = header(doc, title) + TABLES[table](doc, cell_rows(doc, keys), keys)
    missing = list(doc.get("errors", {}).values())
    if missing:
        lines += ["", "Failed cells (re-run to retry):", ""] + [f"- {e['label']}, IPC {e['ipc']}: `{e['error']}`"
                                                                 for e in missing]
    write_lines(path, lines)


def write_plot(path: str, doc: Dict[str, Any], keys: Sequence[str],
               entries: Optional[Sequence[Dict[str, Any]]] = None) -> None:
    """Accuracy vs IPC, one panel per strategy (barycenter, distribution, coreset), one line per
    backend (coreset: per method and labels) with ± std error bars, and the random subsets (mean ±
    std) and the full-data model as horizontal bands (PNG, atomic). Rows outside an IPC series (the
    presets and the ablation) are left to the table."""
    plt = pyplot()
    rows = cell_rows(doc, keys)
    in_series = {e["key"] for e in entries if e.get("part", "").startswith("ipc") or e.get("part") == "baselines"} \
        if entries is not None else {r["key"] for r in rows}
    panels: Dict[str, Dict[str, List[Tuple[int, float, float]]]] = {}
    for r in rows:
        if r["key"] not in in_series:
            continue
        m, s = mean_std(r["accuracies"])
        name = r["label"] if r["strategy"] == "coreset" else r["backend"]
        pts = panels.setdefault(r["strategy"], {}).setdefault(name, [])
        if (r["ipc"], 100 * m, 100 * s) not in pts:
            pts.append((r["ipc"], 100 * m, 100 * s))
    order = [k for k in ("barycenter", "distribution", "coreset") if k in panels] + \
        sorted(k for k in panels if k not in ("barycenter", "distribution", "coreset"))
    if not order:
        order = ["(no results)"]
    fig, axes = plt.subplots(1, len(order), figsize=(4.8 * len(order), 6.0), dpi=110, sharey=True, squeeze=False)
    base = _baseline_runs(doc, [r for r in rows if r["key"] in in_series])
    fulls = sorted({b["full"] for b in _used_baselines(doc, [r for r in rows if r["key"] in in_series])})
    ipcs = sorted({r["ipc"] for r in rows if r["key"] in in_series})
    styles = ["-", "--", "-.", ":"]
    markers = ["o", "s", "^", "D", "v", "P", "X"]
    for ax, strategy in zip(axes[0], order):
        names = sorted(panels.get(strategy, {}))
        for i, name in enumerate(names):
            pts = sorted(panels[strategy][name])
            x, y, e = zip(*pts)
            shift = 1.0 + 0.04 * (i - (len(names) - 1) / 2)  # side by side: no two error bars on one x
            x = [v * shift for v in x]
            ax.errorbar(x, y, yerr=e, marker=markers[i % len(markers)], ms=5, capsize=3, lw=1.6,
                        linestyle=styles[i % len(styles)], label=name)
        colors = ("tab:grey", "tab:brown", "tab:olive", "tab:cyan", "tab:pink")
        for j, label in enumerate(sorted({lab for _, lab in base})):  # a band per protocol (and labels)
            color = colors[j % len(colors)]
            pts = sorted((ipc, *mean_std([100 * v for v in runs])) for (ipc, lab), runs in base.items() if lab == label)
            if pts:
                x, y, e = zip(*pts)
                lo, hi = [a - b for a, b in zip(y, e)], [a + b for a, b in zip(y, e)]
                if len(x) == 1:  # one IPC: a horizontal band
                    ax.axhspan(lo[0], hi[0], color=color, alpha=0.25, label=label + " (± std)")
                else:
                    ax.fill_between(x, lo, hi, color=color, alpha=0.25, label=label + " (± std)")
        for full in fulls:
            ax.axhspan(100 * full - 0.15, 100 * full + 0.15, color="black", alpha=0.6,
                       label=f"full data ({100 * full:.1f} %)")
        ax.set_xscale("log")
        if ipcs:
            ax.set_xticks(ipcs)
            ax.set_xticklabels([str(i) for i in ipcs])
        ax.set_title(f"{strategy}", fontsize=11)
        ax.set_xlabel("images per class (IPC)", fontsize=10)
        ax.grid(alpha=0.3)
        ax.minorticks_off()
        if len(ipcs) == 1:
            ax.set_xlim(ipcs[0] / 1.5, ipcs[0] * 1.5)
        ax.legend(fontsize=7.5, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, frameon=False)
    axes[0][0].set_ylabel("test accuracy (%), mean ± std over runs", fontsize=10)
    fig.suptitle(f"{doc['dataset']}: test accuracy by strategy\n(bands: random subsets ± std; line: full data)",
                 fontsize=10)
    fig.tight_layout()
    save_png(fig, path)
