"""benchmarks/_synthesis_profile.py: the parts of the time outside the floor add up to it."""
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))


@pytest.mark.parametrize("method", ["wmdd", "dm"])
def test_the_parts_outside_the_floor_add_up_to_iteration_minus_floor(small, method):
    from _synthesis_profile import profile_synthesis

    r = profile_synthesis(small, method, ipc=2, iterations=4, warmup=1)
    parts = r["outside_ms"]
    assert set(parts) == {"augmentation", "forward beyond the floor's", "backward beyond the floor's",
                          "optimiser (zero_grad, step, reading the loss)"}
    assert parts["augmentation"] > 0 and parts["optimiser (zero_grad, step, reading the loss)"] > 0
    # the parts are the iteration's ranges minus the floor's: only the loop's glue is left out
    assert abs(sum(parts.values()) - (r["iteration_ms"] - r["floor_ms"])) < 0.05 * r["iteration_ms"]
    # every aten call of an iteration is counted once, in its own range: the floor's are a subset's worth
    assert 0 < r["floor_aten_calls"] < r["aten_calls_per_iteration"]
