"""evaluate(scores=True) trains what DD-Ranking's scores need, pairs the runs by seed and reports the scores
with 95 % intervals; lr_search chooses on the validation split. Trainings are replaced by a stand-in whose
accuracy encodes what was trained, so the test checks the wiring exactly and in milliseconds."""
import dataclasses
import importlib
import json

import pytest
import torch
from torch import nn

import ddmetrics as ddm
from ddmetrics.protocols import get_protocol
from ddmetrics.scores import dd_ranking_scores

ev = importlib.import_module("ddmetrics.evaluate")  # the module: ddm.evaluate is the function

SEED = 5
FULL = 0.95


def _data(n=30, classes=3, size=8):
    gen = torch.Generator().manual_seed(0)
    return ddm.data.ArrayDataset(torch.rand(n, 1, size, size, generator=gen), torch.arange(n) % classes, classes)


def _syn(classes=3, ipc=2, size=8):
    return ddm.SyntheticSet(images=torch.rand(classes * ipc, 1, size, size), labels=torch.arange(classes).repeat(ipc),
                            weights=torch.ones(classes * ipc), meta={"ipc": ipc, "method": "dm"}, num_classes=classes)


class _Student:
    def __init__(self, data, protocol, seed):
        self.data, self.protocol, self.seed = data, protocol, seed


def _accuracy_of(student, on):
    """What was trained, as a number: synthetic +0.2, soft labels +0.1, augmentation +0.05, mixing +0.02,
    +0.001 per run; 0.5 for a random subset with hard labels, no augmentation or mixing, run 0."""
    p, r = student.protocol, student.seed - SEED
    return (0.5 + 0.2 * (student.data.meta.get("method") != "random") + 0.1 * (p.labels == "soft")
            + 0.05 * (p.recipe.augment != "none") + 0.02 * (p.recipe.mix != "none") + 0.001 * r)


@pytest.fixture
def trainings(monkeypatch):
    """Replace every training by a stand-in; the list of (protocol, data, seed, tested on) it was asked for."""
    calls = []

    def train_student(data, protocol, teacher=None, seed=0, budget=1.0, device="cpu", progress=False):
        return _Student(data, protocol, seed)

    def accuracy(student, on):
        calls.append((student.protocol, student.data, student.seed, on))
        return _accuracy_of(student, on)

    def random_subset(train, ipc, seed):
        return ddm.SyntheticSet(images=torch.zeros(3 * ipc, 1, 8, 8), labels=torch.arange(3).repeat(ipc),
                                weights=torch.ones(3 * ipc), meta={"method": "random", "subset_seed": seed},
                                num_classes=3)

    monkeypatch.setattr(ev, "train_student", train_student)
    monkeypatch.setattr(ev, "accuracy", accuracy)
    monkeypatch.setattr(ev, "random_subset", random_subset)
    monkeypatch.setattr(ev, "full_data_accuracy", lambda *a, **k: FULL)
    return calls


def _teacher():
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 3))


def test_soft_protocol_scores_come_from_the_trainings_they_define(trainings):
    test, train = _data(), _data(60)
    report = ddm.evaluate(_syn(), test, train_set=train, protocol="soft", teacher=_teacher(), runs=3, seed=SEED,
                          scores=True, lrs_weight=0.3, ars_weight=0.6, progress=False)
    r = [0.0, 0.001, 0.002]
    assert report.runs == pytest.approx([0.87 + x for x in r])            # synthetic, soft, rrc_flip + cutmix
    assert report.random_runs == pytest.approx([0.67 + x for x in r])     # random subset, the same protocol
    assert report.hard_runs == pytest.approx([0.75 + x for x in r])       # hard labels, augmentation kept, no mix
    assert report.no_aug_runs == pytest.approx([0.80 + x for x in r])     # soft, augment none, mix none
    assert report.random_no_aug_runs == pytest.approx([0.60 + x for x in r])
    assert report.full == FULL
    # every kind trains on student seeds SEED + r, and both random-subset kinds of run r on subset SEED + r
    for protocol, data, seed, on in trainings:
        assert on is test and SEED <= seed < SEED + 3
        if data.meta.get("method") == "random":
            assert data.meta["subset_seed"] == seed
    assert len(trainings) == 5 * 3                                       # 5 kinds x 3 runs (full data stubbed)
    hard_variant = [p for p, d, s, _ in trainings if p.labels == "hard"]
    assert {(p.recipe.mix, p.recipe.augment, p.temperature) for p in hard_variant} == {("none", "rrc_flip", None)}
    expected = dd_ranking_scores(FULL, report.hard_runs, report.runs, report.random_runs, report.no_aug_runs,
                                 report.random_no_aug_runs, lrs_weight=0.3, ars_weight=0.6)
    assert report.scores() == expected
    # HLR of run r = full - hard run r (paired), not a difference of means
    assert report.scores()["hlr"]["runs"] == pytest.approx([FULL - 0.75 - x for x in r], abs=1e-12)


