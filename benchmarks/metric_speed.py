#!/usr/bin/env python
"""Speed of ddmetrics' losses against reference libraries (POT, GeomLoss), value + gradient.

For each size ``n`` the same float32 clouds ``x`` (n, d) and ``y`` (m, d) are fed to ours and
to the reference; each timed call is a forward pass *and* the backward pass for the gradient
with respect to ``y``. After one warm-up call of each, the repeats interleave ours and the
reference (alternating which goes first) so that both share the machine's noise; medians are
reported. The exact free-support W2 barycenter (WMDD alternation) is compared with POT's
``ot.lp.free_support_barycenter`` from the same initial support, and with the released WMDD
barycenter (``recover/barycenter.py`` of Liu-Hy/WMDD, re-implemented here on numpy + POT): its
scripted positions-only call and its weighted path.

Data: i.i.d. standard normal points scaled by 1/sqrt(d) (squared distances ~ 2), so that the
entropic references with blur 0.05 (eps = 0.0025) are numerically meaningful.

Usage::

    .venv/bin/python benchmarks/metric_speed.py              # full run (~10 min on 2 CPU cores)
    .venv/bin/python benchmarks/metric_speed.py --quick      # smoke test (seconds)
    .venv/bin/python benchmarks/metric_speed.py --parts reference --threads 1  # one section (sizes, barycenter,
                                                             # reference, profile), to metric_speed_reference.*
    .venv/bin/python benchmarks/metric_speed.py --from-json benchmarks/results/metric_speed.json  # report only

The Sinkhorn target is judged within each call (ours = the GeomLoss call it wraps + its own work,
both timed inside the call): on this machine whole calls move by tens of percent between repeats
(the same computation took 4.4 s and 12.0 s in one run), which the side-by-side ratio, also
reported, cannot resolve at 5 %.

Writes ``<out>.md`` (tables) and ``<out>.json`` (raw repeat timings), atomically.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:  # the shared helpers sit next to this script (also when it is loaded by path)
    sys.path.insert(0, HERE)

import numpy as np  # noqa: E402
import torch  # noqa: E402

import ot  # noqa: E402
from geomloss import SamplesLoss  # noqa: E402

import ddmetrics as ddm  # noqa: E402
from ddmetrics.losses import barycenter_objective, exact_barycenter, init_support  # noqa: E402

from _common import (barycenter_clock, command_line, cpu_share, cpu_times, elapsed_log, interleaved_repeats, local_date,  # noqa: E402
                     machine_info, markdown_table, median as med, stopwatch, write_json, write_text)

OUT = "benchmarks/results/metric_speed"
QUICK = dict(sizes=[300, 1000], m=50, d=64, repeats=2, bary_n=1000, bary_m=20, bary_iters=5, ref_n=200, ref_m=[5],
             ref_repeats=1, profile_datasets=["digits"], profile_iterations=3, profile_processes=1)


# --------------------------------------------------------------------------- helpers
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000], help="sizes n of the reference cloud x")
    p.add_argument("--m", type=int, default=100, help="size of the optimised cloud y")
    p.add_argument("--d", type=int, default=512, help="dimension")
    p.add_argument("--repeats", type=int, default=5, help="timed repeats (after one warm-up)")
    p.add_argument("--bary-n", type=int, default=10000)
    p.add_argument("--bary-m", type=int, default=100)
    p.add_argument("--bary-iters", type=int, default=10)
    p.add_argument("--bary-repeats", type=int, default=3)
    p.add_argument("--ref-n", type=int, default=1300, help="points of the comparison with the released WMDD "
                                                          "barycenter (an ImageNet class); 0 skips it")
    p.add_argument("--ref-m", type=int, nargs="+", default=[10, 50],
                   help="atoms of the comparison with the released WMDD barycenter")
    p.add_argument("--ref-repeats", type=int, default=5)
    p.add_argument("--profile-datasets", nargs="*", default=["digits", "mnist"],
                   help="datasets of the synthesis-iteration profile (WMDD and DM); none skips it")
    p.add_argument("--profile-iterations", type=int, default=30,
                   help="profiled iterations per case (means: an embedder redraw every 5 is part of the cost)")
    p.add_argument("--profile-processes", type=int, default=3,
                   help="fresh interpreters per profiled case; the case reports the one with the median share "
                        "(the upper middle for an even count) and the range of all")
    p.add_argument("--n-projections", type=int, default=256)
    p.add_argument("--pot-sinkhorn-max", type=float, default=30.0,
                   help="skip POT sinkhorn2 at a size whose warm-up call takes longer than this (s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--parts", nargs="+", choices=list(PARTS), default=list(PARTS),
                   help="the sections to run (the others are left out of the report)")
    p.add_argument("--out", default=None,
                   help=f"output path without extension (default: {OUT}, or {OUT}_<parts> for a run of some parts, "
                        "so that it does not replace the full report)")
    p.add_argument("--quick", action="store_true", help=f"smoke test: {QUICK}")
    p.add_argument("--from-json", default=None, metavar="PATH",
                   help="run nothing: write the Markdown report of the results in PATH (a JSON this script wrote) "
                        "to --out's .md")
    p.add_argument("--threads", type=int, default=None,
                   help="torch.set_num_threads, and numpy's BLAS threads (threadpoolctl) for the references on "
                        "numpy (default: each library's default)")
    args = p.parse_args(argv)
    if args.quick:  # quick values replace the defaults, explicit flags still win
        p.set_defaults(**QUICK)
        args = p.parse_args(argv)
    if args.profile_processes < 1:
        p.error(f"--profile-processes must be >= 1, got {args.profile_processes}")
    if args.threads is not None and args.threads < 1:
        p.error(f"--threads must be >= 1, got {args.threads}")
    if args.out is None:
        chosen = [name for name in PARTS if name in args.parts]  # in run order, each once
        args.out = OUT if args.from_json or chosen == list(PARTS) else OUT + "_" + "_".join(chosen)
    return args


def source_digest() -> dict:
    """sha256 (12 hex) of the ddmetrics sources as imported, to tie the timings to a code state."""
    import hashlib
    root = os.path.dirname(ddm.__file__)
    h, files = hashlib.sha256(), []
    for folder, _, names in sorted(os.walk(root)):
        for name in sorted(names):
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                with open(path, "rb") as fh:
                    h.update(os.path.relpath(path, root).encode() + b"\0" + fh.read())
                files.append(os.path.relpath(path, root))
    return {"sha256": h.hexdigest()[:12], "files": len(files)}


def data(n: int, m: int, d: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=gen) / d ** 0.5
    y = torch.randn(m, d, generator=gen) / d ** 0.5
    return x, y


def timed(fn, y0: torch.Tensor):
    """One forward + backward w.r.t. a fresh copy of y0: (seconds, value, gradient)."""
    y = y0.clone().requires_grad_(True)

    def value_and_backward():
        v = fn(y)
        v.backward()
        return v

    dt, v = stopwatch(value_and_backward)
    return dt, float(v.detach()), y.grad.detach().clone()


def rel_diff(g1, g2) -> float:
    return float((g1 - g2).norm() / g2.norm().clamp_min(1e-30))


def compare(name, n, y0, ours, refs, repeats, log, skip_after=None):
    """Time ours and the references (dict name -> fn), interleaved. ``skip_after`` (name -> s):
    a reference whose warm-up exceeds that many seconds is not repeated."""
    fns = {"ours": ours, **refs}
    rec = {"benchmark": name, "n": n, "times": {k: [] for k in fns}, "warmup": {}, "value": {}, "skipped": {}}
    grads = {}
    cpu0 = cpu_times()
    for k, fn in fns.items():  # warm-up, also the value / gradient check
        dt, v, g = timed(fn, y0)
        rec["warmup"][k], rec["value"][k], grads[k] = dt, v, g
        if skip_after and k in skip_after and dt > skip_after[k]:
            rec["skipped"][k] = f"warm-up took {dt:.1f} s > {skip_after[k]:g} s"
    active = [k for k in fns if k not in rec["skipped"]]
    rec["times"].update(interleaved_repeats({k: (lambda k=k: timed(fns[k], y0)[0]) for k in active}, repeats))
    rec["cpu_pct"] = cpu_share(cpu0, cpu_times())
    rec["median"] = {k: med(ts) for k, ts in rec["times"].items()}
    rec["grad_rel_diff"] = {k: rel_diff(grads["ours"], g) for k, g in grads.items() if k != "ours"}
    rec["abs_value_diff"] = {k: abs(rec["value"]["ours"] - v) for k, v in rec["value"].items() if k != "ours"}
    parts = ", ".join(f"{k} {rec['median'][k]:.4f}s" for k in fns)
    log(f"  {name:<12} n={n:<6} {parts}  values {rec['value']}")
    return rec


def sinkhorn_own_work(loss, x, y0, repeats: int):
    """Seconds of ``loss(x, y)``'s forward spent outside the GeomLoss call it wraps (validation,
    the diameter, the backend choice), measured inside each call: the GeomLoss call is timed by
    wrapping :meth:`Sinkhorn.samples_loss`, so the machine's noise in it cancels. The backward
    is GeomLoss's alone. Returns the median over ``repeats`` calls."""
    inner = []
    build = loss.samples_loss

    def timed_samples_loss(*args, **kwargs):
        call = build(*args, **kwargs)

        def timed(*inputs):
            start = time.perf_counter()
            try:
                return call(*inputs)
            finally:
                inner.append(time.perf_counter() - start)
        return timed

    loss.samples_loss = timed_samples_loss  # the instance attribute shadows the method
    outer = []
    try:
        for _ in range(repeats):
            y = y0.clone().requires_grad_(True)
            start = time.perf_counter()
            value = loss(x, y)
            outer.append(time.perf_counter() - start)
            value.backward()
    finally:
        del loss.samples_loss
    return med([o - i for o, i in zip(outer, inner)])


