"""Speed on a CUDA GPU: every backend at n = 10^4 … 10^6, and synthesis iterations per second.

    python benchmarks/gpu_speed.py                 # on a machine with CUDA; writes results/gpu_speed.{json,md}
    python benchmarks/gpu_speed.py --smoke --device cpu --out /tmp/g   # the script itself, tiny sizes, no GPU
    python benchmarks/gpu_speed.py --smoke --device cpu --no-synthesis --out /tmp/g   # backends only (seconds)

What it measures (value + gradient with respect to ``y``, ``m`` = 100 points, ``d`` = 512 unless
changed; medians of interleaved repeats after one warm-up call, ``torch.cuda.synchronize()``
around every timing):

- every registered backend (``ddmetrics.available_losses()``, with its default settings; a
  plugin's too) at n = 10^4, 10^5, 10^6 reference points — the exact solver only up to
  ``--exact-max`` (POT's network simplex runs on the CPU: its cost matrix crosses the bus, see
  ``ddmetrics/losses/_emd.py``), Sinkhorn with KeOps ``backend="online"`` (no n × m matrix is
  stored) and ``"tensorized"`` up to ``--tensorized-max``, the MMD (it stores the n × n kernel
  matrix of the reference cloud) and the energy distance (its reference self-term is n² distances,
  summed in blocks: O(n) memory, O(n²) time) tensorized up to ``--quadratic-max`` and online (KeOps)
  at every n; ``gaussian_w2`` (O(n d²))
  and ``ncfd`` (O(n T) for T frequencies) run at every n;
- WMDD and DM (one class a step, and all classes a step: ``class_batch``) synthesis iterations per
  second on the GPU against the same run on the CPU
  (a ``--syn-classes``-class random image set, ``--syn-size`` px, ConvNet teacher/embedder), and
  WMDD at ImageNet size (3 × 224 × 224, ResNet-18) on the GPU.

The CPU side of the synthesis comparison runs with all of this machine's threads. Results go to
``--out`` as JSON and Markdown; nothing is measured or written without a CUDA device unless
``--device cpu`` is given (then the numbers are CPU numbers and say so).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:  # the shared helpers sit next to this script (also when it is loaded by path)
    sys.path.insert(0, HERE)

from _common import RESULTS, command_line, machine_info, markdown_table, median, now_utc, write_json, write_lines  # noqa: E402

#: backends whose reference cloud costs O(n²) (memory for mmd, time for energy): --quadratic-max
QUADRATIC = ("mmd", "energy")


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--device", default="cuda", help="cuda, cuda:N, or cpu (a smoke test of the script)")
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000], help="reference points n")
    p.add_argument("--m", type=int, default=100, help="points of the moved cloud")
    p.add_argument("--d", type=int, default=512, help="feature dimension")
    p.add_argument("--repeats", type=int, default=5, help="timed repeats per measurement (median)")
    p.add_argument("--exact-max", type=int, default=100_000, help="largest n for the exact (CPU) solver")
    p.add_argument("--tensorized-max", type=int, default=100_000, help="largest n for tensorized Sinkhorn")
    p.add_argument("--quadratic-max", type=int, default=100_000,
                   help=f"largest n for the backends whose reference cloud costs O(n^2): {', '.join(QUADRATIC)}")
    p.add_argument("--syn-classes", type=int, default=10, help="classes of the synthesis comparison")
    p.add_argument("--syn-size", type=int, default=32, help="image side of the synthesis comparison")
    p.add_argument("--syn-iters", type=int, default=20, help="timed synthesis iterations per class")
    p.add_argument("--imagenet", action=argparse.BooleanOptionalAction, default=True,
                   help="also time WMDD at 3x224x224 through ResNet-18 on the GPU")
    p.add_argument("--synthesis", action=argparse.BooleanOptionalAction, default=True,
                   help="also time WMDD / DM synthesis (--no-synthesis: the backends only)")
    p.add_argument("--smoke", action="store_true",
                   help="tiny sizes (options given explicitly are kept): checks the script, measures nothing useful")
    p.add_argument("--out", default=RESULTS, help="folder for gpu_speed.json and gpu_speed.md")
    args = p.parse_args(argv)
    if args.smoke:
        smoke = dict(sizes=[500], m=20, d=16, repeats=1, syn_classes=2, syn_size=8, syn_iters=2, imagenet=False,
                     exact_max=500, tensorized_max=500, quadratic_max=500)
        for name, value in smoke.items():
            if getattr(args, name) == p.get_default(name):  # an explicit option wins over the smoke size
                setattr(args, name, value)
    return args


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_value_and_grad(loss_fn: Callable, x, y, device, repeats: int) -> Dict[str, Any]:
    """Median seconds of ``loss_fn(x, y)`` + backward to ``y``, after one warm-up (compilation,
    caches); peak GPU memory of the timed calls."""
    import torch

    def once() -> float:
        y_ = y.detach().clone().requires_grad_(True)
        _sync(device)
        start = time.perf_counter()
        value = loss_fn(x, y_)
        value.backward()
        _sync(device)
        return time.perf_counter() - start

    once()  # warm-up: KeOps compiles its formula here, cuBLAS picks kernels
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = [once() for _ in range(repeats)]
    peak = torch.cuda.max_memory_allocated(device) / 2 ** 30 if device.type == "cuda" else None
    return {"seconds": median(times), "all": times, "peak_gib": peak}


def backend_cases() -> List[Tuple[str, Dict[str, Any]]]:
    """(registered name, settings) of every backend timed: each registered loss with its
    defaults, Sinkhorn, the MMD and the energy distance twice (KeOps ``online`` and ``tensorized``)."""
    import ddmetrics as ddm

    cases: List[Tuple[str, Dict[str, Any]]] = []
    for name in ddm.available_losses():
        if name in ("sinkhorn", "mmd", "energy"):  # KeOps' linear-memory path and the dense one
            cases += [(name, {"backend": "online"}), (name, {"backend": "tensorized"})]
        else:
            cases.append((name, {}))
    return cases


def _skip_reason(args, name: str, kw: Dict[str, Any], n: int) -> Optional[str]:
    """Why ``name`` is not timed at ``n`` (its cap), or None."""
    if name == "wasserstein" and n > args.exact_max:
        return f"n > --exact-max {args.exact_max} (network simplex on the CPU)"
    if name in QUADRATIC and kw.get("backend") != "online" and n > args.quadratic_max:
        what = "n x n kernel matrix" if name == "mmd" else "n^2 reference distances"
        return f"n > --quadratic-max {args.quadratic_max} ({what})"
    if kw.get("backend") == "tensorized" and n > args.tensorized_max:
        return f"n > --tensorized-max {args.tensorized_max} (x-x matrix)"
    return None


def backend_rows(args, device) -> List[Dict[str, Any]]:
    import torch

    import ddmetrics as ddm

    rows = []
    gen = torch.Generator(device="cpu").manual_seed(0)
    cases = backend_cases()
    for n in args.sizes:
        x = torch.randn(n, args.d, generator=gen, device="cpu").to(device)
        y = torch.randn(args.m, args.d, generator=gen, device="cpu").to(device)
        for name, kw in cases:
            label = name + (f" ({kw['backend']})" if kw else "")
            skip = _skip_reason(args, name, kw, n)
            if skip:
                rows.append({"backend": label, "loss": name, "n": n, "skipped": skip})
                continue
            loss = ddm.get_loss(name, **kw)
            try:
                res = time_value_and_grad(loss, x, y, device, args.repeats)
            except (RuntimeError, MemoryError, ImportError) as err:  # out of memory, no KeOps, ...
                rows.append({"backend": label, "loss": name, "n": n,
                             "skipped": f"{type(err).__name__}: {str(err)[:120]}"})
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                continue
            rows.append({"backend": label, "loss": name, "n": n, **res})
            print(f"{label:24s} n={n:>8d}  {res['seconds']:.4f} s", flush=True)
    return rows


def _synthetic_data(classes: int, size: int, channels: int, per_class: int):
    import torch

    import ddmetrics as ddm

    gen = torch.Generator(device="cpu").manual_seed(1)
    labels = torch.arange(classes, device="cpu").repeat_interleave(per_class)
    images = torch.randn(len(labels), channels, size, size, generator=gen, device="cpu")
    images += labels.view(-1, 1, 1, 1).float() * 0.1  # classes differ a little
    return ddm.data.ArrayDataset(images, labels, classes)


def synthesis_rate(method: str, data, device, iters: int, **settings) -> Dict[str, Any]:
    """Synthesis iterations per second (all classes), the teacher trained beforehand and excluded."""
    import ddmetrics as ddm

    amp = settings.pop("amp", False)
    d = ddm.Distiller(method=method, ipc=10, seed=0, device=device, amp=amp, iterations=iters, teacher_epochs=1,
                      **settings)
    if d.config.strategy == "barycenter":
        d.train_teacher(data, data.num_classes, progress=False)
    _sync(d.device)
    start = time.perf_counter()
    d.fit(data, progress=False)
    _sync(d.device)
    seconds = time.perf_counter() - start
    return {"method": method, "device": str(d.device), "seconds": seconds,
            "iterations_per_second": iters * data.num_classes / seconds}


def synthesis_rows(args, device) -> List[Dict[str, Any]]:
    import torch

    data = _synthetic_data(args.syn_classes, args.syn_size, 3, 200)
    rows = []
    # WMDD in its released batches of classes; DM one class a step and all classes a step (class_batch)
    for method, settings in (("wmdd", {}), ("dm", {"class_batch": 1}), ("dm", {"class_batch": "all"})):
        for dev in ([device, torch.device("cpu")] if device.type == "cuda" else [device]):
            res = synthesis_rate(method, data, dev, args.syn_iters, **settings)
            variant = "".join(f", class_batch={v}" for v in settings.values())
            rows.append({**res, "method": method + variant,
                         "images": f"{args.syn_classes} x 200 of 3x{args.syn_size}x{args.syn_size}"})
            print(f"{method}{variant} on {dev}: {res['iterations_per_second']:.1f} it/s", flush=True)
    if args.imagenet and device.type == "cuda":
        big = _synthetic_data(args.syn_classes, 224, 3, 50)
        for amp in (False, True):
            res = synthesis_rate("wmdd", big, device, max(2, args.syn_iters // 4), teacher_arch="resnet18", amp=amp)
            rows.append({**res, "images": f"{args.syn_classes} x 50 of 3x224x224, resnet18" + (", bf16" if amp else "")})
            print(f"wmdd imagenet-size on {device} (amp={amp}): {res['iterations_per_second']:.2f} it/s", flush=True)
    return rows


def markdown(doc: Dict[str, Any]) -> List[str]:
    m = doc["machine"]
    lines = ["# GPU speed", "", f"`{doc['command']}` — {doc['date']}", "",
             f"- Device: {doc['device_name']}; host {m['cpu_model']}, {m['cpu_count']} CPUs; torch {m['torch']}",
             f"- n reference points against m = {doc['m']}, d = {doc['d']}; value + gradient; median of "
             f"{doc['repeats']} repeats after a warm-up call.", "", "## Backends", ""]
    rows = [[r["backend"], r["n"], "-" if "skipped" in r else f"{r['seconds']:.4f}",
             "-" if r.get("peak_gib") is None else f"{r['peak_gib']:.2f}", r.get("skipped", "")]
            for r in doc["backends"]]
    lines += markdown_table(["backend", "n", "seconds", "peak GPU GiB", "note"], rows, "lrrrl")
    lines += ["", "## Synthesis (all classes, teacher excluded)", ""]
    if not doc["synthesis"]:
        return lines + ["Not run (`--no-synthesis`)."]
    rows = [[r["method"], r["device"], r["images"], f"{r['iterations_per_second']:.2f}"] for r in doc["synthesis"]]
    lines += markdown_table(["method", "device", "data", "class-iterations / s"], rows, "lllr")
    return lines


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    import torch

    from ddmetrics.utils import resolve_device

    try:
        device = resolve_device(args.device)
    except ValueError as err:
        print(f"gpu_speed: {err}", file=sys.stderr)
        return 2
    doc = {"command": command_line(), "date": now_utc(), "machine": machine_info(), "m": args.m, "d": args.d,
           "repeats": args.repeats, "device": str(device),
           "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (no GPU numbers)",
           "smoke": args.smoke}
    doc["backends"] = backend_rows(args, device)
    doc["synthesis"] = synthesis_rows(args, device) if args.synthesis else []
    os.makedirs(args.out, exist_ok=True)
    write_json(os.path.join(args.out, "gpu_speed.json"), doc)
    write_lines(os.path.join(args.out, "gpu_speed.md"), markdown(doc))
    print(f"wrote {args.out}/gpu_speed.json, gpu_speed.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
