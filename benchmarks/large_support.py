#!/usr/bin/env python
"""Memory and time of the losses and the exact barycenter on one large class of real features.

The question (issue "Large supports"): does the exact free-support barycenter, and the exact
``wasserstein`` value + gradient, handle a class of n = 100 000 features of dimension d = 512
against m = 100 atoms within the CPU machine's 24 GiB? ``sinkhorn`` (tensorized, CPU) and
``sliced`` are measured at the same size for context.

Each measurement runs in a fresh Python process (this script with the hidden ``--child`` flag),
so that its peak resident set size — ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` read inside
that process — is the measurement's own and not a leftover of an earlier one. The child also
records its RSS just before the work (interpreter + torch + the data), the data's own size, and
the wall and CPU time of the work alone (data generation excluded). The child's address space
is capped (``RLIMIT_AS``, ``--mem-limit-gib``) so that a measurement that needs more memory
than the machine can give fails with an allocation error, reported as "did not fit", instead
of pushing the shared machine into swap or the OOM killer.

Data: a seeded mixture of Gaussian clusters with unequal masses and spreads, passed through a
ReLU (like a class's penultimate-layer features of a teacher network), float32. ``y`` (the
synthetic set, for the value + gradient measurements) is m further draws of the same mixture
from an independent stream, so it is the same for every n.

Usage::

    .venv/bin/python benchmarks/large_support.py                       # n = 100 000, d = 512, m = 100
    .venv/bin/python benchmarks/large_support.py --n 10000 100000      # add a scaling column

Writes ``<out>.json`` and ``<out>.md`` atomically (default ``benchmarks/results/large_support``).
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import re
import resource
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:  # the shared helpers sit next to this script (also when it is loaded by path)
    sys.path.insert(0, HERE)

# torch-free: a --child process sets its address-space cap before importing torch
from _common import (GIB as _GIB, barycenter_clock, command_line, elapsed_log, local_date, loadavg_1min,  # noqa: E402
                     machine_info, markdown_table, peak_rss_bytes, rss_bytes, write_json, write_text)

# Measurement kinds, in the order they are run and reported.
KINDS = ("barycenter", "wasserstein", "sinkhorn", "sliced", "mmd_tensorized", "mmd_online", "energy_tensorized",
         "energy_online")
#: the kernel losses' measurements: kind -> (loss, backend)
KERNEL_KINDS = {"mmd_tensorized": ("mmd", "tensorized"), "mmd_online": ("mmd", "online"),
                "energy_tensorized": ("energy", "tensorized"), "energy_online": ("energy", "online")}
LABELS = {
    "mmd_tensorized": "`mmd` (gaussian, median bandwidths) tensorized, value + backward",
    "mmd_online": "`mmd` (gaussian, median bandwidths) online (KeOps), value + backward",
    "energy_tensorized": "`energy` tensorized, value + backward",
    "energy_online": "`energy` online (KeOps), value + backward",
    "barycenter": "exact barycenter (`wasserstein`.barycenter, learn_weights)",
    "wasserstein": "`wasserstein` value + backward",
    "sinkhorn": "`sinkhorn` (tensorized, CPU) value + backward",
    "sliced": "`sliced` (256 projections) value + backward",
}
_MARK = "@@large_support@@ "  # prefix of the child's one result line on stdout


# --------------------------------------------------------------------------- data
def make_features(n: int, d: int, seed: int, clusters: int = 50, stream: int = 0):
    """Seeded clustered features: ``n`` draws of a ReLU'd Gaussian mixture in dimension ``d``, float32.

    Parameters
    ----------
    n, d : int
        Number of points and dimension.
    seed : int
        Fixes the mixture (centres, masses, spreads); the same ``seed`` gives the same mixture
        whatever ``n`` and ``stream``.
    clusters : int
        Number of mixture components.
    stream : int
        Independent sample stream of the same mixture (0 for the real class ``x``, 1 for ``y``).

    Returns
    -------
    torch.Tensor
        ``(n, d)`` float32, non-negative.

    Notes
    -----
    The points are written block by block into one preallocated tensor, so that generating the
    data never holds more than the data plus one block: otherwise the generator's temporaries
    (noise, gathered centres) would set a high-water mark of ~3x the data that the process's
    ``ru_maxrss`` would then report instead of the measured work's own peak.
    """
    import torch

    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(clusters, d, generator=g)
    mass = torch.rand(clusters, generator=g) + 0.2  # unequal class modes
    spread = 0.3 + 0.7 * torch.rand(clusters, generator=g)
    # An independent generator per stream; the large odd multiplier keeps streams of nearby seeds apart.
    gs = torch.Generator().manual_seed(seed + 1_000_003 * (stream + 1))
    labels = torch.multinomial(mass / mass.sum(), n, replacement=True, generator=gs)
    x = torch.empty(n, d, dtype=torch.float32)
    block = 8192
    for s in range(0, n, block):
        e = min(s + block, n)
        lab = labels[s:e]
        x[s:e] = (torch.randn(e - s, d, generator=gs) * spread[lab].unsqueeze(1) + centers[lab]).relu_()
    return x


# --------------------------------------------------------------------------- process memory
def _cpu_seconds() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


# --------------------------------------------------------------------------- one measurement
def measure(spec: dict) -> dict:
    """Run one measurement in the current process and return its record.

    Parameters
    ----------
    spec : dict
        ``kind`` (one of :data:`KINDS`), ``n``, ``d``, ``m``, ``seed``, ``clusters``, ``iters``
        (barycenter rounds) and ``threads`` (``torch.set_num_threads``, ``None`` for torch's default).

    Returns
    -------
    dict
        ``seconds`` (wall time of the work), ``cpu_seconds``, ``rss_before`` (bytes, just before
        the work), ``peak_before`` and ``peak_rss`` (``ru_maxrss`` before and after the work,
        bytes), ``data_bytes`` (``x`` and ``y``), and ``objective`` (barycenter: the W2² reached)
        or ``value`` and ``grad_norm`` (losses). For the barycenter also ``ot_solves`` and
        ``ot_seconds``, the number and the time of the exact OT solves it made, and
        ``init_seconds``, the time of its k-means++ initialisation.

    Notes
    -----
    The peak is the whole process's, from its start: run it in a fresh process (see
    :func:`run_child`) for the measurement's own. The work's peak is above the data and
    the import footprint exactly when ``peak_rss > peak_before``.
    """
    import torch

    import ddmetrics as ddm

    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    kind, n, d, m, seed = spec["kind"], int(spec["n"]), int(spec["d"]), int(spec["m"]), int(spec["seed"])
    if kind not in KINDS:
        raise ValueError(f"unknown measurement {kind!r}; known: {', '.join(KINDS)}")
    x = make_features(n, d, seed, clusters=int(spec["clusters"]), stream=0)
    rec = {"kind": kind, "n": n, "d": d, "m": m, "threads": torch.get_num_threads()}
    if kind == "barycenter":
        loss = ddm.get_loss("wasserstein")
        data_bytes = x.nbytes
        clock_context = barycenter_clock()  # how much of the time is the network simplex
    else:
        y0 = make_features(m, d, seed, clusters=int(spec["clusters"]), stream=1)
        data_bytes = x.nbytes + y0.nbytes
        if kind == "wasserstein":
            loss = ddm.get_loss("wasserstein")
        elif kind == "sinkhorn":
            loss = ddm.get_loss("sinkhorn", backend="tensorized")
        elif kind in KERNEL_KINDS:
            name, backend = KERNEL_KINDS[kind]
            loss = ddm.get_loss(name, backend=backend)
            if backend == "online":  # KeOps compiles a formula once per machine: not part of the measurement
                loss(x[:8], y0[:4].clone().requires_grad_(True)).backward()
        else:
            loss = ddm.get_loss("sliced", n_projections=256, seed=seed)
        y = y0.clone().requires_grad_(True)
    gc.collect()
    rec.update(rss_before=rss_bytes(), peak_before=peak_rss_bytes(), data_bytes=data_bytes)
    cpu0, t0 = _cpu_seconds(), time.perf_counter()
    if kind == "barycenter":
        with clock_context as clock:
            out = loss.barycenter(x, m, iters=int(spec["iters"]), learn_weights=True, seed=seed)
    else:
        value = loss(x, y)
        value.backward()
    rec["seconds"] = time.perf_counter() - t0
    rec["cpu_seconds"] = _cpu_seconds() - cpu0
    rec["peak_rss"] = peak_rss_bytes()
    if kind == "barycenter":
        rec.update(objective=float(out.objective), iters=int(spec["iters"]), ot_solves=clock["calls"],
                   ot_seconds=clock["seconds"], init_seconds=clock["init"], weights_min=float(out.weights.min()),
                   weights_max=float(out.weights.max()))
    else:
        rec.update(value=float(value.detach()), grad_norm=float(y.grad.norm()))
    return rec


def _child_main(spec_json: str) -> int:
    """Entry point of the ``--child`` process: cap the address space, measure, print one result line."""
    spec = json.loads(spec_json)
    limit = spec.get("mem_limit_gib")
    if limit:
        cap = int(float(limit) * _GIB)
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    try:
        rec = measure(spec)
        rec["status"] = "ok"
    except (MemoryError, RuntimeError) as err:  # torch reports a failed allocation as RuntimeError
        msg = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        fit = isinstance(err, MemoryError) or "alloc" in msg.lower() or "memory" in msg.lower()
        rec = {"status": "did not fit" if fit else "error", "error": f"{type(err).__name__}: {msg[:300]}",
               "peak_rss": peak_rss_bytes()}
        asked = re.search(r"allocate (\d+) bytes", msg)  # torch's message names the failed request
        if asked:
            rec["failed_allocation_bytes"] = int(asked.group(1))
    print(_MARK + json.dumps(rec), flush=True)
    return 0


def run_child(spec: dict, timeout: float = 3600.0) -> dict:
    """Run :func:`measure` on ``spec`` in a fresh Python process (this script with ``--child``).

    Returns
    -------
    dict
        The child's record with ``status`` ``"ok"``, ``"did not fit"`` (failed allocation under
        the address-space cap, or killed by SIGKILL — the kernel's OOM killer), ``"timed out"``
        or ``"error"`` (with ``error`` giving the reason).
    """
    cmd = [sys.executable, os.path.abspath(__file__), "--child", json.dumps(spec)]
    load0 = loadavg_1min()
    t0 = time.perf_counter()
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"status": "timed out", "error": f"no result after {timeout:g} s", "process_seconds": timeout}
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith(_MARK)]
    if res.returncode == 0 and lines:
        rec = json.loads(lines[-1][len(_MARK):])
    elif res.returncode == -signal.SIGKILL:
        rec = {"status": "did not fit", "error": "child killed by SIGKILL (out of memory?)"}
    else:
        tail = (res.stderr.strip().splitlines() or ["no output"])[-1]
        rec = {"status": "error", "error": f"exit status {res.returncode}: {tail[:300]}"}
    rec["process_seconds"] = time.perf_counter() - t0  # includes interpreter start, imports, data
    # The machine is shared: the 1-min load average before and after tells whether the wall time
    # includes waiting for a core (also visible as cpu_seconds < seconds for single-threaded work).
    rec["loadavg_1min"] = [load0, loadavg_1min()]
    return rec


# --------------------------------------------------------------------------- report
def _gib(b) -> str:
    return "—" if b is None or b < 0 else f"{b / _GIB:.3f}"


def _secs(t) -> str:
    return "—" if t is None else (f"{t:.2f}" if t < 100 else f"{t:.0f}")


def _notes(r: dict) -> str:
    if r["status"] != "ok":
        need = r.get("failed_allocation_bytes")
        need = f" (one allocation of {need / _GIB:.1f} GiB was refused)" if need else ""
        return f"**{r['status']}**{need}: {r.get('error', '')}".replace("|", "\\|")
    parts = [f"+{_gib(r['peak_rss'] - r['rss_before'])} GiB over RSS before"]
    if r["peak_rss"] <= r["peak_before"]:
        parts.append("work stayed below the data-generation peak")
    if r["kind"] == "barycenter":
        parts.append(f"objective W2² {r['objective']:.6g}")
        solves = f"{r['ot_solves']} exact OT solve" + ("" if r["ot_solves"] == 1 else "s")
        parts.append(f"{solves} {r['ot_seconds']:.1f} s, k-means++ init {r['init_seconds']:.1f} s")
        parts.append(f"weights in [{r['weights_min']:.3g}, {r['weights_max']:.3g}]")
    else:
        parts.append(f"value {r['value']:.6g}, ‖∂/∂y‖ {r['grad_norm']:.3g}")
    parts.append(f"CPU {r['cpu_seconds']:.0f} s, load {r['loadavg_1min'][0]:.1f}→{r['loadavg_1min'][1]:.1f}")
    return "; ".join(parts)


def markdown(meta: dict, rows: list) -> str:
    """The Markdown report: command, machine, the table, and how to read it."""
    a, mc = meta["args"], meta["machine"]
    L = ["# Large supports: memory and time on one class of real features", "",
         f"Command: `{meta['command']}`", "",
         f"- Date: {meta['date']}",
         f"- Machine: {mc['cpu_model']}, {mc['cpu_count']} cores, {mc['mem_total_gib']:.1f} GiB RAM "
         f"({mc['mem_available_gib']:.1f} GiB available at start; shared with other jobs), {mc['platform']}",
         f"- Versions: python {meta['versions']['python']}, torch {meta['versions']['torch']}, "
         f"POT {meta['versions']['pot']}, numpy {meta['versions']['numpy']}; torch threads in each child: "
         f"{rows[0].get('threads', '?') if rows else '?'}",
         f"- Data: x (n, d) float32, a ReLU'd mixture of {a['clusters']} Gaussian clusters (unequal masses and "
         f"spreads), seed {a['seed']}; y (m, d) = m further draws of the same mixture (independent stream).",
         f"- Exact barycenter: `ddmetrics.get_loss(\"wasserstein\").barycenter(x, {a['m']}, iters={a['iters']}, "
         f"learn_weights=True)` (k-means++ init, {a['iters']} rounds; its network-simplex solves are counted in the notes).",
         "- Losses: value + backward w.r.t. y (`loss(x, y).backward()`), defaults except `sinkhorn` "
         "`backend=\"tensorized\"` (blur 0.05, scaling 0.5, debiased: it builds the n×n cost of x with itself) "
         f"and `sliced` `n_projections=256, seed={a['seed']}`.",
         "- Each row is a fresh process. seconds = wall time of the work alone (data generation and imports "
         "excluded); peak RSS = `getrusage(RUSAGE_SELF).ru_maxrss` of that process (includes the interpreter, "
         "torch and the data); RSS before = VmRSS just before the work; data = x (+ y) bytes.",
         "- Notes: CPU = user + system seconds of the work; load = the machine's 1-minute load average before "
         "→ after that process (2 cores, shared): CPU seconds well below the wall seconds of single-threaded "
         "work (the network simplex) mean the process waited for a core, so those wall times are upper bounds.",
         f"- Each child's address space is capped at {a['mem_limit_gib']:g} GiB (RLIMIT_AS): a measurement "
         "needing more fails to allocate and is reported as *did not fit*.",
         "- KeOps (`sinkhorn` `backend=\"online\"`/`\"auto\"` on CUDA) on GPU was **not measured here**: "
         "no GPU was lent to this run; on CPU only the tensorized backend is measured.", ""]

    def cells(r: dict) -> list:
        ok = r["status"] == "ok"
        return [LABELS[r["kind"]], r["n"], r["d"], r["m"], _secs(r.get("seconds")) if ok else "—",
                _gib(r.get("peak_rss")) if ok else "—", _gib(r.get("rss_before")) if ok else "—",
                _gib(r.get("data_bytes")) if ok else "—", _notes(r)]

    L += markdown_table(["measurement", "n", "d", "m", "seconds", "peak RSS GiB", "RSS before GiB", "data GiB",
                         "notes"], [cells(r) for r in rows], align="lrrrrrrrl")
    L += ["", f"Total wall time of the run: {meta['total_s']:.0f} s."]
    return "\n".join(L) + "\n"


# --------------------------------------------------------------------------- main
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--n", type=int, nargs="+", default=[100000], help="class sizes n (one row per size)")
    p.add_argument("--d", type=int, default=512, help="feature dimension")
    p.add_argument("--m", type=int, default=100, help="atoms of the barycenter / points of y")
    p.add_argument("--iters", type=int, default=10, help="barycenter rounds")
    p.add_argument("--clusters", type=int, default=50, help="mixture components of the features")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS), help="measurements to run")
    p.add_argument("--mem-limit-gib", type=float, default=20.0,
                   help="address-space cap (RLIMIT_AS) of each measurement's process; 0 for none")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds before a measurement is abandoned")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads in the children")
    p.add_argument("--out", default="benchmarks/results/large_support", help="output path without extension")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.child is not None:
        return _child_main(args.child)
    import numpy as np
    import ot

    log, elapsed = elapsed_log()

    machine = machine_info()
    meta = {
        "command": command_line(),
        "date": local_date(),
        "machine": {**{k: machine[k] for k in ("cpu_model", "cpu_count", "platform", "mem_total_gib",
                                                "mem_available_gib")},
                    "gpu": "none measured (no GPU lent; KeOps GPU not measured)"},
        "versions": {"python": machine["python"], "torch": machine["torch"], "pot": ot.__version__,
                     "numpy": np.__version__},
        "args": {k: v for k, v in vars(args).items() if k != "child"},
    }
    rows = []
    for n in args.n:
        for kind in args.kinds:
            spec = {"kind": kind, "n": n, "d": args.d, "m": args.m, "seed": args.seed, "clusters": args.clusters,
                    "iters": args.iters, "threads": args.threads, "mem_limit_gib": args.mem_limit_gib}
            log(f"{kind} n={n} d={args.d} m={args.m} ...")
            rec = run_child(spec, timeout=args.timeout)
            rec.update(kind=kind, n=n, d=args.d, m=args.m)
            rows.append(rec)
            if rec["status"] == "ok":
                log(f"  {rec['seconds']:.2f} s, peak RSS {_gib(rec['peak_rss'])} GiB "
                    f"(before {_gib(rec['rss_before'])} GiB); {_notes(rec)}")
            else:
                log(f"  {rec['status']}: {rec.get('error')}")
    meta["total_s"] = elapsed()
    write_json(args.out + ".json", {"meta": meta, "results": rows})
    md = markdown(meta, rows)
    write_text(args.out + ".md", md)
    print(md)
    log(f"wrote {args.out}.md and {args.out}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