# --------------------------------------------------------------------------- benchmarks
def bench_sizes(args, log):
    recs = []
    d, m, L = args.d, args.m, args.n_projections
    for n in args.sizes:
        x, y0 = data(n, m, d, args.seed)
        a = torch.full((n,), 1.0 / n)
        b = torch.full((m,), 1.0 / m)
        log(f"n={n}, m={m}, d={d}")

        w = ddm.get_loss("wasserstein")
        recs.append(compare("wasserstein", n, y0, lambda y: w(x, y),
                            {"POT emd2": lambda y: ot.emd2(a, b, ot.dist(x, y))}, args.repeats, log))

        gen = torch.Generator().manual_seed(args.seed + 1)
        P = torch.randn(d, L, generator=gen)
        P = P / P.norm(dim=0, keepdim=True)
        sw = ddm.get_loss("sliced", n_projections=L, p=2, projections=P)
        recs.append(compare(
            "sliced", n, y0, lambda y: sw(x, y),
            {"POT sliced²": lambda y: ot.sliced_wasserstein_distance(x, y, a=None, b=None, n_projections=L, p=2,
                                                                     projections=P) ** 2},
            args.repeats, log))

        # both "auto": each library picks its backend by size (the same rule; tensorized at these sizes)
        sk = ddm.get_loss("sinkhorn", blur=0.05, scaling=0.5, backend="auto")
        geo = SamplesLoss("sinkhorn", p=2, blur=0.05, scaling=0.5, backend="auto")

        def pot_sinkhorn(y):
            # un-debiased entropic cost <P, C> with C = ½|x-y|², eps = blur² (log-domain: plain Sinkhorn
            # underflows, exp(-C/eps) ~ exp(-400)); gradient by autodiff through the iterations
            return ot.sinkhorn2(a, b, ot.dist(x, y) / 2, reg=0.05 ** 2, method="sinkhorn_log")

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # POT's "did not converge" warning is recorded via the value
            # ours and the call it wraps alternate on their own: POT's slow, memory-hungry runs in
            # between made the GeomLoss ratio swing by ±40 % at n = 10⁴
            recs.append(compare("sinkhorn", n, y0, lambda y: sk(x, y), {"GeomLoss": lambda y: geo(x, y)},
                                args.repeats, log))
            recs[-1]["own_work_s"] = sinkhorn_own_work(sk, x, y0, args.repeats)
            log(f"  sinkhorn own work n={n}: {recs[-1]['own_work_s'] * 1e3:.3f} ms per call")
            recs.append(compare("sinkhorn", n, y0, lambda y: sk(x, y), {"POT sinkhorn2 (log)": pot_sinkhorn},
                                args.repeats, log, skip_after={"POT sinkhorn2 (log)": args.pot_sinkhorn_max}))

        en = ddm.get_loss("energy")
        geo_en = SamplesLoss("energy", backend="auto")
        # GeomLoss's "energy" is half the energy distance (½‖α − β‖²_k with k = −‖x − y‖)
        recs.append(compare("energy", n, y0, lambda y: en(x, y), {"GeomLoss energy ×2": lambda y: 2 * geo_en(x, y)},
                            args.repeats, log))
        gw = ddm.get_loss("gaussian_w2")
        recs.append(compare("gaussian_w2", n, y0, lambda y: gw(x, y), {}, args.repeats, log))
        nc = ddm.get_loss("ncfd")
        recs.append(compare("ncfd", n, y0, lambda y: nc(x, y), {}, args.repeats, log))

        mmd = ddm.get_loss("mmd", kernel="gaussian")
        recs.append(compare("mmd", n, y0, lambda y: mmd(x, y), {}, args.repeats, log))
        kr = ddm.get_loss("krdual")
        recs.append(compare("krdual", n, y0, lambda y: kr(x, y), {}, args.repeats, log))
    return recs


