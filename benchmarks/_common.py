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
    """CPU model name from ``/proc/cpuinfo`` (falls back to :func:`platform.processor`).

    Kept by hand: neither psutil nor the standard library names the CPU model on Linux
    (``platform.processor()`` is empty there); elsewhere the fallback is what there is."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _psutil():
    """:mod:`psutil`, imported on first use (without it: an error naming the ``bench`` extra)."""
    from ddmetrics._extras import require_extra

    require_extra("bench", "the benchmarks' memory and CPU records")
    import psutil

    return psutil


#: the /proc/meminfo names the benchmarks record -> psutil's ``virtual_memory()`` field (the same
#: kernel numbers on Linux: MemTotal and MemAvailable)
_MEMORY = {"MemTotal": "total", "MemAvailable": "available"}


def meminfo_gib(key: str) -> float:
    """The machine's ``"MemTotal"`` or ``"MemAvailable"`` in GiB (psutil, on any OS); NaN when unavailable."""
    if key not in _MEMORY:
        raise ValueError(f"key must be one of {', '.join(_MEMORY)}, got {key!r}")
    try:
        return getattr(_psutil().virtual_memory(), _MEMORY[key]) / GIB
    except (OSError, AttributeError):
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
    """Current resident set size of this process (psutil, on any OS), bytes; -1 if unknown."""
    try:
        return int(_psutil().Process().memory_info().rss)
    except (OSError, AttributeError):
        return -1


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far, bytes; -1 where unknown (Windows).

    Kept on the standard library: psutil has no peak RSS on Linux or macOS, and
    ``getrusage(RUSAGE_SELF).ru_maxrss`` is it (KiB on Linux, bytes on macOS)."""
    try:
        import resource  # POSIX only
    except ImportError:
        return -1
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024


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
def cpu_times() -> Optional[Dict[str, float]]:
    """Machine-wide CPU seconds (psutil, on any OS): dict user/system/idle/steal/total, or None.

    The states are /proc/stat's grouped as before (user + nice; system + irq + softirq; idle +
    iowait; steal), in seconds rather than jiffies: :func:`cpu_share`'s percentages are the same."""
    try:
        t = _psutil().cpu_times()
    except (OSError, AttributeError):
        return None
    part = {name: getattr(t, name, 0.0) for name in ("user", "nice", "system", "idle", "iowait", "irq", "softirq",
                                                      "steal")}
    out = {"user": part["user"] + part["nice"], "system": part["system"] + part["irq"] + part["softirq"],
           "idle": part["idle"] + part["iowait"], "steal": part["steal"]}
    out["total"] = sum(out.values())
    return out


def cpu_share(before: Optional[Dict[str, float]], after: Optional[Dict[str, float]]) -> Dict[str, float]:
    """Percent of machine CPU time spent in each state between two :func:`cpu_times` snapshots."""
    if not before or not after or after["total"] <= before["total"]:
        return {}
    tot = after["total"] - before["total"]
    return {k: round(100.0 * (after[k] - before[k]) / tot, 1) for k in ("user", "system", "idle", "steal")}


def loadavg_1min() -> float:
    """The machine's 1-minute load average (NaN where unknown): on a shared machine it tells
    whether a wall time includes waiting for a core. Kept on the standard library
    (``os.getloadavg``, POSIX): psutil's Windows emulation needs a warm-up thread."""
    try:
        return os.getloadavg()[0]
    except (OSError, AttributeError):  # AttributeError: Windows has no getloadavg
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
def t_quantile(dof: int, level: float = 0.95) -> float:
    """The two-sided ``level`` quantile of Student's t with ``dof`` degrees of freedom
    (``scipy.stats.t.ppf(0.5 + level / 2, dof)``)."""
    from scipy import stats  # a dependency of POT, so always installed with ddmetrics

    return float(stats.t.ppf(0.5 + level / 2, dof))


def paired_difference(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> Dict[str, Any]:
    """Paired difference of ``a`` and ``b`` (run ``r`` of each shares its seed): the mean of the
    per-seed differences ``a[r] - b[r]`` and its ``level`` confidence interval from the t
    distribution with n - 1 degrees of freedom (``mean ± t * sd / sqrt(n)``, sample sd).

    Returns ``{"n", "mean", "low", "high", "excludes_zero"}``; with n < 2 there is no interval
    (``low``/``high`` ``None``, ``excludes_zero`` False). The interval excludes 0 exactly when the
    two-sided paired t-test (``scipy.stats.ttest_rel``) has p < 1 - ``level``. The arithmetic is
    kept by hand around :func:`t_quantile` (``scipy.stats.t.interval`` adds the two quantiles
    separately): the committed tables' numbers stay exactly those recorded.
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
