"""The command line's usage: --set takes several pairs, a subcommand's usage error points at its
own help, and evaluate/diagnose without --dataset use the run's recorded dataset and say so
(issue 23, findings 8 and 9)."""
import json

import numpy as np
import pytest
import torch

import ddmetrics as ddm
from ddmetrics.cli import _parse_overrides, build_parser, main


def test_set_takes_several_pairs_and_stays_repeatable():
    args = build_parser().parse_args(["distill", "--out", "r", "--set", "lr=0.5", "iterations=7", "--set",
                                      "augment=none"])
    assert _parse_overrides(args.set) == {"lr": 0.5, "iterations": 7, "augment": None}  # "none" reads as None


def test_a_usage_error_of_a_subcommand_points_at_its_own_help(capsys):
    with pytest.raises(SystemExit) as done:
        main(["distill", "--out", "r", "stray"])
    err = capsys.readouterr().err.strip()
    assert done.value.code == 2 and len(err.splitlines()) == 1
    assert err == "ddmetrics distill: error: unrecognized arguments: stray (see ddmetrics distill --help)"
    with pytest.raises(SystemExit):
        main(["evaluate", "s.pt", "--runs", "1", "--bogus"])
    assert capsys.readouterr().err.strip().endswith("(see ddmetrics evaluate --help)")


def _run_folder(tmp_path, report=True):
    """A 3-class 8x8 .npz, a synthetic set distilled from it (hard labels, 2-epoch students) and,
    with ``report``, the report.json that ``ddmetrics distill`` writes beside it."""
    rng = np.random.default_rng(0)
    data = tmp_path / "three.npz"
    np.savez(data, x=rng.random((30, 1, 8, 8)).astype(np.float32), y=np.arange(30) % 3)
    run = tmp_path / "run"
    run.mkdir()
    syn = ddm.SyntheticSet(torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(0)), torch.arange(3),
                           torch.ones(3), meta={"ipc": 1, "method": "dm", "seed": 0,
                                                "config": {"eval_epochs": 2, "eval_protocol": "hard"}},
                           num_classes=3)
    syn.save(run / "synset.pt")
    if report:
        (run / "report.json").write_text(json.dumps({"dataset": str(data), "method": "dm"}))
    return run / "synset.pt", str(data)


@pytest.mark.parametrize("command", ["evaluate", "diagnose"])
def test_without_dataset_the_recorded_one_is_used_and_named(tmp_path, capsys, monkeypatch, command):
    synset, data = _run_folder(tmp_path)
    seen = []

    def spy(name, *args, _load=ddm.data.load, **kwargs):
        seen.append(name)
        return _load(name, *args, **kwargs)

    monkeypatch.setattr(ddm.data, "load", spy)
    extra = ["--runs", "1", "--no-full", "--quiet"] if command == "evaluate" else ["--losses", "mmd"]
    assert main([command, str(synset), *extra]) == 0
    assert seen == [data]
    out = capsys.readouterr().out
    assert f"--dataset not given: using {data!r}, recorded in {synset.parent / 'report.json'}" in out


def test_without_dataset_or_record_digits_is_named(tmp_path, capsys, monkeypatch):
    synset, _ = _run_folder(tmp_path, report=False)
    def stop(name, *args, **kwargs):
        raise ValueError(f"stopped before reading {name}: the choice is what is tested")

    monkeypatch.setattr(ddm.data, "load", stop)
    assert main(["evaluate", str(synset), "--runs", "1", "--quiet"]) == 2
    said = capsys.readouterr()
    assert "--dataset not given: using 'digits' (no report.json next to the set records a dataset)" in said.out
    assert said.err.strip().endswith("stopped before reading digits: the choice is what is tested")


def test_a_recorded_dataset_that_is_gone_is_refused_naming_it(tmp_path, capsys):
    synset, data = _run_folder(tmp_path)
    (synset.parent / "report.json").write_text(json.dumps({"dataset": str(tmp_path / "moved.npz")}))
    assert main(["evaluate", str(synset), "--runs", "1", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "moved.npz' recorded in" in err and "pass --dataset" in err
