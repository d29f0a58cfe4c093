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
    # WMDD's pipeline on cheap settings (its own: a ResNet-18 teacher for 50 epochs, 2000 iterations, a ResNet-18
    # student for 300 epochs): 100 iterations, a 6-epoch ConvNet-BN teacher, ConvNet-BN students for 200 epochs
    res = _run("distill", "--dataset", "digits", "--method", "wmdd", "--ipc", "1", "--runs", "1", "--quiet", "--no-full",
               "--iterations", "100", "--set", "teacher_arch=convnet_bn", "teacher_epochs=6", "eval_model=convnet_bn",
               "eval_epochs=200", "--out", str(out), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert sorted(os.listdir(out)) == [".ddmetrics-run.json", "config.yaml", "grid.png", "report.json", "synset.pt",
                                   "teacher.pt"]
    report = json.loads((out / "report.json").read_text())["evaluation"]
    # WMDD, one image per class, teacher soft labels (the preset's protocol): far above chance (10 %)
    assert report["protocol"] == "soft (model=convnet_bn, epochs=200)" and report["mean"] >= 0.75
    assert "accuracy (%)" in res.stdout
    again = _run("evaluate", str(out / "synset.pt"), "--dataset", "digits", "--runs", "1", "--quiet", "--no-full",
                 "--json", str(tmp_path / "e.json"), cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert json.loads((tmp_path / "e.json").read_text())["runs"] == report["runs"]  # same seed, same result


def test_a_method_without_a_teacher_evaluated_with_soft_labels_trains_and_keeps_one(tmp_path):
    # DM's synthesis uses no teacher, its students under a soft-label protocol learn from one: the run trains it
    # (by the config's teacher recipe) and saves it, so that evaluate reads the run back to the same numbers
    from ddmetrics.cli import main

    out = tmp_path / "run"
    assert main(["distill", "--method", "dm", "--ipc", "1", "--runs", "1", "--no-full", "--quiet", "--iterations", "2",
                 "--protocol", "soft", "--set", "teacher_arch=convnet_bn", "teacher_epochs=1", "eval_model=convnet",
                 "eval_epochs=2", "--out", str(out)]) == 0
    assert sorted(os.listdir(out)) == [".ddmetrics-run.json", "config.yaml", "grid.png", "report.json", "synset.pt", "teacher.pt"]
    report = json.loads((out / "report.json").read_text())["evaluation"]
    assert report["protocol"] == "soft (model=convnet, epochs=2)" and len(report["runs"]) == 1
    assert main(["evaluate", str(out / "synset.pt"), "--runs", "1", "--no-full", "--quiet", "--json",
                 str(tmp_path / "e.json")]) == 0
    assert json.loads((tmp_path / "e.json").read_text())["runs"] == report["runs"]  # the same teacher, read back


@pytest.mark.parametrize("args,needle", [
    (["--method", "nope"], "cafe, cda, datadam, dm, g_vbsm, herding, idm, kcenter, kmeans, krdual, m3d, ncfm, random, sre2l, wmdd"),
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


# -- start-up: `ddmetrics --help` and `import ddmetrics` load no optional backend

_OPTIONAL = "{'pykeops', 'geomloss', 'matplotlib'}"


def _python(code: str, cwd):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, env=ENV, timeout=600)


def test_help_prints_no_keops_warning(tmp_path):
    res = _run("--help", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    for command in ["distill", "evaluate", "diagnose", "losses"]:
        assert command in res.stdout
    assert "KeOps" not in res.stdout + res.stderr


def test_import_loads_no_optional_backend(tmp_path):
    res = _python("import ddmetrics, sys; "
                  f"print(sorted(m for m in sys.modules if m.split('.')[0] in {_OPTIONAL}))", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"


def test_building_the_parser_imports_no_torch(tmp_path):
    # what keeps `ddmetrics --help` quick: the commands import torch, the models and the losses
    res = _python("import sys; from ddmetrics.cli import build_parser; build_parser(); "
                  "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'numpy', 'ot', 'sklearn'}))",
                  cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"


def test_distill_help_lists_the_method_presets_and_the_protocols(capsys):
    from ddmetrics.cli import build_parser
    from ddmetrics.distill import PRESETS
    from ddmetrics.protocols import PROTOCOLS

    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["distill", "--help"])
    assert exit_.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert f"one of {', '.join(sorted(PRESETS))}" in text
    assert "wmdd: soft" in text and "sre2l: sre2l_small" in text and "dm: hard" in text  # each paper's protocol
    assert all(f"{name} ({p.labels} labels, {p.model})" in text for name, p in PROTOCOLS.items())  # --protocol
    assert "--teacher-arch NAME the teacher's architecture: a registered model name (resnet18 takes torchvision's " \
           "ResNet-18 state dicts) or torchvision:NAME / timm:NAME (default: the method's, resnet18)" in text


def test_package_names_resolve_lazily():
    import ddmetrics as ddm
    from ddmetrics.evaluate import EvalReport

    for name in ddm.__all__:
        assert getattr(ddm, name) is not None
    assert callable(ddm.evaluate) and ddm.EvalReport is EvalReport  # the function, not the module
    assert ddm.distill.presets.PRESETS is ddm.distill.PRESETS
    with pytest.raises(AttributeError):
        ddm.no_such_name


# -- the teacher.pt next to a synthetic set (evaluate --protocol soft, diagnose --model teacher)

def _run_folder(tmp_path, teacher=None):
    """A synset.pt for the 10 digits classes (soft-label config) and, optionally, a teacher.pt."""
    import torch

    import ddmetrics as ddm

    folder = tmp_path / "run"
    syn = ddm.SyntheticSet(torch.randn(10, 1, 8, 8, generator=torch.Generator().manual_seed(0)), torch.arange(10),
                           torch.ones(10), meta={"seed": 0, "config": {"eval_protocol": "soft", "teacher": "convnet_bn"}},
                           num_classes=10)
    folder.mkdir()
    syn.save(str(folder / "synset.pt"))
    if teacher is not None:
        torch.save(teacher, str(folder / "teacher.pt"))
    return folder


def _teacher_state():
    import ddmetrics as ddm

    return ddm.models.get_model("convnet_bn", 1, 10, 8).state_dict()


@pytest.mark.parametrize("command", ["evaluate", "diagnose"])
@pytest.mark.parametrize("teacher,needle", [
    ([1, 2], "is not a state_dict"),
    ({"weight": [0.0]}, "does not fit"),
    ("wrong-shape", "does not fit"),
])
def test_a_bad_teacher_file_is_an_error_naming_it(tmp_path, capsys, command, teacher, needle):
    import torch

    from ddmetrics.cli import main

    if teacher == "wrong-shape":
        teacher = {k: torch.zeros(1) for k in _teacher_state()}
    folder = _run_folder(tmp_path, teacher)
    args = ["--runs", "1", "--quiet"] if command == "evaluate" else ["--model", "teacher", "--losses", "mmd"]
    assert main([command, str(folder / "synset.pt"), *args]) == 2
    err = capsys.readouterr().err
    assert f"ddmetrics {command}: error: " in err and str(folder / "teacher.pt") in err and needle in err


def test_diagnose_with_the_saved_teacher(tmp_path, capsys):
    from ddmetrics.cli import main

    folder = _run_folder(tmp_path, _teacher_state())
    out = tmp_path / "d.json"
    assert main(["diagnose", str(folder / "synset.pt"), "--losses", "mmd", "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["model"].startswith("teacher convnet_bn") and doc["split"] == "train"
    assert "mmd" in capsys.readouterr().out


def test_load_state_dict_file(tmp_path):
    import torch

    import ddmetrics as ddm
    from ddmetrics.models import load_state_dict_file

    state = _teacher_state()
    torch.save(state, tmp_path / "t.pt")
    model = ddm.models.get_model("convnet_bn", 1, 10, 8)
    assert load_state_dict_file(model, tmp_path / "t.pt") is model
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match="does not fit"):
        load_state_dict_file(ddm.models.get_model("convnet_bn", 1, 3, 8), tmp_path / "t.pt")
    torch.save(torch.nn.Linear(2, 2), tmp_path / "module.pt")  # a pickled module: weights_only refuses it
    with pytest.raises(ValueError, match="module.pt contains Python objects that could run code"):
        load_state_dict_file(model, tmp_path / "module.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="junk.pt"):
        load_state_dict_file(model, tmp_path / "junk.pt")
    with pytest.raises(ValueError, match="missing.pt does not exist"):
        load_state_dict_file(model, tmp_path / "missing.pt")


# -- issue 11's last mile: --no-full, --debug after the subcommand, poisoned files through the CLI

def _tiny_synset(folder):
    """A 10-image digits synthetic set with hard labels (no teacher needed)."""
    import torch

    import ddmetrics as ddm

    folder.mkdir(exist_ok=True)
    syn = ddm.SyntheticSet(torch.randn(10, 1, 8, 8, generator=torch.Generator().manual_seed(0)), torch.arange(10),
                           torch.ones(10), meta={"seed": 0, "config": {"eval_protocol": "hard"}}, num_classes=10)
    syn.save(str(folder / "synset.pt"))
    return folder / "synset.pt"


def test_no_full_skips_the_full_data_model(tmp_path, monkeypatch, capsys):
    import importlib

    from ddmetrics.cli import main

    ev = importlib.import_module("ddmetrics.evaluate")  # the module (ddmetrics.evaluate is the function)

    def no_full(*args, **kwargs):
        raise AssertionError("the full-data model was trained despite --no-full")

    monkeypatch.setattr(ev, "full_data_accuracy", no_full)
    # the students are not what this test is about: skip their training
    monkeypatch.setattr(ev, "train_student", lambda *args, **kwargs: None)
    monkeypatch.setattr(ev, "accuracy", lambda model, test_set: 0.5)
    out = tmp_path / "e.json"
    path = _tiny_synset(tmp_path / "run")
    assert main(["evaluate", str(path), "--runs", "1", "--no-full", "--quiet", "--json", str(out),
                 "--protocol", "hard"]) == 0
    doc = json.loads(out.read_text())
    assert doc["full"] is None and "full_data" not in doc["seconds"] and doc["runs"] == [0.5]
    # without it the baseline is asked for (and here fails in one line: proof the flag is what skipped it)
    assert main(["evaluate", str(path), "--runs", "1", "--quiet", "--protocol", "hard"]) == 2
    assert "despite --no-full" in capsys.readouterr().err


def test_debug_is_accepted_after_the_subcommand(tmp_path, capsys):
    from ddmetrics.cli import main

    missing = str(tmp_path / "missing.pt")
    assert main(["evaluate", missing]) == 2
    for argv in (["--debug", "evaluate", missing], ["evaluate", missing, "--debug"]):
        with pytest.raises(Exception, match="does not exist"):  # the traceback, not one line
            main(argv)


def test_poisoned_checkpoint_and_teacher_are_refused_through_the_cli(tmp_path, capsys, monkeypatch, hostile):
    import torch

    from ddmetrics.cli import main

    payload, marker = hostile
    # a teacher.pt beside a soft-label set
    folder = _run_folder(tmp_path)
    torch.save({"weight": payload}, str(folder / "teacher.pt"))
    assert main(["evaluate", str(folder / "synset.pt"), "--runs", "1", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "could run code" in err and "weights_only" not in err
    # a checkpoint of an interrupted run whose teacher file was then replaced: --resume refuses it
    from ddmetrics.distill.checkpoint import Checkpoint

    finish = Checkpoint.finish

    def interrupt_after_class_0(self, k, result):
        finish(self, k, result)
        raise KeyboardInterrupt

    monkeypatch.setattr(Checkpoint, "finish", interrupt_after_class_0)
    out, ckpt = tmp_path / "r", tmp_path / "ck"
    args = ["distill", "--method", "wmdd", "--ipc", "1", "--runs", "0", "--iterations", "2", "--quiet",
            "--set", "teacher_epochs=1", "teacher_arch=convnet_bn", "--out", str(out), "--checkpoint", str(ckpt)]
    assert main(args) == 130 and (ckpt / "teacher.pt").exists()
    monkeypatch.setattr(Checkpoint, "finish", finish)
    torch.save({"weight": payload}, str(ckpt / "teacher.pt"))
    capsys.readouterr()
    assert main(args + ["--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "could run code" in err and "weights_only" not in err, err
    assert not marker.exists() and not out.exists()


def test_g_vbsm_keeps_its_backbones_and_evaluate_labels_with_the_same_ensemble(tmp_path):
    # the students learn the mean logits of the teacher and the backbones: the run folder keeps the backbones, and
    # evaluate reads them back to the same numbers; without them it refuses rather than label with the teacher alone
    from ddmetrics.cli import main

    out = tmp_path / "run"
    assert main(["distill", "--method", "g_vbsm", "--ipc", "1", "--runs", "1", "--no-full", "--quiet", "--iterations",
                 "2", "--set", "teacher_recipe=ours", "teacher_epochs=1", "eval_model=convnet", "eval_epochs=2",
                 "--out", str(out)]) == 0
    assert {"teacher.pt", "backbone_0.pt", "backbone_1.pt", "backbone_2.pt"} <= set(os.listdir(out))
    report = json.loads((out / "report.json").read_text())["evaluation"]
    assert main(["evaluate", str(out / "synset.pt"), "--runs", "1", "--no-full", "--quiet", "--json",
                 str(tmp_path / "e.json")]) == 0
    assert json.loads((tmp_path / "e.json").read_text())["runs"] == report["runs"]  # the same ensemble, read back
    os.remove(out / "backbone_1.pt")
    assert main(["evaluate", str(out / "synset.pt"), "--runs", "1", "--no-full", "--quiet"]) == 2
