"""Checkpoint and resume: an interrupted run, resumed, equals the uninterrupted one exactly."""
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import ddmetrics as ddm


#: a small ConvNet teacher trained one epoch (the presets' ResNet-18 by its method's recipe is the cost, not the point)
CHEAP_TEACHER = dict(teacher_arch="convnet_bn", teacher_recipe="ours", teacher_epochs=1)

CASES = {
    # stateful losses are the point: a direction generator (sliced), a warm-started critic (krdual)
    # one class a unit (class_batch=1), and two classes a unit with a stream each: units (0, 1) and (2,)
    "dm-sliced": dict(method="dm", loss="sliced", ipc=2, iterations=12, class_batch=1),
    "dm-batched": dict(method="dm", loss="sliced", ipc=2, iterations=12, class_batch=2),
    "krdual": dict(method="krdual", ipc=1, iterations=12, loss_kwargs={"steps": 3, "warm_start": True},
                   class_batch=1),
    "krdual-batched": dict(method="krdual", ipc=1, iterations=12, loss_kwargs={"steps": 3, "warm_start": True},
                           class_batch=2),
    "m3d": dict(method="m3d", ipc=1, iterations=12, factor=2, class_batch=1),
    # IDM's queue of networks trained alongside: its weights, optimisers, accuracies and generator resume too
    "idm": dict(method="idm", ipc=1, iterations=12, queue_push_every=4, queue_train_steps=1, batch_real=32,
                class_batch=1),
    # WMDD's units of several classes: batch_images // ipc = 2 classes a unit, units (0, 1) and (2,)
    "wmdd-sliced": dict(method="wmdd", loss="sliced", ipc=2, iterations=12, batch_images=4, bary_iters=5,
                        **CHEAP_TEACHER),
    # SRe²L's slot units in chunks of two classes: (classes 0-1, slot 0), (2, 0), (0-1, 1), (2, 1)
    "sre2l": dict(method="sre2l", ipc=2, iterations=12, batch_images=2, **CHEAP_TEACHER),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_interrupted_run_resumes_exactly(small, tmp_path, interrupt_at_save, monkeypatch, case):
    from ddmetrics.distill._loop import synthesis_units
    from ddmetrics.distill.barycenter_matching import BarycenterMatching
    from ddmetrics.distill.distribution_matching import DistributionMatching

    kw = CASES[case]
    reference = ddm.Distiller(seed=4, **kw).fit(small, progress=False)
    folder = tmp_path / "ckpt"
    with pytest.raises(interrupt_at_save(4)):  # unit 1, mid-way (every 5 of 12 steps: 2 saves per unit)
        ddm.Distiller(seed=4, **kw).fit(small, progress=False, checkpoint=folder, checkpoint_every=5)
    interrupt_at_save(None)
    names = sorted(os.listdir(folder))
    assert "class_0000.pt" in names and "class_0001.progress.pt" in names and "class_0002.pt" not in names
    steps = []
    for cls in (BarycenterMatching, DistributionMatching):
        def counting(self, ctx, *args, _step=cls.step, **kwargs):
            steps.append(ctx["unit"].index)
            return _step(self, ctx, *args, **kwargs)

        monkeypatch.setattr(cls, "step", counting)
    resumed = ddm.Distiller(seed=4, **kw).fit(small, progress=False, checkpoint=folder, checkpoint_every=5, resume=True)
    assert torch.equal(resumed.images, reference.images)
    assert torch.equal(resumed.weights, reference.weights)
    assert not [n for n in os.listdir(folder) if n.endswith(".tmp") or n.endswith(".progress.pt")]
    # resumed, not redone: unit 0 is read back, unit 1 takes its last 2 steps, the others all 12
    units = synthesis_units(3, kw["ipc"], resumed.meta["config"]["synthesis_batch"],
                            resumed.meta["config"]["batch_images"], resumed.meta["class_batch"])
    assert steps == [1] * 2 + [i for i in range(2, len(units)) for _ in range(12)]


def _tensors(obj):
    """Every tensor inside nested dicts, lists and tuples."""
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, dict):
        return [t for v in obj.values() for t in _tensors(v)]
    if isinstance(obj, (list, tuple)):
        return [t for v in obj for t in _tensors(v)]
    return []


