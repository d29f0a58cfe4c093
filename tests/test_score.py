"""Scoring a synthetic set: values against POT per class, every registered backend (a test
plugin's too) without code changes, a failing backend reported and skipped, bad input refused."""
import json

import numpy as np
import ot
import pytest
import torch

import ddmetrics as ddm
from ddmetrics.cli import main
from ddmetrics.data import ArrayDataset
from ddmetrics.evaluate import random_subset
from ddmetrics.losses import base
from ddmetrics.score import PixelFeatures, reference_models, score_set


@pytest.fixture(scope="module")
def digits():
    return ddm.data.load("digits", seed=0)


@pytest.fixture
def fresh_losses(monkeypatch):
    """A copy of the registry, so the test's losses leak into no other test."""
    monkeypatch.setattr(base, "_REGISTRY", dict(base._REGISTRY))


def test_pixel_score_is_the_mean_over_classes_of_pots_exact_cost(digits):
    syn = random_subset(digits.train, 3, seed=1)
    report = score_set(syn, digits.train, {"pixels": PixelFeatures()}, losses=["wasserstein"], moments=False)
    per_class = []
    x_real = digits.train.images.flatten(1).double().numpy()
    x_syn = syn.images.flatten(1).double().numpy()
    for k in range(10):
        xr, xs = x_real[digits.train.labels.numpy() == k], x_syn[syn.labels.numpy() == k]
        cost = ot.dist(xr, xs)  # squared Euclidean: the backend's default p = 2 cost
        per_class.append(ot.emd2(np.full(len(xr), 1 / len(xr)), np.full(len(xs), 1 / len(xs)), cost))
    # float64 features and the same network-simplex solver: agreement to round-off of a sum of ~10^3 terms
    assert report.per_class["pixels"]["wasserstein"] == pytest.approx(per_class, rel=1e-9)
    assert report.mean["pixels"]["wasserstein"] == pytest.approx(np.mean(per_class), rel=1e-9)


def test_every_registered_backend_appears_including_a_plugins(digits, fresh_losses):
    @ddm.register_loss("meangap_test")
    class MeanGap(ddm.DistributionLoss):
        """Squared distance of the weighted means (a test plugin)."""

        def _loss(self, x, y, a, b):
            return ((a @ x - b @ y) ** 2).sum()

    # two classes: the critic- and sampler-based backends take ~2 s a comparison; the values are checked elsewhere
    keep = digits.train.labels < 2
    real = ArrayDataset(digits.train.images[keep], digits.train.labels[keep], 2)
    syn = random_subset(real, 2, seed=0)
    report = score_set(syn, real, reference_models(1, 2, 8, spaces=("pixels",)), max_real=40)
    expected = set(ddm.available_losses()) - set(base.missing_losses())
    for space in ("pixels",):
        assert expected <= set(report.mean[space]) and "meangap_test" in expected
        assert report.mean[space]["meangap_test"] > 0 and not report.failed
    # its value is the definition's, per class, in pixel space
    gen = torch.Generator().manual_seed(0 + 1)  # diagnose's subsample of class 0: seed + key, key = class + 1
    xr = digits.train.images[digits.train.labels == 0].flatten(1).double()
    xr = xr[torch.randperm(len(xr), generator=gen)[:40]]
    xs = syn.images[syn.labels == 0].flatten(1).double()
    gap = float(((xr.mean(0) - xs.mean(0)) ** 2).sum())
    assert report.per_class["pixels"]["meangap_test"][0] == pytest.approx(gap, rel=1e-12)


def test_a_failing_backend_is_reported_missing_and_the_others_go_on(digits, fresh_losses):
    @ddm.register_loss("broken_test")
    class Broken(ddm.DistributionLoss):
        """Fails on every input."""

        def _loss(self, x, y, a, b):
            raise RuntimeError("solver diverged")

    syn = random_subset(digits.train, 2, seed=0)
    report = score_set(syn, digits.train, {"pixels": PixelFeatures()}, losses=["broken_test", "mmd"])
    assert report.mean["pixels"]["broken_test"] is None and report.mean["pixels"]["mmd"] > 0
    assert report.failed["pixels"]["broken_test"]["class 0"] == "RuntimeError: solver diverged"
    with pytest.raises(RuntimeError, match="solver diverged"):
        score_set(syn, digits.train, {"pixels": PixelFeatures()}, losses=["broken_test"], on_error="raise")


def test_a_set_of_other_data_is_refused_naming_the_mismatch(digits):
    syn = random_subset(digits.train, 1, seed=0)
    wrong_shape = ddm.SyntheticSet(images=torch.zeros(10, 1, 16, 16), labels=syn.labels, weights=syn.weights,
                                   num_classes=10)
    with pytest.raises(ValueError, match="1x16x16.*real_set's are 1x8x8"):
        score_set(wrong_shape, digits.train, {"pixels": PixelFeatures()})
    wrong_classes = ddm.SyntheticSet(images=syn.images, labels=syn.labels, weights=syn.weights, num_classes=12)
    with pytest.raises(ValueError, match="12 classes but real_set has 10"):
        score_set(wrong_classes, digits.train, {"pixels": PixelFeatures()})
    with pytest.raises(ValueError, match="teacher"):
        reference_models(1, 10, 8, spaces=("teacher",))


def test_cli_score_prints_and_writes_the_library_values(digits, tmp_path, capsys):
    syn = random_subset(digits.train, 2, seed=3)
    syn.meta["seed"] = 0
    path = tmp_path / "synset.pt"
    syn.save(str(path))
    out = tmp_path / "score.json"
    assert main(["score", str(path), "--dataset", "digits", "--space", "pixels", "--losses", "mmd",
                 "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    expected = score_set(syn, digits.train, {"pixels": PixelFeatures()}, losses=["mmd"])
    assert json.loads(out.read_text())["mean"]["pixels"]["mmd"] == pytest.approx(expected.mean["pixels"]["mmd"],
                                                                                 rel=1e-12)
    assert "mmd" in printed and "recommended proxy" in printed
    # a teacher space without a teacher beside the set: one line, exit 2, before any work
    assert main(["score", str(path), "--dataset", "digits", "--space", "teacher"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "teacher.pt" in err


def test_the_recommended_proxy_is_the_committed_studys_choice():
    import os

    from ddmetrics.score import RECOMMENDED

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", "results",
                        "metric_vs_accuracy_study.json")
    with open(path) as fh:
        chosen = json.load(fh)["analysis"]["recommended"]
    assert RECOMMENDED == (chosen["distance"], chosen["space"])
