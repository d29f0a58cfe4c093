"""benchmarks/_synthesis_profile.py: the parts of the time outside the floor add up to it, and
the profiled iterations are the synthesis loop's own."""
import os
import statistics
import sys

import pytest
import torch

import ddmetrics as ddm
from ddmetrics.distill._loop import synthesis_units
from ddmetrics.models import get_model
from ddmetrics.utils import seeded

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))

#: a small untrained ConvNet teacher in place of the presets' ResNet-18 (its PCBN statistics pass is the cost)
CHEAP = {"wmdd": dict(teacher_arch="convnet_bn"), "sre2l": dict(teacher_arch="convnet_bn")}


@pytest.mark.parametrize("method", ["wmdd", "dm"])
def test_the_parts_outside_the_floor_add_up_to_iteration_minus_floor(small, method):
    from _synthesis_profile import OPTIMISER, profile_synthesis

    r = profile_synthesis(small, method, ipc=2, iterations=6, warmup=1, **CHEAP.get(method, {}))
    parts = r["outside_ms"]
    assert list(parts) == ["augmentation", "forward beyond the floor's", "backward beyond the floor's", OPTIMISER]
    assert parts["augmentation"] > 0 and parts[OPTIMISER] > 0
    # the parts are the iteration's ranges minus the floor's: only the loop's glue is left out, a few Python calls
    # between ranges (tens of microseconds of a 10-ms iteration). Compared per iteration, by the median: on a
    # machine loaded by other processes, a preemption between two ranges put 0.9 ms of an 11-ms iteration into
    # the glue of the mean over 4 iterations (CI beside two benchmarks); it lands in one iteration's glue
    glue = r["glue_ms"]
    assert len(glue) == 6 and abs(statistics.median(glue)) < 0.05 * r["iteration_ms"]
    # and the mean parts are the mean ranges: their sum and the iteration minus the floor differ by the mean glue
    assert sum(parts.values()) == pytest.approx(r["iteration_ms"] - r["floor_ms"] - statistics.fmean(glue),
                                                abs=1e-6 * r["iteration_ms"])
    # every aten call of an iteration is counted once, in its own range: the floor's are a subset's worth
    assert 0 < r["floor_aten_calls"] < r["aten_calls_per_iteration"]
    # the preset's unit: WMDD's batch of every class (2 x 3 images), DM's one class
    assert r["unit_images"] == {"wmdd": 6, "dm": 2}[method]


@pytest.mark.parametrize("method, unit", [("wmdd", 0), ("dm", 1), ("sre2l", 1)])
def test_the_profiled_iterations_are_the_loops_own(small, method, unit):
    """The unit ends with the images a Distiller run gives it, bit for bit: the profile times the
    loop's operations in the loop's order (its optimiser steps, schedule and clamp included), on
    the unit's own random stream."""
    from _synthesis_profile import profile_synthesis

    overrides = CHEAP.get(method, {})
    r = profile_synthesis(small, method, ipc=2, iterations=2, warmup=1, unit=unit, return_images=True, **overrides)
    cfg = ddm.distill.presets.preset(method, **overrides)
    kw = dict(overrides, teacher=None)
    if cfg.strategy == "barycenter":  # the profile's teacher: the untrained seeded model
        with seeded(0):
            kw["teacher"] = get_model(cfg.teacher_arch, 1, 3, 8)
    syn = ddm.Distiller(method=method, ipc=2, seed=0, iterations=5, **kw).fit(small, progress=False)
    cells = synthesis_units(3, 2, cfg.synthesis_batch, cfg.batch_images)[unit].cells
    expected = syn.images[[2 * k + j for k, j in cells]]
    assert torch.equal(r["images"], expected)
