"""The command line as a new user meets it: bad settings and hostile files are refused before any
work, in one line on stderr with exit code 2, and no user file is ever lost."""
import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import ddmetrics as ddm
from ddmetrics.cli import _parse_overrides, main
from ddmetrics.distill import DistillConfig
from ddmetrics.distill.presets import preset

# any method at its smallest: --budget scales every iteration and epoch count (each at least 1: DM's 20 000
# iterations become 2, WMDD's 2000 and its teacher's 50 epochs 1)
QUICK = ["--quiet", "--runs", "0", "--budget", "0.0001"]


def _err(capsys):
    err = capsys.readouterr().err.strip()
    return err


def _one_line(capsys, needle):
    err = _err(capsys)
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err and needle in err, err
    return err


# ---------------------------------------------------------------- --overwrite never loses files

@pytest.fixture
def project(tmp_path, monkeypatch):
    proj = tmp_path / "project"
    proj.mkdir()
    (proj / "notes.txt").write_text("mine")
    monkeypatch.chdir(proj)
    return proj


@pytest.mark.parametrize("out,reason", [(".", "current folder"), ("..", "parent of the current folder"),
                                        ("notes.txt", "is a file")])
def test_overwrite_refuses_user_folders_before_any_work(project, capsys, out, reason):
    assert main(["distill", "--out", out, "--overwrite", *QUICK]) == 2
    _one_line(capsys, reason)
    assert (project / "notes.txt").read_text() == "mine"