def bench_barycenter(args, log):
    n, m, d, iters = args.bary_n, args.bary_m, args.d, args.bary_iters
    x, _ = data(n, 1, d, args.seed)
    a = torch.full((n,), 1.0 / n)
    init = init_support(x, m, a, seed=args.seed)
    x64, a64, init64 = x.double().numpy(), np.full(n, 1.0 / n), init.double().numpy()
    uniform = torch.full((m,), 1.0 / m)
    log(f"barycenter n={n}, m={m}, d={d}, iters={iters}")

    out = {}

    def ours_w():
        return exact_barycenter(x, m, iters=iters, init=init)

    def ours_lloyd():
        return exact_barycenter(x, m, iters=iters, init=init, balanced_rounds=())

    def ours_mirror():
        return exact_barycenter(x, m, iters=iters, init=init, weight_update="mirror")

    def ours_pos():
        return exact_barycenter(x, m, iters=iters, init=init, learn_weights=False)

    def pot():
        return ot.lp.free_support_barycenter([x64], [a64], init64, numItermax=iters, log=True)

    # time to POT's quality: the fewest rounds whose best iterate is at least as good as POT's
    # result (read off the per-round objectives of the full run), timed as a run of its own
    full = exact_barycenter(x, m, iters=iters, init=init)
    pot_X = ot.lp.free_support_barycenter([x64], [a64], init64, numItermax=iters)
    pot_goal = barycenter_objective(x, torch.as_tensor(pot_X, dtype=x.dtype), uniform)
    rounds = next((k for k in range(len(full.history)) if min(full.history[:k + 1]) <= pot_goal), iters)

    def ours_goal():
        return exact_barycenter(x, m, iters=rounds, init=init)

    fns = {"ours (learned weights)": ours_w, f"ours (learned weights, {rounds} rounds: POT's objective)": ours_goal,
           "ours (learned weights, Lloyd only: balanced_rounds=())": ours_lloyd,
           "ours (learned weights, the paper's mirror rule)": ours_mirror, "ours (positions only)": ours_pos,
           "POT free_support_barycenter": pot}
    results = {}
    for k, fn in fns.items():  # warm-up
        results[k] = fn()
    times = interleaved_repeats({k: (lambda fn=fn: stopwatch(fn)[0]) for k, fn in fns.items()}, args.bary_repeats)
    X_pot, pot_log = results["POT free_support_barycenter"]
    objectives = {k: results[k].objective for k in fns if k.startswith("ours")}
    objectives["POT free_support_barycenter"] = barycenter_objective(x, torch.as_tensor(X_pot, dtype=x.dtype), uniform)
    out = {"n": n, "m": m, "d": d, "iters": iters, "times": times, "median": {k: med(t) for k, t in times.items()},
           "objective": objectives, "objective_init": barycenter_objective(x, init, uniform),
           "pot_iterations_run": len(pot_log["displacement_square_norms"]),
           "rounds_to_pot_objective": rounds, "history_learned_weights": list(full.history),
           "positions_only_max_abs_diff_vs_pot": float(
               (results["ours (positions only)"].support.double() - torch.as_tensor(X_pot)).abs().max()),
           "learned_weights_min_max": [float(results["ours (learned weights)"].weights.min()),
                                       float(results["ours (learned weights)"].weights.max())]}
    log("  " + ", ".join(f"{k} {v:.3f}s" for k, v in out["median"].items()) + f"  objectives {objectives}")
    return out


WMDD_WEIGHTED = "WMDD released (weighted path)"
WMDD_SCRIPTED = "WMDD scripted (positions only)"
OURS_LEARNED = "ours (defaults: k-means++ start, learned weights)"
OURS_POSITIONS = "ours (positions only, the WMDD start, 100 rounds)"
# each of ours and the WMDD barycenter it is compared with
COUNTERPART = {OURS_LEARNED: WMDD_WEIGHTED, OURS_POSITIONS: WMDD_SCRIPTED}


def wmdd_released_start(m: int, d: int, seed: int) -> np.ndarray:
    """The released barycenter's initial atoms: i.i.d. standard normal ``(m, d)`` float64 (seeded here)."""
    return np.random.default_rng(seed).standard_normal((m, d))


def _sum_left_to_right(v: np.ndarray) -> float:
    # the release sums with Python's sum(), element after element; np.sum adds pairwise, which can
    # differ in the last bit, and 100 multiplicative steps carry that difference forward
    return float(np.cumsum(v)[-1])


def wmdd_released_weights(cost: np.ndarray, step: float = 10.0, max_steps: int = 100, stop_thr: float = 1e-9):
    """The released WMDD weight update (``fixed_support_barycenter`` of ``recover/barycenter.py``)
    for one measure, re-implemented on numpy + POT.

    Mirror descent on the atoms' weights, started from uniform at every call: the cost ``(m, n)``
    is divided by its maximum; each step solves the exact problem between the weights and the
    uniform real masses (``ot.emd``), multiplies the weights by ``exp(-step u)`` with ``u`` the
    atoms' dual potential (POT's centred ``log["u"]``), sets negative entries to 0 and divides by
    the sum (all zeros if the sum is close to 0); it stops once the L1 change is below
    ``stop_thr``, or after ``max_steps``. Returns ``(weights, steps taken)``.
    """
    m, n = cost.shape
    scaled = cost / cost.max()
    real = np.full(n, 1.0 / n)
    weights = np.full(m, 1.0 / m)
    steps = 0
    while steps < max_steps:
        _, log = ot.emd(weights, real, scaled, log=True)
        steps += 1
        new = weights * np.exp(-step * log["u"])
        new[new < 0] = 0.0
        total = _sum_left_to_right(new)
        new = np.zeros_like(new) if np.isclose(total, 0.0) else new / total
        change = _sum_left_to_right(np.abs(new - weights))
        weights = new
        if change < stop_thr:
            break
    return weights, steps