def test_hard_protocol_reuses_its_runs_as_the_hard_label_ones(trainings):
    report = ddm.evaluate(_syn(), _data(), train_set=_data(60), protocol="hard", runs=2, seed=SEED, scores=True,
                          progress=False)
    assert report.hard_runs == report.runs
    assert len(trainings) == 4 * 2 and all(p.labels == "hard" for p, *_ in trainings)  # no extra hard-label kind
    # a protocol without augmentation or mixing is its own "no augmentation" variant: nothing more is trained
    trainings.clear()
    plain = dataclasses.replace(get_protocol("hard"), recipe=dataclasses.replace(get_protocol("hard").recipe,
                                                                                  augment="none"))
    report = ddm.evaluate(_syn(), _data(), train_set=_data(60), protocol=plain, runs=2, seed=SEED, scores=True,
                          progress=False)
    assert len(trainings) == 2 * 2
    assert report.no_aug_runs == report.runs and report.random_no_aug_runs == report.random_runs


def test_summary_and_to_dict_hold_the_intervals_and_scores(trainings):
    report = ddm.evaluate(_syn(), _data(), train_set=_data(60), protocol="soft", teacher=_teacher(), runs=3,
                          seed=SEED, scores=True, progress=False)
    scores = report.scores()
    text = report.summary()
    mean, half = report.interval
    assert "accuracy (%)" in text and f"{100 * mean:.2f} ± {100 * half:.2f} (95 % CI, 3 runs)" in text
    for key, label in (("hlr", "HLR"), ("ior", "IOR"), ("lrs", "LRS"), ("ars", "ARS")):
        row = next(line for line in text.splitlines() if line.startswith(label))
        assert f"{100 * scores[key]['mean']:.2f} ± {100 * scores[key]['half_width']:.2f}" in row
    out = json.loads(json.dumps(report.to_dict()))   # JSON-able as it is
    assert out["scores"]["lrs"]["runs"] == pytest.approx(scores["lrs"]["runs"])
    assert out["interval"]["low"] == pytest.approx(mean - half) and out["confidence"] == 0.95
    assert out["score_weights"] == {"lrs": 0.5, "ars": 0.5}


def test_without_scores_nothing_more_is_trained_and_the_report_has_none(trainings):
    report = ddm.evaluate(_syn(), _data(), train_set=_data(60), protocol="hard", runs=2, seed=SEED, progress=False)
    assert len(trainings) == 2 * 2 and report.scores() is None and report.to_dict()["scores"] is None
    assert "HLR" not in report.summary()


