"""benchmarks/metric_vs_accuracy.py --quick: expected cells and baselines with --jobs 1 and 2, a resumed
run that skips everything, and --jobs 2 giving the numbers of --jobs 1 at the same thread count.

The plan is ``--quick --backends wasserstein`` (one barycenter cell with the soft protocol, one
distribution cell with the hard one, their two baselines); ``mmd`` would add ~3 min (its gradient-flow
barycenter). ``--threads 1`` everywhere: the numbers depend on the torch thread count, not on --jobs.
"""
import json
import os
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "benchmarks", "metric_vs_accuracy.py")
ENV = dict(os.environ, MPLBACKEND="Agg")


def _run(prefix, jobs):
    start = time.perf_counter()
    res = subprocess.run([sys.executable, SCRIPT, "--quick", "--backends", "wasserstein", "--threads", "1",
                          "--jobs", str(jobs), "--no-progress", "--out", str(prefix)],
                         capture_output=True, text=True, cwd=ROOT, env=ENV, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return res, time.perf_counter() - start


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """``quick(jobs)``: the first --quick run with ``--jobs jobs`` (run once per module), its document and folder."""
    done = {}

    def get(jobs):
        if jobs not in done:
            folder = tmp_path_factory.mktemp(f"jobs{jobs}")
            res, seconds = _run(folder / "mva", jobs)
            done[jobs] = SimpleNamespace(folder=folder, prefix=folder / "mva", res=res, seconds=seconds,
                                         doc=json.loads((folder / "mva.json").read_text()))
        return done[jobs]

    return get


@pytest.mark.parametrize("jobs", [1, 2])
def test_quick_run(quick, jobs):
    run = quick(jobs)
    doc = run.doc
    cells = list(doc["cells"].values())
    assert sorted((c["backend"], c["strategy"], c["ipc"]) for c in cells) == [
        ("wasserstein", "barycenter", 1), ("wasserstein", "distribution", 1)]
    for c in cells:
        assert len(c["accuracies"]) == 1 and all(0.0 <= a <= 1.0 for a in c["accuracies"])
        assert c["distill_seconds"] > 0 and c["config"]["iterations"] == 20 and c["config"]["eval_epochs"] == 50
        assert (c["barycenter_share"] is not None) == (c["strategy"] == "barycenter")
        assert c["baseline_key"] in doc["baselines"]
        # the barycenter cell's teacher is trained once (by the parent) and its time reported
        assert (c["teacher_seconds"] is not None and c["teacher_seconds"] > 0) == (c["strategy"] == "barycenter")
    assert {c["config"]["eval_protocol"] for c in cells} == {"soft", "hard"}
    # random subset and full data, for IPC 1 (one entry per evaluation protocol)
    base = {b["protocol"]: b for b in doc["baselines"].values()}
    assert set(base) == {"soft", "hard"} and len(doc["baselines"]) == 2
    for b in base.values():
        assert b["ipc"] == 1 and 0.0 <= b["full"] <= 1.0
        assert len(b["random_runs"]) == 1 and all(0.0 <= a <= 1.0 for a in b["random_runs"])
        assert set(b["seconds"]) == {"random_subset", "full_data"}
    # the soft protocol's random subset also with hard labels (its recipe: not the hard protocol's runs); the
    # full-data model is shared by both baselines (--quick gives both protocols the same student model)
    assert len(base["soft"]["random_hard_runs"]) == 1 and base["hard"]["random_hard_runs"] == []
    assert base["soft"]["full"] == base["hard"]["full"]
    log = doc["runs_log"][-1]
    assert log["new_cells"] == 2 and log["new_baselines"] == 2 and log["failed_cells"] == 0
    assert log["jobs"] == doc["environment"]["jobs"] == jobs and log["threads_per_job"] == 1
    assert "--quick" in doc["command"] and not doc["errors"]
    md = (run.folder / "mva.md").read_text()
    assert "random subset (soft protocol, hard labels)" in md and "random subset (hard protocol)" in md
    assert "full data" in md and "barycenter share" in md
    assert f"`--jobs {jobs}`" in md
    assert (run.folder / "mva.png").stat().st_size > 1000
    assert "2 new cells" in run.res.stdout
    assert not [f for f in os.listdir(run.folder) if f.endswith(".tmp")]


def test_resume_with_jobs_skips_everything(quick):
    first = quick(2)
    res, seconds = _run(first.prefix, 2)
    doc = json.loads((first.folder / "mva.json").read_text())
    log = doc["runs_log"][-1]
    assert log["new_cells"] == 0 and log["skipped_cells"] == 2 and log["new_baselines"] == 0
    assert doc["cells"] == first.doc["cells"] and doc["baselines"] == first.doc["baselines"]
    assert "0 new cells" in res.stdout
    assert seconds < first.seconds
    assert not [f for f in os.listdir(first.folder) if f.endswith(".tmp")]


def _losses(cell):
    return {k: v for k, v in (cell["info"] or {}).items() if "loss" in k}


def test_jobs_do_not_change_the_numbers(quick):
    """Same thread count (1): a worker process computes exactly what the in-process path does."""
    one, two = quick(1).doc, quick(2).doc
    assert one["cells"].keys() == two["cells"].keys() and one["baselines"].keys() == two["baselines"].keys()
    for key, cell in one["cells"].items():
        other = two["cells"][key]
        assert other["accuracies"] == cell["accuracies"], cell["label"]
        # the matching losses of the distillation itself, not only the student's test accuracy
        assert _losses(other) == _losses(cell) and _losses(cell), cell["label"]
    for key, b in one["baselines"].items():
        other = two["baselines"][key]
        assert (other["random_runs"], other["random_hard_runs"], other["full"]) == \
            (b["random_runs"], b["random_hard_runs"], b["full"])