def wmdd_released_barycenter(x: np.ndarray, start: np.ndarray, weighted: bool = True, rounds: int = 10,
                             damping: float = 0.2, tol: float = 1e-6):
    """The released WMDD barycenter (``compute_wasserstein_barycenter`` of ``recover/barycenter.py``,
    Liu-Hy/WMDD at 45c2962), re-implemented on numpy + POT.

    ``x`` (n, d) are the class's features (float32 in the release), ``start`` (m, d) the initial
    atoms (the release draws them from ``np.random.randn``, unseeded: see
    :func:`wmdd_released_start`); the real masses are uniform.

    - ``weighted=False``, the scripted path (``run.sh`` passes ``--weight-wb false``): one call
      of POT's ``ot.lp.free_support_barycenter`` at uniform weights with its defaults (up to 100
      fixed-point iterations, ``stopThr=1e-7``).
    - ``weighted=True`` (``--weight-wb true``, which no released script passes): up to ``rounds``
      rounds of: the squared-distance cost ``(m, n)``; the weights by
      :func:`wmdd_released_weights` (from uniform); stop, keeping the previous round's weights,
      if they moved by less than ``tol`` (L2) since it; POT's ``free_support_barycenter`` at
      those weights with its defaults; the damped step ``X <- (1 - damping) X + damping X_POT``.
      A weight that is exactly 0 makes POT divide by it (non-finite atoms), as in the release.

    Returns ``(support, weights, info)``; ``info`` counts the rounds, the mirror steps of each
    round and POT's fixed-point iterations of each call (each step and iteration one exact solve).
    """
    n = x.shape[0]
    support = start
    real = np.full(n, 1.0 / n)
    weights = np.full(start.shape[0], 1.0 / start.shape[0])
    info = {"rounds": 0, "mirror_steps": [], "position_iterations": []}

    def positions(at):
        moved, log = ot.lp.free_support_barycenter([x], [real], support, b=at, log=True)
        info["position_iterations"].append(len(log["displacement_square_norms"]))
        return moved

    if not weighted:
        return positions(weights), weights, info
    previous = None
    for _ in range(rounds):
        info["rounds"] += 1
        # as released: the (m, n, d) differences, squared and summed (float64: the atoms are)
        cost = np.square(support[:, None, :] - x[None, :, :]).sum(axis=2)
        weights, steps = wmdd_released_weights(cost)
        info["mirror_steps"].append(steps)
        if previous is not None and np.linalg.norm(weights - previous) < tol:
            weights = previous
            break
        previous = weights
        support = (1 - damping) * support + damping * positions(weights)
    return support, weights, info


def bench_wmdd_released(args, log):
    """Ours against the released WMDD barycenter on the same cloud (float32 features, as the
    release's): ``exact_barycenter``'s defaults against the released weighted path, and ours
    positions-only from the same standard-normal start (100 rounds) against the scripted
    positions-only call; objective = exact W2² (float64) of each result."""
    n, d = args.ref_n, args.d
    x, _ = data(n, 1, d, args.seed)
    features, x64 = x.numpy(), x.double()
    out = []
    for m in args.ref_m:
        start = wmdd_released_start(m, d, args.seed)
        fns = {OURS_LEARNED: lambda: exact_barycenter(x, m, seed=args.seed),
               WMDD_WEIGHTED: lambda: wmdd_released_barycenter(features, start, weighted=True),
               OURS_POSITIONS: lambda: exact_barycenter(x, m, learn_weights=False, iters=100,
                                                        init=torch.as_tensor(start, dtype=x.dtype)),
               WMDD_SCRIPTED: lambda: wmdd_released_barycenter(features, start, weighted=False)}
        results, clocks = {}, {}
        for k, fn in fns.items():  # warm-up, the results the objectives are computed from, and where ours spends
            with barycenter_clock() as clocks[k]:
                clocks[k]["total"], results[k] = stopwatch(fn)
        times = interleaved_repeats({k: (lambda fn=fn: stopwatch(fn)[0]) for k, fn in fns.items()}, args.ref_repeats)
        supports, weights, solves, rounds = {}, {}, {}, {}
        for k, r in results.items():
            if k in COUNTERPART:
                supports[k], weights[k] = r.support.double(), r.weights.double()
                solves[k], rounds[k] = clocks[k]["calls"], len(r.history) - 1
            else:
                X, w, info = r
                supports[k], weights[k] = torch.as_tensor(X), torch.as_tensor(w)
                solves[k] = sum(info["mirror_steps"]) + sum(info["position_iterations"])
                rounds[k] = info
        # a non-finite atom (a weight of exactly 0 in POT's position step) has no objective
        obj = {k: barycenter_objective(x64, supports[k], weights[k]) if bool(supports[k].isfinite().all())
               else float("nan") for k in fns}
        rec = {"n": n, "m": m, "d": d, "times": times, "median": {k: med(t) for k, t in times.items()},
               "objective": obj, "exact_solves": solves, "rounds": rounds,
               "weight_max": {k: float(w.max()) for k, w in weights.items()},
               "effective_atoms": {k: float(1 / w.square().sum()) for k, w in weights.items()},
               "positions_only_max_abs_diff_vs_scripted": float(
                   (supports[OURS_POSITIONS] - supports[WMDD_SCRIPTED]).abs().max()),
               # network-simplex solves and their seconds, k-means++ seconds of ours' warm-up call
               "ours_clock": {k: clocks[k] for k in COUNTERPART}}
        rec["ratio"] = {k: rec["median"][k] / rec["median"][wmdd] for k, wmdd in COUNTERPART.items()}
        log(f"  wmdd released n={n} m={m}: " + ", ".join(f"{k} {v:.4f}s" for k, v in rec["median"].items())
            + f"; exact solves {solves}; objectives {obj}")
        out.append(rec)
    return out


