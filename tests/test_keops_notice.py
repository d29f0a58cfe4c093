"""KeOps' CUDA notice ("[KeOps] Warning : CUDA libraries not found ...", printed when pykeops is
imported, as ``import ot`` does) appears only where KeOps runs: a Sinkhorn KeOps backend."""
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from ddmetrics.losses import Sinkhorn, _keops_notice

NOTICE = "[KeOps] Warning : CUDA libraries not found or could not be loaded; Switching to CPU only.\n"
ENV = dict(os.environ, OMP_NUM_THREADS="1")


def test_the_notice_is_held_at_import_and_printed_once_where_keops_runs(tmp_path, monkeypatch, capsys):
    pytest.importorskip("geomloss")
    capsys.readouterr()  # what importing it printed here
    (tmp_path / "fake_keops_import.py").write_text(f"print({NOTICE.rstrip()!r})\nprint('other output')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(_keops_notice, "_held", [])
    monkeypatch.delitem(sys.modules, "fake_keops_import", raising=False)
    module = _keops_notice.import_holding_keops_notice("fake_keops_import")
    assert module.__name__ == "fake_keops_import"
    assert capsys.readouterr().out == "other output\n"  # everything but the notice passes through
    loss = Sinkhorn(blur=0.1)
    loss.samples_loss("tensorized")  # no KeOps: no notice
    assert capsys.readouterr().out == ""
    loss.samples_loss("online")  # KeOps' own kernels: its notice, as KeOps prints it
    assert capsys.readouterr().out == NOTICE
    loss.samples_loss("multiscale")
    assert capsys.readouterr().out == ""  # once


def _run(*args, cwd):
    return subprocess.run([sys.executable, "-m", "ddmetrics", *args], capture_output=True, text=True, cwd=cwd,
                          env=ENV, timeout=600)


def _keops_lines(text):
    return [line for line in text.splitlines() if "keops" in line.lower()]


def test_commands_that_run_no_keops_print_no_keops_line(tmp_path):
    pytest.importorskip("pykeops")
    # dm with the exact loss imports POT (which imports GeomLoss and pykeops); diagnose then runs
    # the exact loss and Sinkhorn's dense "tensorized" backend: KeOps is imported, never used
    out = tmp_path / "run"
    runs = [_run("--help", cwd=tmp_path),
            _run("distill", "--dataset", "digits", "--method", "dm", "--loss", "wasserstein", "--ipc", "1",
                 "--iterations", "2", "--runs", "0", "--out", str(out), "--quiet", cwd=tmp_path),
            _run("diagnose", str(out / "synset.pt"), "--split", "test", "--losses", "wasserstein", "sinkhorn",
                 cwd=tmp_path)]
    for res in runs:
        assert res.returncode == 0, res.stderr
        assert _keops_lines(res.stdout + res.stderr) == [], res.args
    assert "sinkhorn" in runs[2].stdout


def test_sinkhorn_after_pot_equals_geomloss_and_prints_the_held_notice_where_keops_runs(tmp_path):
    pytest.importorskip("pykeops")
    code = textwrap.dedent("""
        import json, torch
        import ddmetrics as ddm
        from ddmetrics.losses import _keops_notice
        g = torch.Generator().manual_seed(0)
        x, y = torch.randn(30, 3, generator=g, dtype=torch.float64), torch.randn(20, 3, generator=g, dtype=torch.float64)
        ddm.get_loss("wasserstein")(x, y)  # imports POT, hence GeomLoss and pykeops
        from geomloss import SamplesLoss
        loss = ddm.get_loss("sinkhorn", blur=0.1, backend="tensorized")
        ours, ref = float(loss(x, y)), float(SamplesLoss("sinkhorn", p=2, blur=0.1, scaling=0.5)(x, y))
        print(json.dumps({"ours": ours, "geomloss": ref, "held": list(_keops_notice._held)}), flush=True)
        print("--- online", flush=True)
        loss.samples_loss("online")
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=ENV,
                         timeout=600)
    assert res.returncode == 0, res.stderr
    before, after = res.stdout.split("--- online\n")
    *printed, record = before.splitlines()
    values = json.loads(record)
    # same float64 inputs, same GeomLoss call: the same value
    assert values["ours"] == values["geomloss"]
    assert _keops_lines("\n".join(printed) + res.stderr) == []
    # where pykeops printed a CUDA notice at import (no CUDA libraries here), it comes with KeOps' first use
    assert after == "".join(values["held"])
    assert all(line.startswith("[KeOps] Warning : ") for line in values["held"])
