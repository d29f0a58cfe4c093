#!/usr/bin/env python
"""Peak memory of distillation on image collections at their real size (issue 10, part 2).

Two questions:

1. **Image folders stream.** Does a WMDD run on an image folder (one sub-folder per class,
   read by :class:`ddmetrics.data.ImageFolder`) hold memory that grows with the number of
   images? It should not, beyond the per-class teacher feature matrix (``n_k x d`` float32,
   one class at a time) and the labels/file names. Measured on seeded random PNGs (sides drawn
   in 64..96 px, so every image is resized and centre-cropped to 64 px) at 20 classes x 300
   images, against 10 x 300 (twice fewer classes) and 20 x 600 (twice more images per class).
2. **CIFAR-10 at full size.** Load time and peak memory of a DM IPC 10 run on a generated
   CIFAR-10 python-batch directory of 50 000 + 10 000 random images (the format
   :func:`ddmetrics.data.cifar_batches` reads; these are decoded into memory, 32 px).

Every measurement is one ``ddmetrics distill ... --runs 0`` (no evaluation) run in a fresh
Python process (this script with the hidden ``--child`` flag, calling ``ddmetrics.cli.main``),
so its peak resident set size — ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` read inside that
process — is the run's own. The child also reports its RSS after importing torch and ddmetrics
(the floor every run pays) and the wall time of ``ddmetrics.data.load`` (listing, header checks
and the mean/std estimate for a folder; unpickling and normalising for CIFAR). DataLoader
workers (the ``--workers`` row) are forked from the run and share its pages copy-on-write, so
their ``ru_maxrss`` counts the parent's pages again and is not reported; what each adds is its
batches in flight (at most two).

Settings, reduced to keep the whole benchmark near 15 minutes on a loaded 2-core CPU (each
is a flag): WMDD ``--iterations 10`` synthesis steps per class, ``teacher_epochs=1``, a
width-32 ConvNet-BN teacher (``--teacher-width 128`` is the preset's ``convnet_bn``, four
times the per-image compute); DM ``--dm-iterations 10``. None of them changes what grows with
the number of images: every train image is still decoded three times per WMDD run.

Usage::

    PYTHONPATH=$PWD .venv/bin/python benchmarks/image_folder_memory.py
    PYTHONPATH=$PWD .venv/bin/python benchmarks/image_folder_memory.py --quick   # a smoke run

Writes ``<out>.json`` and ``<out>.md`` atomically (default ``benchmarks/results/image_folder_memory``).
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import pickle
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the shared helpers sit next to this script
from _common import command_line, cpu_model, peak_rss_bytes, rss_bytes  # noqa: E402

_MARK = "@@image_folder_memory@@ "  # prefix of the child's one result line on stdout
_MIB = 1024 ** 2
_SEED = 0  # image (k, i) of every folder is drawn from the stream (_SEED, k, i)
#: the default-width teacher, measured once outside this script (see the report)
TEACHER_NOTE = ("with it the peak is set by batch-256 activations at 64 px, not by the data: measured separately "
                "on 20 x 60 images, 2.6 GiB after the teacher epoch and 4.2 GiB after the PCBN statistics pass, whose "
                "float64 accumulators hold three copies of a batch's first-layer BN input")


# --------------------------------------------------------------------------- data
def write_folder(root: str, classes: int, per_class: int, seed: int = _SEED, lo: int = 64, hi: int = 96) -> None:
    """``classes`` sub-folders of ``per_class`` random RGB PNGs with sides in ``lo..hi``; image
    ``(k, i)`` depends only on ``(seed, k, i)``."""
    import numpy as np
    from PIL import Image

    for k in range(classes):
        folder = os.path.join(root, f"n{k:08d}")  # ImageNet-style synset folder names
        os.makedirs(folder, exist_ok=True)
        for i in range(per_class):
            rng = np.random.default_rng([seed, k, i])
            w, h = (int(v) for v in rng.integers(lo, hi + 1, size=2))
            # smooth-ish colour images (a random low-resolution field, upsampled) + noise: PNGs
            # of a realistic size rather than incompressible noise
            base = rng.integers(0, 256, size=(h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
            img = np.asarray(Image.fromarray(base).resize((w, h), Image.BILINEAR), dtype=np.int16)
            img = np.clip(img + rng.integers(-20, 21, size=img.shape), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(os.path.join(folder, f"n{k:08d}_{i:05d}.png"), compress_level=1)


def link_subset(src: str, dst: str, classes: int, per_class: int) -> None:
    """A folder of the first ``classes`` classes and ``per_class`` files of each, hard-linked."""
    for name in sorted(os.listdir(src))[:classes]:
        os.makedirs(os.path.join(dst, name))
        for f in sorted(os.listdir(os.path.join(src, name)))[:per_class]:
            os.link(os.path.join(src, name, f), os.path.join(dst, name, f))


def write_cifar10(root: str, train: int = 50_000, test: int = 10_000, seed: int = _SEED) -> None:
    """A CIFAR-10 python-batch directory of random images: 5 ``data_batch_*``, ``test_batch``,
    ``batches.meta`` (pickle protocol 4, as :func:`ddmetrics.data.cifar_batches` accepts)."""
    import numpy as np

    os.makedirs(root, exist_ok=True)
    rng = np.random.default_rng(seed)
    per = train // 5
    for b in range(1, 6):
        data = rng.integers(0, 256, size=(per, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.permutation(np.arange(per) % 10)]
        with open(os.path.join(root, f"data_batch_{b}"), "wb") as fh:
            pickle.dump({b"data": data, b"labels": labels, b"batch_label": f"training batch {b}".encode()}, fh,
                        protocol=4)
    data = rng.integers(0, 256, size=(test, 3072), dtype=np.uint8)
    with open(os.path.join(root, "test_batch"), "wb") as fh:
        pickle.dump({b"data": data, b"labels": [int(v) for v in rng.permutation(np.arange(test) % 10)]}, fh,
                    protocol=4)
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    with open(os.path.join(root, "batches.meta"), "wb") as fh:
        pickle.dump({b"label_names": names}, fh, protocol=4)


# --------------------------------------------------------------------------- child
def _child_main(spec_json: str) -> int:
    spec = json.loads(spec_json)
    import torch

    import ddmetrics.cli
    import ddmetrics.data
    import ddmetrics.distill  # noqa: F401 - imported before the floor is read, like torch

    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    if spec.get("teacher_width"):  # a narrower ConvNet-BN teacher, registered under its own name
        from functools import partial

        from ddmetrics.models import ConvNet, register_model

        register_model(f"convnet_bn_w{spec['teacher_width']}", partial(ConvNet, norm="batch",
                                                                       width=int(spec["teacher_width"])))
    floor = rss_bytes()
    timed = {}
    real_load = ddmetrics.data.load

    def load(*args, **kw):  # the CLI calls ddmetrics.data.load: time it, and the peak it reaches
        start = time.perf_counter()
        out = real_load(*args, **kw)
        timed["load_seconds"] = time.perf_counter() - start
        timed["peak_rss_load"] = peak_rss_bytes()
        timed["n_train"] = len(out.train)
        timed["image_shape"] = list(out.train.image_shape)
        timed["train_type"] = type(out.train).__name__
        timed["max_class"] = int(torch.bincount(out.train.labels).max())
        return out

    ddmetrics.data.load = load
    start = time.perf_counter()
    status = ddmetrics.cli.main(spec["argv"])
    seconds = time.perf_counter() - start
    rec = {"status": status, "seconds": seconds, "rss_floor": floor,
           "peak_rss": peak_rss_bytes(), **timed}
    print(_MARK + json.dumps(rec), flush=True)
    return 0


def run_child(spec: dict, timeout: float) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", json.dumps(spec)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    for line in proc.stdout.splitlines():
        if line.startswith(_MARK):
            return json.loads(line[len(_MARK):])
    raise RuntimeError(f"measurement failed (exit {proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")


# --------------------------------------------------------------------------- report
def feature_dim(width: int, channels: int, classes: int, size: int) -> int:
    import torch

    from ddmetrics.models import ConvNet

    with torch.no_grad():
        net = ConvNet(channels, classes, size, width=width, norm="batch").eval()
        return int(net.embed(torch.zeros(1, channels, size, size, device="cpu")).flatten(1).shape[1])


def _mib(v: float) -> str:
    return f"{v / _MIB:.0f}"


def markdown(result: dict) -> str:
    s = result["settings"]
    lines = [
        "# Peak memory on image collections at their real size",
        "",
        f"Generated by `{result['command']}` on {result['date']} ({result['machine']}). Each row is one "
        "`ddmetrics distill ... --runs 0` in a fresh process; *peak* is its `ru_maxrss`, *floor* its RSS after "
        "importing torch and ddmetrics (the main process; forked DataLoader workers share its pages). "
        "MiB throughout.",
        "",
        "## WMDD IPC 1 on image folders (streamed, 64 px)",
        "",
        f"Random PNGs, sides in 64..96 px, resized (shorter side) and centre-cropped to 64 px; "
        f"`--method wmdd --ipc 1 --iterations {s['iterations']} --set teacher_epochs={s['teacher_epochs']} "
        f"--teacher-arch {s['teacher_arch']} --image-size 64 --device cpu`; the teacher is ConvNet-3 with BatchNorm "
        f"of width {s['teacher_width']} (the preset's `convnet_bn` is width 128: {s['teacher_note']}), feature "
        f"dimension d = {s['feature_dim']}. The splits are 72 % train / 8 % val / 20 % test per class; the run "
        "decodes every train image three times (teacher epoch, PCBN statistics, class features) plus the "
        "mean/std sample of at most 1000 train images.",
        "",
        "| folder | workers | train images | max n_k | class features n_k x d (MiB) | all train images decoded (MiB) "
        "| load (s) | run (s) | floor | peak after load | peak | peak - floor |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["folders"]:
        lines.append(f"| {r['classes']} x {r['per_class']} | {r['workers']} | {r['n_train']} | {r['max_class']} | "
                     f"{r['class_features_bytes'] / _MIB:.1f} | {_mib(r['decoded_bytes'])} | {r['load_seconds']:.1f} | "
                     f"{r['seconds']:.0f} | {_mib(r['rss_floor'])} | {_mib(r['peak_rss_load'])} | "
                     f"{_mib(r['peak_rss'])} | {_mib(r['peak_rss'] - r['rss_floor'])} |")
    v = result["verdict"]
    lines += [
        "",
        f"Peak growth, 20 x 300 -> 20 x 600 (twice the images per class): **{v['growth_images_mib']:+.0f} MiB**, "
        f"against {v['feature_growth_mib']:.1f} MiB more class features and {v['decoded_growth_mib']:.0f} MiB more "
        f"decoded train images. 10 x 300 -> 20 x 300 (twice the classes): **{v['growth_classes_mib']:+.0f} MiB**. "
        f"Least-squares slope of the peak over the three workers-0 rows: **{v['slope_mib_per_1000']:+.1f} MiB per "
        f"1000 train images**; holding the decoded train images would cost {v['decoded_slope_mib_per_1000']:.1f}, "
        f"the class feature matrix grows by at most {v['feature_slope_mib_per_1000']:.1f}. Criterion: slope below "
        f"the feature slope + a quarter of the decoded slope. {v['reading']}",
        "",
        "## DM IPC 10 on a full-size CIFAR-10 directory (in memory, 32 px)",
        "",
        f"50 000 + 10 000 random images in the python batch format; `--method dm --ipc 10 --iterations "
        f"{s['dm_iterations']} --device cpu`. CIFAR batches are read into memory (an `ArrayDataset`): "
        "the peak includes the float32 images of the three splits.",
        "",
        "| data | train images | load (s) | run (s) | floor | peak after load | peak | peak - floor "
        "| float32 images (MiB) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    c = result["cifar"]
    lines.append(f"| CIFAR-10 50k + 10k | {c['n_train']} | {c['load_seconds']:.1f} | {c['seconds']:.0f} | "
                 f"{_mib(c['rss_floor'])} | {_mib(c['peak_rss_load'])} | {_mib(c['peak_rss'])} | "
                 f"{_mib(c['peak_rss'] - c['rss_floor'])} | "
                 f"{_mib(c['decoded_bytes'])} |")
    lines += ["", f"Machine load: {result['loadavg']} (1/5/15 min) at the start; times are indicative on this "
              f"shared machine, memory is not affected. Whole benchmark: {s['total_seconds'] / 60:.1f} min "
              f"(generating the data: {s['generation_seconds']:.0f} s).", ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------- main
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--iterations", type=int, default=10, help="WMDD synthesis steps per class")
    p.add_argument("--teacher-epochs", type=int, default=1, help="WMDD teacher epochs")
    p.add_argument("--teacher-width", type=int, default=32,
                   help="width of the WMDD ConvNet-BN teacher (128: the preset's convnet_bn; 32 keeps the run "
                        "within ~15 min on a loaded 2-core CPU)")
    p.add_argument("--dm-iterations", type=int, default=10, help="DM steps per class on CIFAR-10")
    p.add_argument("--workers-row", type=int, default=2,
                   help="also measure 10 x 300 with this many --workers (0: skip)")
    p.add_argument("--quick", action="store_true", help="small sizes (a smoke run; results not written)")
    p.add_argument("--keep", default=None, metavar="DIR", help="generate the data here and keep it")
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                                 "image_folder_memory"))
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds per measurement")
    p.add_argument("--render", default=None, metavar="JSON",
                   help="only re-render a results JSON (and its Markdown) with this script's current texts")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    return p


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    if args.child is not None:
        return _child_main(args.child)
    if args.render is not None:
        from ddmetrics._io import atomic_write_bytes, atomic_write_json

        with open(args.render) as fh:
            result = json.load(fh)
        result["settings"]["teacher_note"] = TEACHER_NOTE
        atomic_write_json(args.render, result)
        atomic_write_bytes(os.path.splitext(args.render)[0] + ".md", markdown(result).encode())
        return 0
    scale = 10 if args.quick else 1
    tmp = args.keep or tempfile.mkdtemp(prefix="ddm_image_folder_memory_")
    loadavg = " ".join(f"{v:.1f}" for v in os.getloadavg())
    started = time.perf_counter()
    try:
        big = os.path.join(tmp, "folder_20x600")
        t = time.perf_counter()
        if not os.path.isdir(big):
            write_folder(big, 20, 600 // scale)
        shapes = {(20, 600): big}
        for classes, per in ((20, 300), (10, 300)):
            path = os.path.join(tmp, f"folder_{classes}x{per}")
            if not os.path.isdir(path):
                link_subset(big, path, classes, per // scale)
            shapes[(classes, per)] = path
        cifar = os.path.join(tmp, "cifar10")
        if not os.path.isdir(cifar):
            write_cifar10(cifar, 50_000 // scale, 10_000 // scale)
        gen_seconds = time.perf_counter() - t
        print(f"data generated in {gen_seconds:.0f} s under {tmp}", flush=True)

        d = feature_dim(args.teacher_width, 3, 20, 64)
        arch = "convnet_bn" if args.teacher_width == 128 else f"convnet_bn_w{args.teacher_width}"
        rows = []
        plan = [(10, 300, 0), (20, 300, 0), (20, 600, 0)] + ([(10, 300, args.workers_row)] if args.workers_row else [])
        for classes, per, workers in plan:
            argv_ = ["distill", "--dataset", shapes[(classes, per)], "--method", "wmdd", "--ipc", "1", "--runs", "0",
                     "--iterations", str(args.iterations), "--set", f"teacher_epochs={args.teacher_epochs}",
                     "--teacher-arch", arch, "--image-size", "64", "--workers", str(workers), "--device", "cpu", "--quiet",
                     "--out", os.path.join(tmp, f"run_{classes}x{per}_w{workers}")]
            spec = {"argv": argv_, "teacher_width": args.teacher_width if args.teacher_width != 128 else None}
            rec = run_child(spec, args.timeout)
            n_per = per // scale
            rec.update(classes=classes, per_class=n_per, workers=workers,
                       class_features_bytes=rec["max_class"] * d * 4, decoded_bytes=rec["n_train"] * 3 * 64 * 64 * 4,
                       argv=argv_)
            rows.append(rec)
            print(f"{classes} x {n_per} (workers {workers}): peak {_mib(rec['peak_rss'])} MiB "
                  f"(floor {_mib(rec['rss_floor'])}), load {rec['load_seconds']:.1f} s, run {rec['seconds']:.0f} s",
                  flush=True)
        argv_ = ["distill", "--dataset", cifar, "--method", "dm", "--ipc", "10", "--runs", "0",
                 "--iterations", str(args.dm_iterations), "--device", "cpu", "--quiet",
                 "--out", os.path.join(tmp, "run_cifar")]
        crec = run_child({"argv": argv_}, args.timeout)
        crec.update(decoded_bytes=(60_000 // scale) * 3 * 32 * 32 * 4, argv=argv_)
        print(f"CIFAR-10: peak {_mib(crec['peak_rss'])} MiB, load {crec['load_seconds']:.1f} s, "
              f"run {crec['seconds']:.0f} s", flush=True)
    finally:
        if args.keep is None:
            shutil.rmtree(tmp, ignore_errors=True)

    by = {(r["classes"], r["per_class"] * scale, r["workers"]): r for r in rows}
    a, b, c = by[(10, 300, 0)], by[(20, 300, 0)], by[(20, 600, 0)]
    growth_images = (c["peak_rss"] - b["peak_rss"]) / _MIB
    growth_classes = (b["peak_rss"] - a["peak_rss"]) / _MIB
    feature_growth = (c["class_features_bytes"] - b["class_features_bytes"]) / _MIB
    decoded_growth = (c["decoded_bytes"] - b["decoded_bytes"]) / _MIB
    # the peak's trend over the number of train images (a fit over three sizes: glibc keeps freed
    # blocks of up to 32 MiB in its heap, so single peaks differ by ~100 MiB without a trend)
    pts = [(r["n_train"], r["peak_rss"] / _MIB) for r in (a, b, c)]
    mx, my = sum(p[0] for p in pts) / 3, sum(p[1] for p in pts) / 3
    slope = 1000 * sum((x - mx) * (y - my) for x, y in pts) / sum((x - mx) ** 2 for x, _ in pts)
    decoded_slope = 1000 * 3 * 64 * 64 * 4 / _MIB
    feature_slope = 1000 * (c["class_features_bytes"] - b["class_features_bytes"]) / _MIB / (c["n_train"] - b["n_train"])
    ok = slope <= feature_slope + decoded_slope / 4
    reading = ("The peak does not grow with the number of images beyond the class feature matrix: it is set by "
               "batch-size work (teacher training, PCBN statistics), not by the data." if ok else
               "The peak grows with the number of images more than the class feature matrix explains.")
    result = {
        "benchmark": "image_folder_memory",
        "command": command_line() if argv is None else
        shlex.join(["python", "benchmarks/image_folder_memory.py", *argv]),
        "date": _dt.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "machine": f"{cpu_model()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "loadavg": loadavg,
        "settings": {"iterations": args.iterations, "teacher_epochs": args.teacher_epochs,
                     "teacher_width": args.teacher_width, "teacher_arch": arch, "teacher_note": TEACHER_NOTE,
                     "dm_iterations": args.dm_iterations, "feature_dim": d, "quick": args.quick,
                     "generation_seconds": gen_seconds, "total_seconds": time.perf_counter() - started},
        "folders": rows, "cifar": crec,
        "verdict": {"ok": ok, "slope_mib_per_1000": slope, "decoded_slope_mib_per_1000": decoded_slope,
                    "feature_slope_mib_per_1000": feature_slope,
                    "growth_images_mib": growth_images, "growth_classes_mib": growth_classes,
                    "feature_growth_mib": feature_growth, "decoded_growth_mib": decoded_growth, "reading": reading},
    }
    text = markdown(result)
    print(text)
    if args.quick:
        return 0
    from ddmetrics._io import atomic_write_bytes, atomic_write_json

    atomic_write_json(args.out + ".json", result)
    atomic_write_bytes(args.out + ".md", text.encode())
    print(f"wrote {args.out}.json and {args.out}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