def test_a_checkpoint_written_on_any_device_holds_cpu_tensors_and_resumes_on_the_cpu(small, tmp_path, interrupt_at_save,
                                                                                      device):
    # a teacher, an optimiser, a scheduler and a stateful loss (sliced: its direction generator)
    # (units of two classes: (0, 1) and (2,))
    kw = dict(method="wmdd", loss="sliced", ipc=1, iterations=6, batch_images=2, bary_iters=3, seed=2, **CHEAP_TEACHER)
    with pytest.raises(interrupt_at_save(3)):  # unit 1, mid-way (a save every 2 of 6 steps: 2 per unit)
        ddm.Distiller(device=device, **kw).fit(small, progress=False, checkpoint=tmp_path, checkpoint_every=2)
    interrupt_at_save(None)
    files = sorted(n for n in os.listdir(tmp_path) if n.endswith(".pt"))
    assert files == ["class_0000.pt", "class_0001.progress.pt", "teacher.pt"]
    for name in files:
        # plain torch.load, no map_location: it must not need the device the run was on
        tensors = _tensors(torch.load(tmp_path / name, weights_only=True))
        assert tensors and all(t.device.type == "cpu" for t in tensors), name
    finished = torch.load(tmp_path / "class_0000.pt", weights_only=True)
    resumed = ddm.Distiller(device="cpu", **kw).fit(small, progress=False, checkpoint=tmp_path, checkpoint_every=2,
                                                    resume=True)
    assert torch.equal(resumed.images[:2], finished["images"])  # the finished unit is taken as it was saved
    assert resumed.images.shape == (3, 1, 8, 8) and torch.isfinite(resumed.images).all()


def test_resume_refuses_another_run(small, tmp_path):
    kw = dict(method="dm", ipc=1, iterations=2)
    ddm.Distiller(seed=0, **kw).fit(small, progress=False, checkpoint=tmp_path)
    with pytest.raises(ValueError, match="previous run"):
        ddm.Distiller(seed=0, **kw).fit(small, progress=False, checkpoint=tmp_path)
    with pytest.raises(ValueError, match="seed"):
        ddm.Distiller(seed=1, **kw).fit(small, progress=False, checkpoint=tmp_path, resume=True)
    with pytest.raises(ValueError, match="checkpoint_every"):
        ddm.Distiller(seed=0, **kw).fit(small, progress=False, checkpoint=tmp_path, checkpoint_every=0, resume=True)
    with pytest.raises(ValueError, match="checkpoint="):
        ddm.Distiller(seed=0, **kw).fit(small, progress=False, resume=True)


def _cli(*args):
    return [sys.executable, "-m", "ddmetrics", "distill", "--dataset", "digits", "--runs", "0", "--quiet", *args]


