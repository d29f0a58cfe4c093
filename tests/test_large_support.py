"""benchmarks/large_support.py: a measurement in a fresh process reports its own peak RSS and the
same barycenter objective as the same computation done here."""
import importlib.util
import os

import pytest

import ddmetrics as ddm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location("large_support", os.path.join(ROOT, "benchmarks", "large_support.py"))
large_support = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(large_support)

SPEC = {"kind": "barycenter", "n": 2000, "d": 16, "m": 10, "seed": 3, "clusters": 5, "iters": 10,
        "threads": None, "mem_limit_gib": 8.0}


def test_child_barycenter_reports_its_peak_and_the_in_process_objective():
    rec = large_support.run_child(SPEC, timeout=120)
    assert rec["status"] == "ok", rec
    # a fresh interpreter with torch: well above 50 MiB, and a tiny problem stays far below 4 GiB
    assert 50 * 2 ** 20 < rec["peak_rss"] < 4 * 2 ** 30
    # the kernel's RSS counters are per-CPU approximations: allow 1% of slack in "peak >= earlier"
    assert rec["peak_rss"] >= 0.99 * rec["peak_before"] and rec["peak_before"] >= 0.99 * rec["rss_before"] > 0
    assert rec["data_bytes"] == 2000 * 16 * 4
    # the balanced round (uniform weights) solves the network simplex; the closed-form rounds do not
    assert rec["ot_solves"] == 1 and 0 <= rec["ot_seconds"] <= rec["seconds"]

    x = large_support.make_features(2000, 16, seed=3, clusters=5)
    assert x.dtype.is_floating_point and (x >= 0).all()
    here = ddm.get_loss("wasserstein").barycenter(x, 10, iters=10, learn_weights=True, seed=3)
    assert rec["objective"] == pytest.approx(here.objective, rel=1e-6)
    assert rec["weights_min"] == pytest.approx(float(here.weights.min()), rel=1e-5)


def test_features_are_reproducible_and_streams_differ():
    a = large_support.make_features(300, 8, seed=1, clusters=4)
    b = large_support.make_features(300, 8, seed=1, clusters=4)
    y = large_support.make_features(300, 8, seed=1, clusters=4, stream=1)
    assert (a == b).all() and not (a == y).all()
    assert not (large_support.make_features(300, 8, seed=2, clusters=4) == a).all()
