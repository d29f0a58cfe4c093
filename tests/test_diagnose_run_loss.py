"""diagnose scores a synthetic set's own loss with the settings it was distilled with (issue 23, finding 7)."""
import json

import torch

import ddmetrics as ddm
from ddmetrics.cli import main
from ddmetrics.diagnose import diagnose

RUN_KWARGS = {"kernel": "laplacian", "bandwidth": 2.0}


def _real(classes=3, n=12):
    gen = torch.Generator().manual_seed(0)
    labels = torch.arange(classes).repeat_interleave(n)
    images = torch.randn(len(labels), 1, 8, 8, generator=gen) + labels.view(-1, 1, 1, 1).float()
    return ddm.data.ArrayDataset(images, labels, classes)


def _synset(real, meta):
    idx = torch.cat([real.class_indices(k)[:2] for k in range(real.num_classes)])
    return ddm.SyntheticSet(real.images[idx] + 0.5, real.labels[idx].clone(), torch.ones(len(idx)), meta=meta,
                            num_classes=real.num_classes)


def test_the_runs_own_loss_is_scored_with_its_loss_kwargs():
    real = _real()
    meta = {"method": "m3d", "loss": "mmd", "config": {"loss": "mmd", "loss_kwargs": dict(RUN_KWARGS)}}
    syn = _synset(real, meta)
    torch.manual_seed(0)
    model = ddm.models.get_model("convnet", 1, 3, 8, width=16)
    report = diagnose(syn, real, model, losses=["mmd", "energy"], device="cpu")
    assert report.meta["losses"]["mmd"] == repr(ddm.get_loss("mmd", **RUN_KWARGS))
    # the value of class 0 against the loss built by hand with the run's settings (same float64 operations)
    with torch.no_grad():
        x = model.embed(real.images[real.labels == 0]).double()
        y = model.embed(syn.images[syn.labels == 0]).double()
    expected = float(ddm.get_loss("mmd", **RUN_KWARGS)(x, y, b=torch.full((2,), 0.5, dtype=torch.float64)))
    default = float(ddm.get_loss("mmd")(x, y, b=torch.full((2,), 0.5, dtype=torch.float64)))
    assert abs(expected - default) > 1e-3  # the settings matter here
    # the same embedding in batches and the same kernel: equal to float64 rounding
    assert abs(report.per_class[0]["mmd"] - expected) <= 1e-9 * max(1.0, abs(expected))
    # a loss the set was not distilled with keeps the distiller's defaults
    assert report.meta["losses"]["energy"] == repr(ddm.get_loss("energy"))


def test_run_loss_settings_reads_the_config_then_the_recorded_loss(monkeypatch):
    from ddmetrics.diagnose import run_loss_settings
    from ddmetrics.distill.presets import LOSS_SETTINGS

    # the table is empty since issue 24 (the presets carry their loss settings): krdual's entry before it
    monkeypatch.setitem(LOSS_SETTINGS, "krdual", {"steps": 20, "warm_start": True})
    assert run_loss_settings({"loss": "krdual", "config": {"loss": "krdual", "loss_kwargs": {"steps": 5}}}) == \
        ("krdual", {"steps": 5, "warm_start": True})  # over the distiller's LOSS_SETTINGS, as it was built
    recorded = {"name": "sliced", "class": "SlicedWasserstein", "n_projections": 7, "p": 2, "seed": 3}
    assert run_loss_settings({"loss": "sliced", "loss_config": recorded}) == \
        ("sliced", {"n_projections": 7, "p": 2, "seed": 3})
    assert run_loss_settings({}) is None


def test_the_command_line_diagnoses_with_the_runs_settings(tmp_path, capsys):
    # a digits-shaped set whose run used a laplacian MMD
    syn = ddm.SyntheticSet(torch.randn(10, 1, 8, 8, generator=torch.Generator().manual_seed(0)), torch.arange(10),
                           torch.ones(10), meta={"ipc": 1, "method": "m3d", "seed": 0, "loss": "mmd",
                                                 "config": {"loss": "mmd", "loss_kwargs": dict(RUN_KWARGS)}},
                           num_classes=10)
    syn.save(tmp_path / "s.pt")
    out = tmp_path / "d.json"
    assert main(["diagnose", str(tmp_path / "s.pt"), "--dataset", "digits", "--losses", "mmd", "--json",
                 str(out)]) == 0
    capsys.readouterr()
    assert json.loads(out.read_text())["meta"]["losses"]["mmd"] == repr(ddm.get_loss("mmd", **RUN_KWARGS))
