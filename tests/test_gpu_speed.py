"""benchmarks/gpu_speed.py in its smallest mode: every registered backend gets a finite time."""
import importlib.util
import json
import math
import os

import torch

import ddmetrics as ddm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _gpu_speed():
    spec = importlib.util.spec_from_file_location("gpu_speed", os.path.join(ROOT, "benchmarks", "gpu_speed.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_backends_only_smoke_times_every_registered_backend(tmp_path):
    gs = _gpu_speed()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny sizes: one thread is faster on a shared machine
    # in this process: the backends registered here (plugins, tests' own) are the ones it must time
    args = ["--smoke", "--device", "cpu", "--no-synthesis", "--sizes", "200", "--m", "10", "--out", str(tmp_path)]
    try:
        assert gs.main(args) == 0
    finally:
        torch.set_num_threads(threads)
    doc = json.loads((tmp_path / "gpu_speed.json").read_text())
    assert doc["d"] == 16 and doc["repeats"] == 1 and doc["synthesis"] == []  # smoke sizes, explicit ones kept
    assert {r["n"] for r in doc["backends"]} == {200}
    try:
        import pykeops  # noqa: F401
        absent = set()
    except ImportError:  # then the KeOps path is recorded as skipped, with the reason
        absent = {"sinkhorn (online)", "mmd (online)", "energy (online)"}
    assert {r["backend"] for r in doc["backends"] if "skipped" in r} == absent
    timed = {r["loss"] for r in doc["backends"] if "seconds" in r and math.isfinite(r["seconds"]) and r["seconds"] > 0}
    assert timed == set(ddm.available_losses())
    assert "| sinkhorn (tensorized) | 200 |" in (tmp_path / "gpu_speed.md").read_text()


def test_caps_of_the_backends_with_quadratic_or_cpu_cost():
    gs = _gpu_speed()
    args = gs.parse_args([])  # the full-size defaults: n up to 10^6
    assert args.sizes[-1] == 10 ** 6
    big = {name + str(kw): gs._skip_reason(args, name, kw, 10 ** 6) for name, kw in gs.backend_cases()}
    assert "--exact-max" in big["wasserstein{}"] and "--tensorized-max" in big["sinkhorn{'backend': 'tensorized'}"]
    assert "--quadratic-max" in big["mmd{'backend': 'tensorized'}"]
    assert "--quadratic-max" in big["energy{'backend': 'tensorized'}"]
    for linear in ("gaussian_w2{}", "ncfd{}", "sliced{}", "krdual{}", "sinkhorn{'backend': 'online'}",
                   "mmd{'backend': 'online'}", "energy{'backend': 'online'}"):
        assert big[linear] is None, linear
    assert all(gs._skip_reason(args, name, kw, 10 ** 5) is None for name, kw in gs.backend_cases())