def test_lr_search_chooses_on_the_validation_split_never_on_test(trainings, monkeypatch):
    test, val = _data(), _data(21)

    def accuracy(student, on):  # validation prefers lr 0.05, the test set would prefer 0.01
        trainings.append((student.protocol, student.data, student.seed, on))
        best = 0.05 if on is val else 0.01
        return 1.0 - abs(student.protocol.recipe.lr - best)

    monkeypatch.setattr(ev, "accuracy", accuracy)
    report = ddm.evaluate(_syn(), test, train_set=_data(60), protocol="hard", runs=2, seed=SEED, scores=True,
                          lr_search=(0.01, 0.05, 0.1), val_set=val, progress=False)
    kinds = ("evaluate", "random_subset", "no_augment", "random_no_augment")
    assert report.lr_search["chosen"] == {k: 0.05 for k in kinds}
    assert report.lr_search["val_accuracy"]["evaluate"] == pytest.approx([0.96, 1.0, 0.95])
    searched = [t for t in trainings if t[3] is val]
    assert len(searched) == 4 * 3 and {s for _, _, s, _ in searched} == {SEED}   # run 0's seed, each kind, each lr
    tested = [t for t in trainings if t[3] is test]
    assert len(tested) == 4 * 2 and {p.recipe.lr for p, *_ in tested} == {0.05}
    assert "student lr (searched on val_set)" in report.summary()


def test_lr_search_ties_go_to_the_first_listed(trainings, monkeypatch):
    monkeypatch.setattr(ev, "accuracy", lambda student, on: 0.5)
    report = ddm.evaluate(_syn(), _data(), protocol="hard", runs=1, lr_search=[0.1, 0.01], val_set=_data(21),
                          progress=False)
    assert report.lr_search["chosen"] == {"evaluate": 0.1}


@pytest.mark.parametrize("kwargs,needle", [
    (dict(scores=True), "needs train_set"),
    (dict(scores=True, train_set="train", full_data=False), "full_data=True"),
    (dict(scores=1), "scores must be True or False"),
    (dict(lrs_weight=1.5), "lrs_weight"),
    (dict(ars_weight=-0.1), "ars_weight"),
    (dict(lr_search=[0.01]), "needs val_set"),
    (dict(lr_search=[0.01], lr=0.1, val_set="val"), "exclusive"),
    (dict(lr_search=[], val_set="val"), "non-empty"),
    (dict(lr_search=[0.01, -1.0], val_set="val"), "positive"),
    (dict(lr_search=[0.01], val_set="wrong"), "val_set"),   # 3 channels: does not fit the set
])
def test_bad_settings_are_refused_before_any_training(kwargs, needle, monkeypatch):
    def no_training(*args, **kw):
        raise AssertionError("trained before the settings were checked")

    monkeypatch.setattr(ev, "train_student", no_training)
    monkeypatch.setattr(ev, "full_data_accuracy", no_training)
    data = {"train": _data(60), "val": _data(21), "wrong": ddm.data.ArrayDataset(torch.zeros(6, 3, 8, 8),
                                                                                 torch.arange(6) % 3, 3)}
    kwargs = {k: data.get(v, v) if isinstance(v, str) else v for k, v in kwargs.items()}
    with pytest.raises((ValueError, TypeError), match=needle):
        ddm.evaluate(_syn(), _data(), protocol="hard", runs=1, progress=False, **kwargs)


def test_scores_and_lr_search_sharded_over_two_gloo_ranks_equal_one_process(tmp_path):
    import os
    import subprocess
    import sys

    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_evaluate_ranks_script.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # torchrun's one thread per worker, for the reference too
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    for name, launcher in (("one", [sys.executable]), ("two", torchrun)):
        res = subprocess.run([*launcher, script, str(tmp_path / f"{name}.json")], env=env, capture_output=True,
                             text=True, timeout=900)
        assert res.returncode == 0, res.stderr[-2000:]
    one, two = (json.load(open(tmp_path / f"{n}.json")) for n in ("one", "two"))
    assert (one["world"], two["world"]) == (1, 2)
    # the same trainings with the same seeds in the same order on each rank: bit-equal results
    assert one["report"] == two["report"]
    assert set(two["report"]["lr_search"]["chosen"]) == {"evaluate", "random_subset", "no_augment",
                                                          "random_no_augment"}
    assert len(two["report"]["scores"]["lrs"]["runs"]) == 2
