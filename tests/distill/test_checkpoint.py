"""Checkpoint and resume: an interrupted run, resumed, equals the uninterrupted one exactly."""
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import ddmetrics as ddm


CASES = {
    # stateful losses are the point: a direction generator (sliced), a warm-started critic (krdual)
    "dm-sliced": dict(method="dm", loss="sliced", ipc=2, iterations=12),
    "krdual": dict(method="krdual", ipc=1, iterations=12, loss_kwargs={"steps": 3, "warm_start": True}),
    "m3d": dict(method="m3d", ipc=1, iterations=12, factor=2),
    "wmdd-sliced": dict(method="wmdd", loss="sliced", ipc=2, iterations=12, teacher_epochs=1, bary_iters=5),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_interrupted_run_resumes_exactly(small, tmp_path, interrupt_at_save, case):
    kw = CASES[case]
    reference = ddm.Distiller(seed=4, **kw).fit(small, progress=False)
    folder = tmp_path / "ckpt"
    with pytest.raises(interrupt_at_save(4)):  # class 1, mid-way (every 5 of 12 steps: 2 saves per class)
        ddm.Distiller(seed=4, **kw).fit(small, progress=False, checkpoint=folder, checkpoint_every=5)
    interrupt_at_save(None)
    names = sorted(os.listdir(folder))
    assert "class_0000.pt" in names and "class_0001.progress.pt" in names and "class_0002.pt" not in names
    resumed = ddm.Distiller(seed=4, **kw).fit(small, progress=False, checkpoint=folder, checkpoint_every=5, resume=True)
    assert torch.equal(resumed.images, reference.images)
    assert torch.equal(resumed.weights, reference.weights)
    assert not [n for n in os.listdir(folder) if n.endswith(".tmp") or n.endswith(".progress.pt")]


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
    kw = dict(method="wmdd", loss="sliced", ipc=1, iterations=6, teacher_epochs=1, bary_iters=3, seed=2)
    with pytest.raises(interrupt_at_save(3)):  # class 1, mid-way (a save every 2 of 6 steps: 2 per class)
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
    assert torch.equal(resumed.images[:1], finished["images"])  # the finished class is taken as it was saved
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
    common = ["--method", "krdual", "--ipc", "1", "--iterations", "60", "--set", 'loss_kwargs={"steps": 5, "warm_start": true}']
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


def test_remove_checkpoint_deletes_only_its_own_files(tmp_path, small):
    from ddmetrics.distill.checkpoint import remove_checkpoint

    folder = tmp_path / "ckpt"
    ddm.Distiller(method="dm", ipc=1, iterations=4).fit(small, progress=False, checkpoint=folder, checkpoint_every=2)
    (folder / "mine.txt").write_text("keep")
    assert {"run.json", "class_0000.pt", "class_0002.pt"} <= set(os.listdir(folder))
    remove_checkpoint(str(folder))
    assert os.listdir(folder) == ["mine.txt"]
    os.remove(folder / "mine.txt")
    remove_checkpoint(str(folder))
    assert not folder.exists()