def test_overwrite_refuses_home_and_foreign_folders(project, tmp_path, capsys, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    (home / "thesis.tex").write_text("years of work")
    monkeypatch.setenv("HOME", str(home))
    assert main(["distill", "--out", str(home), "--overwrite", *QUICK]) == 2
    _one_line(capsys, "home folder")
    runs = project / "runs"
    runs.mkdir()
    (runs / "old_run_by_hand.txt").write_text("x")
    assert main(["distill", "--out", "runs", "--overwrite", *QUICK]) == 2
    _one_line(capsys, "not a ddmetrics run folder")
    assert (home / "thesis.tex").exists() and (runs / "old_run_by_hand.txt").exists()


def test_overwrite_replaces_a_previous_run_and_only_its_files(project, capsys):
    args = ["distill", "--method", "dm", "--ipc", "1", "--out", "runs/a", *QUICK]
    assert main(args) == 0
    first = (project / "runs" / "a" / "synset.pt").stat().st_mtime_ns
    (project / "runs" / "keep.txt").write_text("sibling")
    assert main(args) == 2
    _one_line(capsys, "--overwrite")
    assert main(args + ["--overwrite"]) == 0
    names = sorted(os.listdir(project / "runs" / "a"))
    assert names == [".ddmetrics-run.json", "config.yaml", "grid.png", "report.json", "synset.pt"]   # dm: no teacher.pt
    assert (project / "runs" / "a" / "synset.pt").stat().st_mtime_ns >= first
    assert (project / "runs" / "keep.txt").read_text() == "sibling"
    (project / "runs" / "a" / "analysis.ipynb").write_text("mine")
    assert main(args + ["--overwrite"]) == 2
    _one_line(capsys, "analysis.ipynb")
    assert (project / "runs" / "a" / "analysis.ipynb").read_text() == "mine"


def test_unwritable_out_is_refused_before_work(capsys):
    assert main(["distill", "--out", "/proc/ddmetrics-x", *QUICK]) == 2
    _one_line(capsys, "cannot write")


# ---------------------------------------------------------------- settings refused before any work

@pytest.mark.parametrize("args,needle", [
    (["--set", "lr=abc"], "lr='abc'"),
    (["--set", "iterations=-5"], "iterations=-5"),
    (["--set", "iterations=0"], "iterations=0"),
    (["--set", "eval_protocol=sofft"], "eval_protocol='sofft'"),
    (["--set", "teacher=resnetap10"], "teacher_arch"),
    (["--set", "nonsense=1"], "unknown setting"),
    (["--runs", "-3"], "--runs"),
    (["--device", "gpu"], "not a device"),
    (["--teacher-arch", "nope"], "teacher_arch='nope'"),
    (["--protocol", "sofft"], "eval_protocol='sofft'"),
    (["--method", "dm", "--set", "teacher_epochs=3"], "teacher_epochs does not apply to method 'dm'"),
    (["--loss", "sliced", "--set", 'loss_kwargs={"bogus": 1}'], "loss_kwargs: loss 'sliced' has no setting 'bogus'"),
])
def test_bad_settings_fail_in_one_line_before_data_is_read(tmp_path, capsys, monkeypatch, args, needle):
    def no_data(*a, **k):
        raise AssertionError("data was read before the settings were checked")

    monkeypatch.setattr(ddm.data, "load", no_data)
    assert main(["distill", "--out", str(tmp_path / "r"), "--quiet", "--runs", "0", *args]) == 2
    _one_line(capsys, needle)
    assert not (tmp_path / "r").exists()


# one valid, non-default value per DistillConfig field
NON_DEFAULT = {"strategy": "distribution", "loss": "sliced", "loss_kwargs": {"n_projections": 7}, "iterations": 7,
               "budget": 0.5, "optimizer": "sgd", "lr": 0.5, "lr_schedule": "constant", "weight_decay": 0.1,
               "init": "real", "clamp": "none", "augment": "color_crop", "synthesis_batch": "class",
               "batch_images": 50, "factor": 2, "batch_real": 9, "teacher_arch": "resnetap10",
               "teacher_recipe": "sre2l", "teacher_epochs": 2, "bary_iters": 4, "learn_weights": True,
               "bary_init": "kmeans++", "feature_loss": "none", "feature_norm": "squared", "ce_weight": 0.5,
               "reg": "bn", "reg_weight": 0.5, "reg_norm": "squared", "bn_stats": "exact", "reg_weighted": True,
               "first_bn_weight": 10.0, "embedder": "resnet18", "iters_per_model": 2, "embedder_pool": 3,
               "pool_epochs": 2, "pool_interpolate": True, "calib_weight": 0.5, "normalize_features": True,
               "eval_protocol": "hard", "eval_model": "resnetap10", "eval_epochs": 5, "eval_lr": 0.2,
               "temperature": 2.5, "coreset": "kcenter", "crop_curriculum": "cosine", "crop_milestone": 0.5,
               "embedder_queue": 5, "queue_push_every": 3, "queue_train_steps": 2, "queue_ce_weight": 0.5,
               "attention_weight": 10.0, "attention_power": 4.0, "layer_weights": [0.5, 1.0],
               "discrimination_weight": 0.5, "bilevel": True, "backbones": ["convnet"], "conv_drop": 0.1,
               "stat_momentum": 0.5, "densify_weight": 0.5, "teacher_mode": "train"}
# where a field that WMDD does not use is set (a field given where it does not apply is refused): method, settings
WHERE = {"loss_kwargs": ("wmdd", {"loss": "sliced"}), "factor": ("dm", {}), "batch_real": ("dm", {}),
         "embedder": ("dm", {}), "iters_per_model": ("dm", {}), "embedder_pool": ("dm", {}),
         "normalize_features": ("dm", {}), "pool_epochs": ("dm", {"embedder_pool": 2}),
         "pool_interpolate": ("dm", {"embedder_pool": 2}), "calib_weight": ("dm", {"embedder_pool": 2}),
         "coreset": ("random", {}), "embedder_queue": ("dm", {}), "queue_push_every": ("dm", {"embedder_queue": 2}),
         "queue_train_steps": ("dm", {"embedder_queue": 2}), "queue_ce_weight": ("dm", {"embedder_queue": 2}),
         "attention_weight": ("dm", {}), "attention_power": ("dm", {"attention_weight": 1.0}),
         "crop_milestone": ("wmdd", {"crop_curriculum": "linear"}), "layer_weights": ("dm", {}),
         "discrimination_weight": ("dm", {"synthesis_batch": "all"}), "bilevel": ("dm", {}),
         "backbones": ("g_vbsm", {}), "conv_drop": ("g_vbsm", {}), "stat_momentum": ("g_vbsm", {}),
         "densify_weight": ("g_vbsm", {})}


def test_every_config_field_can_be_set_through_set_and_the_api():
    fields = [f.name for f in dataclasses.fields(DistillConfig)]
    assert sorted(NON_DEFAULT) == sorted(fields)
    for name, value in NON_DEFAULT.items():
        assert getattr(DistillConfig(), name) != value, name
        text = json.dumps(value) if isinstance(value, (dict, bool, list)) else str(value)
        parsed = _parse_overrides([f"{name}={text}"])
        assert parsed == {name: value}, name
        method, context = WHERE.get(name, ("wmdd", {}))
        assert getattr(ddm.Distiller(method=method, ipc=1, **context, **{name: value}).config, name) == value, name
    assert _parse_overrides(["bary_iters=none", "augment=null"]) == {"bary_iters": None, "augment": None}
    assert preset("dm", augment=None).augment is None


# ---------------------------------------------------------------- files: missing, wrong, hostile

def test_hostile_and_wrong_files_are_refused_in_our_words(tmp_path, capsys, hostile):
    payload, marker = hostile
    evil = tmp_path / "evil.pt"
    torch.save({"x": payload}, evil)
    assert main(["evaluate", str(evil)]) == 2
    err = _one_line(capsys, "could run code")
    assert "weights_only" not in err and not marker.exists()
    assert main(["evaluate", str(tmp_path / "missing.pt")]) == 2
    _one_line(capsys, "does not exist")
    assert main(["diagnose", str(tmp_path)]) == 2
    _one_line(capsys, "is a directory")
    (tmp_path / "text.pt").write_text("hello")
    assert main(["evaluate", str(tmp_path / "text.pt")]) == 2
    _one_line(capsys, "not a ddmetrics synthetic set")


def test_synset_that_does_not_fit_the_dataset_is_refused(tmp_path, capsys):
    syn = ddm.SyntheticSet(torch.zeros(3, 3, 8, 8), torch.arange(3), torch.ones(3), meta={"ipc": 1}, num_classes=3)
    syn.save(tmp_path / "s.pt")
    assert main(["evaluate", str(tmp_path / "s.pt"), "--dataset", "digits", "--protocol", "hard"]) == 2
    _one_line(capsys, "3x8x8")
    assert main(["diagnose", str(tmp_path / "s.pt"), "--dataset", "digits"]) == 2
    _one_line(capsys, "3x8x8")


@pytest.mark.parametrize("command", ["evaluate", "diagnose"])
def test_device_option_of_evaluate_and_diagnose(tmp_path, capsys, monkeypatch, command):
    import importlib

    # a digits-shaped set whose recorded settings keep the students short (2 epochs, hard labels)
    syn = ddm.SyntheticSet(torch.randn(10, 1, 8, 8, generator=torch.Generator().manual_seed(0)), torch.arange(10),
                           torch.ones(10), meta={"ipc": 1, "method": "dm", "seed": 0,
                                                 "config": {"eval_epochs": 2, "eval_protocol": "hard"}},
                           num_classes=10)
    syn.save(tmp_path / "s.pt")
    module = importlib.import_module(f"ddmetrics.{command}")  # the module, not the function of that name
    seen = []

    def spy(*args, _run=getattr(module, command), **kwargs):
        seen.append(kwargs["device"])
        return _run(*args, **kwargs)

    monkeypatch.setattr(module, command, spy)
    extra = ["--runs", "1", "--no-full", "--quiet"] if command == "evaluate" else ["--losses", "mmd", "sliced"]
    args = [command, str(tmp_path / "s.pt"), "--dataset", "digits", *extra]
    assert main(args + ["--device", "cpu"]) == 0
    assert seen == [torch.device("cpu")]
    capsys.readouterr()

    def no_data(*a, **k):
        raise AssertionError("data was read before --device was checked")

    monkeypatch.setattr(ddm.data, "load", no_data)
    assert main(args + ["--device", "gpu"]) == 2
    err = _one_line(capsys, "--device gpu")
    assert "not a device" in err and len(seen) == 1


def test_npz_with_a_skipped_class_names_the_label(tmp_path, capsys):
    x = np.random.default_rng(0).normal(size=(40, 1, 8, 8)).astype(np.float32)
    y = np.array([0, 1, 2, 99] * 10)
    np.savez(tmp_path / "d.npz", images=x, labels=y)
    assert main(["distill", "--dataset", str(tmp_path / "d.npz"), "--method", "dm", "--ipc", "1",
                 "--out", str(tmp_path / "r"), *QUICK]) == 2
    _one_line(capsys, "largest label is 99")


def test_version_and_defaults_in_help(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.strip() == f"ddmetrics {ddm.__version__}"
    for command in ("distill", "evaluate", "diagnose"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert "(default:" in text and "(default: None)" not in text
        assert not [h for h in text.split("--")[1:] if h.count("(default:") > 1], "a default shown twice"
        if command == "distill":
            assert "--overwrite" in text and "(default: 3)" in text and "--no-full" in text
    with pytest.raises(SystemExit) as done:
        main(["distill", "--ipc", "x", "--out", "r"])
    assert done.value.code == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_teacher_file_on_the_command_line(tmp_path, capsys):
    model = ddm.models.get_model("resnetap10", 1, 10, 8)
    torch.save(model.state_dict(), tmp_path / "mine.pt")
    out = tmp_path / "r"
    assert main(["distill", "--method", "wmdd", "--ipc", "1", "--teacher", str(tmp_path / "mine.pt"),
                 "--teacher-arch", "resnetap10", "--out", str(out), "--quiet", "--runs", "0", "--iterations", "2"]) == 0
    saved = torch.load(out / "teacher.pt", weights_only=True)
    assert all(torch.equal(saved[k], v) for k, v in model.state_dict().items())  # used as given, not retrained
    assert main(["distill", "--method", "wmdd", "--teacher", str(tmp_path / "mine.pt"), "--out", str(tmp_path / "q"),
                 *QUICK]) == 2
    _one_line(capsys, "does not fit")   # default teacher_arch convnet_bn
    (tmp_path / "junk.pt").write_text("x")
    assert main(["distill", "--teacher", str(tmp_path / "junk.pt"), "--out", str(tmp_path / "q"), *QUICK]) == 2
    _one_line(capsys, "junk.pt")
    assert main(["distill", "--method", "dm", "--teacher", str(tmp_path / "mine.pt"), "--out", str(tmp_path / "q"),
                 *QUICK]) == 2
    _one_line(capsys, "uses no teacher")
    assert not (tmp_path / "q").exists()
    # DM evaluated with soft labels: the teacher labels for its students, used as given and kept
    assert main(["distill", "--method", "dm", "--ipc", "1", "--teacher", str(tmp_path / "mine.pt"), "--teacher-arch",
                 "resnetap10", "--set", "eval_protocol=soft", "--out", str(tmp_path / "s"), *QUICK]) == 0
    saved = torch.load(tmp_path / "s" / "teacher.pt", weights_only=True)
    assert all(torch.equal(saved[k], v) for k, v in model.state_dict().items())


def test_object_array_npz_is_refused_in_our_words(tmp_path, capsys):
    np.savez(tmp_path / "evil.npz", x=np.array([object()], dtype=object), y=np.array([0]))
    assert main(["distill", "--dataset", str(tmp_path / "evil.npz"), "--out", str(tmp_path / "r"), *QUICK]) == 2
    err = _one_line(capsys, "could run code")
    assert "allow_pickle" not in err


# ---------------------------------------------------------------- one run at a time into one --out

DM = ["distill", "--method", "dm", "--ipc", "1", "--dataset", "digits", *QUICK]


def test_the_lock_is_taken_before_any_work_and_released_on_interrupt(tmp_path, capsys, monkeypatch):
    lock = tmp_path / "runs" / ".a.lock"

    def interrupted_load(*a, **k):
        assert json.loads(lock.read_text())["pid"] == os.getpid()  # held while the data is read
        raise KeyboardInterrupt

    monkeypatch.setattr(ddm.data, "load", interrupted_load)
    assert main([*DM, "--out", str(tmp_path / "runs" / "a"), "--checkpoint-every", "1"]) == 130
    assert os.listdir(tmp_path) == []  # lock files gone, and runs/, made for them, too


def test_a_running_run_refuses_a_second_one_at_once_and_a_killed_ones_lock_is_taken_over(tmp_path, capsys,
                                                                                         monkeypatch):
    out = tmp_path / "a"
    hold = ("import sys, time; from ddmetrics._run_folder import FolderLock; "
            "FolderLock(sys.argv[1], '--out').acquire(); print('ready', flush=True); time.sleep(120)")
    holder = subprocess.Popen([sys.executable, "-c", hold, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        load = ddm.data.load

        def no_data(*a, **k):
            raise AssertionError("data was read while another run held --out")

        monkeypatch.setattr(ddm.data, "load", no_data)
        for extra in ([], ["--overwrite"]):
            assert main([*DM, "--out", str(out), *extra]) == 2
            _one_line(capsys, f"is being written by another ddmetrics run (pid {holder.pid} on host ")
    finally:
        holder.kill()
        holder.wait()
    assert os.listdir(tmp_path) == [".a.lock"]  # a SIGKILL leaves the lock file behind
    monkeypatch.setattr(ddm.data, "load", load)
    assert main([*DM, "--out", str(out)]) == 0
    assert f"took over {tmp_path / '.a.lock'}, left by a run that ended without removing it (pid {holder.pid}" \
        in _err(capsys)
    assert sorted(os.listdir(tmp_path)) == ["a"]


def test_two_runs_started_together_into_one_out(tmp_path):
    """Exactly one run writes the folder; the other stops at once, in one line; every file is the winner's."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = tmp_path / "r"
    procs = {seed: subprocess.Popen([sys.executable, "-m", "ddmetrics", *DM, "--seed", str(seed), "--out", str(out)],
                                    env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for seed in (1, 2)}
    done = {seed: (p.wait(timeout=300), p.stderr.read().strip()) for seed, p in procs.items()}
    winners = [seed for seed, (code, _) in done.items() if code == 0]
    assert len(winners) == 1, done
    (winner,), (loser,) = winners, [s for s in done if s not in winners]
    code, err = done[loser]
    # both import torch side by side, so the loser meets the lock while the winner still works (seconds)
    assert code == 2 and len(err.splitlines()) == 1, err
    # the loser names the winner, or meets the lock between the winner's flock and its record (a window of
    # microseconds that a loaded machine widens) and says so: both are the right line
    named = f"{out} is being written by another ddmetrics run (pid {procs[winner].pid} "
    taking = f"{out} is being written by another ddmetrics run (which is taking the lock right now)"
    assert named in err or taking in err, err
    names = sorted(os.listdir(out))
    assert names == [".ddmetrics-run.json", "config.yaml", "grid.png", "report.json", "synset.pt"]
    assert sorted(json.loads((out / ".ddmetrics-run.json").read_text())["files"]) == names[1:]
    assert ddm.SyntheticSet.load(out / "synset.pt").meta["seed"] == winner
    assert json.loads((out / "report.json").read_text())["seed"] == winner
    assert sorted(os.listdir(tmp_path)) == ["r"]


# ---------------------------------------------------------------- --json never replaces a file unasked

def _hard_synset(tmp_path):
    syn = ddm.SyntheticSet(torch.randn(10, 1, 8, 8, generator=torch.Generator().manual_seed(0)), torch.arange(10),
                           torch.ones(10), meta={"ipc": 1, "method": "dm", "seed": 0,
                                                 "config": {"eval_epochs": 1, "eval_protocol": "hard"}},
                           num_classes=10)
    syn.save(tmp_path / "s.pt")
    return str(tmp_path / "s.pt")


JSON_ARGS = {"evaluate": ["--runs", "1", "--no-full", "--quiet"], "diagnose": ["--losses", "mmd"]}


@pytest.mark.parametrize("command", ["evaluate", "diagnose"])
def test_json_refuses_an_existing_file_a_folder_and_an_unwritable_place_before_any_work(tmp_path, capsys,
                                                                                        monkeypatch, command):
    synset = _hard_synset(tmp_path)
    load = ddm.data.load

    def no_data(*a, **k):
        raise AssertionError("data was read before --json was checked")

    monkeypatch.setattr(ddm.data, "load", no_data)
    args = [command, synset, *JSON_ARGS[command], "--json"]
    (tmp_path / "mine.json").write_text("the user's")
    assert main([*args, str(tmp_path / "mine.json")]) == 2
    _one_line(capsys, "exists; pass --overwrite to replace it")
    assert main([*args, str(tmp_path)]) == 2
    _one_line(capsys, "is a folder")
    assert main([*args, "/proc/ddmetrics-x/r.json"]) == 2
    _one_line(capsys, "cannot write")
    assert (tmp_path / "mine.json").read_text() == "the user's"
    monkeypatch.setattr(ddm.data, "load", load)
    assert main([*args, str(tmp_path / "mine.json"), "--overwrite"]) == 0
    doc = json.loads((tmp_path / "mine.json").read_text())  # the report replaced it, as asked
    assert len(doc["runs"]) == 1 if command == "evaluate" else doc["split"] == "train"


def test_json_that_appears_while_the_command_runs_is_not_replaced(tmp_path, capsys, monkeypatch):
    import importlib

    module = importlib.import_module("ddmetrics.diagnose")
    target = tmp_path / "d.json"

    def meanwhile(*args, _run=module.diagnose, **kwargs):
        target.write_text("written meanwhile")
        return _run(*args, **kwargs)

    monkeypatch.setattr(module, "diagnose", meanwhile)
    assert main(["diagnose", _hard_synset(tmp_path), "--losses", "mmd", "--json", str(target)]) == 2
    _one_line(capsys, "it was not replaced")
    assert target.read_text() == "written meanwhile"
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]
