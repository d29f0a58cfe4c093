"""`ddmetrics evaluate --scores`: accuracy with its 95 % interval and DD-Ranking's scores on stdout and in the
--json report; the README's soft-protocol commands run as written (at a cut budget) on the digits."""
import json
import os
import re
import shlex
import subprocess
import sys

import pytest

from ddmetrics.scores import dd_ranking_scores, t_interval

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROWS = ("HLR, hard-label recovery (points)", "IOR, improvement over random (points)",
        "LRS, label-robust score (w=0.5) (%)", "ARS, augmentation-robust score (w=0.5) (%)")


def _ddmetrics(args, cwd):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "ddmetrics", *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=900)


def _saved_random_set(tmp_path, ipc=3):
    import ddmetrics as ddm
    from ddmetrics.evaluate import random_subset

    syn = random_subset(ddm.data.load("digits", seed=0).train, ipc, seed=7)
    path = str(tmp_path / "synset.pt")
    syn.save(path)
    return path


def _value(stdout, row):
    line = next(line for line in stdout.splitlines() if line.startswith(row))
    return [float(v) for v in re.findall(r"-?\d+\.\d+", line[len(row):])[:2]]


def _check_report(stdout, doc):
    """The printed rows are the report's numbers: accuracy's interval and each score recomputed from the lists."""
    mean, half = t_interval(doc["runs"])
    assert _value(stdout, "accuracy (%)") == pytest.approx([round(100 * mean, 2), round(100 * half, 2)])
    assert [doc["interval"]["low"], doc["interval"]["high"]] == pytest.approx([mean - half, mean + half])
    expected = dd_ranking_scores(doc["full"], doc["hard_runs"], doc["runs"], doc["random_runs"], doc["no_aug_runs"],
                                 doc["random_no_aug_runs"])
    for key, row in zip(("hlr", "ior", "lrs", "ars"), ROWS):
        assert doc["scores"][key]["runs"] == pytest.approx(expected[key]["runs"], abs=1e-12)
        assert _value(stdout, row) == pytest.approx([round(100 * expected[key]["mean"], 2),
                                                     round(100 * expected[key]["half_width"], 2)], abs=0.0051)
    assert all(0.0 <= v <= 1.0 for key in ("lrs", "ars") for v in doc["scores"][key]["runs"])


def test_evaluate_prints_and_writes_the_interval_and_the_scores(tmp_path):
    path = _saved_random_set(tmp_path)
    out = tmp_path / "report.json"
    res = _ddmetrics(["evaluate", path, "--dataset", "digits", "--protocol", "hard", "--runs", "2", "--budget",
                      "0.005", "--scores", "--quiet", "--json", str(out)], tmp_path)
    assert res.returncode == 0, res.stderr
    doc = json.loads(out.read_text())
    assert len(doc["runs"]) == len(doc["no_aug_runs"]) == len(doc["random_no_aug_runs"]) == 2
    assert doc["hard_runs"] == doc["runs"]  # a hard-label protocol: its own runs are the hard-label ones
    _check_report(res.stdout, doc)


def test_evaluate_without_scores_prints_the_interval_only(tmp_path):
    path = _saved_random_set(tmp_path)
    out = tmp_path / "report.json"
    res = _ddmetrics(["evaluate", path, "--dataset", "digits", "--protocol", "hard", "--runs", "2", "--budget",
                      "0.005", "--no-full", "--quiet", "--json", str(out)], tmp_path)
    assert res.returncode == 0, res.stderr
    doc = json.loads(out.read_text())
    assert "(95 % CI, 2 runs)" in res.stdout and "HLR" not in res.stdout
    assert doc["scores"] is None and doc["interval"]["half_width"] == pytest.approx(t_interval(doc["runs"])[1])


@pytest.mark.parametrize("extra,needle", [
    (["--scores", "--no-full"], "--scores needs the full-data model"),
    (["--lrs-weight", "2"], "--lrs-weight must be a number in [0, 1]"),
    (["--ars-weight", "-1"], "--ars-weight must be a number in [0, 1]"),
    (["--lr-search", "0.01", "0"], "--lr-search must list positive learning rates"),
])
def test_bad_score_options_are_one_line_before_any_work(tmp_path, extra, needle):
    out = tmp_path / "r.json"
    res = _ddmetrics(["evaluate", str(tmp_path / "missing.pt"), "--dataset", "digits", "--json", str(out), *extra],
                     tmp_path)
    # refused before the (missing) set is read and before anything is written
    assert res.returncode == 2 and needle in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert "Traceback" not in res.stderr and not out.exists()


def _readme_commands():
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    section = text.split("### The SRe²L-style soft protocol with DD-Ranking's scores", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, flags=re.S).group(1)
    return [shlex.split(line) for line in block.strip().splitlines()]


def test_readme_soft_protocol_with_scores_runs(tmp_path):
    distill, evaluate = _readme_commands()
    assert distill[:2] == ["ddmetrics", "distill"] and evaluate[:2] == ["ddmetrics", "evaluate"]
    assert "--scores" in evaluate and evaluate[evaluate.index("--protocol") + 1] == "soft"
    # as written, at a cut budget (later options win): 1 image per class, a few epochs, 2 student runs
    res = _ddmetrics(distill[1:] + ["--ipc", "1", "--budget", "0.005", "--quiet"], tmp_path)
    assert res.returncode == 0, res.stderr
    res = _ddmetrics(evaluate[1:] + ["--runs", "2", "--budget", "0.01", "--quiet"], tmp_path)
    assert res.returncode == 0, res.stderr
    doc = json.loads((tmp_path / evaluate[evaluate.index("--json") + 1]).read_text())
    assert doc["protocol"] == "soft" and doc["protocol_settings"]["temperature"] == 20.0
    kinds = {"evaluate", "random_subset", "hard_labels", "no_augment", "random_no_augment"}
    assert set(doc["lr_search"]["chosen"]) == kinds and set(doc["lr_search"]["chosen"].values()) <= {0.0005, 0.001,
                                                                                                     0.002}
    _check_report(res.stdout, doc)


def test_distill_scores_land_in_the_run_folders_report_json(tmp_path):
    res = _ddmetrics(["distill", "--dataset", "digits", "--method", "dm", "--ipc", "1", "--budget", "0.005", "--runs",
                      "2", "--scores", "--quiet", "--out", "run"], tmp_path)
    assert res.returncode == 0, res.stderr
    doc = json.loads((tmp_path / "run" / "report.json").read_text())["evaluation"]
    _check_report(res.stdout, doc)


@pytest.mark.parametrize("extra", [["--runs", "0"], ["--no-full"]])
def test_distill_scores_without_an_evaluation_or_full_data_is_refused_before_any_work(tmp_path, extra):
    res = _ddmetrics(["distill", "--dataset", "digits", "--scores", "--out", "run", *extra], tmp_path)
    assert res.returncode == 2 and "--scores needs" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()