def bench_profile(args, log):
    """Share of a synthesis iteration outside the embedder's forward + backward (``_synthesis_profile``)."""
    from _synthesis_profile import profile_in_fresh_process

    out = []
    for name in args.profile_datasets:
        for method in ("wmdd", "dm"):
            # one process's share moves by points between processes on a noisy machine: the median of several
            runs = []
            for _ in range(args.profile_processes):
                run = profile_in_fresh_process(name, method, ipc=10, iterations=args.profile_iterations,
                                               seed=args.seed)
                log(f"  profile {name} {method}: iteration {run['iteration_ms']:.2f} ms, floor "
                    f"{run['floor_ms']:.2f} ms, outside {run['share_outside']:.1%} (without the profiler "
                    f"{run['share_outside_wall']:.1%})")
                runs.append(run)
            runs.sort(key=lambda r: r["share_outside"])
            rec = dict(runs[len(runs) // 2], dataset=name, processes=len(runs),
                       shares=[r["share_outside"] for r in runs],
                       shares_wall=sorted(r["share_outside_wall"] for r in runs))
            out.append(rec)
    return out


def _spread(r, key: str = "shares") -> str:
    """`` (a–b over N processes)`` of a profile record, or nothing for one process (or an older record)."""
    values = r.get(key)
    if not values or len(values) < 2:
        return ""
    return f" ({min(values):.1%}–{max(values):.1%} over {len(values)} processes)"


# --------------------------------------------------------------------------- report
def fmt_t(t):
    return "—" if t != t else (f"{t:.4f}" if t < 10 else f"{t:.2f}")


def _blas(meta) -> str:
    return "numpy's BLAS threads = " + "/".join(map(str, meta["blas_threads"]))


def _rounds(rounds) -> str:
    """The rounds column of the WMDD comparison: ours' count, or the WMDD run's record."""
    if isinstance(rounds, int):
        return str(rounds)
    if not rounds["rounds"]:
        return f"POT iterations {sum(rounds['position_iterations'])}"
    return (f"{rounds['rounds']}; mirror steps " + ", ".join(map(str, rounds["mirror_steps"]))
            + "; POT iterations " + ", ".join(map(str, rounds["position_iterations"])))


def _split(clock) -> str:
    """solves / k-means++ / rest seconds of ours' warm-up call, or a dash for a WMDD row."""
    if clock is None:
        return "—"
    rest = clock["total"] - clock["seconds"] - clock["init"]
    return f"{clock['seconds']:.4f} / {clock['init']:.4f} / {rest:.4f}"


def targets(recs, bary, ref, prof):
    """Issue 13's speed targets, each as (target, measured, met) at the largest size run."""
    rows, recs = [], recs or []

    def largest(name, ref=None):
        found = [r for r in recs if r["benchmark"] == name and (ref is None or ref in r["times"])]
        return max(found, key=lambda r: r["n"]) if found else None

    r = largest("sliced")
    if r:
        ratio = r["median"]["ours"] / r["median"]["POT sliced²"]
        rows.append((f"`sliced` ≥ 3× faster than POT (n={r['n']})", f"{1 / ratio:.2f}× faster (ratio {ratio:.2f})",
                     ratio <= 1 / 3))
    r = largest("sinkhorn", "GeomLoss")
    if r:
        ratio = r["median"]["ours"] / r["median"]["GeomLoss"]
        paired = sorted(o / g for o, g in zip(r["times"]["ours"], r["times"]["GeomLoss"]))
        side = (f"side by side {ratio:.3f}× (ratio of the medians; per repeat {statistics.median(paired):.2f}× "
                f"median, {paired[0]:.2f}–{paired[-1]:.2f}×)")
        own = r.get("own_work_s")
        if own is None:
            rows.append((f"`sinkhorn` ≤ 1.05× GeomLoss (n={r['n']})", side, ratio <= 1.05))
        else:
            # ours = the GeomLoss call it wraps + its own work, both timed within each call: a ratio
            # that the machine's noise, which moves whole calls by tens of percent, does not reach
            in_call = 1 + own / r["median"]["GeomLoss"]
            rows.append((f"`sinkhorn` ≤ 1.05× the GeomLoss call it wraps (n={r['n']})",
                         f"{in_call:.4f}× in the call (own work {own * 1e3:.2f} ms per call); {side}",
                         in_call <= 1.05))
    if bary:
        t, o = bary["median"], bary["objective"]
        ratio = t["ours (learned weights)"] / t["POT free_support_barycenter"]
        ok = ratio <= 1.0 and o["ours (learned weights)"] <= o["POT free_support_barycenter"]
        rows.append((f"exact barycenter, learned weights ≤ 1.0× POT positions-only, objective ≤ POT's "
                     f"(n={bary['n']}, m={bary['m']}, both {bary['iters']} rounds)",
                     f"{ratio:.2f}×, W2² {o['ours (learned weights)']:.6g} vs {o['POT free_support_barycenter']:.6g}",
                     ok))
        goal = next((k for k in t if "POT's objective" in k), None)
        if goal:
            ratio = t[goal] / t["POT free_support_barycenter"]
            rows.append((f"… the same, ours stopped at the first round that reaches POT's {bary['iters']}-round "
                         f"objective ({bary['rounds_to_pot_objective']} rounds)",
                         f"{ratio:.2f}×, W2² {o[goal]:.6g} vs {o['POT free_support_barycenter']:.6g}",
                         ratio <= 1.0 and o[goal] <= o["POT free_support_barycenter"]))
    for r in ref or []:
        t, o = r["median"], r["objective"]
        # learned weights: the paper's algorithm as released, which the closed-form rounds replace
        speedup = t[WMDD_WEIGHTED] / t[OURS_LEARNED]
        rows.append((f"learned weights: `exact_barycenter` defaults ≥ 10× faster than the released WMDD weighted "
                     f"path, at a lower W2² (n={r['n']}, m={r['m']})",
                     f"{speedup:.1f}×, W2² {o[OURS_LEARNED]:.6g} vs {o[WMDD_WEIGHTED]:.6g}",
                     speedup >= 10 and o[OURS_LEARNED] < o[WMDD_WEIGHTED]))  # a NaN objective is not lower
        # positions only, the same start: the same fixed-point iteration, so the same W2², and ours
        # should take no longer than POT's call
        ratio, gap = r["ratio"][OURS_POSITIONS], abs(o[OURS_POSITIONS] / o[WMDD_SCRIPTED] - 1)
        rows.append((f"positions only, the scripted WMDD start: ours ≤ 1.0× the scripted POT call, at its W2² "
                     f"(relative difference ≤ 1e-9; n={r['n']}, m={r['m']})",
                     f"{ratio:.2f}×, W2² {o[OURS_POSITIONS]:.10g} vs {o[WMDD_SCRIPTED]:.10g} (relative "
                     f"difference {gap:.1e})", ratio <= 1.0 and gap <= 1e-9))
    for r in prof or []:
        rows.append((f"{r['method'].upper()} on {r['dataset']}: ≤ 15 % of an iteration outside the embedder",
                     f"{r['share_outside']:.1%}{_spread(r)} ({r['iteration_ms']:.1f} ms, floor "
                     f"{r['floor_ms']:.1f} ms); without the profiler {r['share_outside_wall']:.1%}",
                     r["share_outside"] <= 0.15))
    return rows


def markdown(meta, recs, bary, ref=None, prof=None):
    recs = recs or []
    L = [f"# ddmetrics metric speed (value + gradient w.r.t. y)", "",
         f"Command: `{meta['command']}`", "",
         f"- Date: {meta['date']}",
         f"- Machine: {meta['machine']['cpu_model']} ({meta['machine']['platform']}; platform.processor() = "
         f"`{meta['machine']['processor'] or ''}`), "
         f"os.cpu_count() = {meta['machine']['cpu_count']}, torch.get_num_threads() = {meta['torch_threads']}"
         + (f", {_blas(meta)}" if "blas_threads" in meta else ""),  # recorded since the released WMDD section
         f"- Versions: python {meta['versions']['python']}, torch {meta['versions']['torch']}, "
         f"POT {meta['versions']['pot']}, GeomLoss {meta['versions']['geomloss']}, numpy {meta['versions']['numpy']}; "
         f"ddmetrics sources sha256 `{meta['ddmetrics_source']['sha256']}` "
         f"({meta['ddmetrics_source']['files']} .py files, hashed at start of run)",
         f"- Data: x (n, d), y (m, d) float32, i.i.d. N(0, I/d), seed {meta['args']['seed']}; "
         f"m = {meta['args']['m']}, d = {meta['args']['d']}",
         f"- Each timing is forward + backward (gradient w.r.t. y), median of {meta['args']['repeats']} repeats "
         "after one warm-up; ours and the references are interleaved per repeat (alternating order).",
         "- ratio = ours / reference: < 1 means ours is faster.",
         "- CPU steal / sys %: share of the whole machine's CPU time stolen by the hypervisor / spent in the "
         "kernel during that benchmark block (from /proc/stat); a high steal share means the timings are noisy.",
         "- Whole run, share of machine CPU time: " + (", ".join(f"{k} {v:g}%" for k, v in meta["cpu_pct"].items())
                                                         if meta.get("cpu_pct") else "n/a"), ""]
    goals = targets(recs, bary, ref, prof)
    if goals:
        L.extend(["## Targets (issue 13)", ""])
        L.extend(markdown_table(["target", "measured", "met"],
                                [(t, m, "yes" if ok else "**no**") for t, m, ok in goals], align="lll"))
        L.append("")

    def cpu(r):
        c = r.get("cpu_pct") or {}
        return f"{c['steal']:g} / {c['system']:g}" if c else "n/a"

    def section(name, title, note):
        rows = [r for r in recs if r["benchmark"] == name]
        if not rows:
            return
        L.extend([f"## {title}", "", note, ""])
        if not any(k != "ours" for r in rows for k in r["times"]):  # no reference library
            L.extend(markdown_table(
                ["n", "ours median (s)", "ours min (s)", "ours max (s)", "value", "CPU steal / sys %"],
                [(r["n"], fmt_t(med(r["times"]["ours"])), fmt_t(min(r["times"]["ours"])),
                  fmt_t(max(r["times"]["ours"])), f"{r['value']['ours']:.6g}", cpu(r)) for r in rows],
                align="rrrrrr"))
            L.append("")
            return

        def row(r, k):
            skipped = k in r["skipped"]
            return (r["n"], k, fmt_t(r["median"]["ours"]),
                    f"skipped ({r['skipped'][k]})" if skipped else fmt_t(r["median"][k]),
                    "—" if skipped else f"{r['median']['ours'] / r['median'][k]:.2f}",
                    f"{r['value']['ours']:.6g}", f"{r['value'][k]:.6g}", f"{r['abs_value_diff'][k]:.2e}",
                    f"{r['grad_rel_diff'][k]:.2e}", cpu(r))

        L.extend(markdown_table(
            ["n", "reference", "ours median (s)", "reference median (s)", "ratio ours/ref", "value ours", "value ref",
             "abs value diff", "grad rel. diff", "CPU steal / sys %"],
            [row(r, k) for r in rows for k in r["times"] if k != "ours"], align="rlrrrrrrrr"))
        L.append("")

    section("wasserstein", "Exact W2² (`wasserstein`) vs POT `ot.emd2(a, b, ot.dist(x, y))`",
            "Both solve the network simplex (POT, float64); POT's torch backend supplies the gradient.")
    section("sliced", f"Sliced W2² (`sliced`, {meta['args']['n_projections']} projections, p=2) vs POT "
                      "`ot.sliced_wasserstein_distance(...)**2`",
            "Same (d, L) projection matrix with unit columns for both; POT returns (SW₂²)^(1/2), so its value is squared.")
    section("sinkhorn", "Sinkhorn divergence (`sinkhorn`, blur 0.05, scaling 0.5, backend \"auto\")",
            "GeomLoss `SamplesLoss(\"sinkhorn\", p=2, blur=0.05, scaling=0.5, backend=\"auto\")` is the same "
            "computation (ours wraps it; both choose \"tensorized\" at these sizes, n·m ≤ 5000²; ours hands "
            "GeomLoss the diameter of its ε-schedule, which it computes anyway, so GeomLoss does not compute it "
            "again). "
            "Ours' own work per call (validation, diameter, backend choice), timed inside each call around the "
            "GeomLoss call it wraps, median: " + ", ".join(
                f"n={r['n']}: {r['own_work_s'] * 1e3:.2f} ms" for r in recs
                if r["benchmark"] == "sinkhorn" and "own_work_s" in r) + ". POT `ot.sinkhorn2(a, b, ½·ot.dist(x, y), reg=blur²=0.0025, "
            "method=\"sinkhorn_log\")` is a *different quantity*: the un-debiased entropic cost ⟨P_ε, C⟩ (no "
            "entropy term, no self-transport terms, up to 1000 iterations without ε-scaling, gradient by "
            "autodiff through the iterations); its time and value are indicative only, and it is skipped at a size "
            f"whose warm-up call exceeds {meta['args']['pot_sinkhorn_max']:g} s.")
    section("energy", "Energy distance (`energy`) vs 2 × GeomLoss `SamplesLoss(\"energy\")`",
            "GeomLoss's energy loss is ½‖α − β‖²_k with k(x, y) = −‖x − y‖, half the energy distance; its "
            "tensorized distances are floored at 1e-4, which shifts the value by ~1e-4·(Σa² + Σb²).")
    section("gaussian_w2", "Gaussian W2² (`gaussian_w2`, Fréchet distance) — no reference library",
            f"Absolute times on this machine ({meta['machine']['cpu_model']}, {meta['machine']['cpu_count']} CPUs, "
            f"{meta['torch_threads']} torch threads).")
    section("ncfd", "NCFD (`ncfd`, defaults: 1024 frequencies, 10 sampler steps) — no reference library",
            f"Absolute times on this machine ({meta['machine']['cpu_model']}, {meta['machine']['cpu_count']} CPUs, "
            f"{meta['torch_threads']} torch threads).")
    section("mmd", "MMD² (`mmd`, gaussian kernel, median bandwidths) — no reference library",
            f"Absolute times on this machine ({meta['machine']['cpu_model']}, {meta['machine']['cpu_count']} CPUs, "
            f"{meta['torch_threads']} torch threads).")
    section("krdual", "KR dual (`krdual`, defaults: 100 critic steps, hidden 128) — no reference library",
            f"Absolute times on this machine ({meta['machine']['cpu_model']}, {meta['machine']['cpu_count']} CPUs, "
            f"{meta['torch_threads']} torch threads).")

    if bary:
        b = bary
        L.extend([f"## Exact W2 barycenter (n={b['n']}, m={b['m']}, d={b['d']}, {b['iters']} iterations)", "",
                  "Same k-means++ initial support (`init_support(x, m, uniform a, seed)`) for every row. Objective = "
                  "W2² between x and the returned (support, weights) by an exact solve; POT's support is evaluated "
                  "with uniform weights (`barycenter_objective(x, X_pot, uniform)`). Median of "
                  f"{meta['args']['bary_repeats']} repeats after one warm-up, interleaved.", ""])
        tp = b["median"]["POT free_support_barycenter"]
        L.extend(markdown_table(
            ["method", "median (s)", "ratio ours/POT", "objective W2²"],
            [(k, fmt_t(t), "—" if k.startswith("POT") else f"{t / tp:.2f}", f"{b['objective'][k]:.6g}")
             for k, t in b["median"].items()], align="lrrr"))
        L.extend(["", f"- Objective at the initial support (uniform weights): {b['objective_init']:.6g}",
                  f"- Ours with learned weights, exact W2² of each round's iterate (the third, the balanced round, "
                  "at uniform weights): "
                  + ", ".join(f"{v:.6g}" for v in b["history_learned_weights"]) + "; the first round at or below "
                  f"POT's result is round {b['rounds_to_pot_objective']} (row \"{b['rounds_to_pot_objective']} rounds\").",
                  f"- POT ran {b['pot_iterations_run']} of {b['iters']} iterations (it stops early when the "
                  "squared displacement < stopThr = 1e-7).",
                  f"- Max |ours positions-only − POT| over the support coordinates: "
                  f"{b['positions_only_max_abs_diff_vs_pot']:.2e}",
                  f"- Learned weights range: [{b['learned_weights_min_max'][0]:.4g}, "
                  f"{b['learned_weights_min_max'][1]:.4g}] (uniform = {1 / b['m']:.4g})", ""])
    if ref:
        L.extend([f"## Exact W2 barycenter vs the released WMDD barycenter (n={ref[0]['n']}, d={ref[0]['d']})", "",
                  "WMDD released = `wmdd_released_barycenter` in this file: `compute_wasserstein_barycenter` of "
                  "`recover/barycenter.py` (Liu-Hy/WMDD, 45c2962) re-implemented on numpy + POT, with the "
                  "release's float32 features and standard-normal initial atoms (seeded here; the release's "
                  "`np.random.randn` is not). "
                  f"**{WMDD_SCRIPTED}**, what `run.sh` runs (`--weight-wb false`): one POT "
                  "`free_support_barycenter` call at uniform weights with POT's defaults (up to 100 fixed-point "
                  f"iterations, stopThr 1e-7). **{WMDD_WEIGHTED}** (`--weight-wb true`, in no released "
                  "script): up to 10 rounds of: the weights by up to 100 mirror-descent steps restarted from uniform "
                  "(an exact solve on the max-normalised cost, w ← w·exp(−10 u) with u the atoms' dual potential, "
                  "renormalised; stop when the L1 change < 1e-9), stop if they moved by < 1e-6 (L2) since the last "
                  "round, then POT `free_support_barycenter` at those weights with its defaults, damped: "
                  f"X ← 0.8 X + 0.2 X_POT. **{OURS_LEARNED}**: `exact_barycenter(x, m)` (10 rounds with the "
                  "closed-form weights, every point to its nearest atom, no solve, except the third: the exact plan "
                  f"at uniform weights, one network-simplex solve). **{OURS_POSITIONS}**: `exact_barycenter(x, m, "
                  "learn_weights=False, iters=100, init=<the WMDD start>)`, the fixed-point iteration POT runs, in "
                  "float32, with one more solve to evaluate the last iterate. "
                  "Objective = exact W2² (float64) of each returned (support, weights). Median of "
                  f"{meta['args']['ref_repeats']} repeats after one warm-up, interleaved; "
                  f"torch.get_num_threads() = {meta['torch_threads']}, {_blas(meta)}.", ""])
        for r in ref:
            L.extend(markdown_table(
                ["m", "method", "median (s)", "ratio ours / its WMDD counterpart", "W2²",
                 "largest weight; atoms in effect (1/Σw²)", "exact solves", "rounds",
                 "warm-up call: solves / k-means++ / rest (s)"],
                [(r["m"], k, fmt_t(t), f"{r['ratio'][k]:.3f}" if k in r["ratio"] else "—",
                  f"{r['objective'][k]:.10g}", f"{r['weight_max'][k]:.3g}; {r['effective_atoms'][k]:.3g}",
                  r["exact_solves"][k], _rounds(r["rounds"][k]), _split(r["ours_clock"].get(k)))
                 for k, t in r["median"].items()], align="rlrrrrrlr"))
            L.extend(["", f"- m = {r['m']}: max |ours positions-only − WMDD scripted| over the atoms' coordinates "
                      f"{r['positions_only_max_abs_diff_vs_scripted']:.2e}.", ""])
        L.extend(["Ratio < 1: ours is faster. Rounds: ours, the position steps taken; WMDD weighted, the rounds "
                  "begun, the mirror steps of each and POT's fixed-point iterations of each call (a round whose "
                  "weights moved by < 1e-6 ends the run before its call); WMDD scripted, POT's fixed-point "
                  "iterations. Each mirror step and each fixed-point iteration is one exact solve. The last "
                  "column splits the warm-up call of each of ours (timed by wrapping the solver and the k-means++ "
                  "start): the rest is the torch algebra (cost matrices, assignments, position steps) and Python.",
                  ""])
    if prof:
        L.extend(["## Synthesis iteration profile (torch.profiler)", "",
                  "One synthesis unit (DM: a class; WMDD: its batch of batch_images // IPC classes), IPC 10, "
                  "the preset's settings, an untrained teacher (a trained one costs the same), "
                  "each case in a fresh interpreter "
                  "(`benchmarks/_synthesis_profile.py`). "
                  "iteration = the loop's body (`strategy.step`, `zero_grad`, `backward`, `opt.step`, the schedule, the "
                  "pixel clamp); floor = the "
                  "embedder's forward + backward on the same inputs and nothing else (WMDD: `teacher.embed` of the "
                  "augmented synthetic batch; DM: the random embedder on the augmented real batch, and forward + "
                  "backward on the synthetic one). Outside = 1 − floor / iteration: augmentation, the loss, PCBN, "
                  f"data loading, the embedder redraw, the optimiser, framework overhead. Means over "
                  f"{meta['args']['profile_iterations']} profiled iterations after 3 warm-up ones, "
                  f"{meta['torch_threads']} torch threads."
                  + (f" Each case ran in {meta['args']['profile_processes']} fresh interpreters; its row is the one "
                     "with the median share outside (the upper middle for an even count), the range of all in "
                     "brackets; the wall-clock range is of all runs too."
                     if meta["args"].get("profile_processes", 1) > 1 else ""), ""])
        L.extend(markdown_table(
            ["dataset", "method", "iteration (ms)", "floor (ms)", "outside the floor",
             "without the profiler: iteration / floor (ms), outside", "aten ops / iteration (floor)",
             "µs outside per added aten op"],
            [(r["dataset"], r["method"], f"{r['iteration_ms']:.2f}", f"{r['floor_ms']:.2f}",
              f"{r['share_outside']:.1%}{_spread(r)}",
              f"{r['iteration_wall_ms']:.2f} / {r['floor_wall_ms']:.2f}, {r['share_outside_wall']:.1%}"
              f"{_spread(r, 'shares_wall')}",
              f"{r['aten_calls_per_iteration']:.0f} ({r['floor_aten_calls']:.0f})",
              f"{r['outside_us_per_extra_call']:.1f}")
             for r in prof], align="llrrrrrr"))
        L.extend(["", f"A bare aten call (an add of two 1-element tensors) costs {prof[0]['bare_op_us']:.1f} µs here "
                  "without the profiler. Where the last column is a small multiple of it, the time outside the "
                  "floor is the price of the calls themselves (dispatch, autograd records, allocation), not their "
                  "arithmetic: it falls only with fewer calls (fused kernels, a compiled step), not with faster "
                  "ones.", ""])
        parts = [r for r in prof if r.get("outside_ms")]
        if parts:
            names = list(parts[0]["outside_ms"])
            L.extend(["", "Where the time outside the floor goes, ms per profiled iteration (each part a profiler "
                      "range: the augmentation's calls; the step's forward minus the floor's forward, i.e. the "
                      "regulariser's statistics, the loss, the hooks, the real batch, the embedder redraw; the "
                      "backward minus the floor's backward, i.e. the regulariser's and the loss's gradients, the "
                      "augmentation's, and the sums of two gradients on one tensor; the optimiser):", ""])
            L.extend(markdown_table(
                ["dataset", "method", *names, "sum", "iteration − floor"],
                [(r["dataset"], r["method"], *(f"{r['outside_ms'][k]:.2f}" for k in names),
                  f"{sum(r['outside_ms'].values()):.2f}", f"{r['iteration_ms'] - r['floor_ms']:.2f}")
                 for r in parts], align="ll" + "r" * (len(names) + 2)))
            short = [r for r in parts if r["share_outside"] > 0.15]
            if short:
                L.extend(["", "The cases over 15 %, against their budget: 15 % outside allows 0.15 / 0.85 of the "
                          "floor outside it; what the augmentation and the optimiser alone (parts of the method as "
                          "published, not of the distance) take of that:", ""])
                for r in short:
                    budget = r["floor_ms"] * 0.15 / 0.85
                    fixed = r["outside_ms"]["augmentation"] + r["outside_ms"][names[-1]]
                    rest = (f"leaving {budget - fixed:.2f} ms for everything else" if fixed <= budget else
                            f"over the budget by {fixed - budget:.2f} ms before anything else")
                    L.append(f"- {r['dataset']} {r['method']}: budget {budget:.2f} ms, outside "
                             f"{r['iteration_ms'] - r['floor_ms']:.2f} ms; augmentation + optimiser {fixed:.2f} ms "
                             f"({fixed / budget:.0%} of the budget), {rest} (the loss, the regulariser, the real "
                             f"batch, the embedder redraw, their gradients); the iteration makes "
                             f"{r['aten_calls_per_iteration'] - r['floor_aten_calls']:.0f} aten calls more than "
                             f"the floor, {r['outside_us_per_extra_call']:.1f} µs of the time outside per call.")
        L.extend(["", "Where an iteration's time goes (torch.profiler, self CPU time per iteration, top 8 ops):", ""])
        for r in prof:
            L.append(f"- {r['dataset']} {r['method']}: " + "; ".join(
                f"`{o['op']}` {o['self_ms_per_iteration']:.2f} ms ({o['calls_per_iteration']:.0f}×)"
                for o in r["top_ops"]))
        L.append("")
    L.append(f"Total wall time of the run: {meta['total_s']:.0f} s.")
    return "\n".join(L) + "\n"


# the sections of a run, in the order they run: name -> (benchmark, whether the arguments skip it,
# JSON key of its results)
PARTS = {"sizes": (bench_sizes, lambda args: not args.sizes, "results"),
         "barycenter": (bench_barycenter, lambda args: args.bary_n <= 0, "barycenter"),
         "reference": (bench_wmdd_released, lambda args: args.ref_n <= 0, "wmdd_released"),
         "profile": (bench_profile, lambda args: not args.profile_datasets, "profile")}


def blas_threads():
    """Threads of each BLAS library numpy has loaded (threadpoolctl, which scikit-learn, a
    dependency of ddmetrics, requires)."""
    from threadpoolctl import threadpool_info

    return [info["num_threads"] for info in threadpool_info() if info["user_api"] == "blas"]


def main(argv=None):
    args = parse_args(argv)
    if args.from_json:  # the report of a finished run, as this version of the script writes it
        import json

        with open(args.from_json, encoding="utf-8") as f:
            done = json.load(f)
        md = markdown(done["meta"], *(done.get(key) for _, _, key in PARTS.values()))
        write_text(args.out + ".md", md)
        print(md)
        return
    threads, blas_limit = torch.get_num_threads(), None
    if args.threads is not None:
        from threadpoolctl import threadpool_limits

        # numpy's BLAS too: the references on numpy then use the cores ours does
        blas_limit = threadpool_limits(limits=args.threads, user_api="blas")
        torch.set_num_threads(args.threads)
    try:
        run(args)
    finally:  # the caller's threads as they were (main also runs inside other programs: the tests)
        if blas_limit is not None:  # first: threadpoolctl restores torch's OpenMP pool too, as it found it
            blas_limit.restore_original_limits()
        torch.set_num_threads(threads)


def run(args):
    """Run the chosen parts and write the report and the JSON."""
    log, elapsed = elapsed_log()

    import geomloss
    machine = machine_info()
    meta = {
        "command": command_line(),
        "date": local_date(),
        "machine": {k: machine[k] for k in ("platform", "processor", "machine", "cpu_count", "cpu_model")},
        "torch_threads": machine["threads"],
        "blas_threads": blas_threads(),
        "ddmetrics_source": source_digest(),
        "versions": {"python": machine["python"], "torch": machine["torch"], "pot": ot.__version__,
                     "geomloss": getattr(geomloss, "__version__", "?"), "numpy": np.__version__},
        "args": vars(args),
    }
    log(f"threads={meta['torch_threads']} blas_threads={meta['blas_threads']} cpu_count={os.cpu_count()} "
        f"args={vars(args)}")
    cpu0 = cpu_times()
    found = {key: bench(args, log) if name in args.parts and not skipped(args) else None
             for name, (bench, skipped, key) in PARTS.items()}
    meta["total_s"] = elapsed()
    meta["cpu_pct"] = cpu_share(cpu0, cpu_times())
    write_json(args.out + ".json", {"meta": meta, **found}, indent=1)
    md = markdown(meta, *found.values())
    write_text(args.out + ".md", md)
    print(md)
    log(f"wrote {args.out}.md and {args.out}.json")


if __name__ == "__main__":
    main()
