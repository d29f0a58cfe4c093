"""Device audit: every run creates its tensors on the device it was given.

With the default device set to ``meta``, a tensor created without an explicit device lands on
``meta``, and the first operation that mixes it with real data fails — so these small runs
catch a forgotten ``device=`` on a CPU-only machine. Every test runs on each device present:
the CPU always, CUDA when ``torch.cuda.is_available()``.
"""
import pytest
import torch

import ddmetrics as ddm
from ddmetrics.diagnose import diagnose

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])

PRESETS = {
    "wmdd": dict(method="wmdd", teacher_epochs=1, iterations=3),
    "dm": dict(method="dm", iterations=3),
    "m3d": dict(method="m3d", factor=2, iterations=3),
    "krdual": dict(method="krdual", iterations=3, loss_kwargs={"steps": 2, "warm_start": True}),
    "wmdd_sliced": dict(method="wmdd", loss="sliced", teacher_epochs=1, iterations=3, bary_iters=3),
    "wmdd_sinkhorn": dict(method="wmdd", loss="sinkhorn", teacher_epochs=1, iterations=2, bary_iters=2),
    "dm_exact": dict(method="dm", loss="wasserstein", iterations=3),
}


@pytest.fixture(scope="module")
def tiny():
    torch.set_num_threads(1)
    train = ddm.data.load("digits", seed=0).train
    keep = train.labels < 3
    return ddm.data.ArrayDataset(train.images[keep][:90], train.labels[keep][:90], 3)


@pytest.fixture
def meta_default():
    torch.set_default_device("meta")
    try:
        yield
    finally:
        torch.set_default_device(None)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", sorted(PRESETS))
def test_distillation_creates_nothing_off_its_device(tiny, meta_default, device, name):
    d = ddm.Distiller(ipc=1, seed=0, device=device, **PRESETS[name])
    syn = d.fit(tiny, progress=False)
    assert syn.images.device.type == "cpu" and torch.isfinite(syn.images).all()  # results come back on the CPU
    assert syn.meta["device"].startswith(device)
    if d.teacher_ is not None:
        assert next(d.teacher_.parameters()).device.type == device


@pytest.mark.parametrize("device", DEVICES)
def test_evaluation_and_diagnosis_create_nothing_off_their_device(tiny, device):
    d = ddm.Distiller(method="wmdd", ipc=1, seed=0, device=device, teacher_epochs=1, iterations=2)
    syn = d.fit(tiny, progress=False)
    torch.set_default_device("meta")
    try:
        report = ddm.evaluate(syn, tiny, train_set=tiny, teacher=d.teacher_, runs=1, epochs=2, full_epochs=1,
                              random_hard=True, progress=False, device=device)
        diag = diagnose(syn, tiny, d.teacher_, losses=["wasserstein", "sliced", "mmd", "krdual"], device=device)
    finally:
        torch.set_default_device(None)
    assert 0.0 <= report.runs[0] <= 1.0 and report.full is not None and len(report.random_hard_runs) == 1
    assert all(v is not None and v >= -1e-9 for v in diag.overall.values())


@pytest.mark.parametrize("device", DEVICES)
def test_same_seed_same_set_on_every_device(tiny, device):
    """Random draws come from CPU generators: the start is the same wherever the run is."""
    cpu = ddm.Distiller(method="dm", ipc=1, seed=3, iterations=1, lr=1e-12, device="cpu").fit(tiny, progress=False)
    other = ddm.Distiller(method="dm", ipc=1, seed=3, iterations=1, lr=1e-12, device=device).fit(tiny, progress=False)
    assert torch.allclose(cpu.images, other.images, atol=1e-6)


def test_unknown_and_absent_devices_are_refused_before_work():
    with pytest.raises(ValueError, match="not a device"):
        ddm.Distiller(method="dm", device="gpu0")
    with pytest.raises(TypeError, match="device"):
        ddm.Distiller(method="dm", device=0)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA was asked for but is not available"):
            ddm.Distiller(method="dm", device="cuda")
        with pytest.raises(ValueError, match="CUDA"):
            ddm.evaluate(ddm.SyntheticSet(torch.zeros(2, 1, 8, 8), torch.tensor([0, 1]), torch.ones(2) / 2),
                         ddm.data.ArrayDataset(torch.zeros(2, 1, 8, 8), torch.tensor([0, 1]), 2), device="cuda:0")
    with pytest.raises(TypeError, match="amp"):
        ddm.Distiller(method="dm", amp="yes")
