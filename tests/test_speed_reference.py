"""The WMDD reference barycenter of benchmarks/metric_speed.py: a faithful baseline, and ours beats its objective."""
import importlib.util
import os

import numpy as np
import torch

from ddmetrics.losses import barycenter_objective, exact_barycenter

HERE = os.path.dirname(os.path.abspath(__file__))


def _speed_module():
    path = os.path.join(HERE, "..", "benchmarks", "metric_speed.py")
    spec = importlib.util.spec_from_file_location("metric_speed", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_reference_algorithm_runs_as_described_and_ours_reaches_a_lower_w2():
    ms = _speed_module()
    x = torch.randn(200, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64) / 4
    X, w, solves = ms.wmdd_reference_barycenter(x.numpy(), 5, seed=0)
    assert X.shape == (5, 16) and abs(w.sum() - 1) < 1e-12 and (w >= 0).all()
    assert 10 * 2 <= solves <= 10 * 101  # per round: 1..100 mirror steps, one position step
    ref = barycenter_objective(x, torch.as_tensor(X), torch.as_tensor(w))
    start = barycenter_objective(x, torch.as_tensor(np.random.default_rng(0).standard_normal((5, 16))),
                                 torch.full((5,), 0.2, dtype=torch.float64))
    assert ref < start  # the reference does descend from its random start
    ours = exact_barycenter(x, 5, seed=0)
    assert ours.objective < ref
    # theta = 1 and no weight steps: one POT position step per round, i.e. POT's free-support iteration
    import ot

    X1, w1, _ = ms.wmdd_reference_barycenter(x.numpy(), 5, seed=0, md_steps=0, theta=1.0, outer=3)
    init = np.random.default_rng(0).standard_normal((5, 16))
    pot = ot.lp.free_support_barycenter([x.numpy()], [np.full(200, 1 / 200)], init, numItermax=3, stopThr=0)
    assert np.allclose(w1, 0.2) and np.allclose(X1, pot, atol=1e-10)


def test_the_sinkhorn_target_is_judged_within_the_call_and_reports_the_side_by_side_ratio():
    targets = _speed_module().targets
    rec = {"benchmark": "sinkhorn", "n": 10000, "times": {"ours": [1.3, 1.1, 1.2], "GeomLoss": [1.0, 1.0, 1.0]},
           "median": {"ours": 1.2, "GeomLoss": 1.0}}
    (name, measured, met), = targets([rec], None, None, None)  # no in-call timing: the side-by-side ratio decides
    assert not met and "side by side 1.200×" in measured and "1.10–1.30×" in measured
    (name, measured, met), = targets([{**rec, "own_work_s": 0.002}], None, None, None)
    assert met and measured.startswith("1.0020× in the call") and "wraps" in name
    (name, measured, met), = targets([{**rec, "own_work_s": 0.2}], None, None, None)
    assert not met


def test_committed_report_renders_from_its_json(tmp_path):
    """``metric_speed.py --from-json`` of the committed results writes the committed Markdown, byte
    for byte (the report's numbers are the JSON's, and this version of the script renders them)."""
    ms = _speed_module()
    results = os.path.join(HERE, "..", "benchmarks", "results", "metric_speed")
    ms.main(["--from-json", results + ".json", "--out", str(tmp_path / "report")])
    with open(results + ".md", encoding="utf-8") as a, open(tmp_path / "report.md", encoding="utf-8") as b:
        assert a.read() == b.read()
