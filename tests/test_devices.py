"""Device audit: every run creates its tensors on the device it was given.

With the default device set to ``meta``, a tensor created without an explicit device lands on
``meta``, and the first operation that mixes it with real data fails — so these small runs
catch a forgotten ``device=`` on a CPU-only machine. Every preset is run. Every test runs on each
device present (the ``device`` fixture of ``tests/conftest.py``): the CPU always, CUDA when
``torch.cuda.is_available()``.
"""
import pytest
import torch

import ddmetrics as ddm
from ddmetrics.diagnose import diagnose
from ddmetrics.distill._loop import synthesis_units
from ddmetrics.distill.presets import PRESETS as METHODS
from ddmetrics.distill.presets import applies, preset

#: losses whose preset settings are slow for a 3-step audit: smaller, same code paths
_FASTER_LOSS = {"krdual": {"steps": 2, "warm_start": True}, "ncfd": {"n_frequencies": 256}}


def _audit_run(method: str, **overrides) -> dict:
    """A few steps of ``method`` (one teacher epoch; a pool of two networks trained one epoch;
    factor 2 where the preset chooses it)."""
    cfg = preset(method, **overrides)
    kw = dict(method=method, **overrides)
    if applies(cfg, "iterations"):  # a coreset optimises nothing
        kw["iterations"] = 3
    if applies(cfg, "teacher_epochs"):  # a teacher is trained (for the set or the soft labels)
        kw.setdefault("teacher_epochs", 1)
    if cfg.embedder_pool > 0:  # two members: the per-step draw between them is still exercised
        kw.update(embedder_pool=2, pool_epochs=1)
    if cfg.factor == "auto":  # "auto" is 1 on 8-px digits: force the sub-image path
        kw["factor"] = 2
    if cfg.loss in _FASTER_LOSS:
        kw["loss_kwargs"] = {**cfg.loss_kwargs, **_FASTER_LOSS[cfg.loss]}
    return kw


#: every method preset (from the presets table, so a new one cannot be left out), and a few
#: losses plugged into other presets
PRESETS = {name: _audit_run(name) for name in METHODS}
PRESETS.update({
    "wmdd_sliced": _audit_run("wmdd", loss="sliced", bary_iters=3),
    "wmdd_sinkhorn": _audit_run("wmdd", loss="sinkhorn", bary_iters=2),
    "dm_exact": _audit_run("dm", loss="wasserstein"),
})


def test_the_audit_covers_every_preset():
    assert set(METHODS) <= set(PRESETS) and {"ncfm", "sre2l"} <= set(PRESETS)
    assert all(PRESETS[name]["method"] == name for name in METHODS)


@pytest.fixture
def meta_default():
    torch.set_default_device("meta")
    try:
        yield
    finally:
        torch.set_default_device(None)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_distillation_creates_nothing_off_its_device(tiny_digits, meta_default, device, name):
    d = ddm.Distiller(ipc=1, seed=0, device=device, **PRESETS[name])
    syn = d.fit(tiny_digits, progress=False)
    assert syn.images.device.type == "cpu" and torch.isfinite(syn.images).all()  # results come back on the CPU
    assert syn.meta["device"].startswith(device)
    if d.teacher_ is not None:
        assert next(d.teacher_.parameters()).device.type == device


def test_evaluation_and_diagnosis_create_nothing_off_their_device(tiny_digits, device):
    d = ddm.Distiller(method="wmdd", ipc=1, seed=0, device=device, teacher_epochs=1, iterations=2)
    syn = d.fit(tiny_digits, progress=False)
    torch.set_default_device("meta")
    try:
        report = ddm.evaluate(syn, tiny_digits, train_set=tiny_digits, teacher=d.teacher_, runs=1, epochs=2,
                              full_epochs=1, random_hard=True, progress=False, device=device)
        diag = diagnose(syn, tiny_digits, d.teacher_, losses=["wasserstein", "sliced", "mmd", "krdual"], device=device)
    finally:
        torch.set_default_device(None)
    assert 0.0 <= report.runs[0] <= 1.0 and report.full is not None and len(report.random_hard_runs) == 1
    assert all(v is not None and v >= -1e-9 for v in diag.overall.values())


def test_same_seed_same_set_on_every_device(tiny_digits, device):
    """Random draws come from CPU generators: the start is the same wherever the run is."""
    kw = dict(method="dm", ipc=1, seed=3, iterations=1, lr=1e-12)
    cpu = ddm.Distiller(device="cpu", **kw).fit(tiny_digits, progress=False)
    other = ddm.Distiller(device=device, **kw).fit(tiny_digits, progress=False)
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


@pytest.mark.parametrize("method", ["wmdd", "dm"])  # a teacher pass (with PCBN) and a random-embedder pass
def test_amp_is_a_no_op_off_cuda_and_keeps_losses_in_float32(tiny_digits, device, method, monkeypatch):
    from ddmetrics.distill.barycenter_matching import BarycenterMatching
    from ddmetrics.distill.distribution_matching import DistributionMatching

    objectives = []
    for cls in (BarycenterMatching, DistributionMatching):
        def recording(self, *args, _step=cls.step, **kwargs):
            objective, tracked = _step(self, *args, **kwargs)
            objectives.append(objective.detach())
            return objective, tracked

        monkeypatch.setattr(cls, "step", recording)
    kw = _audit_run(method)
    plain = ddm.Distiller(ipc=1, seed=0, device=device, **kw).fit(tiny_digits, progress=False)
    objectives.clear()
    mixed = ddm.Distiller(ipc=1, seed=0, device=device, amp=True, **kw).fit(tiny_digits, progress=False)
    assert mixed.meta["amp"] is True and mixed.images.dtype == torch.float32
    assert torch.isfinite(mixed.images).all() and torch.isfinite(mixed.weights).all()
    cfg = preset(**kw)
    units = synthesis_units(3, 1, cfg.synthesis_batch, cfg.batch_images)
    assert len(objectives) == len(units) * kw["iterations"]  # every synthesis step of every unit was seen
    assert all(v.dtype == torch.float32 and bool(torch.isfinite(v)) for v in objectives)
    if device == "cpu":  # autocast is off off CUDA: the very same computation
        assert torch.equal(mixed.images, plain.images) and torch.equal(mixed.weights, plain.weights)
