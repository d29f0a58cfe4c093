"""Helpers shared by the benchmark scripts: machine description, timing, atomic writing,
Markdown tables, the ``mean ± std`` formatter and PNG plots.

The scripts are run as ``python benchmarks/<name>.py``, which puts this folder first on
``sys.path``; a script loaded by path (the tests) adds it itself, so ``import _common`` works
both ways. Nothing here imports torch, ddmetrics or matplotlib at module level: the large-support
child processes measure their own memory, and most scripts never plot.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import gc
import io
import math
import os
import platform
import shlex
import statistics
import sys
import time
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")
GIB = 1024 ** 3

__all__ = ["HERE", "RESULTS", "GIB", "cpu_model", "meminfo_gib", "machine_info", "command_line", "rss_bytes",
           "peak_rss_bytes", "elapsed_log", "now_utc",
           "local_date", "cpu_times", "cpu_share", "loadavg_1min", "median", "stopwatch", "interleaved_repeats",
           "write_json", "write_text", "write_lines", "markdown_table", "mean_std", "pm", "percent", "pyplot",
           "save_png"]


# --------------------------------------------------------------------------- machine
def cpu_model() -> str:
    """CPU model name from ``/proc/cpuinfo`` (falls back to :func:`platform.processor`)."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def meminfo_gib(key: str) -> float:
    """A ``/proc/meminfo`` entry (e.g. ``MemTotal``) in GiB; NaN when unavailable."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024 / GIB
    except OSError:
        pass
    return float("nan")


def machine_info() -> Dict[str, Any]:
    """What a timing depends on: CPU model and count, RAM, platform, python, torch and its threads."""
    import torch  # here, not at import: see the module docstring

    return {"cpu_model": cpu_model(), "cpu_count": os.cpu_count(), "mem_total_gib": meminfo_gib("MemTotal"),
            "mem_available_gib": meminfo_gib("MemAvailable"), "platform": platform.platform(),
            "machine": platform.machine(), "processor": platform.processor(), "python": platform.python_version(),
            "torch": torch.__version__, "threads": torch.get_num_threads()}


def command_line() -> str:
    """The command that produced the results, as run from the repository root (paths relative to
    it, so the record names no machine's folders; an interpreter outside the repo is ``python``)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

    def inside(path: str) -> Optional[str]:
        rel = os.path.relpath(os.path.abspath(path), root)
        return None if rel.startswith("..") else rel

    exe = inside(sys.executable) or "python"
    script = inside(sys.argv[0]) or sys.argv[0] if sys.argv and sys.argv[0] else ""
    return shlex.join([exe, script] + sys.argv[1:]) if script else exe


def rss_bytes() -> int:
    """Current resident set size of this process (``VmRSS`` of ``/proc/self/status``), bytes; -1 if unknown."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return -1


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far (``getrusage(RUSAGE_SELF).ru_maxrss``, KiB on Linux), bytes."""
    import resource  # POSIX only: imported where a memory benchmark asks for it

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def elapsed_log() -> Tuple[Callable[[str], None], Callable[[], float]]:
    """``(log, elapsed)``: ``log(msg)`` prints ``msg`` after the seconds since this call (flushed,
    for runs followed in a log file); ``elapsed()`` returns those seconds."""
    start = time.perf_counter()

    def elapsed() -> float:
        return time.perf_counter() - start

    def log(msg: str) -> None:
        print(f"[{elapsed():7.1f}s] {msg}", flush=True)

    return log, elapsed


def now_utc() -> str:
    """The current time, UTC, ISO 8601 to the second (the runner's record times)."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def local_date() -> str:
    """The current local time with its UTC offset, ISO 8601 to the second (a report's date)."""
    return _dt.datetime.now().astimezone().isoformat(timespec="seconds")


# --------------------------------------------------------------------------- machine load
def cpu_times() -> Optional[Dict[str, int]]:
    """Aggregate CPU jiffies from /proc/stat (Linux): dict user/system/idle/steal/total, or None."""
    try:
        with open("/proc/stat") as fh:
            f = [int(v) for v in fh.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    f += [0] * (8 - len(f))
    return {"user": f[0] + f[1], "system": f[2] + f[5] + f[6], "idle": f[3] + f[4], "steal": f[7], "total": sum(f[:8])}


def cpu_share(before: Optional[Dict[str, int]], after: Optional[Dict[str, int]]) -> Dict[str, float]:
    """Percent of machine CPU time spent in each state between two :func:`cpu_times` snapshots."""
    if not before or not after or after["total"] <= before["total"]:
        return {}
    tot = after["total"] - before["total"]
    return {k: round(100.0 * (after[k] - before[k]) / tot, 1) for k in ("user", "system", "idle", "steal")}


def loadavg_1min() -> float:
    """The machine's 1-minute load average (NaN where unknown): on a shared machine it tells
    whether a wall time includes waiting for a core."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


# --------------------------------------------------------------------------- timing
def median(times: Sequence[float]) -> float:
    """Median of ``times``; NaN for none (a skipped measurement)."""
    return statistics.median(times) if times else float("nan")


def stopwatch(fn: Callable[[], Any]) -> Tuple[float, Any]:
    """``(seconds, result)`` of one call of ``fn``, after a garbage collection (so that a
    collection left over by an earlier call is not charged to this one)."""
    gc.collect()
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def interleaved_repeats(repeat_once: Mapping[str, Callable[[], float]], repeats: int) -> Dict[str, List[float]]:
    """Seconds of ``repeats`` repeats of each measurement, interleaved.

    ``repeat_once[name]()`` runs one repeat of ``name`` and returns its seconds. Each round runs
    every measurement once, in the mapping's order on even rounds and reversed on odd ones, so
    that all of them share the machine's noise and none always runs first (take the median).
    """
    names = list(repeat_once)
    times: Dict[str, List[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name in (names if r % 2 == 0 else names[::-1]):
            times[name].append(repeat_once[name]())
    return times


@contextlib.contextmanager
def barycenter_clock():
    """Count and time the exact barycenter's network-simplex solves and its k-means++ start.

    Yields a dict ``{"calls", "seconds", "init"}`` that fills while the block runs: it tells how
    much of a barycenter's time is the network simplex and how much the torch algebra.
    Instrumentation, so it patches the implementation module, where the names are looked up,
    and restores it on exit.
    """
    import ddmetrics.losses._barycenter as bary_mod

    solver, init = bary_mod.emd_arcs, bary_mod.init_support
    clock = {"calls": 0, "seconds": 0.0, "init": 0.0}

    def timed_solver(*args, **kwargs):
        t = time.perf_counter()
        try:
            return solver(*args, **kwargs)
        finally:
            clock["calls"] += 1
            clock["seconds"] += time.perf_counter() - t

    def timed_init(*args, **kwargs):
        t = time.perf_counter()
        try:
            return init(*args, **kwargs)
        finally:
            clock["init"] += time.perf_counter() - t

    bary_mod.emd_arcs, bary_mod.init_support = timed_solver, timed_init
    try:
        yield clock
    finally:
        bary_mod.emd_arcs, bary_mod.init_support = solver, init


# --------------------------------------------------------------------------- writing (always atomic)
def write_json(path: str, obj: Any, indent: int = 2) -> None:
    """``obj`` as JSON at ``path``, atomically (an interrupted run never leaves half a file)."""
    from ddmetrics._io import atomic_write_json  # importing ddmetrics imports torch

    atomic_write_json(path, obj, indent=indent)


def write_text(path: str, text: str) -> None:
    """``text`` (UTF-8) at ``path``, atomically."""
    from ddmetrics._io import atomic_write_bytes

    atomic_write_bytes(path, text.encode())


def write_lines(path: str, lines: Iterable[str]) -> None:
    """``lines`` joined by newlines, with a final newline, at ``path``, atomically."""
    write_text(path, "\n".join(lines) + "\n")


def markdown_table(columns: Sequence[str], rows: Iterable[Sequence[Any]], align: Optional[str] = None) -> List[str]:
    """The lines of a Markdown table.

    ``align`` has one letter per column, ``"l"`` (``|---|``) or ``"r"`` (``|---:|``); default
    all left. Cells are written with :func:`str`; a ``|`` inside a cell must be escaped by the
    caller (``\\|``).
    """
    align = align or "l" * len(columns)
    if len(align) != len(columns) or set(align) - {"l", "r"}:
        raise ValueError(f"align must be one 'l' or 'r' per column ({len(columns)}), got {align!r}")
    lines = ["| " + " | ".join(columns) + " |",
             "|" + "".join("---:|" if a == "r" else "---|" for a in align)]
    for row in rows:
        row = list(row)
        if len(row) != len(columns):
            raise ValueError(f"a row has {len(row)} cells, the table {len(columns)} columns: {row!r}")
        lines.append("| " + " | ".join(str(v) for v in row) + " |")
    return lines


# --------------------------------------------------------------------------- mean ± std
def mean_std(values: Sequence[float]) -> Tuple[Optional[float], Optional[float]]:
    """Mean and population standard deviation (``(None, None)`` for no values): the package's
    own :func:`ddmetrics.evaluate.mean_std`, imported when first used."""
    from ddmetrics.evaluate import mean_std as package_mean_std

    return package_mean_std(values)


def pm(values: Sequence[float], scale: float = 100.0, digits: int = 2, missing: str = "-") -> str:
    """``"mean ± std"`` of ``values`` × ``scale`` (:func:`ddmetrics.evaluate.format_mean_std`);
    ``missing`` for no values."""
    from ddmetrics.evaluate import format_mean_std

    return format_mean_std(values, scale, digits) if values else missing


def percent(value: Optional[float], digits: int = 2, missing: str = "-") -> str:
    """A fraction in percent to ``digits`` decimals; ``missing`` for ``None``."""
    return missing if value is None else f"{100 * value:.{digits}f}"


# --------------------------------------------------------------------------- paired differences
#: two-sided 95 % quantiles t_{0.975, dof} of Student's t, used when scipy is absent
T975 = {1: 12.7062, 2: 4.3027, 3: 3.1824, 4: 2.7764, 5: 2.5706, 6: 2.4469, 7: 2.3646, 8: 2.3060, 9: 2.2622,
        10: 2.2281, 12: 2.1788, 15: 2.1314, 20: 2.0860, 30: 2.0423}


def t_quantile(dof: int, level: float = 0.95) -> float:
    """The two-sided ``level`` quantile of Student's t with ``dof`` degrees of freedom
    (scipy.stats.t when installed, else :data:`T975` for 95 %, a conservative neighbour in between)."""
    try:
        from scipy.stats import t

        return float(t.ppf(0.5 + level / 2, dof))
    except ImportError:
        if level != 0.95:
            raise
        return T975[max(k for k in T975 if k <= dof)] if dof <= 30 else 1.96


def paired_difference(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> Dict[str, Any]:
    """Paired difference of ``a`` and ``b`` (run ``r`` of each shares its seed): the mean of the
    per-seed differences ``a[r] - b[r]`` and its ``level`` confidence interval from the t
    distribution with n - 1 degrees of freedom (``mean ± t * sd / sqrt(n)``, sample sd).

    Returns ``{"n", "mean", "low", "high", "excludes_zero"}``; with n < 2 there is no interval
    (``low``/``high`` ``None``, ``excludes_zero`` False). The interval excludes 0 exactly when the
    two-sided paired t-test (``scipy.stats.ttest_rel``) has p < 1 - ``level``.
    """
    if len(a) != len(b) or not a:
        raise ValueError(f"paired_difference needs two equally long non-empty lists, got {len(a)} and {len(b)}")
    d = [float(x) - float(y) for x, y in zip(a, b)]
    n, mean = len(d), statistics.fmean(d)
    if n < 2:
        return {"n": n, "mean": mean, "low": None, "high": None, "excludes_zero": False}
    half = t_quantile(n - 1, level) * statistics.stdev(d) / math.sqrt(n)
    return {"n": n, "mean": mean, "low": mean - half, "high": mean + half,
            "excludes_zero": bool(mean - half > 0 or mean + half < 0)}


def format_difference(diff: Optional[Dict[str, Any]], scale: float = 100.0, digits: int = 2) -> str:
    """``"+1.23 [0.40, 2.06]*"`` (points; ``*``: the interval excludes 0), ``"-"`` for ``None``."""
    if diff is None:
        return "-"
    text = f"{scale * diff['mean']:+.{digits}f}"
    if diff["low"] is None:
        return text
    return text + f" [{scale * diff['low']:+.{digits}f}, {scale * diff['high']:+.{digits}f}]" + \
        ("*" if diff["excludes_zero"] else "")


# --------------------------------------------------------------------------- plots
def pyplot():
    """``matplotlib.pyplot`` with the non-interactive Agg backend, imported on first use (without
    matplotlib: an error naming the ``plots`` extra)."""
    from ddmetrics._extras import require_extra

    require_extra("plots", "the benchmark figures")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_png(fig, path: str) -> None:
    """Write ``fig`` as PNG at ``path``, atomically, and close it."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    pyplot().close(fig)
    from ddmetrics._io import atomic_write_bytes

    atomic_write_bytes(path, buf.getvalue())
