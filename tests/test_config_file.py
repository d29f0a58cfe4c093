"""``ddmetrics distill --config run.yaml`` (ddmetrics/config_file.py): the schema, the precedence of
the command line over the file, the run folder's config.yaml read back, and errors that name the
file, the line and the key before any work."""
import os
import re

import pytest
import torch
import yaml

import ddmetrics as ddm
from ddmetrics import cli
from ddmetrics.cli import main
from ddmetrics.config_file import read_config

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


@pytest.fixture
def project(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.set_num_threads(1)
    return tmp_path


@pytest.fixture
def no_data(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("data was read before the bad file was refused")

    monkeypatch.setattr(ddm.data, "load", refuse)


@pytest.fixture
def captured(monkeypatch):
    """Run ``distill`` up to the synthesis: the resolved arguments and distiller, nothing distilled."""
    seen = {}

    def record(args, distiller, splits, checkpoint):
        seen.update(args=args, distiller=distiller)
        return 0

    monkeypatch.setattr(cli, "_distill", record)
    return seen


def _write(path, text):
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_the_schema_top_level_and_under_config_with_lines(project):
    path = _write(project / "run.yaml", "dataset: digits\nmethod: dm\nno-full: true\ncheckpoint_every: 5\n"
                                        "lr: 1e-3\nconfig:\n  batch_real: 64\n  loss_kwargs: {kernel: gaussian}\n"
                                        "  eval_protocol: soft\n")
    conf = read_config(path)
    assert conf.command == {"dataset": "digits", "method": "dm", "no_full": True, "checkpoint_every": 5}
    # PyYAML reads 1e-3 (no dot) as text: a float field takes it as the number
    assert conf.config == {"lr": 1e-3, "batch_real": 64, "loss_kwargs": {"kernel": "gaussian"},
                           "eval_protocol": "soft"}
    assert conf.lines == {"dataset": 1, "method": 2, "no_full": 3, "checkpoint_every": 4, "lr": 5, "batch_real": 7,
                          "loss_kwargs": 8, "eval_protocol": 9}


@pytest.mark.parametrize("text,line,key,needle", [
    ("method: dm\nlr_rate: 0.1\n", 2, "lr_rate", "not a setting of ddmetrics distill"),
    ("method: dm\nconfig:\n  iterationz: 5\n", 3, "iterationz", "did you mean 'iterations'"),
    ("method: dm\nipc: ten\n", 2, "ipc", "ipc must be a positive integer"),
    ("method: dm\nconfig:\n  lr: -1\n", 3, "lr", "lr must be a positive number"),
    ("method: dm\nlr: 0.1\nconfig:\n  lr: 0.2\n", 4, "lr", "set twice (first on line 2)"),
    ("method: dm\noverwrite: true\n", 2, "overwrite", "give --overwrite on the command line"),
    ("seed: 0\nmethod: nope\n", 2, "method", "valid methods: cafe, cda, datadam, dm, g_vbsm, herding"),
    ("method: dm\nloss: nope\n", 2, "loss", "unknown loss 'nope'"),
    ("method: dm\nconfig:\n  reg_weight: 5\n", 3, "reg_weight", "reg_weight does not apply to method 'dm'"),
    ("method: wmdd\nconfig:\n  bn_stats: running\n", 3, "bn_stats", "needs reg='bn'"),
    ("method: dm\nconfig:\n  lr: [1\n", 4, None, "not valid YAML"),
    ("- dm\n- 10\n", 1, None, "must be a mapping"),
])
def test_a_bad_file_is_refused_naming_file_line_and_key_before_any_work(project, no_data, capsys, text, line, key,
                                                                       needle):
    path = _write(project / "bad.yaml", text)
    assert main(["distill", "--config", path, "--out", "out", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    where = f"{path} line {line}" + (f" ({key})" if key else "")
    assert err.startswith(f"ddmetrics distill: error: {where}: ") and needle in err, err
    assert sorted(os.listdir(project)) == ["bad.yaml"]  # nothing written


def test_a_setting_from_the_command_line_is_not_blamed_on_the_file(project, no_data, capsys):
    path = _write(project / "run.yaml", "method: dm\n")
    assert main(["distill", "--config", path, "--out", "out", "--set", "reg_weight=5"]) == 2
    err = capsys.readouterr().err
    assert "reg_weight does not apply" in err and "run.yaml" not in err


def test_the_command_line_overrides_the_file(project, captured):
    path = _write(project / "run.yaml", "dataset: digits\nmethod: dm\nipc: 3\nseed: 4\nout: from-file\n"
                                        "iterations: 50\nconfig:\n  lr: 0.5\n  batch_real: 64\n")
    assert main(["distill", "--config", path, "--ipc", "2", "--set", "lr=0.2", "iterations=40"]) == 0
    args, d = captured["args"], captured["distiller"]
    assert (args.ipc, args.seed, args.out, args.method) == (2, 4, "from-file", "dm")
    assert (d.ipc, d.config.lr, d.config.batch_real, d.config.iterations) == (2, 0.2, 64, 40)
    assert main(["distill", "--config", path, "--iterations", "30", "--set", "iterations=40",
                 "--out", "elsewhere"]) == 0
    assert captured["distiller"].config.iterations == 30 and captured["args"].out == "elsewhere"


def test_out_is_required_from_the_file_or_the_command_line(project, no_data, capsys):
    path = _write(project / "run.yaml", "method: dm\n")
    assert main(["distill", "--config", path]) == 2
    assert "--out is required" in capsys.readouterr().err


def test_a_run_folders_config_yaml_reads_back_to_the_same_run(project):
    path = _write(project / "run.yaml", "dataset: digits\nmethod: dm\nipc: 1\nruns: 0\nconfig:\n  iterations: 2\n"
                                        "  lr: 0.5\n")
    assert main(["distill", "--config", path, "--set", "batch_real=16", "--out", "r1", "--quiet"]) == 0
    recorded = yaml.safe_load((project / "r1" / "config.yaml").read_text())
    assert recorded["method"] == "dm" and recorded["ipc"] == 1 and recorded["runs"] == 0
    first = ddm.SyntheticSet.load(str(project / "r1" / "synset.pt"))
    assert recorded["config"] == first.meta["config"]  # every field, as the distiller ran
    assert (recorded["config"]["lr"], recorded["config"]["batch_real"], recorded["config"]["iterations"]) == \
        (0.5, 16, 2)
    # the recorded file lists fields dm does not use (reg_weight, ...) at dm's own values: not overrides
    assert main(["distill", "--config", str(project / "r1" / "config.yaml"), "--out", "r2", "--quiet"]) == 0
    again = ddm.SyntheticSet.load(str(project / "r2" / "synset.pt"))
    assert torch.equal(again.images, first.images)  # same settings, same seed, same operations
    assert (project / "r2" / "config.yaml").read_text() == (project / "r1" / "config.yaml").read_text()


def test_a_coreset_method_writes_the_same_run_folder_and_report(project):
    args = ["distill", "--method", "kcenter", "--ipc", "2", "--runs", "1", "--no-full", "--quiet", "--out", "k",
            "--set", "teacher_arch=convnet_bn", "teacher_epochs=1", "eval_protocol=hard", "eval_epochs=2"]
    assert main(args) == 0
    names = sorted(os.listdir(project / "k"))
    assert names == [".ddmetrics-run.json", "config.yaml", "grid.png", "report.json", "synset.pt", "teacher.pt"]
    syn = ddm.SyntheticSet.load(str(project / "k" / "synset.pt"))
    train = ddm.data.load("digits", seed=0).train
    # every image is a real training image of its class
    for image, label in zip(syn.images, syn.labels):
        rows = (train.images == image).flatten(1).all(1)
        assert rows.any() and bool((train.labels[rows] == label).all())
    report = __import__("json").loads((project / "k" / "report.json").read_text())
    assert report["method"] == "kcenter" and report["loss"] is None and len(report["evaluation"]["runs"]) == 1
    assert yaml.safe_load((project / "k" / "config.yaml").read_text())["config"]["coreset"] == "kcenter"
    # its config.yaml (loss, iterations, ... at their defaults, unused by a coreset) reads back to the same set
    assert main(["distill", "--config", str(project / "k" / "config.yaml"), "--out", "k3", "--quiet"]) == 0
    assert torch.equal(ddm.SyntheticSet.load(str(project / "k3" / "synset.pt")).images, syn.images)
    assert main(args[:-1] + ["eval_epochs=2", "--iterations", "3", "--out", "k2"]) == 2  # nothing to iterate


def test_the_readme_yaml_config_runs(project):
    text = open(README, encoding="utf-8").read()
    blocks = re.findall(r"```yaml\n(.*?)```", text, flags=re.S)
    assert len(blocks) == 1
    path = _write(project / "run.yaml", blocks[0])
    assert "--config run.yaml" in text
    # the README's settings, at a budget a test can afford
    assert main(["distill", "--config", path, "--ipc", "1", "--runs", "0", "--set", "iterations=2", "--out", "x",
                 "--quiet"]) == 0
    recorded = yaml.safe_load((project / "x" / "config.yaml").read_text())
    conf = read_config(path)
    for key, value in conf.config.items():
        if key != "iterations":
            assert recorded["config"][key] == value, key
    assert recorded["method"] == conf.command["method"]
