import json
import os
import subprocess
import sys

import pytest

ENV = dict(os.environ, OMP_NUM_THREADS="1")


def _run(*args, cwd):
    return subprocess.run([sys.executable, "-m", "ddmetrics", *args], capture_output=True, text=True, cwd=cwd,
                          env=ENV, timeout=600)


def test_distill_then_evaluate_reproduces_accuracy(tmp_path):
    out = tmp_path / "run"
    res = _run("distill", "--dataset", "digits", "--method", "wmdd", "--ipc", "1", "--runs", "1", "--quiet",
               "--iterations", "60", "--set", "teacher_epochs=15", "--set", "eval_epochs=300", "--out", str(out),
               cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert sorted(os.listdir(out)) == ["grid.png", "report.json", "synset.pt", "teacher.pt"]
    report = json.loads((out / "report.json").read_text())["evaluation"]
    # WMDD, one image per class, teacher soft labels: far above chance (10 %)
    assert report["mean"] >= 0.75
    assert "accuracy (%)" in res.stdout
    again = _run("evaluate", str(out / "synset.pt"), "--dataset", "digits", "--runs", "1", "--quiet",
                 "--json", str(tmp_path / "e.json"), cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert json.loads((tmp_path / "e.json").read_text())["runs"] == report["runs"]  # same seed, same result


@pytest.mark.parametrize("args,needle", [
    (["--method", "nope"], "dm, krdual, m3d, wmdd"),
    (["--loss", "nope"], "known losses"),
    (["--ipc", "500"], "ipc"),
])
def test_bad_arguments_leave_no_output(tmp_path, args, needle):
    out = tmp_path / "run"
    res = _run("distill", "--quiet", "--runs", "0", "--out", str(out), *args, cwd=tmp_path)
    assert res.returncode == 2 and needle in res.stderr
    assert os.listdir(tmp_path) == []


def test_losses_lists_every_backend(tmp_path):
    res = _run("losses", cwd=tmp_path)
    assert res.returncode == 0
    for name in ["wasserstein", "sliced", "sinkhorn", "krdual", "mmd"]:
        assert name in res.stdout