def test_sigkill_then_resume_gives_the_uninterrupted_result(tmp_path):
    """A real process killed with SIGKILL mid-class, resumed from the command line."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # 32 real images a step (the preset's 256 take all ~130 of a class: 1.7 times the CPU time, nothing more tested)
    common = ["--method", "krdual", "--ipc", "1", "--iterations", "30", "--class-batch", "1",
              "--set", 'loss_kwargs={"steps": 5, "warm_start": true}', "--set", "batch_real=32"]
    subprocess.run(_cli(*common, "--out", str(tmp_path / "plain")), env=env, check=True, capture_output=True)
    out, ckpt = tmp_path / "killed", tmp_path / "killed.ckpt"
    proc = subprocess.Popen(_cli(*common, "--out", str(out), "--checkpoint-every", "7"), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if (ckpt / "class_0002.progress.pt").exists():
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists()
    resumed = subprocess.run(_cli(*common, "--out", str(out), "--checkpoint-every", "7", "--resume"), env=env,
                             capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    a = ddm.SyntheticSet.load(str(tmp_path / "plain" / "synset.pt"))
    b = ddm.SyntheticSet.load(str(out / "synset.pt"))
    assert torch.equal(a.images, b.images) and torch.equal(a.weights, b.weights)
    # no checkpoint folder, no temp file or folder left behind
    assert sorted(os.listdir(tmp_path)) == ["killed", "plain"]
    assert not [f for _, _, files in os.walk(tmp_path) for f in files if f.endswith(".tmp")]


def test_remove_checkpoint_deletes_only_listed_files_and_only_a_folder_it_created(tmp_path, small):
    from ddmetrics.distill.checkpoint import MANIFEST, remove_checkpoint

    folder = tmp_path / "ckpt"
    ddm.Distiller(method="dm", ipc=1, iterations=4, class_batch=1).fit(small, progress=False, checkpoint=folder,
                                                                       checkpoint_every=2)
    (folder / "mine.txt").write_text("keep")
    assert {"run.json", "class_0000.pt", "class_0002.pt", MANIFEST} <= set(os.listdir(folder))
    remove_checkpoint(str(folder))
    assert os.listdir(folder) == ["mine.txt"]  # ddmetrics created the folder, but it is not empty: it stays
    os.remove(folder / "mine.txt")
    ddm.Distiller(method="dm", ipc=1, iterations=4, class_batch=1).fit(small, progress=False, checkpoint=folder)
    remove_checkpoint(str(folder))
    assert os.listdir(folder) == []  # the folder was there (empty) when the run started: not ddmetrics' to remove
    os.rmdir(folder)
    ddm.Distiller(method="dm", ipc=1, iterations=4, class_batch=1).fit(small, progress=False, checkpoint=folder)
    remove_checkpoint(str(folder))
    assert not folder.exists()  # created by the run, emptied by it
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "teacher.pt").write_text("mine")
    remove_checkpoint(str(tmp_path / "other"))  # no manifest: nothing is known to be ddmetrics', nothing goes
    assert (tmp_path / "other" / "teacher.pt").read_text() == "mine"


def test_every_file_is_listed_before_it_is_created(tmp_path, small, monkeypatch, interrupt_at_save):
    """The manifest names a file before the file exists, so a kill at any moment leaves no file of
    ours unlisted (and nothing unlisted is ever deleted)."""
    import json

    import ddmetrics._io as io_module

    folder = tmp_path / "ckpt"
    real, written = io_module.atomic_write, []

    def listed():
        return {f for m in os.listdir(folder) if m.startswith(".ddmetrics-checkpoint") and m.endswith(".json")
                for f in json.loads((folder / m).read_text())["files"]}

    def spy(path, write, **kwargs):
        name = os.path.basename(path)
        if os.path.dirname(os.path.abspath(path)) == str(folder) and not name.startswith(".ddmetrics-checkpoint"):
            assert name in listed(), f"{name} written before it was listed"
            written.append(name)
        return real(path, write, **kwargs)

    monkeypatch.setattr(io_module, "atomic_write", spy)
    # one class a unit (batch_images // ipc = 1): three units
    kw = dict(method="wmdd", loss="sliced", ipc=1, iterations=4, batch_images=1, bary_iters=2, seed=0, **CHEAP_TEACHER)
    with pytest.raises(interrupt_at_save(2)):
        ddm.Distiller(**kw).fit(small, progress=False, checkpoint=folder, checkpoint_every=2)
    interrupt_at_save(None)
    ddm.Distiller(**kw).fit(small, progress=False, checkpoint=folder, checkpoint_every=2, resume=True)
    assert {"run.json", "teacher.pt", "class_0000.pt", "class_0000.progress.pt", "class_0002.pt"} <= set(written)


def test_resume_clears_only_temporary_files_of_listed_names(tmp_path, small, interrupt_at_save):
    folder = tmp_path / "ckpt"
    kw = dict(method="dm", ipc=1, iterations=4, seed=0)
    with pytest.raises(interrupt_at_save(1)):
        ddm.Distiller(**kw).fit(small, progress=False, checkpoint=folder, checkpoint_every=2)
    interrupt_at_save(None)
    (folder / ".class_0000.progress.pt.k2j3.tmp").write_text("half written by the killed run")
    (folder / ".notes.txt.swp.tmp").write_text("the user's editor")
    ddm.Distiller(**kw).fit(small, progress=False, checkpoint=folder, checkpoint_every=2, resume=True)
    assert not (folder / ".class_0000.progress.pt.k2j3.tmp").exists()
    assert (folder / ".notes.txt.swp.tmp").read_text() == "the user's editor"


def test_rank_manifests_list_each_ranks_files(tmp_path):
    """Under torchrun each rank lists its own class files (no two processes write one manifest);
    clearing reads them all."""
    from ddmetrics.distill.checkpoint import Checkpoint, remove_checkpoint

    folder = tmp_path / "ckpt"
    result = {"images": torch.zeros(1, 1, 2, 2), "weights": torch.ones(1), "info": {}}
    ranks = [Checkpoint(str(folder), {"run": 1}, rank=r) for r in (0, 1)]  # every rank checks first
    ranks[0].start()
    ranks[0].finish(0, result)
    ranks[1].finish(1, result)
    names = set(os.listdir(folder))
    assert names == {".ddmetrics-checkpoint.json", ".ddmetrics-checkpoint.rank1.json", "run.json", "class_0000.pt",
                     "class_0001.pt"}
    with pytest.raises(ValueError, match="previous run"):
        Checkpoint(str(folder), {"run": 1})
    resumed = Checkpoint(str(folder), {"run": 1}, resume=True)  # one rank now: it finds class 1
    assert torch.equal(resumed.finished(1)["images"], result["images"])
    remove_checkpoint(str(folder))
    assert not folder.exists()


def test_a_checkpoint_without_manifest_is_not_resumed(tmp_path, small):
    folder = tmp_path / "old"
    folder.mkdir()
    (folder / "run.json").write_text("{}")
    (folder / "class_0000.pt").write_text("from an older ddmetrics")
    with pytest.raises(ValueError, match="older ddmetrics"):
        ddm.Distiller(method="dm", ipc=1, iterations=2).fit(small, progress=False, checkpoint=folder, resume=True)
    assert sorted(os.listdir(folder)) == ["class_0000.pt", "run.json"]


# -- the command line: a checkpoint folder never costs the user a file

QUICK_DM = ["distill", "--dataset", "digits", "--method", "dm", "--ipc", "1", "--iterations", "2", "--runs", "0",
            "--quiet"]


def _one_line_error(capsys, needle):
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err and needle in err, err
    return err


@pytest.mark.parametrize("name", ["teacher.pt", "run.json", "class_0000.pt", "class_0001.progress.pt",
                                  ".class_0000.pt.x.tmp", "notes.txt"])
def test_a_folder_with_a_users_file_is_refused_before_any_work(tmp_path, capsys, monkeypatch, name):
    from ddmetrics.cli import main

    def no_data(*a, **k):
        raise AssertionError("data was read before the checkpoint folder was checked")

    monkeypatch.setattr(ddm.data, "load", no_data)
    folder = tmp_path / "myproject"
    folder.mkdir()
    (folder / name).write_text("the user's")
    for extra in ([], ["--resume"], ["--checkpoint-every", "1"]):
        assert main([*QUICK_DM, "--out", str(tmp_path / "r"), "--checkpoint", str(folder), *extra]) == 2
        _one_line_error(capsys, name)
        assert os.listdir(folder) == [name] and (folder / name).read_text() == "the user's"
    assert sorted(os.listdir(tmp_path)) == ["myproject"]


def test_the_teacher_given_in_the_checkpoint_folder_is_kept(tmp_path, capsys):
    from ddmetrics.cli import main

    models = tmp_path / "models"
    models.mkdir()
    torch.save(ddm.models.get_model("convnet_bn", 1, 10, 8).state_dict(), models / "teacher.pt")
    before = (models / "teacher.pt").read_bytes()
    assert main(["distill", "--dataset", "digits", "--method", "wmdd", "--ipc", "1", "--iterations", "2", "--runs",
                 "0", "--quiet", "--teacher", str(models / "teacher.pt"), "--checkpoint", str(models),
                 "--out", str(tmp_path / "r")]) == 2
    _one_line_error(capsys, "teacher.pt")
    assert (models / "teacher.pt").read_bytes() == before and not (tmp_path / "r").exists()


def test_a_checkpoint_folder_the_user_made_stays_and_their_files_in_ours_survive(tmp_path, capsys, monkeypatch):
    from ddmetrics.cli import main
    from ddmetrics.distill.checkpoint import Checkpoint

    mine = tmp_path / "mine"
    mine.mkdir()
    assert main([*QUICK_DM, "--out", str(tmp_path / "a"), "--checkpoint", str(mine)]) == 0
    assert mine.is_dir() and os.listdir(mine) == []  # emptied of the run's files, but the user's folder
    # a run interrupted after its first class, then a user's file with a class file's name in its folder
    finish = Checkpoint.finish

    def interrupt_after_class_0(self, k, result):
        finish(self, k, result)
        raise KeyboardInterrupt

    monkeypatch.setattr(Checkpoint, "finish", interrupt_after_class_0)
    ckpt = tmp_path / "b.ckpt"
    args = [*QUICK_DM, "--out", str(tmp_path / "b"), "--checkpoint-every", "1"]
    assert main(args) == 130
    monkeypatch.setattr(Checkpoint, "finish", finish)
    (ckpt / "class_0001.pt").write_text("the user's")
    (ckpt / "notes.txt").write_text("the user's too")
    capsys.readouterr()
    assert main(args + ["--resume"]) == 2
    _one_line_error(capsys, "class_0001.pt")
    os.rename(ckpt / "class_0001.pt", tmp_path / "class_0001.pt")
    assert main(args + ["--resume"]) == 0
    assert os.listdir(ckpt) == ["notes.txt"] and (ckpt / "notes.txt").read_text() == "the user's too"
    assert (tmp_path / "class_0001.pt").read_text() == "the user's"


def test_an_ncfm_run_reads_its_trained_pool_back_on_resume(small, tmp_path, interrupt_at_save, pool_trainings):
    # NCFM's pool is trained once per run: a resume reads the members back (network_NN.pt) and equals the
    # uninterrupted run exactly
    kw = dict(method="ncfm", ipc=1, iterations=6, embedder_pool=2, pool_epochs=1, batch_real=32, seed=4,
              class_batch=1)
    reference = ddm.Distiller(**kw).fit(small, progress=False)
    folder = tmp_path / "ckpt"
    with pytest.raises(interrupt_at_save(2)):  # unit 1 after 3 of its 6 steps
        ddm.Distiller(**kw).fit(small, progress=False, checkpoint=folder, checkpoint_every=3)
    interrupt_at_save(None)
    assert sorted(n for n in os.listdir(folder) if n.startswith("network_")) == ["network_00.pt", "network_01.pt"]
    assert len(pool_trainings) == 2 + 2  # the reference run's pool, then the interrupted run's
    pool_trainings.clear()
    resumed = ddm.Distiller(**kw).fit(small, progress=False, checkpoint=folder, checkpoint_every=3, resume=True)
    assert pool_trainings == []
    assert torch.equal(resumed.images, reference.images)


def test_a_network_file_the_manifest_does_not_list_is_refused(small, tmp_path):
    # network_NN.pt is a name a checkpoint writes: a user's file of that name is never read or overwritten
    (tmp_path / ".ddmetrics-checkpoint.json").write_text('{"kind": "ddmetrics checkpoint folder", "files": []}')
    (tmp_path / "network_00.pt").write_bytes(b"a user's file")
    with pytest.raises(ValueError, match="network_00.pt, which ddmetrics did not write"):
        ddm.Distiller(method="ncfm", ipc=1, iterations=1, embedder_pool=1, pool_epochs=1).fit(
            small, progress=False, checkpoint=tmp_path, resume=True)
    assert (tmp_path / "network_00.pt").read_bytes() == b"a user's file"
