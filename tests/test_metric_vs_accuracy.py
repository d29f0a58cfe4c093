"""benchmarks/metric_vs_accuracy.py --quick: expected cells, baselines, and a resumed run that skips everything."""
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "benchmarks", "metric_vs_accuracy.py")
ENV = dict(os.environ, MPLBACKEND="Agg")


def _run(prefix):
    start = time.perf_counter()
    res = subprocess.run([sys.executable, SCRIPT, "--quick", "--backends", "wasserstein", "mmd", "--no-progress",
                          "--out", str(prefix)], capture_output=True, text=True, cwd=ROOT, env=ENV, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return res, time.perf_counter() - start


def test_quick_run_then_resume(tmp_path):
    prefix = tmp_path / "mva"
    res, first = _run(prefix)
    doc = json.loads((tmp_path / "mva.json").read_text())
    cells = list(doc["cells"].values())
    assert sorted((c["backend"], c["strategy"], c["ipc"]) for c in cells) == [
        ("mmd", "barycenter", 1), ("mmd", "distribution", 1),
        ("wasserstein", "barycenter", 1), ("wasserstein", "distribution", 1)]
    for c in cells:
        assert len(c["accuracies"]) == 1 and all(0.0 <= a <= 1.0 for a in c["accuracies"])
        assert c["distill_seconds"] > 0 and c["config"]["iterations"] == 20 and c["config"]["eval_epochs"] == 50
        assert (c["barycenter_share"] is not None) == (c["strategy"] == "barycenter")
    assert {c["config"]["eval_protocol"] for c in cells} == {"soft", "hard"}
    # random subset and full data, for IPC 1 (one entry per evaluation protocol)
    assert {b["protocol"] for b in doc["baselines"].values()} == {"soft", "hard"}
    for b in doc["baselines"].values():
        assert b["ipc"] == 1 and 0.0 <= b["full"] <= 1.0
        assert b["random_runs"] and all(0.0 <= a <= 1.0 for a in b["random_runs"])
    assert doc["runs_log"][-1]["new_cells"] == 4 and "--quick" in doc["command"]
    md = (tmp_path / "mva.md").read_text()
    assert "random subset (hard labels)" in md and "full data" in md and "barycenter share" in md
    assert (tmp_path / "mva.png").stat().st_size > 1000
    assert "4 new cells" in res.stdout

    res, second = _run(prefix)
    doc2 = json.loads((tmp_path / "mva.json").read_text())
    assert doc2["runs_log"][-1]["new_cells"] == 0 and doc2["runs_log"][-1]["skipped_cells"] == 4
    assert doc2["cells"] == doc["cells"] and doc2["baselines"] == doc["baselines"]
    assert "0 new cells" in res.stdout
    assert second < first
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]
