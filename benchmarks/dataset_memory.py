#!/usr/bin/env python
"""Peak memory of ``Distiller.fit`` on a generic ``torch.utils.data.Dataset`` against its length (issue 25).

A map-style Dataset given to ``fit`` is streamed (:class:`ddmetrics.data.StreamedDataset`): its
labels are read once, its images only in the batches the method asks for. This measures that the
peak resident set size does not grow with the number of images: ``fit`` on 5 000 and on 20 000
images of 3 x 32 x 32, each in a fresh Python process (this script with the hidden ``--child``
flag), whose ``ru_maxrss`` is the run's own. Holding the images would cost 15 000 x 12 KiB =
176 MiB more at 20 000.

The Dataset makes item ``i`` from a generator seeded with ``i`` (a float32 tensor, as a
transform gives, and ``i % 10``) and declares ``targets``, as torchvision's datasets do: it holds
no pixels itself, so what the process holds is what ``fit`` holds. The method is a cheap preset
run: DM (random ConvNet embedders), IPC 10, ``iterations`` synthesis steps per class
(default 5), 256 real images per step, on the CPU; nothing else is cut.

``--baseline-src DIR`` also runs every size with the ddmetrics found in ``DIR`` (a checkout of an
older commit, put first on ``PYTHONPATH``; its commit is reported, and this checkout's, whose
uncommitted changes count too): before issue 25, ``fit`` materialised such a Dataset item by item.

Usage::

    PYTHONPATH=$PWD .venv/bin/python benchmarks/dataset_memory.py
    PYTHONPATH=$PWD .venv/bin/python benchmarks/dataset_memory.py --baseline-src /tmp/old-checkout

Writes ``<out>.json`` and ``<out>.md`` atomically (default ``benchmarks/results/dataset_memory``).
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import shlex
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the shared helpers sit next to this script
from _common import command_line, cpu_model, peak_rss_bytes, rss_bytes  # noqa: E402

_MARK = "@@dataset_memory@@ "  # prefix of the child's one result line on stdout
_MIB = 1024 ** 2
_SHAPE = (3, 32, 32)
_CLASSES = 10
_SIZES = (5_000, 20_000)


# --------------------------------------------------------------------------- child
def _child_main(spec_json: str) -> int:
    spec = json.loads(spec_json)
    import numpy as np
    import torch
    from torch.utils.data import Dataset

    import ddmetrics as ddm

    torch.set_num_threads(int(spec["threads"]))

    class GeneratedImages(Dataset):
        """Item ``i``: a float32 image drawn from a generator seeded with ``i``, and ``i % 10``."""

        def __init__(self, n: int) -> None:
            self.n = n
            self.targets = np.arange(n, dtype=np.int64) % _CLASSES
            self.classes = [str(k) for k in range(_CLASSES)]
            self.reads = 0

        def __len__(self) -> int:
            return self.n

        def __getitem__(self, i: int):
            self.reads += 1
            gen = torch.Generator(device="cpu").manual_seed(int(i))
            return torch.rand(_SHAPE, generator=gen, device="cpu"), int(self.targets[i])

    data = GeneratedImages(int(spec["n"]))
    floor = rss_bytes()
    distiller = ddm.Distiller(method="dm", ipc=int(spec["ipc"]), seed=0, iterations=int(spec["iterations"]),
                              device="cpu")
    start = time.perf_counter()
    syn = distiller.fit(data, progress=False)
    seconds = time.perf_counter() - start
    rec = {"n": data.n, "reads": data.reads, "seconds": seconds, "rss_floor": floor, "peak_rss": peak_rss_bytes(),
           "synthetic": list(syn.images.shape), "ddmetrics": os.path.dirname(ddm.__file__)}
    print(_MARK + json.dumps(rec), flush=True)
    return 0


def run_child(spec: dict, timeout: float, src: str) -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([src] + [p for p in os.environ.get("PYTHONPATH", "").split(
        os.pathsep) if p]))
    cmd = [sys.executable, os.path.abspath(__file__), "--child", json.dumps(spec)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    for line in proc.stdout.splitlines():
        if line.startswith(_MARK):
            return json.loads(line[len(_MARK):])
    raise RuntimeError(f"measurement failed (exit {proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")


# --------------------------------------------------------------------------- report
def _commit(src: str) -> str:
    """The short commit of the checkout ``src`` (its folder name when git cannot tell)."""
    proc = subprocess.run(["git", "-C", src, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return proc.stdout.strip() if proc.returncode == 0 else os.path.basename(os.path.normpath(src))


def _mib(v: float) -> str:
    return f"{v / _MIB:.0f}"


def verdict(rows: list) -> dict:
    small, large = (min(rows, key=lambda r: r["n"]), max(rows, key=lambda r: r["n"]))
    growth = (large["peak_rss"] - small["peak_rss"]) / _MIB
    held = (large["n"] - small["n"]) * 4 * _SHAPE[0] * _SHAPE[1] * _SHAPE[2] / _MIB
    return {"growth_mib": growth, "held_images_mib": held, "ok": growth < held / 4}


def markdown(result: dict) -> str:
    s = result["settings"]
    lines = [
        "# Peak memory of fit on a generic Dataset against its length",
        "",
        f"Generated by `{result['command']}` on {result['date']} ({result['machine']}); machine load "
        f"{result['loadavg']} (1/5/15 min) at the start, times indicative. Each row is one `Distiller(method=\"dm\", "
        f"ipc={s['ipc']}, iterations={s['iterations']}, device=\"cpu\").fit(dataset)` in a fresh process "
        f"({s['threads']} torch thread(s)); the Dataset makes item i from a generator seeded with i (3 x 32 x 32 "
        "float32, label i % 10) and declares `targets`, holding no pixels. *floor*: RSS after building the "
        "Dataset and importing torch and ddmetrics; *peak*: `ru_maxrss`; *reads*: items the run asked the Dataset "
        "for. MiB.",
        "",
        "| code | images | reads | fit (s) | floor | peak | peak - floor |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, rows in result["runs"].items():
        for r in rows:
            lines.append(f"| {label} ({result['commits'][label]}) | {r['n']} | {r['reads']} | {r['seconds']:.1f} | {_mib(r['rss_floor'])} | "
                         f"{_mib(r['peak_rss'])} | {_mib(r['peak_rss'] - r['rss_floor'])} |")
    lines.append("")
    for label, v in result["verdicts"].items():
        reading = ("no growth with the number of images" if v["ok"] else "the peak grows with the number of images")
        lines.append(f"- **{label}** ({result['commits'][label]}): peak {v['growth_mib']:+.0f} MiB from {_SIZES[0]} to {_SIZES[1]} images, "
                     f"against {v['held_images_mib']:.0f} MiB for holding the extra images (criterion: under a "
                     f"quarter of that): {reading}.")
    lines.append("")
    return "\n".join(lines)


# --------------------------------------------------------------------------- main
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--iterations", type=int, default=5, help="DM synthesis steps per class")
    p.add_argument("--ipc", type=int, default=10, help="synthetic images per class")
    p.add_argument("--threads", type=int, default=1, help="torch threads in each child")
    p.add_argument("--baseline-src", default=None, metavar="DIR",
                   help="also measure the ddmetrics of this checkout (first on PYTHONPATH)")
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                                 "dataset_memory"))
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds per measurement")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    return p


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    if args.child is not None:
        return _child_main(args.child)
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    sources = {"this checkout": here}
    if args.baseline_src:
        sources["baseline"] = os.path.abspath(args.baseline_src)
    loadavg = " ".join(f"{v:.1f}" for v in os.getloadavg())
    started = time.perf_counter()
    runs = {}
    for label, src in sources.items():
        runs[label] = []
        for n in _SIZES:
            spec = {"n": n, "ipc": args.ipc, "iterations": args.iterations, "threads": args.threads}
            rec = run_child(spec, args.timeout, src)
            runs[label].append(rec)
            print(f"{label}: {n} images, peak {_mib(rec['peak_rss'])} MiB (floor {_mib(rec['rss_floor'])}), "
                  f"{rec['reads']} reads, fit {rec['seconds']:.1f} s", flush=True)
    result = {
        "benchmark": "dataset_memory",
        "command": command_line() if argv is None else shlex.join(["python", "benchmarks/dataset_memory.py", *argv]),
        "date": _dt.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "machine": f"{cpu_model()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "loadavg": loadavg,
        "settings": {"iterations": args.iterations, "ipc": args.ipc, "threads": args.threads, "sizes": list(_SIZES),
                     "total_seconds": time.perf_counter() - started},
        "commits": {label: _commit(src) for label, src in sources.items()},
        "runs": runs, "verdicts": {label: verdict(rows) for label, rows in runs.items()},
    }
    text = markdown(result)
    print(text)
    from ddmetrics._io import atomic_write_bytes, atomic_write_json

    atomic_write_json(args.out + ".json", result)
    atomic_write_bytes(args.out + ".md", text.encode())
    print(f"wrote {args.out}.json and {args.out}.md")
    return 0 if result["verdicts"]["this checkout"]["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
